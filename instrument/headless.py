"""Offscreen rendering through EGL: no window, no display (CI, render, grid, bench)."""

from __future__ import annotations

import numpy as np

from capture.errors import PaikError


def egl_context():
    """A standalone GL 3.3+ context on EGL (llvmpipe on CPU machines, the NVIDIA driver on GPUs)."""
    import moderngl

    try:
        return moderngl.create_context(standalone=True, backend="egl", require=330)
    except Exception as e:  # the loader raises plain Exceptions with the EGL error text
        raise PaikError(f"cannot create a headless OpenGL context through EGL ({e}). Install the EGL "
                        "loader (Debian/Ubuntu: libegl1 and a driver: libegl-mesa0 for CPUs, the NVIDIA "
                        "driver's libEGL_nvidia for GPUs)") from None


class Offscreen:
    """An RGBA8 framebuffer of a fixed size; :meth:`read` returns the picture top row first."""

    def __init__(self, ctx, size: tuple[int, int]):
        w, h = size
        if w < 1 or h < 1:
            raise PaikError(f"size {w}x{h}: width and height must be positive")
        limit = int(ctx.info["GL_MAX_RENDERBUFFER_SIZE"])
        if w > limit or h > limit:
            raise PaikError(f"size {w}x{h} is larger than this GPU's limit of {limit} pixels per side")
        self.ctx = ctx
        self.size = (w, h)
        self.fbo = ctx.framebuffer(color_attachments=[ctx.renderbuffer((w, h), 4)])

    def use(self) -> None:
        self.fbo.use()

    def read(self) -> np.ndarray:
        """[H, W, 4] uint8, row 0 at the top."""
        w, h = self.size
        data = np.frombuffer(self.fbo.read(components=4, alignment=1), np.uint8).reshape(h, w, 4)
        return data[::-1]

    def release(self) -> None:
        self.fbo.release()
