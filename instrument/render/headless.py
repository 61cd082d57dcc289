"""Offscreen rendering through EGL: no window, no display (CI, render, grid, bench)."""

from __future__ import annotations

import numpy as np

from paik.errors import PaikError


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


def play_headless(live, size=(1280, 720), fps: float = 60.0, max_frames: int | None = None,
                  run_for: float | None = None, stop=None, on_frame=None, fixed_step: bool = False,
                  outputs=None) -> int:
    """``paik play --headless``: render offscreen at ``fps`` and, between ticks, as soon as a
    command arrives (a control change is drawn at once, not at the next tick). Stops after
    ``max_frames`` frames, ``run_for`` seconds, when ``stop`` (a threading.Event) is set, or on
    Ctrl-C / SIGTERM. ``on_frame(done_time, params)`` runs after each finished frame.
    ``outputs`` is the factory from :func:`paik.instrument.outputs.live.from_args` (recording, NDI...);
    ``fixed_step`` runs on a frame/fps clock without sleeping (deterministic tests)."""
    import time

    from paik.instrument.render.renderer import Stage

    ctx = egl_context()
    off = Offscreen(ctx, size)
    off.use()
    # live: a selection or a swap of source never holds up a frame; the fixed-step test clock keeps
    # every frame exact
    stage = Stage(ctx, live.src, asynchronous=not fixed_step)
    outs = outputs(ctx, stage.renderer) if outputs is not None else None
    if outs is not None:
        outs.on_error = lambda message: live.error(message, kind="record")
        stage.on_swap = lambda r: setattr(outs, "renderer", r)
    w, h = size

    def frame(now: float):
        p = live.update(now)
        off.use()
        try:
            renderer, q = stage.frame(live.src, p)  # a new source: the old one draws on until it is ready
            renderer.draw(q, q.time, (0, 0, w, h), gap=2.0)
            if outs is not None:
                outs.frame(q, q.time, now - (0 if fixed_step else start), drawn=(off.fbo, size))
        except Exception as e:  # noqa: BLE001 - a broken map or bundle: reported, the show goes on
            live.error(_what(e), kind="render")
        ctx.finish()
        if stage.settled:  # a snapshot shows what was asked
            live.rendered(lambda: off.read()[..., :3].copy())
        return p

    period = 1.0 / fps if fps > 0 else 1.0
    start = next_tick = time.perf_counter()
    frames = 0
    try:
        while stop is None or not stop.is_set():
            if fixed_step:
                now = frames * period
                if run_for is not None and now >= run_for:
                    break
            else:
                now = time.perf_counter()
                if run_for is not None and now - start >= run_for:
                    break
                live.inbox.wait(next_tick - now)  # returns early when a command is put
                now = time.perf_counter()
                if now >= next_tick:
                    next_tick = max(next_tick + period, now)
            try:
                p = frame(now)
            except Exception as e:  # noqa: BLE001 - the show goes on: report it, draw the next frame
                live.error(_what(e), kind="render")
                p = live.shown
            done = time.perf_counter()
            if on_frame is not None:
                on_frame(done, p)
            frames += 1
            if max_frames is not None and frames >= max_frames:
                break
    finally:
        if outs is not None:
            outs.close()
        stage.release()
        off.release()
    return 0


def _what(e: Exception) -> str:
    """An exception as one line for the performer (its type too, when it is not a user's mistake)."""
    return str(e) if isinstance(e, PaikError) else f"render: {type(e).__name__}: {e}"
