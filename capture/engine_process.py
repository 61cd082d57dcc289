"""The live engine in its own process: ``paik live --engine process``.

:class:`EngineProcess` has the :class:`~paik.capture.engine.Engine` interface the instrument uses
(``submit``, ``cancel``, ``set_bends``, ``annotate``, ``poll``, ``busy``, ``writing``, ``close``)
and runs an ordinary Engine, with the pipeline it loads, in a child process started with
``spawn``. The generation's Python then never shares the instrument's interpreter lock: the render
loop and the selection thread do not wait on it, nor it on them.

The maps are not copied: each take's device store is handed over once, when the take starts,
through torch.multiprocessing (CUDA IPC on a GPU, shared memory on the CPU), so the instrument's
renderer reduces the very tensor the child's generation writes into, as in one process.
``StepDone`` is forwarded once the step's CUDA event has passed in the child, so the instrument
reads only finished steps; a take's decoded frames come over as a shared-memory tensor.

The child follows its parent: commands come over a pipe, and when the pipe closes (the
instrument exited, or was killed) the child closes its engine — the running take stops at its
step end, bundles written behind are finished — and exits. It ignores Ctrl-C, which is the
instrument's to handle (it then calls :meth:`close`).
"""

from __future__ import annotations

import logging
import os
import queue as queue_module
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, replace

from paik.errors import PaikError

log = logging.getLogger("paik.engine")


@dataclass
class SharedStore:
    """What the instrument reads of the child's CaptureStore: its maps tensor (shared) and the
    step -> slot table."""

    maps: object
    step_slot: dict


@dataclass
class _State:
    busy: bool
    writing: list
    received: int  # submits the child has taken


