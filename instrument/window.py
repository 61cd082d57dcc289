"""``paik play``: the live window (GLFW + moderngl, GL 3.3 core so it runs on macOS too).

Key callbacks only enqueue commands; once per frame the loop drains the queue into the
parameter bank, advances the playhead, polls the shader files, draws, and swaps (vsync).
"""

from __future__ import annotations

import logging
import time as _time

import numpy as np

from capture.errors import PaikError

from . import keys
from .params import Command, CommandQueue, Params
from .renderer import Renderer
from .source import Source

log = logging.getLogger(__name__)


class Clock:
    """The playhead: a position 0..1 in the video, advanced by wall time x speed while playing."""

    def __init__(self, duration: float):
        self.duration = max(duration, 1e-3)
        self.last = None

    def advance(self, p: Params, now: float) -> float:
        dt = 0.0 if self.last is None else now - self.last
        self.last = now
        if p.playing:
            p.time = (p.time + dt * p.speed / self.duration) % 1.0
        return p.time


def _init_glfw():
    import glfw

    if not glfw.init():
        raise PaikError("cannot open a window: no display (set DISPLAY, or use 'paik render' for headless output)")
    return glfw


def play(src: Source, p: Params, size=(1280, 720), fullscreen=False, monitor: int = 0, vsync=True,
         max_frames: int | None = None, screenshot=None) -> int:
    glfw = _init_glfw()
    try:
        monitors = glfw.get_monitors() or []
        if fullscreen and not monitors:
            raise PaikError("no monitor found for --fullscreen")
        if monitors and not 0 <= monitor < len(monitors):
            raise PaikError(f"--monitor {monitor}: there are {len(monitors)} monitors (0..{len(monitors) - 1})")
        glfw.window_hint(glfw.CONTEXT_VERSION_MAJOR, 3)
        glfw.window_hint(glfw.CONTEXT_VERSION_MINOR, 3)
        glfw.window_hint(glfw.OPENGL_PROFILE, glfw.OPENGL_CORE_PROFILE)
        glfw.window_hint(glfw.OPENGL_FORWARD_COMPAT, True)  # macOS only gives 3.3 core this way
        glfw.window_hint(glfw.RESIZABLE, True)
        mon = monitors[monitor] if monitors else None
        title = f"paik - {src.bundle.manifest.get('prompt', src.bundle.path)}"
        if fullscreen:
            mode = glfw.get_video_mode(mon)
            win = glfw.create_window(mode.size.width, mode.size.height, title, mon, None)
        else:
            win = glfw.create_window(size[0], size[1], title, None, None)
        if not win:
            raise PaikError("could not create an OpenGL 3.3 core window on this display")
        glfw.make_context_current(win)
        glfw.swap_interval(1 if vsync else 0)
        return _loop(glfw, win, src, p, monitors, monitor, max_frames, screenshot)
    finally:
        glfw.terminate()


def _loop(glfw, win, src, p, monitors, monitor, max_frames, screenshot) -> int:
    import moderngl

    from .overlay import Overlay

    ctx = moderngl.create_context()
    renderer = Renderer(ctx, src)
    overlay = Overlay(ctx)
    inbox = CommandQueue()
    state = {"windowed": (100, 100, 1280, 720), "errors": [], "changed": 0.0}

    def on_key(_w, key, _scancode, action, mods):
        if action not in (glfw.PRESS, glfw.REPEAT):
            return
        if key in (glfw.KEY_ESCAPE, glfw.KEY_Q):
            glfw.set_window_should_close(win, True)
            return
        if key == glfw.KEY_F and action == glfw.PRESS:
            toggle_fullscreen()
            return
        name = next((n[4:] for n in dir(glfw) if n.startswith("KEY_") and getattr(glfw, n) == key), None)
        cmd = keys.lookup(name, bool(mods & glfw.MOD_SHIFT)) if name else None
        if cmd is not None:
            inbox.put(cmd)

    def toggle_fullscreen():
        if glfw.get_window_monitor(win):
            x, y, w, h = state["windowed"]
            glfw.set_window_monitor(win, None, x, y, w, h, 0)
        elif monitors:
            x, y = glfw.get_window_pos(win)
            w, h = glfw.get_window_size(win)
            state["windowed"] = (x, y, w, h)
            mon = monitors[monitor]
            mode = glfw.get_video_mode(mon)
            glfw.set_window_monitor(win, mon, 0, 0, mode.size.width, mode.size.height, mode.refresh_rate)

    glfw.set_key_callback(win, on_key)
    clock = Clock(src.duration())
    frames, next_poll = 0, 0.0
    last_values = p.values()
    while not glfw.window_should_close(win):
        glfw.poll_events()
        now = _time.perf_counter()
        errs = inbox.drain(p)
        if errs:
            state["errors"], state["changed"] = errs, now
        if p.values() != last_values:
            state["changed"] = now
            last_values = p.values()
        t = clock.advance(p, now)
        last_values["time"] = p.time  # the playhead moving is not a change worth a status line
        if now >= next_poll:  # stat() a few files 4x a second, not every frame
            renderer.program.poll()
            overlay.program.poll()
            next_poll = now + 0.25
        fw, fh = glfw.get_framebuffer_size(win)
        if fw == 0 or fh == 0:  # minimized
            glfw.wait_events_timeout(0.1)
            continue
        ctx.screen.use()
        ctx.clear(0, 0, 0, 1)
        try:
            renderer.draw(p, t, (0, 0, fw, fh), gap=2.0)
        except PaikError as e:
            state["errors"], state["changed"] = [str(e)], now
        title = renderer.plan.title if renderer.plan else ""
        if p.help:  # two columns: the whole list is taller than most windows
            lines = keys.help_lines()
            half = (len(lines) + 1) // 2
            overlay.draw("help", "\n".join(lines[:half]), (fw, fh), "top-left")
            overlay.draw("help2", "\n".join(lines[half:]), (fw, fh), "top-right")
        if now - state["changed"] < 2.5 or p.help:
            status = (f"{title}\nview {p.view}  {p.colormap}  norm {p.norm} [{p.clip_lo:g}, {p.clip_hi:g}]  "
                      f"gain {p.gain:.2f}  gamma {p.gamma:.2f}  thr {p.threshold:.2f}  {p.composite} over "
                      f"{p.background}  t {t:.2f}{'' if p.playing else ' (paused)'}   F1: keys")
            overlay.draw("status", status, (fw, fh), "bottom-left")
        problems = ([renderer.program.error] if renderer.program.error else []) + (
            state["errors"] if now - state["changed"] < 4 else [])
        if problems:
            overlay.draw("error", "\n".join(x for x in problems if x)[:2000], (fw, fh), "top-right",
                         color=(255, 90, 90, 255))
        frames += 1
        if max_frames is not None and frames >= max_frames:
            if screenshot:
                data = np.frombuffer(ctx.screen.read(components=3, alignment=1), np.uint8).reshape(fh, fw, 3)
                from PIL import Image

                Image.fromarray(data[::-1]).save(screenshot)
            break
        glfw.swap_buffers(win)
    return 0
