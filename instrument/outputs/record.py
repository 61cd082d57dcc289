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
from fractions import Fraction
from pathlib import Path

import numpy as np

from paik.errors import PaikError

from paik.instrument.outputs.encode import CODECS, check_dir, ensure_dir

log = logging.getLogger(__name__)

# fragmented (playable while written, valid after a kill): header first, one fragment per frame
MOVFLAGS = "empty_moov+default_base_moof+frag_every_frame"


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
    w, h = size
    suffix = path.suffix.lower()
    check_dir(path.parent)
    if codec not in CODECS:
        raise PaikError(f"unknown recording codec {codec!r}; choose {', '.join(CODECS)}")
    if codec == "h264":
        if w % 2 or h % 2:
            raise PaikError(f"H.264 needs an even width and height, not {w}x{h} (or record with --record-codec prores)")
        if suffix not in (".mp4", ".mov", ".m4v"):
            raise PaikError(f"recording to {path.name}: name H.264 recordings .mp4 (or .mov)")
        return "mov" if suffix == ".mov" else "mp4"
    if suffix != ".mov":
        raise PaikError(f"ProRes 4444 is written as QuickTime: name the recording .mov, not {path.name}")
    return "mov"


class Recorder:
    """One recording: ``submit`` from the render thread, ``close`` to finish the file.

    What ``submit`` takes (``components``): for H.264, 1 = yuv420p packed on the GPU
    ([3H/2, W] bytes in FFmpeg's planar layout, top row first, BT.709 limited range; see
    readback.YuvPacker), or with ``packed=False`` 3 = RGB rows bottom-up as GL reads them
    (converted here); for ProRes 4444, 4 = RGBA rows bottom-up, straight alpha."""

    QUEUE_BYTES = 1 << 30  # frames waiting for the encoder; beyond this they are dropped

    def __init__(self, path, size: tuple[int, int], fps: float, codec: str = "h264", crf: int = 18,
                 preset: str = "veryfast", packed: bool = True):
        import av

        self.path = Path(path)
        self.size = size
        self.fps = fps
        self.codec = codec
        fmt = _check(self.path, size, codec)
        self.components = (1 if packed else 3) if codec == "h264" else 4
        ensure_dir(self.path.parent)
        rate = Fraction(fps).limit_denominator(1001)
        try:
            self.container = av.open(str(self.path), "w", format=fmt,
                                     container_options={"movflags": MOVFLAGS, "flush_packets": "1"})
        except (av.FFmpegError, OSError) as e:
            raise PaikError(f"cannot record to {self.path} ({e})") from None
        if codec == "h264":
            st = self.container.add_stream("libx264", rate=rate)
            st.pix_fmt = "yuv420p"
            # a keyframe every second keeps seeking cheap; no B-frames: timestamps start at 0 in a
            # fragmented file (no edit list) and fewer frames wait inside the encoder at a crash
            if size[0] * size[1] * fps > 1920 * 1080 * 60 and preset == "veryfast":
                preset = "superfast"  # 4K30 and up: keep the encoder ahead of the render loop
            st.options = {"crf": str(crf), "preset": preset, "g": str(max(1, round(fps))), "bf": "0"}
            # frame threads scale across cores far better than x264's sliced threads (PyAV's
            # default); they hold a few more frames in flight, which a crash can lose
            st.codec_context.thread_type = "FRAME"
            cc = st.codec_context  # BT.709, limited range: what the packer writes, tagged for players
            cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1
            self._src_fmt = "yuv420p" if packed else "rgb24"
        else:
            st = self.container.add_stream("prores_ks", rate=rate)
            st.pix_fmt = "yuva444p10le"
            st.options = {"profile": "4", "alpha_bits": "16", "vendor": "apl0"}
            self._src_fmt = "rgba"
        st.width, st.height = size
        st.time_base = 1 / rate
        self.stream = st
        frame_bytes = size[0] * size[1] * (1.5 if self.components == 1 else self.components)
        self._q: queue.Queue = queue.Queue(maxsize=max(4, int(self.QUEUE_BYTES // frame_bytes)))
        self.written = 0  # frames in the file (repeats included)
        self.repeated = 0  # pictures repeated to fill late or dropped slots
        self.dropped = 0  # frames the queue had no room for (the encoder fell behind)
        self.muxed = 0  # packets in the file: none means the file holds no picture at all
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
        self.container = self.stream = None
        log.info("recorded %s: %d frames (%d repeated, %d dropped)", self.path, self.written, self.repeated,
                 self.dropped)
        if self.error:
            raise PaikError(f"recording {self.path} failed: {self.error}")

    # -- writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        import av

        prev = None
        try:
            while True:
                item = self._q.get()
                if item is None:
                    break
                index, arr = item
                if index <= self._last_index:  # a slot is written once
                    continue
                if self._src_fmt == "yuv420p":  # packed on the GPU: top-down, ready to encode
                    frame = av.VideoFrame.from_ndarray(arr.reshape(-1, self.size[0]), format="yuv420p")
                else:
                    # GL rows are bottom-up: PyAV copies a flipped view row by row (no extra copy);
                    # converted once, so a repeated picture costs only the encode of a still frame
                    frame = av.VideoFrame.from_ndarray(arr[::-1], format=self._src_fmt)
                    frame = frame.reformat(format=self.stream.pix_fmt,
                                           dst_colorspace="itu709" if self.codec == "h264" else None)
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
            for pkt in self.stream.encode():
                self.container.mux(pkt)
                self.muxed += 1
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
                self.container.close()
            except Exception as e:  # noqa: BLE001 - already failing; the file keeps its fragments
                log.error("closing %s: %s", self.path, e)

    def _encode(self, frame, index: int) -> None:
        frame.pts = index
        for pkt in self.stream.encode(frame):
            self.container.mux(pkt)
            self.muxed += 1
        self.written += 1


def default_path(codec: str) -> Path:
    return Path(time.strftime("paik-%Y%m%d-%H%M%S") + (".mp4" if codec == "h264" else ".mov"))
