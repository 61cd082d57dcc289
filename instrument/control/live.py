"""The live state between the inputs and the render loop.

Keys, OSC, MIDI and the console only build :class:`~paik.instrument.control.params.Command` s and
:meth:`Live.put` them (any thread). Once per frame the render loop calls :meth:`Live.update`,
which applies every pending command to the bank, runs the actions (scenes, bundle load, MIDI
learn, snapshots), resolves soft takeover, advances the playhead and glides the continuous
parameters; then it tells listeners (OSC feedback, MIDI LEDs) what changed. Nothing here
touches GL; other threads read only :attr:`Live.values`, a dict replaced whole each frame.

Two banks: :attr:`target` is what the performer set (and what feedback reports); :attr:`shown`
is what is drawn: equal to the target except that the continuous parameters (``SMOOTHED``)
glide towards it with the time constant ``smooth`` (seconds; 0 jumps).

The show never stops: any exception a command raises becomes an error (:meth:`Live.error`: the
overlay, a rate-limited log line, every listener in :attr:`Live.error_listeners`, so OSC
subscribers get ``/paik/error``; a line typed at the console is always answered). Files are
touched only inside the folders the performer named (:mod:`~paik.instrument.control.files`).
"""

from __future__ import annotations

import gc
import logging
import math
import sys
import threading
import time as _time
from collections import deque
from pathlib import Path
from typing import Callable

from paik.errors import PaikError

from paik.instrument.control.files import LoadRoots, OutputFolder, file_name, stamped
from paik.instrument.control.grammar import ACTIONS
from paik.instrument.control.params import SMOOTHED, SPECS, Command, CommandQueue, Params, apply, normalized
from paik.instrument.control.scenes import SceneStore

log = logging.getLogger("paik.control")

PICKUP_TOLERANCE = 0.02  # a fader this close (0..1) to the value takes it over
MAX_SNAPSHOTS = 16  # names waiting for a frame; more are refused (a flood must not fill memory or disk)
MAX_WRITERS = 2  # frames being encoded and written at once (each holds one frame's pixels)


FREEZE_HEAP = True  # paik bench live --heap default turns it off (a diagnostic)
HEAP: dict = {}  # what freeze_heap did: objects frozen, and the full collection before it (ms)


def freeze_heap() -> bool:
    """Collect once, then move every object alive into Python's permanent generation
    (:func:`gc.freeze`): the modules, the model and the bundle are never scanned again. A full
    collection of the heap ``paik live`` starts with (torch, diffusers and transformers imported:
    about 390,000 objects) takes about 0.2 s on a 2-core machine, holds the interpreter lock
    throughout, and Python starts one whenever enough objects have survived younger collections:
    in a long show one comes sooner or later, and the frame that meets it is late. After the
    freeze a full collection scans only what was made since. Once a process (the first
    :class:`Live`, made once the model and bundle are loaded); True when this call froze."""
    if not FREEZE_HEAP or HEAP:
        return False
    t = _time.perf_counter()
    gc.collect()  # what is garbage now is freed, not frozen
    HEAP["collect_ms"] = (_time.perf_counter() - t) * 1e3
    gc.freeze()
    HEAP["frozen"] = gc.get_freeze_count()
    return True


class RateLimitedLog:
    """Logs the first message of a kind, then at most one per ``interval`` seconds with a count of
    those suppressed: a flood of bad packets must not flood the terminal (or slow the loop)."""

    def __init__(self, logger: logging.Logger = log, interval: float = 2.0):
        self.logger, self.interval = logger, interval
        self._state: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self.count = 0  # every message, logged or not (tests and the overlay read it)

    def __call__(self, kind: str, message: str) -> None:
        now = _time.monotonic()
        with self._lock:
            self.count += 1
            last, suppressed = self._state.get(kind, (-math.inf, 0))
            if now - last < self.interval:
                self._state[kind] = (last, suppressed + 1)
                return
            self._state[kind] = (now, 0)
        more = f" (and {suppressed} more like this)" if suppressed else ""
        if len(message) > 300:
            message = message[:300] + "..."
        self.logger.warning("%s%s", message, more)


