"""Getting rendered frames out of GL without stalling the render loop.

A :class:`Target` is a texture-backed framebuffer at an output's size: texture-sharing outputs
(Syphon, Spout) publish its texture as is; everything that needs pixels on the CPU (recording,
NDI, a virtual camera) reads it back through :class:`AsyncReader`, a small ring of pixel
buffer objects. ``start`` only queues a copy into a PBO (the GPU does it while the loop goes on);
the bytes are fetched a frame or two later, when the copy is long done, so the render thread
never waits for the GPU the way a plain ``glReadPixels`` does (anchors: 3.8 ms at 4K).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from paik.errors import PaikError


class Target:
    """An RGBA8 texture + framebuffer of a fixed size; rows are bottom-up (GL's order)."""

    def __init__(self, ctx, size: tuple[int, int]):
        w, h = size
        if w < 1 or h < 1:
            raise PaikError(f"output size {w}x{h}: width and height must be positive")
        limit = min(int(ctx.info["GL_MAX_TEXTURE_SIZE"]), int(ctx.info["GL_MAX_RENDERBUFFER_SIZE"]))
        if w > limit or h > limit:
            raise PaikError(f"output size {w}x{h} is larger than this GPU's limit of {limit} pixels per side")
        self.ctx = ctx
        self.size = (w, h)
        self.texture = ctx.texture((w, h), 4)
        self.fbo = ctx.framebuffer(color_attachments=[self.texture])

    def use(self) -> None:
        self.fbo.use()

    def release(self) -> None:
        self.fbo.release()
        self.texture.release()


@dataclass
class Pending:
    """A readback in flight: ``slot`` of the ring, the loop iteration that queued it, and
    whatever the caller wants back with the pixels (which sinks, which frame index)."""

    slot: int
    issued: int
    tag: object


class AsyncReader:
    """Reads a :class:`Target` back through ``depth`` PBOs. Call :meth:`start` after drawing,
    :meth:`ready` once per loop iteration (returns finished frames, oldest first), and
    :meth:`flush` at the end (waits for the rest)."""

    def __init__(self, ctx, size: tuple[int, int], components: int = 4, depth: int = 3, lag: int = 1):
        self.ctx = ctx
        self.size = size
        self.components = components
        self.nbytes = size[0] * size[1] * components
        self.pbos = [ctx.buffer(reserve=self.nbytes, dynamic=True) for _ in range(depth)]
        self.lag = lag  # loop iterations between queuing a copy and fetching it
        self.pending: list[Pending] = []
        self.iteration = 0
        self._next = 0

    def tick(self) -> None:
        """Mark the start of a loop iteration (ages the copies in flight)."""
        self.iteration += 1

    def start(self, target: Target, tag=None) -> None:
        if len(self.pending) == len(self.pbos):  # ring full: the oldest must be fetched first
            raise RuntimeError("AsyncReader.start: ring full; call ready() or flush() first")
        slot = self._next
        self._next = (self._next + 1) % len(self.pbos)
        target.fbo.read_into(self.pbos[slot], components=self.components, alignment=1)
        self.pending.append(Pending(slot, self.iteration, tag))

    def full(self) -> bool:
        return len(self.pending) == len(self.pbos)

    def ready(self, force: bool = False) -> list[tuple[np.ndarray, object]]:
        """Frames whose copy is old enough (or all, with ``force``): ([H, W, C] uint8 rows
        bottom-up, tag). Each array is fresh: the caller may hand it to another thread."""
        out = []
        while self.pending and (force or self.iteration - self.pending[0].issued >= self.lag):
            p = self.pending.pop(0)
            w, h = self.size
            arr = np.empty((h, w, self.components), np.uint8)
            self.pbos[p.slot].read_into(arr)
            out.append((arr, p.tag))
        return out

    def flush(self) -> list[tuple[np.ndarray, object]]:
        return self.ready(force=True)

    def release(self) -> None:
        for b in self.pbos:
            b.release()
        self.pbos = []


class YuvPacker:
    """Converts a :class:`Target` to yuv420p on the GPU (shaders/yuv420.frag) into an R8 texture
    whose bytes are FFmpeg's planar layout, top row first: read back with components=1 it is
    ready for the encoder (no flip, no CPU colour conversion, 1.5 bytes a pixel instead of 4)."""

    def __init__(self, ctx, size: tuple[int, int]):
        from paik.instrument.render.shaders import Program

        w, h = size
        if w % 2 or h % 2:
            raise PaikError(f"yuv420p needs an even width and height, not {w}x{h}")
        self.ctx = ctx
        self.size = size
        self.packed_size = (w, h * 3 // 2)
        self.program = Program(ctx, "fullscreen.vert", "yuv420.frag")
        self.texture = ctx.texture(self.packed_size, 1)
        self.fbo = ctx.framebuffer(color_attachments=[self.texture])
        self._quad = ctx.buffer(np.array([-1, -1, 1, -1, -1, 1, 1, 1], "f4").tobytes())
        self._vao, self._gen = None, -1

    def pack(self, source: Target) -> None:
        import moderngl

        if self._gen != self.program.generation:
            self._vao = self.ctx.vertex_array(self.program.prog, [(self._quad, "2f", "in_pos")])
            self._gen = self.program.generation
        source.texture.use(0)
        self.program.set("u_src", 0)
        self.program.set("u_size", self.size)
        self.fbo.use()
        self.ctx.viewport = (0, 0, *self.packed_size)
        self._vao.render(moderngl.TRIANGLE_STRIP)

    def release(self) -> None:
        self.fbo.release()
        self.texture.release()
        self._quad.release()
