"""Maps that stay on the device, and selections that never hold up a frame.

- :class:`LiveTake`: a take being generated (or just generated) by the live engine, seen
  through the Bundle reading API the instrument uses (``layout``, ``tokens``, ``resolve``,
  ``step_indices`` growing as steps finish, ``preview``, ``video_path``, ``manifest``). Its maps
  are the engine's :class:`~paik.capture.store.CaptureStore` itself, on the model's device.
- :func:`load_resident`: a bundle read whole into a device tensor on a thread (``paik play``
  when the memory plan says it fits), with progress; the same :class:`LiveTake` then serves it.
- :class:`TorchReducer`: the :class:`~paik.instrument.render.reduce.Reducer` interface
  (``volumes(selection)``, ``latent``, ``device``) computed in torch where the maps live; only
  the reduced [cells, F', H', W'] volume reaches the host. On CUDA it runs on a side stream of
  the highest priority the device offers (``PAIK_REDUCE_STREAM=high``, the default), so it does
  not queue behind the generation's kernels; ``PAIK_REDUCE_STREAM=default`` runs it on the
  current stream instead (to measure the difference, ``paik bench live --reduce-stream``). On the
  CPU both are the same code path.
- :class:`ResidentSource`: a :class:`~paik.instrument.render.source.Source` over a LiveTake.
- :class:`AsyncSelector`: the renderer's selections on a worker thread with one pending slot;
  the render thread waits at most ``budget`` seconds for a new selection and otherwise keeps
  drawing the one on screen.

Without CUDA the same code runs on the CPU (torch tensors in host memory).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np

from paik.capture.bundle import Bundle
from paik.capture.layout import Layout
from paik.capture.tokens import Token
from paik.errors import PaikError
from paik.instrument.render.reduce import Selection
from paik.instrument.render.source import Source

log = logging.getLogger(__name__)


class LiveTake:
    """A capture held in device tensors ``maps`` [step, block, head, token, F', H', W'] (slot order
    of ``layout.steps``), with steps made visible by :meth:`add_step` as they finish."""

    resolve = Bundle.resolve  # the same word -> captured positions rule as a bundle on disk

    def __init__(self, path, manifest: dict, maps, step_slot: dict[int, int] | None = None):
        self.path = Path(path)
        self.manifest = manifest
        self.layout = Layout.from_json(manifest["layout"])
        self.tokens = [Token(**t) for t in manifest["tokens"]]
        self.uncond_tokens = [Token(**t) for t in manifest.get("negative_tokens", [])]
        self.maps = maps
        self.step_slot = dict(step_slot) if step_slot is not None else {s: i for i, s in enumerate(self.layout.steps)}
        self._steps: list[int] = []
        self._previews: dict[int, np.ndarray] = {}
        self.video: Path | None = None
        self.video_frames = None  # [F, H, W, 4] uint8 RGBA decoded in memory (shown before the MP4 exists)
        self._ready: dict[int, object] = {}  # step -> the CUDA event after which its maps are complete
        self.status = "running"
        self.version = 0  # bumped whenever steps, previews or the video change (the renderer's caches)

    @property
    def step_indices(self) -> list[int]:
        return list(self._steps)

    @property
    def video_path(self) -> Path | None:
        return self.video

    def add_step(self, index: int, preview=None, ready=None) -> None:
        if index not in self.step_slot or index in self._steps:
            return
        if ready is not None:
            self._ready[index] = ready
        self._steps.append(index)
        self._steps.sort()
        if preview is not None:
            self._previews[index] = np.asarray(preview)
        self.version += 1

    def finish(self, video: Path | None, status: str = "complete", frames=None) -> None:
        if frames is not None:  # first: a background thread that sees the video sees its frames
            self.video_frames = frames
        self.video, self.status = video, status
        if video is not None:
            self.manifest = {**self.manifest, "video": {"file": Path(video).name}}
        self.version += 1

    def ready_event(self, step: int):
        return self._ready.get(step)

    def preview(self, step: int) -> np.ndarray | None:
        return self._previews.get(step)

    def step_maps(self, step: int):
        """[block, head, token, F', H', W'] float16 of one finished step, on the device."""
        return self.maps[self.step_slot[step]]


class TorchReducer:
    """Selections reduced in torch on the maps' device; results cached (finished steps never change)."""

    def __init__(self, take: LiveTake, cache: int = 64):
        import torch

        self.torch = torch
        self.take = take
        lay = take.layout
        self.latent = tuple(lay.latent)
        self.n_heads = lay.heads
        self.device = str(take.maps.device)
        self.stream = reduce_stream(take.maps.device) if take.maps.is_cuda else None
        self.gpu_ms: list[float] = []  # GPU time of the last selections (PAIK_REDUCE_TIMING=1), for the bench
        self._timing = take.maps.is_cuda and bool(os.environ.get("PAIK_REDUCE_TIMING"))
        self._results: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._cache = cache
        self._lock = threading.Lock()  # the async worker and a synchronous caller may meet
        self._indices: OrderedDict[tuple, object] = OrderedDict()  # index lists on the maps' device

    def volumes(self, sel: Selection) -> np.ndarray:
        """[cells, F', H', W'] float32 (cells = product of the kept axes' sizes)."""
        steps = self.take.step_indices
        key = (sel, tuple(steps[s] for s in sel.steps if s < len(steps)))
        with self._lock:
            hit = self._results.get(key)
            if hit is not None:
                self._results.move_to_end(key)
                return hit
            if any(s >= len(steps) for s in sel.steps):
                raise PaikError(f"step position {max(sel.steps)} is not finished yet ({len(steps)} steps so far)")
            t = self.torch
            if self.take.maps.is_cuda:
                stream = self.stream or t.cuda.current_stream(self.take.maps.device)
                with t.cuda.stream(stream):
                    for s in sel.steps:  # correct by construction, not only by the caller's checks
                        ev = getattr(self.take, "ready_event", lambda _s: None)(steps[s])
                        if ev is not None:
                            stream.wait_event(ev)
                    if self._timing:
                        start, end = t.cuda.Event(enable_timing=True), t.cuda.Event(enable_timing=True)
                        start.record(stream)
                    out = self._compute(sel, steps)
                    if self._timing:
                        end.record(stream)
                        end.synchronize()
                        self.gpu_ms = [*self.gpu_ms[-255:], start.elapsed_time(end)]
            else:
                out = self._compute(sel, steps)
            self._results[key] = out
            while len(self._results) > self._cache:
                self._results.popitem(last=False)
            return out

    def _index(self, values) -> object:
        """``values`` as a long tensor on the maps' device, kept for the next selection that asks.
        Made on the host and copied by ``Tensor.to``, which lets the interpreter lock go:
        ``torch.tensor(values, device="cuda")`` copies synchronously with the lock held, so every
        other thread (the render loop's) waits as long as the GPU takes to get to the copy."""
        key = tuple(int(v) for v in values)
        hit = self._indices.get(key)
        if hit is None:
            t = self.torch
            hit = t.tensor(key, dtype=t.long).to(self.take.maps.device, non_blocking=True)
            self._indices[key] = hit
            while len(self._indices) > 64:
                self._indices.popitem(last=False)
        else:
            self._indices.move_to_end(key)
        return hit

    def _compute(self, sel: Selection, steps: list[int]) -> np.ndarray:
        maps = self.take.maps
        slots = [self.take.step_slot[steps[s]] for s in sel.steps]
        heads = list(range(self.n_heads)) if sel.heads is None else list(sel.heads)
        keep_b, keep_h, keep_s = "block" in sel.keep, "head" in sel.keep, "step" in sel.keep
        if not maps.is_cuda:
            # numpy on the CPU: torch's OpenMP pool, shared with the generation thread, would make
            # these small reductions spin-wait behind its kernels
            host = maps.numpy()
            red = (lambda a, d: a.mean(d, keepdims=True)) if sel.reduce == "mean" else \
                (lambda a, d: a.max(d, keepdims=True))
            per_step = []
            for slot in slots:
                a = host[slot][np.ix_(list(sel.blocks), heads, list(sel.tokens))].astype(np.float32).sum(2)
                a = a if keep_h else red(a, 1)
                per_step.append(a if keep_b else red(a, 0))
            a = np.stack(per_step)
            a = a if keep_s else red(a, 0)
            return np.ascontiguousarray(a.reshape(-1, *self.latent), dtype=np.float32)
        t = self.torch
        blocks, heads_t, tokens = self._index(sel.blocks), self._index(heads), self._index(sel.tokens)
        red = (lambda a, d: a.mean(d, keepdim=True)) if sel.reduce == "mean" else \
            (lambda a, d: a.amax(d, keepdim=True))
        per_step = []
        for slot in slots:  # one step at a time: float32 temporaries stay at one step's size
            a = maps[slot].index_select(0, blocks).index_select(1, heads_t)
            a = a.index_select(2, tokens).float().sum(2)  # [B, H, F', H', W']: the word's pieces summed
            a = a if keep_h else red(a, 1)
            per_step.append(a if keep_b else red(a, 0))
        a = t.stack(per_step)  # [S, B|1, H|1, F', H', W']
        a = a if keep_s else red(a, 0)
        a = a.reshape(-1, *self.latent)
        # the only copy to the host, the reduced volume: pinned and waited for on this stream's event
        # alone, so GL reads a finished map and the generation's queue is never drained
        host = t.empty(a.shape, dtype=a.dtype, pin_memory=True)
        host.copy_(a, non_blocking=True)
        done = t.cuda.Event()
        done.record()
        done.synchronize()
        return np.array(host.numpy(), dtype=np.float32)  # its own memory: the pinned block goes back


class ResidentSource(Source):
    """A :class:`Source` over a :class:`LiveTake`: reductions in torch where the maps live;
    :meth:`refresh` after steps arrive updates the counts that bound the parameters."""

    asynchronous = True  # renderers over it select on a worker thread

    def __init__(self, take: LiveTake):
        super().__init__(take, "cpu")  # the numpy Reducer is made and replaced: it reads nothing
        self.reducer = TorchReducer(take)
        self.seen = take.version

    @property
    def version(self) -> int:
        return self.bundle.version

    def refresh(self) -> bool:
        """Recount finished steps; True when something changed."""
        if self.seen == self.bundle.version:
            return False
        self.seen = self.bundle.version
        steps = tuple(self.bundle.step_indices)
        self.dims = replace(self.dims, n_steps=len(steps), step_names=steps)
        return True


def load_resident(bundle: Bundle, device: str, progress=None, stop: threading.Event | None = None) -> LiveTake:
    """Read every finished step of ``bundle`` into one device tensor (call it on a thread);
    ``progress(done, total)`` after each step. Raises PaikError when it does not fit."""
    import torch

    lay = bundle.layout
    steps = bundle.step_indices
    shape = (len(steps), len(lay.blocks), lay.heads, len(lay.tokens), *lay.latent)
    try:
        maps = torch.empty(shape, dtype=torch.float16, device=device)
    except torch.OutOfMemoryError:
        raise PaikError(f"{bundle.path}: its maps ({np.prod(shape) * 2 / 1024**3:.2f} GiB) do not fit on {device}; "
                        "playing it from disk") from None
    take = LiveTake(bundle.path, bundle.manifest, maps, {s: i for i, s in enumerate(steps)})
    for i, s in enumerate(steps):
        if stop is not None and stop.is_set():
            return take  # partial, never finished: the caller drops it
        maps[i].copy_(torch.from_numpy(np.array(bundle.step_arrays(s)["maps"])))  # one step in host memory at a time
        take.add_step(s, bundle.preview(s))
        if progress is not None:
            progress(i + 1, len(steps))
    take.finish(bundle.video_path, bundle.status)
    return take


def reduce_stream(device):
    """The stream selections reduce on: ``PAIK_REDUCE_STREAM`` high (default: a side stream of the
    device's highest priority) or default (None: the current stream, behind the generation)."""
    import torch

    choice = os.environ.get("PAIK_REDUCE_STREAM", "high").strip().lower()
    if choice == "default":
        return None
    if choice != "high":
        raise PaikError(f"PAIK_REDUCE_STREAM={choice!r}: expected high or default")
    # lower numbers are higher priorities; the range's far end is the highest this device has
    return torch.cuda.Stream(device, priority=min(torch.cuda.Stream.priority_range()))


def resident_bytes(bundle: Bundle) -> int:
    """What :func:`load_resident` allocates for ``bundle``: its finished steps' maps."""
    lay = bundle.layout
    return len(bundle.step_indices) * len(lay.blocks) * lay.heads * len(lay.tokens) * lay.positions * 2


def resident_device(choice: str, reduce_device: str = "auto") -> str | None:
    """``--resident`` auto|on|off -> the device loaded bundles are brought to, or None (they
    stream from disk). auto: the GPU when there is one, where it pays; on: the GPU, else host
    memory (the same torch code on the CPU)."""
    if choice == "off" or reduce_device == "cpu" and choice == "auto":
        return None
    import torch

    cuda = torch.cuda.is_available() and reduce_device != "cpu"
    if choice == "auto" and not cuda:
        return None
    return "cuda" if cuda else "cpu"


def fits_on(device: str, nbytes: int, reserve: int = 2 * 1024**3) -> bool:
    """Whether ``nbytes`` more fit on ``device`` beside what is already there (CUDA: the free memory
    less a reserve for the renderer and generation; CPU: half the available memory)."""
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return nbytes + reserve <= free
    import os

    return nbytes <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") // 2


class SlotWorker:
    """A daemon thread computing the newest job asked of it, one pending at a time: a newer job
    replaces one not started (a fader sweep computes what it can keep up with, and always the last).
    Subclasses set their state, then call ``__init__``; :meth:`_work` runs on the thread and
    :meth:`_store` (under the lock) keeps its result; callers wait on ``_cond``."""

    def __init__(self, name: str):
        self._cond = threading.Condition()
        self._want = None  # the job the worker should compute next
        self._busy = None  # the job being computed
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _ask(self, job) -> None:
        """Ask for ``job`` (call with ``_cond`` held)."""
        if job != self._busy and job != self._want:
            self._want = job
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def _work(self, job):
        raise NotImplementedError

    def _store(self, job, out) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._want is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                job, self._want = self._want, None
                self._busy = job
            out = self._work(job)
            with self._cond:
                self._busy = None
                self._store(job, out)
                self._cond.notify_all()


class AsyncSelector(SlotWorker):
    """The renderer's reductions off the render thread. :meth:`ready` is called once per frame
    with the plan the parameters ask for; it returns the plan to draw (that one if its volumes
    are ready within ``budget`` seconds, else the one on screen), the bank to lay its cells with,
    and the selection made ready for the GPU. One request is pending at a time; a newer one
    replaces it (a fader sweep computes the positions it can keep up with, and always the last one).

    Everything heavy happens on the worker: the reduction, ``prepare`` (the f16 rounding, the
    atlas packing: see :func:`paik.instrument.render.renderer.prepare`) and ``range_stat`` (the
    percentiles behind the normalization ranges, for the range key asked with the selection), so
    the render thread only uploads. A selection whose ranges for a new key are not ready yet counts
    as not ready: the frame keeps what it showed, normalization included."""

    SELECTION_FIELDS = ("token", "view", "step", "block", "head", "reduce", "norm", "clip_lo", "clip_hi")
    RANGE_KEYS = 4  # range keys kept per selection (a norm or clip fader's latest few)

    def __init__(self, reducer, budget: float = 0.004, prepare=None, range_stat=None):
        self.reducer = reducer
        self.budget = budget
        self.prepare = prepare if prepare is not None else (lambda vols: vols)
        self.range_stat = range_stat  # (prepared, key) -> what the renderer needs for that key
        self._done: OrderedDict = OrderedDict()  # selection -> prepared (or a PaikError)
        self.shown = None  # (plan, the selection fields of the bank it was made from)
        self.computed = 0  # selections computed so far (tests)
        self.late = 0  # frames that kept the old map because the new one was not ready
        self.settled = False  # the last frame showed what the parameters asked for
        super().__init__("paik-select")  # jobs: (selection, range key)

    def _result(self, job):
        """The prepared selection of ``job`` when it is complete (its ranges too), else None."""
        sel, key = job
        out = self._done.get(sel)
        if out is None or isinstance(out, Exception) or key is None or self.range_stat is None:
            return out
        return out if key in out.ranges else None

    def request(self, sel, key=None) -> bool:
        """Ask for ``sel`` (and its ranges for ``key``) without waiting; True once it is ready."""
        job = (sel, key)
        with self._cond:
            if self._result(job) is not None:
                return True
            self._ask(job)
            return False

    def ready(self, pl, p, key=None, growing: bool = False):
        """``growing``: the source is a take still forming, followed; a new selection that only
        moves the step (its newest step arriving) is then not waited for at all: the frame keeps
        the map on screen and the next one shows it. A performer's own change still gets the
        budget, so it shows in the frame that read it."""
        job = (pl.selection, key)
        with self._cond:
            if self._result(job) is None:
                self._ask(job)
            # the first frame has nothing to keep on screen: it waits for its map
            budget = self.budget
            if growing and self.shown is not None and all(
                    getattr(p, k) == v for k, v in self.shown[1].items() if k != "step"):
                budget = 0.0
            deadline = None if self.shown is None else time.perf_counter() + budget
            while self._result(job) is None and not self._stop:
                left = None if deadline is None else deadline - time.perf_counter()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            result = self._result(job)
        if isinstance(result, Exception):
            raise result
        self.settled = result is not None
        if result is not None:
            self.shown = (pl, {k: getattr(p, k) for k in self.SELECTION_FIELDS}, result)
            return pl, p, result
        if self.shown is None:  # closed while the first frame waited
            raise PaikError("the selection thread has stopped")
        self.late += 1
        old_pl, fields, old = self.shown
        q = p.copy()
        for k, v in fields.items():
            setattr(q, k, v)
        return old_pl, q, old

    def _work(self, job):
        sel, key = job
        with self._cond:
            out = self._done.get(sel)
        try:
            if out is None or isinstance(out, Exception):
                out = self.prepare(self.reducer.volumes(sel))
            if key is not None and self.range_stat is not None and key not in out.ranges:
                stat = self.range_stat(out, key)
                ranges = {**out.ranges, key: stat}  # a new dict: the render thread reads the old one
                while len(ranges) > self.RANGE_KEYS:
                    ranges.pop(next(iter(ranges)))
                out.ranges = ranges
        except PaikError as e:
            out = e
        except Exception as e:  # a fault in one selection must not end selecting
            out = PaikError(f"selection failed: {type(e).__name__}: {e}")
        return out

    def _store(self, job, out) -> None:
        sel = job[0]
        self._done[sel] = out
        self._done.move_to_end(sel)
        self.computed += 1
        while len(self._done) > 8:
            self._done.popitem(last=False)


def blank_take(label: str = "(no take yet)") -> LiveTake:
    """A one-map take of zeros: what ``paik live`` shows before its first take has a step."""
    import torch

    layout = Layout(steps=[0], blocks=[0], heads=1, head_mean=True, n_heads=1, tokens=[0], latent=(1, 1, 1),
                    n_real=1, seq_len=1)
    manifest = {"layout": layout.to_json(), "prompt": "",
                "tokens": [dict(index=0, id=0, piece=label, word=label, word_index=0, special=True)],
                "settings": {"frames": 1, "width": 16, "height": 16, "fps": 16, "steps": 1}}
    take = LiveTake("(blank)", manifest, torch.zeros((1, 1, 1, 1, 1, 1, 1), dtype=torch.float16))
    take.add_step(0)
    take.finish(None, "blank")
    return take
