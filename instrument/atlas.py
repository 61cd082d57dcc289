"""Packing many small volumes into one 3D texture (tiles side by side in x and y, time in z).

One texture instead of hundreds keeps the shader's sampler count fixed for every view and makes
a selection change a single upload. Tiles are sampled with their coordinates clamped to their
own texel centers (see shaders/include/atlas.glsl), so linear filtering never mixes neighbours.
"""

from __future__ import annotations

import math

import numpy as np

from capture.errors import PaikError


def layout(n: int, tile_w: int, tile_h: int, max_size: int) -> tuple[int, int]:
    """(columns, rows) of tiles fitting ``max_size`` texels per side."""
    cols = max(1, min(n, max_size // tile_w))
    rows = math.ceil(n / cols)
    if rows * tile_h > max_size or tile_w > max_size:
        raise PaikError(f"{n} tiles of {tile_w}x{tile_h} do not fit a {max_size}-texel 3D texture on this GPU; "
                        "choose fewer steps/blocks or a smaller capture")
    return cols, rows


def pack(tiles: np.ndarray, max_size: int) -> tuple[np.ndarray, int]:
    """tiles [N, D, H, W, C] -> (atlas [D, rows*H, cols*W, C], cols), unused tiles zero."""
    n, d, h, w, c = tiles.shape
    cols, rows = layout(n, w, h, max_size)
    out = np.zeros((d, rows, cols, h, w, c), tiles.dtype)
    flat = out.reshape(d, rows * cols, h, w, c)
    flat[:, :n] = tiles.transpose(1, 0, 2, 3, 4)
    return np.ascontiguousarray(out.transpose(0, 1, 3, 2, 4, 5).reshape(d, rows * h, cols * w, c)), cols


def upload(ctx, tex, atlas: np.ndarray, dtype: str):
    """Write ``atlas`` [D, H, W, C] into ``tex`` (reused when the size matches) and return it."""
    d, h, w, c = atlas.shape
    if tex is None or tex.size != (w, h, d) or tex.components != c or tex.dtype != dtype:
        if tex is not None:
            tex.release()
        tex = ctx.texture3d((w, h, d), c, dtype=dtype)
        tex.repeat_x = tex.repeat_y = tex.repeat_z = False
        import moderngl

        tex.filter = (moderngl.LINEAR, moderngl.LINEAR)
    tex.write(atlas.tobytes())
    return tex
