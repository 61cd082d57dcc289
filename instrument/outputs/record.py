"""Live recording: frames from the render loop to a file that survives a crash.

The render thread only hands finished readbacks to :meth:`Recorder.submit` (a bounded queue);
a writer thread converts and encodes them with PyAV, which releases the GIL while FFmpeg
works. The file is a fragmented MP4/MOV (``empty_moov`` + a fragment per frame, flushed to the
OS after each packet): if the process is killed, every frame that left the encoder is in a
decodable file; only the few frames inside the encoder's pipeline at that moment are lost.

Frames carry an index on the output's frame grid (see :class:`Cadence`). When the loop missed
a slot (late) or the queue was full (dropped: the encoder fell behind), the writer repeats the
previous picture, so the file keeps a steady frame rate and its timeline matches wall time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

import numpy as np

from paik.errors import PaikError

from paik.video import CODECS, VideoWriter, check_output

log = logging.getLogger(__name__)



class Cadence:
    """The output's frame grid: which frame index (if any) a loop iteration at ``now`` delivers.

    Phase-locked rather than rounded: a loop running at the output's rate with jitter delivers
    every index once, a faster loop delivers on the ticks nearest the grid; a loop that falls more than 1.5 frames behind jumps ahead and counts the
    skipped indices as ``late`` (the recorder repeats a picture for them)."""

    EARLY = 0.3  # a tick this much of a frame early still takes the slot (loop jitter)

    def __init__(self, fps: float):
        self.fps = float(fps)
        self.t0: float | None = None
        self.next = 0
        self.late = 0

    def tick(self, now: float) -> int | None:
        if self.t0 is None:
            self.t0 = now
        pos = (now - self.t0) * self.fps
        if pos < self.next - self.EARLY:
            return None
        k = self.next
        if pos >= self.next + 1.5:
            k = int(pos + 0.5)
            self.late += k - self.next
        self.next = k + 1
        return k

    def reset(self) -> None:
        self.t0, self.next, self.late = None, 0, 0


def _check(path: Path, size, codec: str) -> str:
    """The container format for ``path``; user errors as PaikError."""
    if codec not in CODECS:
        raise PaikError(f"unknown recording codec {codec!r}; choose {', '.join(CODECS)}")
    return check_output(path, codec, size, "recording", "--record-codec prores")


class Recorder:
    """One recording: ``submit`` from the render thread, ``close`` to finish the file.

    What ``submit`` takes (``components``): for H.264, 1 = yuv420p packed on the GPU
    ([3H/2, W] bytes in FFmpeg's planar layout, top row first, BT.709 limited range; see
    readback.YuvPacker), or with ``packed=False`` 3 = RGB rows bottom-up as GL reads them
    (converted here); for ProRes 4444, 4 = RGBA rows bottom-up, straight alpha."""

    QUEUE_BYTES = 1 << 30  # frames waiting for the encoder; beyond this they are dropped

    def __init__(self, path, size: tuple[int, int], fps: float, codec: str = "h264", crf: int = 18,
                 preset: str = "veryfast", packed: bool = True):
        self.path = Path(path)
        self.size = size
        self.fps = fps
        self.codec = codec
        _check(self.path, size, codec)
        self.components = (1 if packed else 3) if codec == "h264" else 4
        if codec == "h264" and size[0] * size[1] * fps > 1920 * 1080 * 60 and preset == "veryfast":
            preset = "superfast"  # 4K30 and up: keep the encoder ahead of the render loop
        try:  # fragmented and with live settings: see paik.video
            self.out = VideoWriter(self.path, size, fps, codec, crf=crf, preset=preset, fragmented=True,
                                   realtime=True, what="recording", other_codec="--record-codec prores")
        except PaikError as e:
            raise PaikError(f"cannot record: {e}") from None
        self._src_fmt = ("yuv420p" if packed else "rgb24") if codec == "h264" else "rgba"
        frame_bytes = size[0] * size[1] * (1.5 if self.components == 1 else self.components)
        self._q: queue.Queue = queue.Queue(maxsize=max(4, int(self.QUEUE_BYTES // frame_bytes)))
        self.written = 0  # frames in the file (repeats included)
        self.repeated = 0  # pictures repeated to fill late or dropped slots
        self.dropped = 0  # frames the queue had no room for (the encoder fell behind)
        self._muxed_at_close = 0
        self.last_drop = -1e9  # perf_counter of the last drop, for "behind" on screen
        self.error: str | None = None
        self.started = time.perf_counter()
        self._last_index = -1
        self.last_slot = -1  # the last slot offered, taken or dropped: the file runs to it
        self._thread = threading.Thread(target=self._run, name=f"paik-record {self.path.name}", daemon=True)
        self._thread.start()
        log.info("recording %s (%dx%d @ %g fps, %s)", self.path, size[0], size[1], fps, codec)

    # -- render thread -------------------------------------------------------------------------
    def submit(self, frame: np.ndarray, index: int) -> bool:
        """Queue one frame for grid slot ``index``; False (and counted) if the encoder is behind."""
        if self.error is not None:
            return False
        self.last_slot = max(self.last_slot, index)
        try:
            self._q.put_nowait((index, frame))
            return True
        except queue.Full:
            self.dropped += 1
            now = time.perf_counter()
            if now - self.last_drop > 2.0:
                log.warning("recording %s: the encoder is behind; frames dropped so far: %d (they are "
                            "filled by repeating the previous frame)", self.path.name, self.dropped)
            self.last_drop = now
            return False

    @property
    def behind(self) -> bool:
        """True while frames are being dropped (for the on-screen warning)."""
        return time.perf_counter() - self.last_drop < 2.0

    def backlog(self) -> int:
        return self._q.qsize()

    def close(self) -> None:
        """Encode what is queued, flush the encoder and finish the file, then let go of the
        encoder (its frame threads and buffers), so finished takes cost nothing."""
        self._q.put(None)
        self._thread.join()
        self._muxed_at_close = self.out.packets
        self.out = None
        log.info("recorded %s: %d frames (%d repeated, %d dropped)", self.path, self.written, self.repeated,
                 self.dropped)
        if self.error:
            raise PaikError(f"recording {self.path} failed: {self.error}")

    # -- writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        prev = None
        try:
            while True:
                item = self._q.get()
                if item is None:
                    break
                index, arr = item
                if index <= self._last_index:  # a slot is written once
                    continue
                # yuv420p was packed on the GPU top-down; GL's RGB(A) rows are bottom-up. Converted
                # once, so a repeated picture costs only the encode of a still frame
                frame = self.out.frame(arr, self._src_fmt, flipped=self._src_fmt != "yuv420p")
                if prev is not None:
                    for k in range(self._last_index + 1, index):
                        self._encode(prev, k)
                        self.repeated += 1
                self._encode(frame, index)
                self._last_index, prev = index, frame
            if prev is not None:  # slots dropped at the very end still take their time in the file
                for k in range(self._last_index + 1, self.last_slot + 1):
                    self._encode(prev, k)
                    self.repeated += 1
            self.out.flush()
        except Exception as e:  # keep the file valid; say why on close
            self.error = f"{type(e).__name__}: {e}"
            log.error("recording %s stopped: %s", self.path, self.error)
            while True:  # unblock the render thread
                try:
                    if self._q.get_nowait() is None:
                        break
                except queue.Empty:
                    break
        finally:
            try:
                self.out.container.close()
            except Exception as e:  # noqa: BLE001 - already failing; the file keeps its fragments
                log.error("closing %s: %s", self.path, e)

    def _encode(self, frame, index: int) -> None:
        self.out.encode(frame, pts=index)
        self.written += 1

    @property
    def muxed(self) -> int:
        """Packets in the file: none means it holds no picture at all."""
        return self.out.packets if self.out is not None else self._muxed_at_close


def default_path(codec: str) -> Path:
    return Path(time.strftime("paik-%Y%m%d-%H%M%S") + (".mp4" if codec == "h264" else ".mov"))
