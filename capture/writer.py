"""Writing capture bundles step by step, off the generation's critical path.

Each finished step is copied device -> pinned host memory on a side CUDA stream (overlapping
the next step's compute), then a writer thread saves it as one safetensors file (written to a
temporary name and renamed, so a file is whole or absent) and rewrites the manifest (likewise
atomically) to list it. Ctrl-C or a crash at step k leaves a bundle with k complete steps.

A write that fails (disk full, permission, the folder removed) never hangs the run: the writer
thread records the error, removes its temporary file, drains what is queued without writing it
and always finishes on close; the generation thread sees a one-line :class:`PaikError` at its
next call. A disk that stops answering altogether is reported after ``stall_s`` seconds
without progress.

Written behind (:meth:`BundleWriter.write_behind`, the live engine): the step tensors are slices of
an all-resident store that is never overwritten, so the generation thread only records a CUDA event
and queues references (no copy, no waiting: the denoiser feels no backpressure from the disk). The
writer thread waits for each event, copies the step through one reusable pinned buffer per tensor
(the host holds at most one step) on a low-priority stream, and writes it. :meth:`close` then only
queues the final manifest; :meth:`finish` waits for it, and ``on_done`` is called from the writer
thread once the bundle is complete on disk (or has failed).
"""

from __future__ import annotations

import errno
import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from paik.capture.bundle import FORMAT, FORMAT_VERSION, MANIFEST, STEP_FILE
from paik.errors import PaikError


_ST_DTYPES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32", np.dtype(np.uint8): "U8",
              np.dtype(np.int64): "I64", np.dtype(np.int32): "I32"}
