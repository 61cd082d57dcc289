"""Offscreen rendering through EGL: no window, no display (CI, render, grid, bench)."""

from __future__ import annotations

import logging

import numpy as np

from paik.errors import PaikError

log = logging.getLogger(__name__)


PRIORITIES = ("high", "medium", "low")
_EGL_PRIORITY = {"high": 0x3101, "medium": 0x3102, "low": 0x3103}  # EGL_CONTEXT_PRIORITY_*_IMG
_EGL_PRIORITY_NAMES = {v: k for k, v in _EGL_PRIORITY.items()}


def egl_context(priority: str | None = None):
    """A standalone GL 3.3+ context on EGL (llvmpipe on CPU machines, the NVIDIA driver on GPUs).

    ``priority`` (high, medium, low) asks the driver to schedule this context's work before (or
    after) other work on the GPU, a generation's CUDA kernels included, where the display offers
    EGL_IMG_context_priority; ``ctx.extra["priority"]`` says what the driver granted (None: not
    offered, the default context made instead)."""
    import moderngl

    if priority is not None:
        if priority not in PRIORITIES:
            raise PaikError(f"GL context priority {priority!r}: expected one of {', '.join(PRIORITIES)}")
        try:
            ctx = _priority_context(priority)
        except Exception as e:  # noqa: BLE001 - a missing entry point or library: the default context will do
            log.info("a GL context with priority %s could not be made (%s: %s); using the default one",
                     priority, type(e).__name__, e)
            ctx = None
        if ctx is not None:
            return ctx
    try:
        return moderngl.create_context(standalone=True, backend="egl", require=330)
    except Exception as e:  # the loader raises plain Exceptions with the EGL error text
        raise PaikError(f"cannot create a headless OpenGL context through EGL ({e}). Install the EGL "
                        "loader (Debian/Ubuntu: libegl1 and a driver: libegl-mesa0 for CPUs, the NVIDIA "
                        "driver's libEGL_nvidia for GPUs)") from None


class _EglLoader:
    """moderngl's loader (``moderngl.init_context``) for an EGL context made here: core GL entry
    points through eglGetProcAddress (EGL_KHR_get_all_proc_addresses), and the context destroyed
    on release."""

    def __init__(self, egl, dpy, context):
        import ctypes

        self.egl, self.dpy, self.context = egl, dpy, context
        self._proc = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(("eglGetProcAddress", egl))

    def load_opengl_function(self, name: str) -> int:
        return self._proc(name.encode()) or 0

    def release(self) -> None:
        if self.context:
            if self.egl.eglGetCurrentContext() == self.context:
                self.egl.eglMakeCurrent(self.dpy, None, None, None)
            self.egl.eglDestroyContext(self.dpy, self.context)
            self.context = None


def _priority_context(priority: str, force: bool = False):
    """A GL 3.3 core context on EGL device 0 (as glcontext's standalone one) made with
    EGL_CONTEXT_PRIORITY_LEVEL_IMG, current on this thread; None, with the reason logged, where
    the display does not offer the extension (``force``: made without it then, for tests)."""
    import ctypes
    import ctypes.util

    import moderngl

    name = ctypes.util.find_library("EGL")
    if name is None:
        return None
    egl = ctypes.CDLL(name)
    vp, i32 = ctypes.c_void_p, ctypes.c_int
    egl.eglGetProcAddress.restype, egl.eglGetProcAddress.argtypes = vp, [ctypes.c_char_p]
    egl.eglQueryString.restype, egl.eglQueryString.argtypes = ctypes.c_char_p, [vp, i32]
    egl.eglInitialize.argtypes = [vp, ctypes.POINTER(i32), ctypes.POINTER(i32)]
    egl.eglChooseConfig.argtypes = [vp, ctypes.POINTER(i32), ctypes.POINTER(vp), i32, ctypes.POINTER(i32)]
    egl.eglCreateContext.restype, egl.eglCreateContext.argtypes = vp, [vp, vp, vp, ctypes.POINTER(i32)]
    egl.eglMakeCurrent.argtypes = [vp, vp, vp, vp]
    egl.eglDestroyContext.argtypes = [vp, vp]
    egl.eglQueryContext.argtypes = [vp, vp, i32, ctypes.POINTER(i32)]
    egl.eglGetCurrentContext.restype = vp
    client = (egl.eglQueryString(None, 0x3055) or b"").split()  # EGL_EXTENSIONS of no display
    if b"EGL_EXT_platform_device" not in client:
        log.info("GL priority: EGL has no device platform; the default context instead")
        return None
    query = ctypes.CFUNCTYPE(ctypes.c_uint, i32, ctypes.POINTER(vp), ctypes.POINTER(i32))(
        egl.eglGetProcAddress(b"eglQueryDevicesEXT"))
    platform = ctypes.CFUNCTYPE(vp, ctypes.c_uint, vp, ctypes.POINTER(i32))(
        egl.eglGetProcAddress(b"eglGetPlatformDisplayEXT"))
    devices, n = (vp * 16)(), i32()
    if not query(16, devices, ctypes.byref(n)) or n.value < 1:
        return None
    dpy = platform(0x313F, devices[0], None)  # EGL_PLATFORM_DEVICE_EXT
    if not dpy or not egl.eglInitialize(dpy, None, None):
        return None
    extensions = (egl.eglQueryString(dpy, 0x3055) or b"").split()
    offered = b"EGL_IMG_context_priority" in extensions
    if not offered and not force:
        log.info("GL priority: the driver does not offer EGL_IMG_context_priority; the default context instead")
        return None
    # EGL_SURFACE_TYPE pbuffer, EGL_RENDERABLE_TYPE OpenGL, 8-bit RGBA
    want = (i32 * 13)(0x3033, 0x0001, 0x3040, 0x0008, 0x3024, 8, 0x3023, 8, 0x3022, 8, 0x3021, 8, 0x3038)
    config, count = vp(), i32()
    if not egl.eglChooseConfig(dpy, want, ctypes.byref(config), 1, ctypes.byref(count)) or count.value < 1:
        return None
    if not egl.eglBindAPI(0x30A2):  # EGL_OPENGL_API
        return None
    attrs = [0x3098, 3, 0x30FB, 3, 0x30FD, 1]  # GL 3.3, the core profile
    if offered:
        attrs += [0x3100, _EGL_PRIORITY[priority]]  # EGL_CONTEXT_PRIORITY_LEVEL_IMG
    context = egl.eglCreateContext(dpy, config, None, (i32 * (len(attrs) + 1))(*attrs, 0x3038))
    if not context:
        log.info("GL priority: eglCreateContext refused (0x%x); the default context instead", egl.eglGetError())
        return None
    loader = _EglLoader(egl, dpy, context)
    if not egl.eglMakeCurrent(dpy, None, None, context):  # surfaceless (EGL_KHR_surfaceless_context)
        loader.release()
        return None
    granted = None
    if offered:
        level = i32()
        if egl.eglQueryContext(dpy, context, 0x3100, ctypes.byref(level)):
            granted = _EGL_PRIORITY_NAMES.get(level.value)
    try:
        moderngl.init_context(loader)  # made moderngl's default context, returned by get_context
        ctx = moderngl.get_context()
    except Exception as e:  # noqa: BLE001 - the default context instead
        log.info("GL priority: moderngl could not use the EGL context (%s); the default context instead", e)
        loader.release()
        return None
    if ctx.version_code < 330:
        ctx.release()
        return None
    ctx.extra = {"priority": granted}
    return ctx


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
