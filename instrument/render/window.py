"""``paik play``: the live window (GLFW + moderngl, GL 3.3 core so it runs on macOS too).

Key callbacks only enqueue commands; once per frame the loop drains the queue into the
parameter bank, advances the playhead, polls the shader files, draws, and swaps (vsync).
"""

from __future__ import annotations

import logging
import time as _time

import numpy as np

from paik.errors import PaikError

from paik.instrument.control import keys
from paik.instrument.control.live import Live
from paik.instrument.control.params import Command
from paik.instrument.render.renderer import Stage

log = logging.getLogger(__name__)


def _init_glfw():
    """GLFW, initialized; its errors are kept for our own message rather than printed raw
    (pyGLFW's default warns on stderr before we could say anything useful)."""
    import glfw

    glfw.set_error_callback(_glfw_error)
    if not glfw.init():
        why = f" ({_last_error[0]})" if _last_error else ""
        raise PaikError(f"cannot open a window{why or ': no display'}: set DISPLAY, or play offscreen with "
                        "--headless (for --record/--out), or use 'paik render'")
    return glfw


_last_error: list[str] = []  # the latest GLFW error's description, for the message that follows it


def _glfw_error(code: int, description) -> None:
    text = description.decode(errors="replace") if isinstance(description, bytes) else str(description)
    log.debug("GLFW error %d: %s", code, text)
    _last_error[:] = [text]


def play(live: Live, size=(1280, 720), fullscreen=False, monitor: int = 0, vsync=True,
         max_frames: int | None = None, screenshot=None, outputs=None, run_for: float | None = None) -> int:
    """The window until it is closed (Esc, Q), after ``max_frames`` frames or ``run_for`` seconds."""
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
        src = live.src
        title = f"paik - {src.bundle.manifest.get('prompt', src.bundle.path)}"
        if fullscreen:
            mode = glfw.get_video_mode(mon)
            win = glfw.create_window(mode.size.width, mode.size.height, title, mon, None)
        else:
            win = glfw.create_window(size[0], size[1], title, None, None)
        if not win:
            why = f" ({_last_error[0]})" if _last_error else ""
            raise PaikError(f"could not create an OpenGL 3.3 core window on this display{why}; "
                            "try --headless")
        glfw.make_context_current(win)
        glfw.swap_interval(1 if vsync else 0)
        return _loop(glfw, win, live, monitors, monitor, max_frames, screenshot, outputs, run_for)
    finally:
        glfw.terminate()


def _loop(glfw, win, live: Live, monitors, monitor, max_frames, screenshot, outputs=None, run_for=None) -> int:
    opened: list = []  # the loop's Outputs, closed (recording finished) however the loop ends
    try:
        return _frames(glfw, win, live, monitors, monitor, max_frames, screenshot, outputs, opened.append, run_for)
    finally:
        for o in opened:
            o.close()


def _frames(glfw, win, live: Live, monitors, monitor, max_frames, screenshot, outputs, keep, run_for=None) -> int:
    import moderngl

    from paik.instrument.render.overlay import Overlay

    ctx = moderngl.create_context()
    stage = Stage(ctx, live.src, asynchronous=True)  # a selection or a new source never holds up a frame
    renderer = stage.renderer
    overlay = Overlay(ctx)
    outs = outputs(ctx, renderer) if outputs is not None else None
    if outs is not None:
        keep(outs)
        outs.on_error = lambda message: live.error(message, kind="record")
        stage.on_swap = lambda r: setattr(outs, "renderer", r)
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
            live.put(Command(cmd.name, cmd.op, cmd.value, "key"))

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
    frames, next_poll = 0, 0.0
    last_values = live.target.values()
    seen_errors = 0
    start = _time.perf_counter()
    while not glfw.window_should_close(win):
        glfw.poll_events()
        now = _time.perf_counter()
        try:
            p = live.update(now)
            # a bundle loaded (OSC /paik/load, console 'load') or a new take: the old source draws
            # on (q, its last bank) until the new one's first map is ready; its GL objects then go
            renderer, q = stage.frame(live.src, p)
        except Exception as e:  # noqa: BLE001 - the show goes on with what it had
            live.error(str(e) if isinstance(e, PaikError) else f"render: {type(e).__name__}: {e}", kind="render")
            p = q = live.shown
            renderer = stage.renderer
        if live.rlog.count != seen_errors and live.errors:
            seen_errors = live.rlog.count
            state["errors"], state["changed"] = [m for _, m in live.errors][-3:], now
        if live.target.values() != last_values:
            state["changed"] = now
            last_values = live.target.values()
        t = p.time
        last_values["time"] = live.target.time  # the playhead moving is not a change worth a status line
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
            renderer.draw(q, q.time, (0, 0, fw, fh), gap=2.0)
            if outs is not None:  # before the overlays: outputs get the picture only
                outs.frame(q, q.time, now, drawn=(ctx.screen, (fw, fh)))  # same size: read it, no redraw
        except Exception as e:  # noqa: BLE001 - a broken map or bundle: shown and reported, never fatal
            msg = str(e) if isinstance(e, PaikError) else f"render: {type(e).__name__}: {e}"
            live.error(msg, kind="render")
            state["errors"], state["changed"] = [msg], now
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
        if outs is not None:  # REC time and take; an encoder falling behind is a problem
            rec_lines, out_warnings = outs.lines()
            problems += out_warnings
            if rec_lines:
                overlay.draw("rec", "\n".join(rec_lines), (fw, fh), "bottom-right", color=(255, 90, 90, 255))
        if problems:
            overlay.draw("error", "\n".join(x for x in problems if x)[:2000], (fw, fh), "top-right",
                         color=(255, 90, 90, 255))
        # a snapshot shows what was asked: with the selection still computing it waits for a later frame
        if live.snapshots and stage.settled:
            try:
                live.rendered(lambda: np.frombuffer(ctx.screen.read(components=3, alignment=1),
                                                    np.uint8).reshape(fh, fw, 3)[::-1].copy())
            except Exception as e:  # noqa: BLE001
                live.error(f"snapshot: {type(e).__name__}: {e}", kind="snapshot")
        frames += 1
        if (max_frames is not None and frames >= max_frames) or (
                run_for is not None and _time.perf_counter() - start >= run_for):
            if screenshot:
                data = np.frombuffer(ctx.screen.read(components=3, alignment=1), np.uint8).reshape(fh, fw, 3)
                from PIL import Image

                Image.fromarray(data[::-1]).save(screenshot)
            break
        glfw.swap_buffers(win)
    return 0