class EngineProcess:
    """An Engine in a spawned child process. ``spec`` is what it loads: (model, dtype, device,
    offload); ``defaults`` the GenerateOptions of every take; ``takes`` the folder."""

    def __init__(self, spec: tuple, defaults, takes, start_timeout: float = 1800.0):
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._events: deque = deque()
        self._state = _State(False, [], 0)
        self._submitted = 0
        self._closed = False
        self._problems: list[str] | None = None
        self._lock = threading.Lock()
        self._queue = ctx.Queue()
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(spec, defaults, str(takes), child_conn, self._queue),
                                 name="paik-engine-process", daemon=True)
        self._proc.start()
        child_conn.close()
        # the child loads the model: wait for it, or for its one-line reason
        end = time.monotonic() + start_timeout
        while True:
            try:
                kind, value = self._queue.get(timeout=0.5)
            except Exception:  # noqa: BLE001 - queue.Empty
                if not self._proc.is_alive():
                    raise PaikError(f"the engine process ended while loading the model (exit code {self._proc.exitcode})")
                if time.monotonic() > end:
                    self._proc.kill()
                    raise PaikError(f"the engine process did not load the model within {start_timeout:g} s")
                continue
            if kind == "error":
                self._proc.join(10)
                raise PaikError(value)
            if kind == "ready":
                self.info = value
                break
        self._reader = threading.Thread(target=self._read, name="paik-engine-events", daemon=True)
        self._reader.start()

    # -- the instrument's side (any thread) ------------------------------------------------------
    def _send(self, *msg) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self._conn.send(msg)
            except (OSError, EOFError, BrokenPipeError) as e:
                self._events.append(_failed(f"the engine process is gone ({type(e).__name__}); restart paik live"))

    def submit(self, request) -> None:
        self._submitted += 1
        self._send("submit", request)

    def cancel(self) -> bool:
        had = self.busy
        self._send("cancel")
        return had

    def set_bends(self, specs) -> list[str]:
        """Handed over; what the running take cannot use comes back as BendRefused events."""
        self._send("bends", specs)
        return []

    def annotate(self, path, fields: dict) -> None:
        self._send("annotate", str(path), dict(fields))

    def poll(self) -> list:
        from paik.capture.engine import drain

        return drain(self._events)

    @property
    def busy(self) -> bool:
        s = self._state
        return s.busy or s.received < self._submitted

    @property
    def writing(self) -> list[str]:
        return list(self._state.writing)

    def close(self, timeout: float = 30.0, write_timeout: float | None = 600.0) -> list[str]:
        """Cancel, let the child finish its bundles (at most ``write_timeout`` s) and end; one
        line per bundle that is not complete on disk."""
        self._send("close", timeout, write_timeout)
        with self._lock:
            self._closed = True
        self._proc.join(timeout + (write_timeout or 600.0) + 30.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
            return ["the engine process did not end in time; it was killed (finished steps are on disk)"]
        self._reader.join(5)
        try:
            self._conn.close()
        except OSError:
            pass
        return self._problems or []

    def _read(self) -> None:
        """The child's events into the deque poll() drains (unpickled here, not on the render thread)."""
        while True:
            try:
                kind, value = self._queue.get(timeout=0.5)
            except queue_module.Empty:
                if not self._proc.is_alive():
                    self._state = _State(False, [], self._submitted)  # nothing runs any more
                    if not self._closed:
                        self._events.append(_failed(f"the engine process ended (exit code {self._proc.exitcode}); "
                                                    "restart paik live"))
                    return
                continue
            except Exception as e:  # noqa: BLE001 - an event that could not be unpickled (a CUDA IPC handle ...)
                if not self._proc.is_alive():
                    self._state = _State(False, [], self._submitted)
                    return
                self._events.append(_failed(f"an engine event could not be received: {type(e).__name__}: {e}"))
                continue
            if kind == "event":
                if type(value).__name__ == "TakeDone" and value.frames is not None:
                    value = replace(value, frames=value.frames.numpy())  # a view of the shared pages
                self._events.append(value)
            elif kind == "state":
                self._state = value
            elif kind == "closed":
                self._problems = value
                return


def _failed(message: str, take: int = 0):
    from paik.capture.engine import TakeFailed

    return TakeFailed(take, "engine", message)


# -- the child -----------------------------------------------------------------------------------
def _child(spec, defaults, takes, conn, queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the instrument's; it calls close()
    os.environ.setdefault("PAIK_ENGINE_PROCESS", "1")
    try:
        from paik.capture.engine import Engine, one_line
        from paik.capture.models import load_pipeline

        model, dtype, device, offload = spec
        loaded = load_pipeline(model, dtype, device, offload)
        engine = Engine(loaded, defaults, takes)
        # a CPU store goes to shared memory before the generation writes into it (CUDA: IPC, as it is)
        engine.on_store = lambda store: None if store.maps.is_cuda else store.maps.share_memory_()
    except PaikError as e:
        queue.put(("error", str(e)))
        return
    except Exception as e:  # noqa: BLE001 - said in one line by the parent
        queue.put(("error", f"the engine process could not load {spec[0]}: {type(e).__name__}: {e}"))
        return
    queue.put(("ready", {"model": loaded[1].id, "device": str(loaded[2])}))
    stop = threading.Event()
    received = [0]
    forward = threading.Thread(target=_forward, args=(engine, queue, stop, received), name="paik-forward", daemon=True)
    forward.start()
    close_args = (30.0, 600.0)
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):  # the instrument is gone: finish what is on disk, then end
                break
            kind = msg[0]
            if kind == "submit":
                engine.submit(msg[1])
                received[0] += 1
            elif kind == "cancel":
                engine.cancel()
            elif kind == "bends":
                for m in engine.set_bends(msg[1]):
                    engine._events.append(_bend_refused(engine, m))
            elif kind == "annotate":
                from pathlib import Path

                engine.annotate(Path(msg[1]), msg[2])
            elif kind == "close":
                close_args = (msg[1], msg[2])
                break
    finally:
        problems = engine.close(*close_args)
        stop.set()
        forward.join(10)
        queue.put(("closed", [one_line(p) for p in problems]))
        queue.close()
        queue.join_thread()


def _bend_refused(engine, message):
    from paik.capture.engine import BendRefused

    return BendRefused(engine.running or 0, message)


def _forward(engine, queue, stop, received) -> None:
    """The engine's events to the parent, in order: a step once its maps are in the store, a
    take's store shared once (when it starts), its frames as a shared tensor."""
    import torch

    last = None
    while True:
        evs = engine.poll()
        for ev in evs:
            kind = type(ev).__name__
            try:
                if kind == "TakeStarted":  # its CPU store was shared before step 0 (engine.on_store)
                    ev = replace(ev, store=SharedStore(ev.store.maps, dict(ev.store.step_slot)))
                elif kind == "StepDone":
                    if ev.ready is not None:
                        ev.ready.synchronize()  # the parent reads only a finished step
                    preview = ev.preview
                    ev = replace(ev, ready=None, preview=None if preview is None else torch.from_numpy(
                        preview.numpy().copy()))
                elif kind == "TakeDone" and ev.frames is not None:
                    ev = replace(ev, frames=torch.from_numpy(ev.frames))
                queue.put(("event", ev))
            except Exception as e:  # noqa: BLE001 - said, and the events go on
                queue.put(("event", _failed(f"the engine process could not hand over {kind}: "
                                            f"{type(e).__name__}: {e}", getattr(ev, "take", 0))))
        state = _State(engine.busy, engine.writing, received[0])
        if state != last:
            queue.put(("state", state))
            last = state
        if stop.is_set() and not evs:
            return
        time.sleep(0.002 if evs else 0.01)
