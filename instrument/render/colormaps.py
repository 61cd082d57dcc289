"""Colormap LUTs, read from ``presets/colormaps/*.json`` (data, generated once; no matplotlib at
runtime). A file holds ``{"name": ..., "colors": [[r, g, b], ...]}`` with components in 0..1 and
at least two entries; any count is resampled to a 256-entry LUT, so users can drop in their own
maps with a handful of stops."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from paik.errors import PaikError
from paik import resources

PRESETS = resources.presets("colormaps")
LUT_SIZE = 256


def _read(path: Path) -> np.ndarray:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        colors = np.asarray(data["colors"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PaikError(f"{path}: not a colormap ({e}); expected {{\"colors\": [[r, g, b], ...]}}") from None
    if colors.ndim != 2 or colors.shape[1] != 3 or len(colors) < 2 or not np.all((colors >= 0) & (colors <= 1)):
        raise PaikError(f"{path}: colors must be a list of at least two [r, g, b] triples in 0..1")
    x = np.linspace(0.0, 1.0, len(colors))
    t = np.linspace(0.0, 1.0, LUT_SIZE)
    return np.stack([np.interp(t, x, colors[:, c]) for c in range(3)], axis=1).astype(np.float32)


@lru_cache(maxsize=None)
def available(directory: Path = PRESETS) -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in directory.glob("*.json")))


def load(name: str, directory: Path = PRESETS) -> np.ndarray:
    """[256, 3] float32 RGB in 0..1."""
    path = directory / f"{name}.json"
    if not path.is_file():
        raise PaikError(f"unknown colormap {name!r}; available: {', '.join(available(directory))}")
    return _read(path)


def lut_bytes(name: str) -> bytes:
    """The LUT as RGB8, as uploaded to the GPU (and as the numpy reference must use it)."""
    return lut_u8(name).tobytes()


def lut_u8(name: str) -> np.ndarray:
    return np.clip(np.round(load(name) * 255.0), 0, 255).astype(np.uint8)
