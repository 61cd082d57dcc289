"""Writing capture bundles step by step, off the generation's critical path.

Each finished step is copied device -> pinned host memory on a side CUDA stream (overlapping
the next step's compute), then a writer thread saves it as one safetensors file (written to a
temporary name and renamed, so a file is whole or absent) and rewrites the manifest (likewise
atomically) to list it. Ctrl-C or a crash at step k leaves a bundle with k complete steps.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path

import numpy as np
import torch

from paik.capture.bundle import FORMAT, FORMAT_VERSION, MANIFEST, STEP_FILE
from paik.errors import PaikError


_ST_DTYPES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32", np.dtype(np.uint8): "U8",
              np.dtype(np.int64): "I64", np.dtype(np.int32): "I32"}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a standard safetensors file (8-byte header length, JSON header, raw little-endian
    data). Plain ``file.write`` of each buffer releases the GIL while the disk works, so the
    writer thread never holds up the generation thread's kernel launches."""
    arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in tensors.items()}
    header, offset = {}, 0
    for k, a in arrays.items():
        header[k] = {"dtype": _ST_DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for a in arrays.values():
            f.write(memoryview(a.reshape(-1)).cast("B"))


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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

    def __init__(self, path: str | os.PathLike, manifest: dict, overwrite: bool = False, max_pending: int = 2):
        self.path = Path(path)
        prepare_dir(self.path, overwrite)
        self.manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "status": "running", **manifest}
        self.manifest.setdefault("steps", [])
        write_json_atomic(self.path / MANIFEST, self.manifest)
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)  # bounds pinned host memory
        self._error: BaseException | None = None
        self._stream = None
        self._thread = threading.Thread(target=self._run, name="paik-bundle-writer", daemon=True)
        self._thread.start()

    def add_step(self, info: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Queue one finished step. ``tensors`` may live on the GPU and must not be modified
        afterwards (store slices are not; temporaries are kept alive until copied)."""
        self._raise_if_failed()
        event = None
        host = {}
        cuda = [t for t in tensors.values() if t.is_cuda]
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
        self._queue.put(("step", info, host, event))

    def update(self, **fields) -> None:
        """Set top-level manifest fields (written with the next step or at close)."""
        self._raise_if_failed()
        self._queue.put(("update", fields, None, None))

    def close(self, status: str = "complete", **fields) -> dict:
        """Finish writing everything queued, then record ``status``. Safe to call after an error."""
        self._queue.put(("close", {"status": status, **fields}, None, None))
        self._thread.join()
        self._raise_if_failed()
        return self.manifest

    def _raise_if_failed(self):
        if self._error is not None:
            raise PaikError(f"writing the bundle {self.path} failed: {self._error}")

    def _run(self):
        while True:
            kind, info, host, event = self._queue.get()
            try:
                if kind == "close":
                    self.manifest.update(info)
                    write_json_atomic(self.path / MANIFEST, self.manifest)
                    return
                if kind == "update":
                    self.manifest.update(info)
                    continue
                if self._error is not None:
                    continue
                if event is not None:
                    event.synchronize()
                t0 = time.perf_counter()
                rel = STEP_FILE.format(info["index"])
                target = self.path / rel
                tmp = target.with_name(f".{target.name}.tmp")
                write_safetensors(tmp, host)
                os.replace(tmp, target)
                self.manifest["steps"].append({**info, "file": rel})
                self.manifest.setdefault("timings", {}).setdefault("write_s", []).append(
                    round(time.perf_counter() - t0, 4))
                write_json_atomic(self.path / MANIFEST, self.manifest)
            except BaseException as e:  # reported on the main thread at the next call
                self._error = e
