"""The live engine's generation side: one loaded pipeline, one worker thread, takes on request.

The instrument :meth:`Engine.submit` s a :class:`TakeRequest` from any thread; the worker runs
:func:`paik.capture.generate.generate` with capture into a :class:`~paik.capture.store.CaptureStore`
on the model's device. That store stays resident after the take (it is what the instrument's
renderer reads, see instrument/render/resident.py); the bundle is written behind it into the
takes folder, step by step, so a cancelled, failed or killed take keeps its finished steps.

The bundle is written *behind* the take (:meth:`paik.capture.writer.BundleWriter.write_behind`):
the denoiser never waits for the disk, and a take is done (:class:`TakeDone`, with its frames in
memory) as soon as the pipeline has decoded the video; the MP4 and the remaining step files follow,
and :class:`TakeWritten` says when the bundle is complete on disk. The next take may start while
the previous one still writes, but at most one take writes behind: a take that finishes generating
first waits for the older one's bundle. :meth:`Engine.close` waits for unfinished writes.

What the instrument sees is a stream of events, drained once per frame with :meth:`Engine.poll`:

- :class:`TakeStarted` (the store, its layout and token table, the bundle path),
- :class:`StepDone` (index, done, total, that step's preview, and a CUDA event that completes
  when the step's maps are in the store),
- :class:`TakeDone` (bundle path, the decoded frames; the bundle may still be writing),
- :class:`TakeWritten` (the bundle complete on disk, or the write's one-line error),
- :class:`TakeFailed` (one line: what was wrong and what to do), also for a cancelled take,
- :class:`BendRefused` (a bend slot the new take's prompt or model cannot use).

Bends are the engine's :attr:`Engine.bends` (a :class:`~paik.capture.bend.LiveBends`): every take
follows its slots, and a change reaches the running take at its next step start.

Requests are bounded: one take runs, at most one waits, and a newer request replaces the
waiting one (a flood of ``generate`` queues no work). No GL and no instrument imports here.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from paik.errors import PaikError

log = logging.getLogger("paik.engine")

MAX_EVENTS = 4096  # a caller that never polls loses old events, not memory


@dataclass(frozen=True)
class TakeRequest:
    """One take. ``None`` fields take the engine's defaults (the command line's)."""

    prompt: str | None = None
    negative: str | None = None
    seed: int | None = None
    steps: int | None = None
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    guidance: float | None = None
    tokens: tuple[str, ...] | None = None
    bends: bool = True  # False: the bend slots stay out of this take (an unbent twin)


@dataclass
class TakeStarted:
    take: int
    name: str
    path: Path
    store: object  # CaptureStore: maps [step, block, head, token, F', H', W'] on the device
    manifest: dict  # as written before the first step (tokens, layout, settings)
    request: TakeRequest


@dataclass
class StepDone:
    take: int
    index: int  # the denoising step (model index)
    done: int  # steps done so far
    total: int
    captured: bool  # whether this step's maps are in the store
    preview: object = None  # [F', h, w, 3] uint8 (torch, host) or None
    ready: object = None  # torch.cuda.Event recorded after the step, or None on the CPU

    def is_ready(self) -> bool:
        return self.ready is None or bool(self.ready.query())


@dataclass
class TakeDone:
    take: int
    name: str
    path: Path
    video: Path | None  # where the MP4 is (or will be, once TakeWritten comes)
    seconds: float  # the request picked up -> the video decoded
    frames: object = None  # [F, H, W, 4] uint8 RGBA of the decoded video (numpy), or None
    written: bool = False  # the bundle was already complete on disk
    bent: bool | None = None  # whether a bend played in it (None: not known, read the manifest)


@dataclass
class TakeWritten:
    take: int
    name: str
    path: Path
    seconds: float | None  # the request picked up -> the bundle complete on disk
    status: str  # the bundle's status: complete, interrupted or failed
    error: str | None = None  # one line when the write failed (the bundle keeps its finished steps)


@dataclass
class BendRefused:
    take: int
    message: str  # one line: a bend slot this take cannot use (the take goes on without it)


@dataclass
class TakeFailed:
    take: int
    name: str
    message: str  # one line
    cancelled: bool = False
    path: Path | None = None  # the bundle, when it got as far as one


def one_line(message: str) -> str:
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


class Engine:
    """A generation worker around ``loaded`` (``(pipe, info, device)`` of
    :func:`paik.capture.models.load_pipeline`). ``defaults`` is a
    :class:`~paik.capture.generate.GenerateOptions` whose fields fill what a request leaves out;
    takes are written under ``takes`` as ``take_0001`` ..."""

    def __init__(self, loaded, defaults, takes: str | Path):
        self.loaded = loaded
        self.defaults = replace(defaults, quiet=True)
        self.takes = Path(takes)
        try:
            self.takes.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PaikError(f"--takes {self.takes}: cannot create it ({e.strerror})") from None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._cancel = threading.Event()
        self._closing = False
        self._pending: TakeRequest | None = None
        self._events: deque = deque(maxlen=MAX_EVENTS)
        self._count = 0
        self.running: int | None = None  # the take being generated
        self.replaced = 0  # pending requests a newer one replaced (tests, the bench)
        self._writing: list = []  # (name, BundleWriter) of takes whose bundles are still being written
        self._annotating: list = []  # threads adding fields to finished takes' manifests (annotate)
        self.on_store = None  # called with each take's CaptureStore on the generation thread, before step 0
        from paik.capture.bend import LiveBends

        self.bends = LiveBends(on_error=lambda m: self._events.append(BendRefused(self.running or 0, one_line(m))))
        self._thread = threading.Thread(target=self._run, name="paik-engine", daemon=True)
        self._thread.start()

    # -- any thread ---------------------------------------------------------------------------
    def submit(self, request: TakeRequest) -> None:
        """Queue a take; a request still waiting is replaced (the newest wins)."""
        with self._lock:
            if self._closing:
                return
            if self._pending is not None:
                self.replaced += 1
            self._pending = request
        self._wake.set()

    def cancel(self) -> bool:
        """Stop the running take at its next step end and drop a waiting one. True if there was
        something to cancel."""
        with self._lock:
            had = self._pending is not None or self.running is not None
            self._pending = None
            if self.running is not None:
                self._cancel.set()
        return had

    def set_bends(self, specs) -> list[str]:
        """The bend slots (BendSpecs, None for off), from any thread; the running take plays them
        from its next step. Returns one line per bend the running take cannot use."""
        return [one_line(m) for m in self.bends.set(specs)]

    def poll(self) -> list:
        """Every event since the last call, oldest first."""
        return drain(self._events)

    @property
    def busy(self) -> bool:
        return self.running is not None or self._pending is not None

    def close(self, timeout: float = 30.0, write_timeout: float | None = 600.0) -> list[str]:
        """Cancel and wait for the worker (the running take closes its bundle), then for the
        bundles still written behind (at most ``write_timeout`` s). Returns one line per bundle
        that is not complete on disk (still writing, or its write failed)."""
        with self._lock:
            self._closing = True
            self._pending = None
            self._cancel.set()
        self._wake.set()
        self._thread.join(timeout)
        problems = self.wait_written(write_timeout)
        for t in list(self._annotating):
            t.join(10.0)
        return problems

    def annotate(self, path, fields: dict) -> None:
        """Add top-level ``fields`` to the manifest of the take at ``path``, off the caller's thread
        and once its bundle is complete (its writer writes the manifest last, so neither write
        overwrites the other); :meth:`close` waits for it."""
        path = Path(path)
        writers = [w for _, w in list(self._writing) if Path(w.path) == path]
        t = threading.Thread(target=_annotate, args=(path, dict(fields), writers), name="paik-annotate", daemon=True)
        self._annotating = [x for x in self._annotating if x.is_alive()] + [t]
        t.start()

    @property
    def writing(self) -> list[str]:
        """Names of the takes whose bundles are still being written."""
        return [name for name, w in list(self._writing) if not w.done]

    def wait_written(self, timeout: float | None = None, keep=None, failed: bool = True) -> list[str]:
        """Wait for the bundles written behind (all but ``keep``, a writer); one line per one that
        did not complete (``failed``: also those whose write failed, which TakeWritten reported)."""
        problems = []
        end = None if timeout is None else time.monotonic() + timeout
        for name, w in list(self._writing):
            if w is keep:
                continue
            try:
                w.finish(None if end is None else max(0.0, end - time.monotonic()))
            except TimeoutError:
                problems.append(f"{name}: still writing {w.path} after {timeout:g} s; its finished steps are on disk")
                continue
            except PaikError as e:
                if failed or w._thread.is_alive():
                    problems.append(f"{name}: {one_line(e)}")
            self._writing = [x for x in self._writing if x[1] is not w]
        return problems

    # -- the worker ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                self._wake.clear()
                if self._closing:
                    return
                req, self._pending = self._pending, None
                if req is None:
                    continue
                self._count += 1
                take = self.running = self._count
                self._cancel.clear()
            try:
                self._take(take, req)
            except BaseException as e:  # the worker outlives any take
                log.exception("take %d", take)
                self._events.append(TakeFailed(take, f"take_{take:04d}", f"{type(e).__name__}: {e}"))
            finally:
                self.bends.unbind()
                with self._lock:
                    self.running = None

    def _options(self, req: TakeRequest, out: Path):
        d = self.defaults
        given = {k: v for k, v in {
            "prompt": req.prompt, "negative": req.negative, "seed": req.seed, "steps": req.steps,
            "frames": req.frames, "height": req.height, "width": req.width, "guidance": req.guidance,
        }.items() if v is not None}
        if req.tokens is not None:
            given["tokens"] = list(req.tokens)
        return replace(d, out=str(out), bends=self.bends if req.bends else [], bend_presets=[], **given)

    def _name(self, take: int) -> Path:
        n = take
        while True:
            path = self.takes / f"take_{n:04d}"
            if not path.exists():
                return path
            n += 1

    def _take(self, take: int, req: TakeRequest) -> None:
        import torch

        from paik.capture.generate import Cancelled, generate

        out = self._name(take)
        name = out.name
        opts = self._options(req, out)
        t0 = time.perf_counter()
        cuda = str(self.loaded[2]).startswith("cuda")
        started = [False]
        writer = [None]

        def written(manifest, error):  # the writer thread: the bundle is complete on disk (or failed)
            seconds = manifest.get("timings", {}).get("bundle_complete_s")
            message = None
            if error is not None:
                from paik.capture.writer import describe_write_error

                message = (f"writing the bundle {out} failed: {describe_write_error(error)}; it keeps its "
                           f"{len(manifest.get('steps', []))} finished steps")
            self._events.append(TakeWritten(take, name, out, seconds, manifest.get("status", "failed"), message))

        def behind(w):
            writer[0] = w
            w.write_behind(t0, written)
            self._writing.append((name, w))

        def on_start(store, manifest):
            started[0] = True
            if self.on_store is not None:  # before the first step writes into it (engine_process shares it)
                self.on_store(store)
            self._events.append(TakeStarted(take, name, out, store, dict(manifest), req))

        def on_decoded(frames, bent=False):
            # the instrument shows these at once; the MP4 is encoded behind. generate hands over RGBA
            # uint8 (generate.rgba_frames: what the GL background takes, made where the video was decoded)
            rgba = frames
            self._events.append(TakeDone(take, name, out, out / "video.mp4", round(time.perf_counter() - t0, 3),
                                         rgba, bent=bent))

        def on_step(index, done, total, tensors):
            preview = tensors.get("preview")
            ready = None
            if preview is not None:
                host = torch.empty(preview.shape, dtype=preview.dtype, pin_memory=cuda)
                host.copy_(preview, non_blocking=cuda)
                preview = host
            if cuda:  # the render thread only reads the step once this has passed: no waiting
                ready = torch.cuda.Event()
                ready.record()
            self._events.append(StepDone(take, index, done, total, "maps" in tensors, preview, ready))

        try:
            try:
                path = generate(opts, self.loaded, on_start=on_start, on_step=on_step, stop=self._cancel,
                                behind=behind, on_decoded=on_decoded)
            finally:
                # at most one take writes behind: this one, once the older ones are on disk
                for problem in self.wait_written(keep=writer[0], failed=False):
                    self._events.append(TakeFailed(take, name, problem))
        except Cancelled:
            self._events.append(TakeFailed(take, name, "take cancelled; its finished steps stay in " + str(out),
                                           cancelled=True, path=out if started[0] else None))
            return
        except PaikError as e:
            self._events.append(TakeFailed(take, name, one_line(e), path=out if started[0] else None))
            return
        except torch.OutOfMemoryError:
            self._events.append(TakeFailed(take, name, "out of memory; try fewer frames, a smaller size, fewer "
                                           "steps or --heads mean", path=out if started[0] else None))
            return
        except Exception as e:  # a fault in the model or the pipeline: the show goes on
            log.debug("take %d failed", take, exc_info=True)
            self._events.append(TakeFailed(take, name, one_line(f"{type(e).__name__}: {e}"),
                                           path=out if started[0] else None))
            return
        if writer[0] is None:  # a generate without a writer behind (not this engine's): done and written
            video = path / "video.mp4"
            self._events.append(TakeDone(take, name, path, video if video.is_file() else None,
                                         round(time.perf_counter() - t0, 3), written=True))


def drain(events: deque) -> list:
    """Everything in ``events`` (appended by another thread), oldest first."""
    out = []
    while True:
        try:
            out.append(events.popleft())
        except IndexError:
            return out


def _annotate(path: Path, fields: dict, writers: list, timeout: float = 600.0) -> None:
    from paik.capture.writer import write_json_atomic

    end = time.monotonic() + timeout
    while any(not w.done for w in writers) and time.monotonic() < end:
        time.sleep(0.05)
    try:
        m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        m.update(fields)
        write_json_atomic(path / "manifest.json", m)
    except (OSError, ValueError) as e:
        log.warning("could not add %s to %s: %s", ", ".join(fields), path, e)


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (width, height)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m:
        raise PaikError(f"size {text!r}: expected WIDTHxHEIGHT, like 416x240")
    return int(m.group(1)), int(m.group(2))


def to_host(preview) -> np.ndarray | None:
    return None if preview is None else np.asarray(preview.numpy() if hasattr(preview, "numpy") else preview)