_CHUNK = 64 << 20  # bytes per write call: progress is visible to the stall check between chunks


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], progress: Callable[[], None] | None = None) -> None:
    """Write a standard safetensors file (8-byte header length, JSON header, raw little-endian
    data). Plain ``file.write`` of each buffer releases the GIL while the disk works, so the
    writer thread never holds up the generation thread's kernel launches. ``progress`` is called
    after every chunk. On failure the partial file is removed."""
    arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in tensors.items()}
    header, offset = {}, 0
    for k, a in arrays.items():
        header[k] = {"dtype": _ST_DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = _compact(header).encode()
    raw += b" " * (-len(raw) % 8)
    try:
        with open(path, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for a in arrays.values():
                view = memoryview(a.reshape(-1)).cast("B")
                for i in range(0, len(view), _CHUNK):
                    f.write(view[i:i + _CHUNK])
                    if progress is not None:
                        progress()
    except BaseException:
        _unlink(path)
        raise


def _compact(data) -> str:
    # json's C encoder runs only without indent: the indented one is pure Python and holds the GIL
    # for the whole manifest at every step, time the render thread waits for
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def write_json_atomic(path: Path, data: dict, indent: int | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    text = _compact(data) if indent is None else json.dumps(data, indent=indent, ensure_ascii=False)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # never written, or its folder is gone


def describe_write_error(e: BaseException) -> str:
    """One line for a failed write, with what to do about the usual causes."""
    if not isinstance(e, OSError):
        return f"{type(e).__name__}: {e}"
    what = e.strerror or str(e)
    where = f" ({e.filename})" if e.filename else ""
    hint = {errno.ENOSPC: "free some space or choose another --out",
            errno.EDQUOT: "free some space or choose another --out",
            errno.EFBIG: "the file system or a limit (ulimit -f) refuses files this large; choose another --out",
            errno.EACCES: "choose an --out you can write to", errno.EPERM: "choose an --out you can write to",
            errno.EROFS: "choose an --out on a writable disk",
            errno.ENOENT: "the bundle folder was removed while writing"}.get(e.errno, "")
    return f"{what}{where}" + (f"; {hint}" if hint else "")

def prepare_dir(path: Path, overwrite: bool) -> None:
    """Create the bundle directory; refuse to mix a new capture into an old one."""
    if path.exists() and not path.is_dir():
        raise PaikError(f"--out {path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise PaikError(f"--out {path}: directory exists and is not empty; choose another or pass --overwrite")
        if not (path / MANIFEST).is_file():
            raise PaikError(f"--out {path}: not a Paik bundle; refusing to overwrite it")
        import shutil

        shutil.rmtree(path)
    try:
        (path / "maps").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        block = next((p for p in path.parents if p.exists()), None)
        why = f"{block} is a file, not a directory" if block is not None and not block.is_dir() else e.strerror
        raise PaikError(f"--out {path}: cannot create it: {why}") from None


class BundleWriter:
    """Writes one bundle. ``manifest`` holds everything known before generation; steps are added
    with :meth:`add_step`, and :meth:`close` records the final status."""

    def __init__(self, path: str | os.PathLike, manifest: dict, overwrite: bool = False, max_pending: int = 2,
                 stall_s: float = 60.0, manifest_name: str = MANIFEST, step_file: str = STEP_FILE,
                 prepare: bool = True):
        # manifest_name, step_file, prepare: a context-parallel rank other than 0 writes its own
        # listing and files into the folder rank 0 prepared (paik.capture.parallel)
        self.path = Path(path)
        self._manifest_name, self._step_file = manifest_name, step_file
        if prepare:
            prepare_dir(self.path, overwrite)
        self.manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "status": "running", **manifest}
        self.manifest.setdefault("steps", [])
        try:
            write_json_atomic(self.path / self._manifest_name, self.manifest)
        except OSError as e:
            raise PaikError(f"--out {self.path}: cannot write the manifest: {describe_write_error(e)}") from None
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)  # bounds pinned host memory
        self._error: BaseException | None = None
        self._stream = None
        self._stall_s = stall_s
        self._beat = time.monotonic()  # the writer thread's last sign of progress
        self._closed = False
        self._behind = False
        self._t0: float | None = None
        self._on_done: Callable[[dict, BaseException | None], None] | None = None
        self._host: dict[str, torch.Tensor] = {}  # behind: the reusable pinned buffers, one step's worth
        self._thread = threading.Thread(target=self._run, name="paik-bundle-writer", daemon=True)
        self._thread.start()

    def write_behind(self, t0: float | None = None,
                     on_done: Callable[[dict, BaseException | None], None] | None = None) -> None:
        """Write behind the generation (call before the first step): :meth:`add_step` never waits
        and copies nothing (its tensors must be never-overwritten store slices), :meth:`close`
        returns at once. ``t0`` (a ``time.perf_counter()``): the final manifest's
        ``timings.bundle_complete_s`` counts from it. ``on_done(manifest, error)`` is called on the
        writer thread when the bundle is complete or has failed."""
        self._behind, self._t0, self._on_done = True, t0, on_done
        self._queue.maxsize = 0  # bounded by the take's steps: it holds references, not copies

    @property
    def done(self) -> bool:
        """The final manifest is written (or the writer has given up)."""
        return self._closed and not self._thread.is_alive()

    def finish(self, timeout: float | None = None) -> dict:
        """Wait (at most ``timeout`` s) for a bundle written behind to be complete; raises the
        write's PaikError, or TimeoutError if it is still writing."""
        if not self._closed:
            self.close()
        since = time.monotonic()
        while self._thread.is_alive():
            if timeout is not None and time.monotonic() - since >= timeout:
                raise TimeoutError(f"{self.path}: still writing")
            self._thread.join(0.1 if timeout is None else min(0.1, max(0.0, timeout - (time.monotonic() - since))))
            self._check_stall(since)  # a disk that stopped answering: PaikError, not an endless wait
        self._raise_if_failed()
        return self.manifest

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the writer thread, in order with the steps (the MP4 written behind); an
        exception it raises is a write failure, like a step's."""
        self._raise_if_failed()
        self._put(("call", fn, None, None))

    def add_step(self, info: dict, tensors: dict[str, torch.Tensor], release: Callable[[], None] | None = None) -> None:
        """Queue one finished step. ``tensors`` may live on the GPU and must not be modified
        until copied: store slices of an all-resident store never are; a ring store's slot is
        given back through ``release``, which the writer thread calls only once its copy is
        complete (the CUDA copy's event has fired, or the CPU tensors are on disk), on every
        path, failures included."""
        try:
            self._raise_if_failed()
        except BaseException:
            if release is not None:
                release()
            raise
        event = None
        host = {}
        cuda = [t for t in tensors.values() if t.is_cuda]
        if self._behind:
            if cuda:  # the writer thread copies once this has passed: the generation waits on nothing
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(cuda[0].device))
            self._put(("step", info, dict(tensors), (event, release)))
            return
        if cuda:
            dev = cuda[0].device
            if self._stream is None:
                self._stream = torch.cuda.Stream(dev)
            self._stream.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(self._stream):
                for k, t in tensors.items():
                    if t.is_cuda:
                        host[k] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                        host[k].copy_(t, non_blocking=True)
                        t.record_stream(self._stream)
                    else:
                        host[k] = t
                event = torch.cuda.Event()
                event.record(self._stream)
        else:
            host = {k: t.detach().contiguous() for k, t in tensors.items()}
        self._put(("step", info, host, (event, release)))

    def update(self, **fields) -> None:
        """Set top-level manifest fields (written with the next step or at close)."""
        self._raise_if_failed()
        self._put(("update", fields, None, None))

    def close(self, status: str = "complete", **fields) -> dict:
        """Finish writing everything queued, then record ``status``. Safe to call after an error
        and more than once; returns within ``stall_s`` of the disk's last progress."""
        if not self._closed:
            self._closed = True
            self._put(("close", {"status": status, **fields}, None, None), closing=True)
            if self._behind:
                return self.manifest  # finish() waits; on_done tells
            since = time.monotonic()
            while self._thread.is_alive():
                self._thread.join(0.1)
                self._check_stall(since)
        self._raise_if_failed()
        return self.manifest

    # -- the generation thread's side ------------------------------------------------------------
    def _put(self, item, closing: bool = False) -> None:
        """Queue ``item``, waiting while the writer is busy but never forever."""
        since = time.monotonic()
        while True:
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if not closing:
                    self._raise_if_failed()
                self._check_stall(since)

    def _check_stall(self, since: float) -> None:
        """Raise when the writer has shown no progress since the wait began ``stall_s`` ago."""
        if time.monotonic() - max(self._beat, since) > self._stall_s:
            self._error = self._error or TimeoutError(
                f"the disk made no progress for {self._stall_s:g} s; check it, or choose another --out")
            raise PaikError(f"writing the bundle {self.path} failed: {describe_write_error(self._error)}; "
                            f"it keeps its {len(self.manifest['steps'])} finished steps")

    def check_waiting(self, since: float) -> None:
        """For a generation thread waiting on the writer (a ring store's free slot): raise if
        the writer has failed, or shown no progress for ``stall_s`` since ``since``."""
        self._raise_if_failed()
        self._check_stall(since)

    def _raise_if_failed(self):
        if self._error is not None:
            raise PaikError(f"writing the bundle {self.path} failed: {describe_write_error(self._error)}; "
                            f"it keeps its {len(self.manifest['steps'])} finished steps")

    # -- the writer thread -----------------------------------------------------------------------
    def _tick(self) -> None:
        self._beat = time.monotonic()

    def _run(self):
        while True:
            kind, info, host, event = self._queue.get()
            self._tick()
            if kind == "close":
                try:
                    if self._error is not None:
                        info.setdefault("error", describe_write_error(self._error))
                    # the generation's timings, with the writer's own (its steps may be written after)
                    timings = {**info.pop("timings", {}), **{k: v for k, v in self.manifest.get("timings", {}).items()
                                                           if k == "write_s"}}
                    if self._t0 is not None:
                        timings["bundle_complete_s"] = round(time.perf_counter() - self._t0, 3)
                    self.manifest.update(info)
                    if timings:
                        self.manifest["timings"] = timings
                    write_json_atomic(self.path / self._manifest_name, self.manifest, indent=1)
                except BaseException as e:  # the last manifest on disk still lists the finished steps
                    self._error = self._error or e
                self._host = {}
                if self._on_done is not None:
                    try:
                        self._on_done(self.manifest, self._error)
                    except Exception:  # noqa: BLE001 - a listener's fault is not the bundle's
                        pass
                return  # always: close() waits for this thread
            if kind == "update":
                self.manifest.update(info)
                continue
            if kind == "call":
                try:
                    if self._error is None:
                        info()
                except BaseException as e:
                    self._error = e
                self._tick()
                continue
            event, release = event
            try:
                if self._behind:
                    if event is not None:
                        event.synchronize()  # the step's maps are in the store
                    host = self._stage(host)
                elif event is not None:
                    event.synchronize()  # the device -> pinned host copy is complete
                    if release is not None:  # the slot may be reused while the disk works
                        release, give_back = None, release
                        give_back()
                if self._error is None:  # else drain without writing: the run is ending
                    self._write_step(info, host)
            except BaseException as e:  # reported on the generation thread at its next call
                self._error = e
            finally:
                host = None  # release the pinned buffers now, not at the next step
                if release is not None:  # CPU tensors are the slot itself: given back once on disk
                    release()
                self._tick()

    def _stage(self, tensors: dict) -> dict:
        """Behind: device tensors copied into the reusable pinned buffers (CPU ones are written as
        they are: the store's own slices)."""
        out = {}
        for k, t in tensors.items():
            if not t.is_cuda:
                out[k] = t
                continue
            buf = self._host.get(k)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                buf = self._host[k] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            if self._stream is None:  # lowest priority: the copies yield to the denoiser and the renderer
                self._stream = torch.cuda.Stream(t.device, priority=max(torch.cuda.Stream.priority_range()))
            with torch.cuda.stream(self._stream):
                buf.copy_(t, non_blocking=True)
            out[k] = buf
        if self._stream is not None:
            self._stream.synchronize()  # this thread only: the generation's queue is not drained
        return out

    def _write_step(self, info: dict, host: dict) -> None:
        t0 = time.perf_counter()
        delay = os.environ.get("PAIK_TEST_WRITE_DELAY_S")
        if delay:  # tests of ordering only: a slow disk, made on purpose
            time.sleep(float(delay))
        # values the generation thread left on the device (or pinned) so as not to synchronize for them
        for k, v in list(info.items()):  # in place: the capture's own step list sees the numbers too
            if isinstance(v, torch.Tensor):
                info[k] = float(v.reshape(-1)[0])
        rel = self._step_file.format(info["index"])
        target = self.path / rel
        tmp = target.with_name(f".{target.name}.tmp")
        write_safetensors(tmp, host, progress=self._tick)
        try:
            os.replace(tmp, target)
        except BaseException:
            _unlink(tmp)
            raise
        timings = dict(self.manifest.get("timings", {}))
        timings["write_s"] = [*timings.get("write_s", []), round(time.perf_counter() - t0, 4)]
        new = {**self.manifest, "steps": [*self.manifest["steps"], {**info, "file": rel}], "timings": timings}
        try:
            write_json_atomic(self.path / self._manifest_name, new)
        except BaseException:
            _unlink(target)  # not listed by the manifest on disk: remove it, keep the bundle consistent
            raise
        self.manifest = new
