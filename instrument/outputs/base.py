"""What every live output is: a size, a frame rate, and either pixels or a GL texture.

Pixel outputs (NDI, a virtual camera) run their library calls on a thread of their own behind
a one-frame mailbox: the newest frame replaces one not yet sent, so a slow receiver costs
frames on that output only, never time in the render loop.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

log = logging.getLogger(__name__)


class Sink:
    """Base class. ``kind`` "pixels" sinks get :meth:`send` with [H, W, C] uint8 arrays (rows
    bottom-up, as GL reads them); "texture" sinks get :meth:`publish` with the render target's
    texture on the render thread (GL context current)."""

    kind = "pixels"
    components = 4  # 3: RGB premultiplied over black; 4: RGBA with straight alpha
    label = "output"

    def __init__(self, size: tuple[int, int], fps: float):
        self.size = size
        self.fps = fps
        self.sent = 0
        self.skipped = 0  # frames replaced in the mailbox before they could be sent
        self.error: str | None = None

    @property
    def premultiply(self) -> bool:
        return self.components == 3

    def send(self, frame: np.ndarray, index: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def publish(self, texture, size: tuple[int, int]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def status(self) -> str | None:
        return f"{self.label}: {self.error}" if self.error else None

    def close(self) -> None:
        pass


class ThreadedSink(Sink):
    """A pixel sink whose :meth:`_deliver` runs on its own thread (latest frame wins)."""

    def __init__(self, size, fps):
        super().__init__(size, fps)
        self._cv = threading.Condition()
        self._frame = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"paik-{self.label}", daemon=True)
        self._thread.start()

    def send(self, frame: np.ndarray, index: int) -> None:
        with self._cv:
            if self._frame is not None:
                self.skipped += 1
            self._frame = (frame, index)
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._frame is None and not self._stop:
                    self._cv.wait()
                if self._frame is None:
                    return
                frame, index = self._frame
                self._frame = None
            if self.error is not None:
                continue
            try:
                self._deliver(frame, index)
                self.sent += 1
            except Exception as e:  # noqa: BLE001 - one output failing must not stop the show
                self.error = f"{type(e).__name__}: {e}"
                log.error("%s stopped: %s", self.label, self.error)

    def _deliver(self, frame: np.ndarray, index: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=5)
        self._release()

    def _release(self) -> None:
        pass
