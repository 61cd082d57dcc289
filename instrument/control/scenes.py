"""Scenes: a whole parameter state saved under a name, recalled from keys, OSC or MIDI.

A scene is a TOML file ``NAME.toml`` with a ``[params]`` table (data, never code). The token is
stored as its word, so a scene made on one bundle recalls on another with the same word. A
scene may hold only some parameters: recall sets what it holds and leaves the rest. ``time``
(the playhead), ``help`` and ``record`` are not stored: recalling a look mid-show must not jump the video.

Scenes are saved to the first folder (``--scenes``, default ``~/.config/paik/scenes``) and
looked up there, then in the shipped ``presets/scenes``.
"""

from __future__ import annotations

import os
from pathlib import Path

from paik.errors import PaikError

from paik.instrument.control import tomlio
from paik.instrument.control.grammar import scene_name
from paik.instrument.control.params import SPECS, Command
from paik import resources

SHIPPED = resources.presets("scenes")
NOT_STORED = ("time", "help", "record")  # recalling a look must not jump the video or start a take


def default_dir() -> Path:
    return Path(os.environ.get("PAIK_SCENES") or Path.home() / ".config" / "paik" / "scenes")


class SceneStore:
    def __init__(self, directory: Path | None = None, shipped: Path | None = SHIPPED):
        self.dir = Path(directory) if directory is not None else default_dir()
        self.search = [self.dir] + ([Path(shipped)] if shipped is not None else [])

    def names(self) -> list[str]:
        seen = {}
        for d in self.search:
            for f in sorted(d.glob("*.toml")) if d.is_dir() else ():
                seen.setdefault(f.stem, f)
        return sorted(seen, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))

    def path(self, name) -> Path | None:
        name = scene_name(name)
        for d in self.search:
            f = d / f"{name}.toml"
            if f.is_file():
                return f
        return None

    def save(self, name, values: dict, word: str) -> Path:
        name = scene_name(name)
        params = {k: v for k, v in values.items() if k in SPECS and k not in NOT_STORED}
        params["token"] = word
        path = self.dir / f"{name}.toml"
        tomlio.save(path, {"name": name, "params": params}, header="paik scene: recall with 'scene recall "
                    f"{name}' (keys F2-F9, OSC /paik/scene/recall, MIDI)")
        return path

    def load(self, name) -> dict:
        path = self.path(name)
        if path is None:
            raise PaikError(f"no scene {scene_name(name)!r}; scenes: {', '.join(self.names()) or 'none yet'}")
        data = tomlio.load(path)
        params = data.get("params")
        if not isinstance(params, dict):
            raise PaikError(f"{path}: a scene needs a [params] table")
        unknown = [k for k in params if k not in SPECS]
        if unknown:
            raise PaikError(f"{path}: unknown parameters {', '.join(unknown)}")
        return {k: v for k, v in params.items() if k not in NOT_STORED}

    def delete(self, name) -> None:
        path = self.dir / f"{scene_name(name)}.toml"
        if not path.is_file():
            raise PaikError(f"no saved scene {name!r} in {self.dir}")
        path.unlink()

    def commands(self, name, source: str = "scene") -> list[Command]:
        """The recall as commands: token first (its word), then the rest in bank order."""
        params = self.load(name)
        order = ["token"] + [k for k in SPECS if k != "token"]
        return [Command(k, "set", params[k], source) for k in order if k in params]
