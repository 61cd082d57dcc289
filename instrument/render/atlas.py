"""Packing many small volumes into one 3D texture (tiles side by side in x and y, time in z).

One texture instead of hundreds keeps the shader's sampler count fixed for every view and makes
a selection change a single upload. Pass 1 (shaders/field.frag, backdrop.frag) reads these
tiles texel by texel at the origins :func:`origins` gives; the textures pass 2 filters are laid
out like the picture's grid, and it clamps its coordinates to each tile's texel centers, so
linear filtering never mixes neighbours.
"""

from __future__ import annotations

import math

import numpy as np

from paik.errors import PaikError


def layout(n: int, tile_w: int, tile_h: int, max_size: int) -> tuple[int, int]:
    """(columns, rows) of tiles fitting ``max_size`` texels per side."""
    cols = max(1, min(n, max_size // tile_w))
    rows = math.ceil(n / cols)
    if rows * tile_h > max_size or tile_w > max_size:
        raise PaikError(f"{n} tiles of {tile_w}x{tile_h} do not fit a {max_size}-texel 3D texture on this GPU; "
                        "choose fewer steps/blocks or a smaller capture")
    return cols, rows


def pack(tiles: np.ndarray, max_size: int, slots: int | None = None) -> tuple[np.ndarray, int]:
    """tiles [N, D, H, W, C] -> (atlas [D, rows*H, cols*W, C], cols) laid out for ``slots`` tiles
    (at least N; default N), unused tiles zero."""
    n, d, h, w, c = tiles.shape
    cols, rows = layout(max(n, slots or 0), w, h, max_size)
    # np.empty, not np.zeros: a large calloc is zeroed (and its pages faulted in) with the
    # interpreter lock held, which kept the render thread out for 13-20 ms a selection of
    # 300 tiles (paik bench live --probe, H200); numpy's copies and fills let it go
    out = np.empty((d, rows, cols, h, w, c), tiles.dtype)
    flat = out.reshape(d, rows * cols, h, w, c)
    flat[:, :n] = tiles.transpose(1, 0, 2, 3, 4)
    flat[:, n:] = 0
    return np.ascontiguousarray(out.transpose(0, 1, 3, 2, 4, 5).reshape(d, rows * h, cols * w, c)), cols


class Staging:
    """A pixel buffer that texture uploads go through: the data is copied into fresh buffer
    storage (the old storage orphaned, so the copy never waits for the GPU to finish reading
    it) and the texture is filled from it by the GPU in command order. A plain glTexSubImage3D
    from host memory can stall the render thread while the GPU is shared with a generation."""

    def __init__(self, ctx):
        self.ctx, self.buf = ctx, None

    def write(self, tex, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data)
        size = max(data.nbytes, 1 << 16)
        if self.buf is None:
            self.buf = self.ctx.buffer(reserve=size, dynamic=True)
        else:  # fresh storage the size of this upload (a large one before does not make every later one large)
            self.buf.orphan(size)
        self.buf.write(data)
        tex.write(self.buf)
        # later uploads and reads from host memory must not see the pixel buffer still bound:
        # moderngl binds it for the write only

    def release(self) -> None:
        if self.buf is not None:
            self.buf.release()
            self.buf = None


def fits(tex, atlas: np.ndarray, dtype: str) -> bool:
    """Whether ``tex`` can hold ``atlas`` [D, H, W, C] as it is (written over, not remade)."""
    d, h, w, c = atlas.shape
    return tex is not None and tex.size == (w, h, d) and tex.components == c and tex.dtype == dtype


def upload(ctx, tex, atlas: np.ndarray, dtype: str, staging: Staging | None = None):
    """Write ``atlas`` [D, H, W, C] into ``tex`` (reused when it :func:`fits`) and return it;
    through ``staging`` (a :class:`Staging`) when given."""
    d, h, w, c = atlas.shape
    if not fits(tex, atlas, dtype):
        if tex is not None:
            tex.release()
        tex = ctx.texture3d((w, h, d), c, dtype=dtype)
        tex.repeat_x = tex.repeat_y = tex.repeat_z = False
        import moderngl

        tex.filter = (moderngl.LINEAR, moderngl.LINEAR)
    if staging is not None:
        staging.write(tex, atlas)
    else:
        tex.write(np.ascontiguousarray(atlas))  # the buffer itself: no bytes copy on the render thread
    return tex


def origins(n: int, cols: int, tile_w: int, tile_h: int) -> np.ndarray:
    """[n, 2] float32 texel origin (x, y) of each tile in an atlas of ``cols`` tiles per row."""
    i = np.arange(n)
    return np.stack([(i % cols) * tile_w, (i // cols) * tile_h], 1).astype(np.float32)


def frame_pairs(packed: np.ndarray) -> np.ndarray:
    """A packed atlas [D, H, W, 1] -> [D, H, W, 2]: each frame with the next (the last with
    itself), so that one texel read gives both ends of the time interpolation."""
    out = np.empty(packed.shape[:3] + (2,), packed.dtype)
    out[..., 0] = packed[..., 0]
    out[:-1, ..., 1] = packed[1:, ..., 0]
    out[-1, ..., 1] = packed[-1, ..., 0]
    return out