class Live:
    """``out_dir``: the folder snapshots go to (default: the current one); ``load_from``: the
    folders ``load`` may open bundles from (default: the one holding ``src``'s bundle)."""

    def __init__(self, src, params: Params, scenes: SceneStore | None = None, out_dir=None, load_from=None):
        self.src = src
        self.target = params
        self.shown = params.copy()
        self.inbox = CommandQueue()
        self.scenes = scenes if scenes is not None else SceneStore()
        self.rlog = RateLimitedLog()
        self.errors: deque[tuple[float, str]] = deque(maxlen=6)  # (when, message) for the overlay
        self.listeners: list[Callable[[dict, dict], None]] = []  # (values, changed) after each change
        self.error_listeners: list[Callable[[str, str], None]] = []  # (message, source) of every error
        self.out = OutputFolder(out_dir if out_dir is not None else Path.cwd())
        if load_from is None:
            bundle_path = getattr(getattr(src, "bundle", None), "path", None)
            load_from = [Path(bundle_path).parent] if bundle_path is not None else []
        self.roots = LoadRoots(load_from)
        self.actions: dict[str, Callable[[Command], None]] = {}  # extra actions (MIDI learn)
        self.engaged: dict[str, str] = {}  # parameter -> the source that holds it (soft takeover)
        self.snapshots: list[tuple[str, str]] = []  # (file name, source) to write after the next frame
        self.written: list[Path] = []  # snapshots written so far (the last few)
        self._writing = 0  # snapshots handed to the writer thread, not yet on disk
        self._write_lock = threading.Lock()
        self.last_scene = ""
        self.frame = 0
        self._last_now: float | None = None
        self._pending_src = None
        self._load_lock = threading.Lock()
        self._load_next: tuple | None = None  # (path, source): the newest request waiting for the loader
        self._loading = False
        # where loaded bundles are brought whole (resident.load_resident) when they fit; None: they stream
        self.resident: str | None = None
        self._resident_stop = threading.Event()
        self.loading: tuple[str, int, int] | None = None  # (bundle, steps done, total) while one is brought over
        self._touched: set[str] = set()
        self.values: dict = {}
        self._publish(force=True)
        freeze_heap()  # the process's long-lived objects are loaded by now: no full collection rescans them

    # -- any thread ---------------------------------------------------------------------------
    def put(self, cmd: Command) -> None:
        self.inbox.put(cmd)

    def word(self, values: dict | None = None) -> str:
        v = self.values if values is None else values
        words = v.get("words", ())
        t = v.get("token", 0)
        return words[t] if 0 <= t < len(words) else ""

    # -- the render thread --------------------------------------------------------------------
    def update(self, now: float) -> Params:
        """Apply what arrived, advance the playhead, glide; returns the bank to draw."""
        if self._pending_src is not None:
            try:
                self._swap_source()
            except Exception as e:  # noqa: BLE001 - the old bundle plays on
                self.error(f"load: {type(e).__name__}: {e}", kind="load")
        for cmd in self.inbox.take():
            self.handle(cmd)
        dt = 0.0 if self._last_now is None else max(0.0, now - self._last_now)
        self._last_now = now
        t, s = self.target, self.shown
        if t.playing:
            rate = (t.tempo / 60.0 / t.beats) if t.tempo > 0 else s.speed / max(self.src.duration(), 1e-3)
            t.time = (t.time + dt * rate) % 1.0
        alpha = 1.0 if t.smooth <= 0 else 1.0 - math.exp(-dt / t.smooth)
        for name in SPECS:
            goal = getattr(t, name)
            if name in SMOOTHED and alpha < 1.0:
                cur = getattr(s, name)
                lo, hi = t.bounds(name)
                snap = 1e-4 * max(hi - lo, 1e-6)
                new = cur + (goal - cur) * alpha
                setattr(s, name, goal if abs(goal - new) <= snap else new)  # arrive exactly
            else:
                setattr(s, name, goal)
        s.n_tokens = t.n_tokens
        self.frame += 1
        self._publish()
        return s

    def handle(self, cmd: Command) -> None:
        """Apply one command now (the render thread). Bad ones are reported, never raised."""
        kind = cmd.source.split(":")[0] or "command"
        try:
            if cmd.name in ACTIONS or cmd.name in self.actions:
                self._action(cmd)
            else:
                self._apply(cmd)
        except PaikError as e:
            self.error(str(e), kind=kind, source=cmd.source)
        except Exception as e:  # noqa: BLE001 - a bug or a broken file must not end the show
            log.debug("command %r failed", cmd, exc_info=True)
            self.error(f"{cmd.name}: {type(e).__name__}: {e}", kind=kind, source=cmd.source)

    def error(self, message: str, kind: str = "command", source: str = "") -> None:
        """Report a refused command or a failure (any thread): the overlay, a rate-limited log
        line (a console line is always answered: a person typed it), and the error listeners."""
        message = " ".join(str(message).split())[:400]  # one line, bounded
        self.errors.append((_time.monotonic(), message))
        if source == "console":
            print(f"paik: {message}", file=sys.stderr, flush=True)
            self.rlog.count += 1
        else:
            self.rlog(kind, f"{kind}: {message}")
        for fn in list(self.error_listeners):
            try:
                fn(message, source)
            except Exception as e:  # noqa: BLE001
                self.rlog("feedback", f"feedback: {type(e).__name__}: {e}")

    def _apply(self, cmd: Command) -> None:
        name, t = cmd.name, self.target
        if name == "token" and cmd.op == "set" and isinstance(cmd.value, str):
            text = cmd.value.strip()
            if not text:
                raise PaikError("token needs a word of the prompt or an index, e.g. 'token kiss'")
            if not text.lstrip("-").isdigit():
                cmd = Command(name, "set", self.src.word_index(text), cmd.source)
                t.n_tokens = len(self.src.words)
        if cmd.op == "pickup":
            x, prev = cmd.value
            cur = normalized(t, name) if name in SPECS else 0.0
            held = self.engaged.get(name) == cmd.source
            near = abs(float(x) - cur) <= PICKUP_TOLERANCE
            crossed = prev is not None and (float(prev) - cur) * (float(x) - cur) <= 0
            if not (held or near or crossed):
                return  # the fader has not reached the value yet: no jump
            self.engaged[name] = cmd.source
            cmd = Command(name, "norm", x, cmd.source)
        elif self.engaged.get(name) not in (None, cmd.source):
            del self.engaged[name]  # someone else moved it: the fader must pick it up again
        apply(t, cmd)
        self._touched.add(name)

    def _action(self, cmd: Command) -> None:
        if cmd.name in self.actions:
            self.actions[cmd.name](cmd)
            return
        if cmd.name == "scene":
            if cmd.op == "save":
                path = self.scenes.save(cmd.value, self.target.values(), self.src.words[self.target.token].label)
                log.info("saved scene %s to %s", cmd.value, path)
            elif cmd.op == "delete":
                self.scenes.delete(cmd.value)
            else:
                cmds = self.scenes.commands(cmd.value, source=cmd.source or "scene")
                lo = next((c for c in cmds if c.name == "clip_lo"), None)
                hi = next((c for c in cmds if c.name == "clip_hi"), None)
                if lo is not None and hi is not None and _number(lo.value) >= self.target.clip_hi:
                    cmds.remove(hi)  # raising both: the upper one first, or the lower is refused
                    cmds.insert(cmds.index(lo), hi)
                for c in cmds:
                    self.handle(c)
            self.last_scene = str(cmd.value)
            self._touched.add("scene")
        elif cmd.name == "load":
            self._load(self.roots.resolve(cmd.value), cmd.source)
        elif cmd.name == "snapshot":
            name = stamped("paik", ".png") if cmd.value is None else file_name(cmd.value, ".png")
            if len(self.snapshots) >= MAX_SNAPSHOTS:
                raise PaikError(f"snapshot {name}: {MAX_SNAPSHOTS} snapshots are already waiting; "
                                "try again in a moment")
            self.snapshots.append((name, cmd.source))
        elif cmd.name == "state":
            print("  ".join(f"{k}={v}" for k, v in self.values.items() if k in SPECS), flush=True)
        elif cmd.name == "learn":
            raise PaikError("MIDI learn needs MIDI: start paik play with --midi")
        elif cmd.name in ("generate", "bend"):
            raise PaikError(f"{cmd.name} needs a model: start the instrument with 'paik live' instead of 'paik play'")

    # -- bundle load: opened on a thread, swapped in between frames --------------------------------
    def _load(self, path: Path, source: str = "") -> None:
        """One loader thread at a time; requests that arrive meanwhile are merged (the newest
        wins), so a flood of loads costs one open at a time, not a thread and a bundle each."""
        with self._load_lock:
            self._load_next = (path, source)
            self._resident_stop.set()  # a bundle still being brought onto the device gives way
            if self._loading:
                return
            self._loading = True
        threading.Thread(target=self._loader, name="paik-load", daemon=True).start()

    def _loader(self) -> None:
        from paik.instrument.render.source import Source

        device = str(getattr(getattr(self.src, "reducer", None), "device", "auto"))
        while True:
            with self._load_lock:
                job, self._load_next = self._load_next, None
                if job is None:
                    self._loading = False
                    return
            path, source = job
            try:
                src = Source.open(path, device)
            except PaikError as e:
                self.error(f"load {path}: {e}", kind="load", source=source)
                continue
            except Exception as e:  # noqa: BLE001 - a broken bundle must not end the show
                self.error(f"load {path}: {type(e).__name__}: {e}", kind="load", source=source)
                continue
            with self._load_lock:
                self._pending_src = src  # replaced whole: an unswapped older one is simply dropped
            if self.resident is not None:
                self._bring_resident(src, source)  # streams meanwhile; a newer load stops it

    def bring_resident(self, src, source: str = "") -> None:
        """Bring ``src``'s whole capture onto :attr:`resident` on a thread (``paik play`` and
        ``paik live`` with a starting bundle); the bundle streams from disk until then."""
        if self.resident is not None:
            threading.Thread(target=self._bring_resident, args=(src, source), name="paik-resident-load",
                             daemon=True).start()

    def _bring_resident(self, src, source: str = "") -> None:
        """When the memory plan allows, read every step of ``src``'s bundle onto the device and
        swap a :class:`ResidentSource` over it in between frames. A refusal or a failure is a
        message; the bundle keeps streaming, as it did."""
        import sys

        from paik.instrument.render.resident import ResidentSource, fits_on, load_resident, resident_bytes

        bundle = getattr(src, "bundle", None)
        if isinstance(src, ResidentSource) or bundle is None:
            return
        stop = threading.Event()
        with self._load_lock:
            self._resident_stop.set()
            self._resident_stop = stop
        device, nbytes = self.resident, resident_bytes(bundle)
        name = bundle.path.name
        if not fits_on(device, nbytes):
            print(f"paik: {name} ({nbytes / 1024**3:.2f} GiB of maps) does not fit on {device} beside what is "
                  "there: playing it from disk", file=sys.stderr, flush=True)
            return

        def progress(done, total):
            self.loading = (name, done, total)
            if done == total or done % max(1, total // 10) == 0:
                print(f"paik: bringing {name} onto {device}: {done}/{total} steps", file=sys.stderr, flush=True)

        try:
            take = load_resident(bundle, device, progress, stop)
        except PaikError as e:
            self.error(f"load {name}: {e}", kind="load", source=source)
            return
        except Exception as e:  # noqa: BLE001 - it plays from disk on
            self.error(f"load {name} onto {device}: {type(e).__name__}: {e}; playing it from disk", kind="load",
                       source=source)
            return
        finally:
            self.loading = None
        with self._load_lock:
            if stop.is_set():
                return  # a newer load came: this one is dropped, whole
            if self._pending_src is src or (self._pending_src is None and self.src is src):
                self._pending_src = ResidentSource(take)
                if getattr(src, "_twin_known", False):  # a twin named with --twin stays with the take it was named for
                    self._pending_src.twin = src.twin

    def _swap_source(self) -> None:
        src, self._pending_src = self._pending_src, None
        d = src.dims
        if not (d.n_steps >= 1 and d.n_blocks >= 1 and d.n_heads >= 1 and src.words):
            raise PaikError(f"{src.bundle.path}: nothing to show (steps {d.n_steps}, blocks {d.n_blocks}, "
                            f"heads {d.n_heads}, words {len(src.words)})")
        for bank in (self.target, self.shown):
            bank.bind(len(src.words), d.n_steps, d.n_blocks, d.n_heads, bank.colormaps)
        self.src = src
        self._touched.update(("token", "step", "block", "head", "words"))
        log.info("loaded %s", src.bundle.path)

    def extra_values(self) -> dict:
        """More published state for feedback (``paik live`` adds take, progress, error)."""
        return {}

    # -- after the frame ------------------------------------------------------------------------
    def rendered(self, read_rgba: Callable[[], "object"]) -> None:
        """The loop calls this after drawing; pending snapshots read the frame here and are
        encoded and written on a thread (a slow disk must not stall the show)."""
        if not self.snapshots:
            return
        with self._write_lock:
            if self._writing >= MAX_WRITERS:
                return  # the disk is slow: they wait for a later frame
            self._writing += 1
        jobs, self.snapshots = self.snapshots, []
        try:
            pixels = read_rgba()
        except Exception as e:  # noqa: BLE001
            with self._write_lock:
                self._writing -= 1
            for name, source in jobs:
                self.error(f"snapshot {name}: cannot read the frame ({type(e).__name__}: {e})", "snapshot", source)
            return
        threading.Thread(target=self._write_snapshots, args=(pixels, jobs), name="paik-snapshot",
                         daemon=True).start()

    def _write_snapshots(self, pixels, jobs) -> None:
        from PIL import Image

        try:
            img = Image.fromarray(pixels)
            for name, source in jobs:
                try:
                    path = self.out.write(name, lambda tmp: img.save(tmp, format="PNG"))
                    self.written = (self.written + [path])[-16:]
                    log.info("wrote %s", path)
                except PaikError as e:
                    self.error(f"snapshot: {e}", kind="snapshot", source=source)
                except Exception as e:  # noqa: BLE001
                    self.error(f"snapshot {name}: {type(e).__name__}: {e}", kind="snapshot", source=source)
        finally:
            with self._write_lock:
                self._writing -= 1

    def _publish(self, force: bool = False) -> None:
        t = self.target
        values = t.values()
        values["words"] = tuple(w.label for w in self.src.words)
        values["counts"] = (t.n_tokens, t.n_steps, t.n_blocks, t.n_heads)
        values["scene"] = self.last_scene
        values.update(self.extra_values())
        old = self.values
        changed = {k: v for k, v in values.items() if old.get(k) != v and (k != "time" or "time" in self._touched)}
        if "scene" in self._touched:
            changed["scene"] = self.last_scene
        self._touched.clear()
        self.values = values
        if changed and not force:
            for fn in self.listeners:
                try:
                    fn(values, changed)
                except Exception as e:  # feedback must never stop the loop
                    self.rlog("feedback", f"feedback: {type(e).__name__}: {e}")


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.inf
