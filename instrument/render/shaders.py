"""Shader programs from files in ``shaders/``, with ``#include`` and hot reload.

:meth:`Program.poll` (called a few times a second by the render loop) recompiles when any file
the program was built from changes. A compile or link error keeps the last program that worked
and sets :attr:`Program.error` (shown on screen by the window); fixing the file clears it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from paik.errors import PaikError
from paik import resources

log = logging.getLogger(__name__)

SHADERS = resources.shaders()
_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$', re.M)


def preprocess(path: Path, seen: set[Path]) -> str:
    """The file's text with ``#include "x.glsl"`` replaced by shaders/include/x.glsl (once each)."""
    seen.add(path)
    text = path.read_text(encoding="utf-8")

    def sub(m: re.Match) -> str:
        inc = (path.parent / "include" / m.group(1)) if path.parent.name != "include" else path.parent / m.group(1)
        if inc in seen:
            return ""
        if not inc.is_file():
            raise PaikError(f"{path.name}: #include \"{m.group(1)}\" not found in {inc.parent}")
        return preprocess(inc, seen)

    return _INCLUDE.sub(sub, text)


class Program:
    """A GL program built from a vertex and a fragment shader file; :attr:`prog` is always the
    last one that compiled (None only if the very first build failed, see :meth:`build`)."""

    def __init__(self, ctx, vertex: str, fragment: str, directory: Path = SHADERS):
        self.ctx = ctx
        self.dir = Path(directory)
        self.vertex, self.fragment = vertex, fragment
        self.prog = None
        self.error: str | None = None
        self.generation = 0  # bumped on every successful (re)build, so users rebind vertex arrays
        self._files: dict[Path, float] = {}
        self.build()
        if self.prog is None:
            raise PaikError(f"shaders {vertex} + {fragment} do not compile:\n{self.error}")

    def build(self) -> bool:
        seen: set[Path] = set()
        try:
            vs = preprocess(self.dir / self.vertex, seen)
            fs = preprocess(self.dir / self.fragment, seen)
            prog = self.ctx.program(vertex_shader=vs, fragment_shader=fs)
        except Exception as e:  # moderngl raises a plain Error with the driver's log
            self.error = f"{self.fragment}: {str(e).strip()}"
            log.warning("shader build failed, keeping the last good program:\n%s", self.error)
            self._files.update(self._stamp(seen))  # do not retry until a file changes again
            return False
        old, self.prog = self.prog, prog
        if old is not None:
            old.release()
        self.error = None
        self.generation += 1
        self._files = self._stamp(seen)
        return True

    def _stamp(self, files) -> dict[Path, float]:
        out = {}
        for f in files:
            try:
                out[f] = f.stat().st_mtime_ns
            except OSError:
                out[f] = -1
        return out

    def changed(self) -> bool:
        for f, t in self._files.items():
            try:
                if f.stat().st_mtime_ns != t:
                    return True
            except OSError:
                if t != -1:
                    return True
        return False

    def poll(self) -> bool:
        """Rebuild if a source file changed; True when a new program is in use."""
        return self.build() if self.changed() else False

    def set(self, name: str, value) -> None:
        """Set a uniform if the program uses it (the driver drops unused ones; an edited shader
        may stop using some)."""
        u = self.prog.get(name, None)
        if u is not None:
            u.value = value
