"""Normalization ranges for the uploaded tiles, computed once per selection or setting change.

Attention probabilities are tiny and vary by orders of magnitude between blocks and steps, so
the picture depends on the range mapped to the colormap. For every tile and latent frame this
gives (lo, hi); the shader maps a sample x to clamp((x - lo) / (hi - lo), 0, 1), interpolating
the range between frames exactly as it interpolates the map.

- ``global``: one range over every tile of the view (grids stay comparable across cells);
- ``step``:   one range per tile (each step's/block's map fills the colormap);
- ``frame``:  one range per tile and latent frame.

``lo``/``hi`` are percentiles (``clip_lo``, ``clip_hi``; 0 and 100 are min and max), so a
few hot pixels (often the first frame) do not wash out the rest.
"""

from __future__ import annotations

import numpy as np


def _pct(a: np.ndarray, q: float, axis) -> np.ndarray:
    if q <= 0.0:
        return a.min(axis=axis)
    if q >= 100.0:
        return a.max(axis=axis)
    return np.percentile(a, q, axis=axis)


def ranges(tiles: np.ndarray, mode: str, clip_lo: float = 0.0, clip_hi: float = 100.0) -> np.ndarray:
    """tiles [N, F', H', W'] -> [N, F', 2] float32 (lo, hi) per tile and frame."""
    n, f = tiles.shape[:2]
    lo_q, hi_q = min(clip_lo, clip_hi), max(clip_lo, clip_hi)
    if mode == "global":
        flat = tiles.reshape(-1)
        lo, hi = _pct(flat, lo_q, None), _pct(flat, hi_q, None)
        out = np.broadcast_to(np.array([lo, hi], np.float32), (n, f, 2))
    elif mode == "step":
        flat = tiles.reshape(n, -1)
        lohi = np.stack([_pct(flat, lo_q, 1), _pct(flat, hi_q, 1)], -1)  # [N, 2]
        out = np.broadcast_to(lohi[:, None, :], (n, f, 2))
    elif mode == "frame":
        flat = tiles.reshape(n, f, -1)
        out = np.stack([_pct(flat, lo_q, 2), _pct(flat, hi_q, 2)], -1)
    else:
        raise ValueError(f"unknown normalization {mode!r}")
    return np.ascontiguousarray(out, dtype=np.float32)


def symmetric(tiles: np.ndarray, mode: str, clip_hi: float = 100.0, gain: float = 1.0) -> np.ndarray:
    """Ranges for signed tiles (the diff view's bent minus unbent): (-m, m) with m the ``clip_hi``
    percentile of |x| (per tile, frame or view as ``mode``) divided by ``gain``, so zero always
    lands on the colormap's middle. Where everything is zero, m = 1: the tile shows neutral."""
    return symmetric_from(magnitude(tiles, mode, clip_hi), gain)


def magnitude(tiles: np.ndarray, mode: str, clip_hi: float = 100.0) -> np.ndarray:
    """[N, F'] float64: the ``clip_hi`` percentile of |x| behind :func:`symmetric` (the heavy part,
    independent of the gain)."""
    mag = np.abs(tiles)
    n, f = tiles.shape[:2]
    if mode == "global":
        m = np.broadcast_to(_pct(mag.reshape(-1), clip_hi, None), (n, f))
    elif mode == "step":
        m = np.broadcast_to(_pct(mag.reshape(n, -1), clip_hi, 1)[:, None], (n, f))
    elif mode == "frame":
        m = _pct(mag.reshape(n, f, -1), clip_hi, 2)
    else:
        raise ValueError(f"unknown normalization {mode!r}")
    return np.asarray(m, np.float64)


def symmetric_from(m: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """[N, F', 2] float32 ranges (-m/gain, m/gain) from :func:`magnitude` (1 where m is 0)."""
    m = np.asarray(m, np.float64) / max(float(gain), 1e-6)
    m = np.where(m > 0, m, 1.0)
    return np.ascontiguousarray(np.stack([-m, m], -1), dtype=np.float32)
