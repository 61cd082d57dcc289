"""Read and write the small TOML files presets are made of (scenes, MIDI maps).

Reading is the standard library's ``tomllib`` (``tomli`` before Python 3.11). Writing covers
what presets hold: scalars, lists of scalars, tables and arrays of tables, with keys in order.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from paik.errors import PaikError

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def load(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise PaikError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise PaikError(f"{path} is not valid TOML: {e}") from None


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot write {v!r} to TOML")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps(data: dict, _prefix: str = "") -> str:
    lines, tables, arrays = [], [], []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        name = f"{_prefix}{_key(k)}"
        out += f"\n[{name}]\n" + dumps(v, name + ".")
    for k, items in arrays:
        name = f"{_prefix}{_key(k)}"
        for item in items:
            out += f"\n[[{name}]]\n" + dumps(item, name + ".")
    return out


def save(path: Path, data: dict, header: str = "") -> None:
    """Write atomically (a crash never leaves half a preset, a full disk no temporary file)."""
    path = Path(path)
    text = "".join(f"# {line}\n" for line in header.splitlines()) + dumps(data)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise PaikError(f"cannot write {path}: {e.strerror or e}") from None
