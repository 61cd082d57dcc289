"""The one object the play loops call for everything that leaves the instrument.

Once per frame, after the loop has drained its command queue, :meth:`Outputs.frame`:

1. hands finished readbacks (queued one iteration earlier) to their consumers;
2. starts or stops the recording when the ``record`` parameter changed (a key, an OSC
   message or a MIDI control: they all set the parameter through the command queue);
3. for each output size whose frame is due (each output keeps its own rate on a
   :class:`~paik.instrument.outputs.record.Cadence`), draws the view once into a texture of that size (or,
   when the loop's own frame has that size, copies or reads it instead of drawing again),
   publishes the texture to Syphon/Spout, packs it to yuv420p on the GPU for H.264, and
   queues an asynchronous readback (PBOs) for the pixel outputs, delivered next iteration.

The window's own size, vsync and overlays never reach an output.

Takes toggled any number of times leave memory and threads flat: a finished take keeps only
its summary (the recorder, its encoder and threads are let go), at most ``MAX_CLOSING`` takes
may still be finishing when another starts (else it is refused, with a message), and no take
overwrites a file (the first free ``_N`` name is created exclusively).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from paik.errors import PaikError

from paik.instrument.outputs.readback import AsyncReader, Target, YuvPacker
from paik.instrument.outputs.record import Cadence, Recorder, default_path

log = logging.getLogger(__name__)

MAX_CLOSING = 2  # takes still being finished on their threads when a new one may start


@dataclass
class RecordSettings:
    path: Path | None  # None: paik-DATE-TIME.mp4 in out_dir
    size: tuple[int, int]
    fps: float
    codec: str = "h264"
    crf: int = 18
    preset: str = "veryfast"
    on_take: object = None  # called with a take's summary when its file is finished (any thread)
    out_dir: Path | None = None  # where takes without a path go (None: the current directory)


@dataclass
class _Member:
    cadence: Cadence
    sink: object = None  # a Sink, or None for the recorder
    recorder: Recorder | None = None
    active: bool = True

    def deliver(self, arr, index):
        if self.recorder is not None:
            self.recorder.submit(arr, index)
        else:
            self.sink.send(arr, index)


@dataclass
class _Drawn:
    fbo: object  # a framebuffer the loop drew into (duck-types readback.Target for reading)


@dataclass
class _Group:
    """Outputs that share a size and a pixel format: one draw (or one copy of the loop's frame)
    per due frame. ``components`` 1 = yuv420p packed on the GPU, 3 = RGB premultiplied over
    black, 4 = RGBA straight alpha."""

    size: tuple[int, int]
    components: int
    target: Target
    reader: AsyncReader | None = None
    members: list = field(default_factory=list)
    packer: YuvPacker | None = None


class Outputs:
    def __init__(self, ctx, renderer, sinks=(), record: RecordSettings | None = None, gap: float = 2.0):
        self.ctx = ctx
        self.renderer = renderer
        self.gap = gap
        self.sinks = list(sinks)
        self.settings = record
        self.groups: dict[tuple, _Group] = {}
        self.recorder: Recorder | None = None
        self.rec_member: _Member | None = None
        self.takes: list[Path] = []
        self.closing: list[threading.Thread] = []
        self.error: str | None = None
        self.error_at = -1e9
        self.on_error = None  # the loop sets it (Live.error): failures reach OSC subscribers too
        self._wanted = False
        self.summary: list[dict] = []
        self._done: list[dict] = []  # the summaries of finished takes (not their recorders)
        self._lock = threading.Lock()
        for s in self.sinks:
            self._group(s.size, s.components).members.append(_Member(Cadence(s.fps), sink=s))
        if record is not None and record.codec == "h264" and record.size[0] % 2 == 0 == record.size[1] % 2:
            self._group(record.size, 1)  # compile the packer now, not when the first take starts
        if record is not None:
            import av  # noqa: F401 - a first import takes ~0.2 s: not in the frame that starts a take

    def __bool__(self) -> bool:
        return bool(self.sinks) or self.settings is not None

    def _group(self, size, components) -> _Group:
        key = (tuple(size), components)
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = _Group(tuple(size), components, Target(self.ctx, size))
            if components == 1:
                g.packer = YuvPacker(self.ctx, g.size)
        return g

    # -- per frame ------------------------------------------------------------------------------
    def frame(self, p, t: float, now: float, drawn=None) -> None:
        """Called once per loop iteration with the bank ``p``, video position ``t`` and the loop's
        clock ``now`` (seconds; wall time live, frame/fps in fixed-step runs).

        ``drawn`` = (framebuffer, (w, h)): what the loop has just drawn (premultiplied, no
        overlays yet). Pixel outputs of that very size read it back instead of drawing again."""
        prev_fbo, prev_viewport = self.ctx.fbo, self.ctx.viewport
        try:
            self._frame(p, t, now, drawn)
        finally:  # the caller goes on drawing (overlays) where it was
            if prev_fbo is not None and type(prev_fbo.mglo).__name__ != "InvalidObject":  # not released
                prev_fbo.use()
            self.ctx.viewport = prev_viewport

    def _frame(self, p, t, now, drawn) -> None:
        for g in self.groups.values():
            if g.reader is not None:
                g.reader.tick()
                self._deliver(g.reader.ready())
        # edge-triggered: a take that failed to start is retried only when record is set again
        want = bool(getattr(p, "record", False))
        if want and not self._wanted:
            self._start_recording()
        elif not want and self.recorder is not None:
            self._stop_recording()
        self._wanted = want
        for g in self.groups.values():
            due = []
            for m in g.members:
                if m.active:
                    k = m.cadence.tick(now)
                    if k is not None:
                        due.append((m, k))
            if not due:
                continue
            w, h = g.size
            source = g.target
            premultiply = g.components != 4
            same = drawn is not None and tuple(drawn[1]) == g.size and premultiply
            if same and g.components == 3 and all(m.sink is None or m.sink.kind == "pixels" for m, _ in due):
                source = _Drawn(drawn[0])  # read the loop's own frame back: no second draw
            elif same:
                self.ctx.copy_framebuffer(g.target.fbo, drawn[0])  # a GPU copy, not a second draw
            else:
                g.target.use()
                self.renderer.draw(p, t, (0, 0, w, h), gap=self.gap, premultiply=premultiply)
            if g.components == 1:
                g.packer.pack(g.target)
                source = g.packer
            pixels = []
            for m, k in due:
                if m.sink is not None and m.sink.kind == "texture":
                    m.sink.publish(g.target.texture, g.size)
                else:
                    pixels.append((m, k))
            if pixels:
                if g.reader is None:
                    g.reader = (AsyncReader(self.ctx, g.packer.packed_size, 1) if g.packer is not None
                                else AsyncReader(self.ctx, g.size, g.components))
                if g.reader.full():  # the GPU is more than a ring behind: wait for the oldest
                    self._deliver(g.reader.flush())
                g.reader.start(source, tag=pixels)

    def _deliver(self, frames) -> None:
        for arr, tag in frames:
            for m, k in tag:
                if m.active:
                    m.deliver(arr, k)

    # -- recording ------------------------------------------------------------------------------
    def _start_recording(self) -> bool:
        s = self.settings
        if s is None:
            self._fail("recording is not set up here")
            return False
        from paik.instrument.control.files import reserve

        self.closing = [th for th in self.closing if th.is_alive()]
        if len(self.closing) >= MAX_CLOSING:
            self._fail(f"recording: {len(self.closing)} takes are still being finished; start the next in a moment")
            return False
        base = s.path or (Path(s.out_dir) if s.out_dir is not None else Path()) / default_path(s.codec)
        path = None
        try:
            path = reserve(base)  # the first free name of FILE, FILE_2 ...: never an earlier take
            rec = Recorder(path, s.size, s.fps, s.codec, s.crf, s.preset)
        except PaikError as e:
            if path is not None:
                _remove_empty(path)
            self._fail(str(e))
            return False
        except Exception as e:  # noqa: BLE001 - the show goes on without this take
            if path is not None:
                _remove_empty(path)
            self._fail(f"recording {path}: {type(e).__name__}: {e}")
            return False
        self.recorder = rec
        self.takes = (self.takes + [path])[-100:]
        g = self._group(s.size, rec.components)
        self.rec_member = _Member(Cadence(s.fps), recorder=rec)
        g.members.append(self.rec_member)
        return True

    def _stop_recording(self) -> None:
        rec, member = self.recorder, self.rec_member
        g = self.groups[(tuple(rec.size), rec.components)]
        if g.reader is not None:  # frames already rendered for this take still go in
            self._deliver(g.reader.flush())
        member.active = False
        g.members.remove(member)
        self.recorder = self.rec_member = None
        # finishing the file waits for the encoder: not on the render thread
        th = threading.Thread(target=self._finish, args=(rec, member), name="paik-record-close")
        th.start()
        self.closing.append(th)

    def _finish(self, rec: Recorder, member: _Member) -> None:
        try:
            rec.close()
        except PaikError as e:
            self._fail(str(e))
        except Exception as e:  # noqa: BLE001
            rec.error = rec.error or f"{type(e).__name__}: {e}"
            self._fail(f"recording {rec.path} failed: {rec.error}")
        take = self._take(rec, member)
        if rec.muxed == 0:  # a take with no picture in its file (a full disk, a quick toggle): no file
            _remove_own(rec.path)
            take["removed"] = True
        with self._lock:
            self._done.append(take)
        if self.settings.on_take is not None:  # as each take ends, not only at exit
            try:
                self.settings.on_take(take)
            except Exception as e:  # noqa: BLE001
                log.error("announcing %s: %s", rec.path, e)

    @staticmethod
    def _take(rec: Recorder, member: _Member) -> dict:
        return {"path": str(rec.path), "frames": rec.written, "repeated": rec.repeated, "late": member.cadence.late,
                "dropped": rec.dropped, "error": rec.error}

    def _fail(self, msg: str) -> None:
        self.error, self.error_at = msg, time.perf_counter()
        if self.on_error is not None:
            try:
                self.on_error(msg)  # logged there (rate-limited) and sent to OSC subscribers
                return
            except Exception:  # noqa: BLE001
                pass
        log.error("%s", msg)

    # -- what the screen says -------------------------------------------------------------------
    def lines(self) -> tuple[list[str], list[str]]:
        """(status lines, warning lines) for the window's overlay."""
        info, warn = [], []
        rec = self.recorder
        if rec is not None:
            secs = self.rec_member.cadence.next / rec.fps
            info.append(f"REC {int(secs // 60):02d}:{secs % 60:04.1f}  {rec.path.name}  "
                        f"{rec.size[0]}x{rec.size[1]} @ {rec.fps:g}")
            if rec.behind:
                warn.append(f"recording: the encoder is behind ({rec.dropped} frames dropped, {rec.backlog()} queued)")
            if rec.error:
                warn.append(f"recording failed: {rec.error}")
        for s in self.sinks:
            msg = s.status()
            if msg:
                warn.append(msg)
        if self.error and time.perf_counter() - self.error_at < 5:
            warn.append(self.error)
        return info, warn

    def close(self) -> list[dict]:
        """Deliver what is in flight, finish the recording, close every output. Returns the
        stats of every take (path, frames, late, dropped)."""
        for g in self.groups.values():
            if g.reader is not None:
                self._deliver(g.reader.flush())
        if self.recorder is not None:
            self._stop_recording()
        for th in self.closing:
            th.join()
        for s in self.sinks:
            try:
                s.close()
            except Exception as e:  # noqa: BLE001
                log.error("closing %s: %s", getattr(s, "label", s), e)
        for g in self.groups.values():
            if g.reader is not None:
                g.reader.release()
            if g.packer is not None:
                g.packer.release()
            g.target.release()
        self.groups.clear()
        with self._lock:
            self.summary = list(self._done)
        return self.summary


def from_args(args, size: tuple[int, int]):
    """Check ``paik play``'s output flags now (before any GL) and return the factory the loops
    call with their context and renderer: ``make(ctx, renderer) -> Outputs``."""
    from paik.instrument.outputs import open_output, parse_outs
    from paik.instrument.outputs.record import _check

    specs = parse_outs(args.out)
    out_size = args.out_size or size
    fps = args.out_fps
    path = Path(args.record) if args.record else None
    if path is not None:
        _check(path, out_size, args.record_codec)
    out_dir = Path(args.out_dir) if getattr(args, "out_dir", None) else None
    settings = RecordSettings(path, out_size, fps, args.record_codec, on_take=announce, out_dir=out_dir)

    def make(ctx, renderer) -> Outputs:
        sinks = []
        try:
            for spec in specs:
                sinks.append(open_output(spec, out_size, fps))
                log.info("sending %s (%dx%d @ %g fps)", spec, *sinks[-1].size, sinks[-1].fps)
        except BaseException:
            for s in sinks:
                s.close()
            raise
        outs = Outputs(ctx, renderer, sinks, settings)
        make.instances.append(outs)
        return outs

    make.instances = []  # the CLI reports the takes of these after the loop
    return make


def _remove_empty(path: Path) -> None:
    try:
        if path.is_file() and not path.is_symlink() and path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass


def _remove_own(path: Path) -> None:
    """Remove a take's file (one this process created exclusively)."""
    try:
        if path.is_file() and not path.is_symlink():
            path.unlink()
    except OSError:
        pass


def announce(take: dict) -> None:
    """The CLI's line for a finished take (printed as it ends: a show may end with Ctrl-C)."""
    if take["error"]:
        gone = " (no frames were written; the file was removed)" if take.get("removed") else ""
        print(f"paik: error: recording {take['path']} failed: {take['error']}{gone}", file=sys.stderr, flush=True)
        return
    if take.get("removed"):
        print(f"paik: take {take['path']} ended before its first frame; no file was kept", file=sys.stderr,
              flush=True)
        return
    extra = [f"{take[k]} {k}" for k in ("late", "dropped") if take[k]]
    print(f"wrote {take['path']} ({take['frames']} frames{', ' + ', '.join(extra) if extra else ''})", flush=True)


def report(make) -> int:
    """The exit code after the loops: 1 if a take failed (each was announced as it ended)."""
    return int(any(take["error"] for outs in make.instances for take in outs.summary))
