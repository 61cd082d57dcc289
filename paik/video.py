"""Video files, in one place (PyAV): the codecs Paik writes and the one way it reads.

- H.264, yuv420p, BT.709 limited range: plays everywhere (generated videos, renders, recordings).
- ProRes 4444 with straight 16-bit alpha in QuickTime: for compositing in an editor.

:class:`VideoWriter` opens a file for either codec (optionally fragmented, so a killed process
keeps everything written so far); :func:`write_mp4` writes a whole clip atomically;
:func:`decode` reads frames back. Output folders are made by :func:`ensure_dir`, which turns
what the OS says into one line for the user.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from paik.errors import PaikError

CODECS = ("h264", "prores")
# fragmented MP4/MOV (playable while written, valid after a kill): the header first, one fragment
# per frame, so a crash loses only what was still inside the encoder
MOVFLAGS = "empty_moov+default_base_moof+frag_every_frame"


def check_dir(d: Path) -> None:
    """Refuse an output directory that cannot be made because a file is in the way (a typo)."""
    block = next((p for p in (d, *d.parents) if p.exists()), None)
    if block is not None and not block.is_dir():
        raise PaikError(f"cannot write into {d}: {block} is a file, not a directory")


def ensure_dir(d: Path) -> None:
    """``mkdir -p`` for an output, with a message instead of a traceback."""
    check_dir(d)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PaikError(f"cannot write into {d}: {e.strerror}") from None


def container_format(path: Path, codec: str, what: str = "output") -> str:
    """The container for ``path`` and ``codec`` (mp4 or mov); a wrong name is a PaikError that
    calls the file what the user calls it (``what``: "output", "recording")."""
    suffix = path.suffix.lower()
    if codec not in CODECS:
        raise PaikError(f"unknown codec {codec!r}; choose {', '.join(CODECS)}")
    if codec == "h264":
        if suffix not in (".mp4", ".mov", ".m4v"):
            raise PaikError(f"cannot tell a video format from the name {path.name}: name the {what} .mp4 (or .mov)")
        return "mov" if suffix == ".mov" else "mp4"
    if suffix != ".mov":
        raise PaikError(f"ProRes 4444 is written as QuickTime: name the {what} .mov, not {path.name}")
    return "mov"


def check_output(path: Path, codec: str, size: tuple[int, int] | None = None, what: str = "output",
                 other_codec: str = "--codec prores") -> str:
    """Everything that can be said of a video file to be written before it is opened: a folder in
    the way, the name's container, an odd size for H.264. Returns the container format."""
    path = Path(path)
    if path.is_dir():
        raise PaikError(f"{path} is a directory: name the video file, like {path / 'out.mp4'}")
    fmt = container_format(path, codec, what)
    if codec == "h264" and size is not None and (size[0] % 2 or size[1] % 2):
        raise PaikError(f"H.264 needs an even width and height, not {size[0]}x{size[1]} (or use {other_codec})")
    check_dir(path.parent)
    return fmt


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[F, H, W, C] floats in [0, 1] (or uint8) -> uint8."""
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class VideoWriter:
    """One video file being written. ``write`` takes a frame as

    - ``"rgb24"`` [H, W, 3] or ``"rgba"`` [H, W, 4] uint8 (straight alpha; H.264 drops it),
    - ``"yuv420p"`` [3H/2, W] uint8 already in FFmpeg's planar layout (packed on the GPU),

    top row first, or bottom row first with ``flipped=True`` (as GL reads pixels back).
    ``pts`` places a frame on the timeline (default: the next slot)."""

    def __init__(self, path, size: tuple[int, int], fps: float, codec: str = "h264", *, crf: int = 17,
                 preset: str = "medium", fragmented: bool = False, realtime: bool = False, what: str = "output",
                 other_codec: str = "--codec prores"):
        """``realtime``: settings for a live recording (a keyframe a second, no B-frames, frame
        threads, BT.709 tags matching the GPU's yuv420p packer); ``fragmented``: see MOVFLAGS."""
        import av

        self.path = Path(path)
        w, h = size
        fmt = check_output(self.path, codec, size, what, other_codec)
        ensure_dir(self.path.parent)
        self.codec, self.size = codec, (w, h)
        rate = Fraction(fps).limit_denominator(1001)
        options = {"movflags": MOVFLAGS, "flush_packets": "1"} if fragmented else {}
        try:
            self.container = av.open(str(self.path), "w", format=fmt, container_options=options)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise PaikError(f"cannot write {self.path} ({e})") from None
        if codec == "h264":
            st = self.container.add_stream("libx264", rate=rate)
            st.pix_fmt = "yuv420p"
            opts = {"crf": str(crf), "preset": preset}
            if realtime:
                # a keyframe every second keeps seeking cheap; no B-frames: timestamps start at 0 in
                # a fragmented file (no edit list) and fewer frames wait inside the encoder at a crash
                opts.update({"g": str(max(1, round(fps))), "bf": "0"})
                # frame threads scale across cores far better than x264's sliced threads (PyAV's
                # default); they hold a few more frames in flight, which a crash can lose
                st.codec_context.thread_type = "FRAME"
                cc = st.codec_context  # BT.709, limited range: what the GPU packer writes, tagged for players
                cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1
            st.options = opts
        else:
            st = self.container.add_stream("prores_ks", rate=rate)
            st.pix_fmt = "yuva444p10le"
            st.options = {"profile": "4", "alpha_bits": "16", "vendor": "apl0"}  # profile 4 = 4444
        st.width, st.height = w, h
        st.time_base = 1 / rate
        self.stream = st
        self._colorspace = "itu709" if realtime and codec == "h264" else None
        self.frames = 0  # pictures encoded
        self.packets = 0  # packets in the file: none means it holds no picture at all
        self._next = 0

    def frame(self, arr: np.ndarray, fmt: str = "rgb24", flipped: bool = False):
        """A frame ready to encode (converted once: a repeated picture costs only its encode)."""
        import av

        if fmt == "yuv420p":
            return av.VideoFrame.from_ndarray(arr.reshape(-1, self.size[0]), format="yuv420p")
        if self.codec == "h264" and fmt == "rgba":
            arr, fmt = arr[..., :3], "rgb24"
        img = arr[::-1] if flipped else arr  # PyAV copies a flipped view row by row
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img) if not flipped else img, format=fmt)
        return f.reformat(format=self.stream.pix_fmt, dst_colorspace=self._colorspace)

    def encode(self, frame, pts: int | None = None) -> None:
        frame.pts = self._next if pts is None else pts
        self._next = frame.pts + 1
        for pkt in self.stream.encode(frame):
            self.container.mux(pkt)
            self.packets += 1
        self.frames += 1

    def write(self, arr: np.ndarray, fmt: str = "rgb24", flipped: bool = False, pts: int | None = None) -> None:
        self.encode(self.frame(arr, fmt, flipped), pts)

    def flush(self) -> None:
        """Encode what the encoder still holds."""
        for pkt in self.stream.encode():
            self.container.mux(pkt)
            self.packets += 1

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        try:
            self.flush()
        finally:
            self.container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 17) -> Path:
    """Encode [F, H, W, 3] RGB frames (or RGBA, whose alpha H.264 drops) as H.264, written to a
    temporary name and renamed into place (odd sizes are padded by repeating the edge: yuv420p needs
    even ones)."""
    path = Path(path)
    frames = to_uint8(np.asarray(frames))[..., :3]
    _, h, w, _ = frames.shape
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    ew, eh = w + (w % 2), h + (h % 2)
    try:
        with VideoWriter(tmp, (ew, eh), fps, "h264", crf=crf) as out:
            for frame in frames:
                if (eh, ew) != (h, w):
                    frame = np.pad(frame, ((0, eh - h), (0, ew - w), (0, 0)), mode="edge")
                out.write(frame)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def decode(path, fmt: str = "rgb24", max_size: int | None = None, max_frames: int | None = None) -> np.ndarray:
    """Every frame of a video as [frames, H, W, C] uint8 (``fmt`` rgb24 or rgba), scaled down to fit
    ``max_size`` pixels on its longer side; a file that cannot be decoded is a PaikError."""
    import av

    frames = []
    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            w, h = stream.codec_context.width, stream.codec_context.height
            scale = 1.0 if max_size is None else min(1.0, max_size / max(w, h))
            size = (max(1, int(w * scale)), max(1, int(h * scale)))
            for fr in c.decode(stream):
                frames.append(fr.to_ndarray(format=fmt, width=size[0], height=size[1]))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.FFmpegError, OSError, IndexError) as e:
        raise PaikError(f"{path}: cannot decode the video ({e})") from None
    if not frames:
        raise PaikError(f"{path}: the video has no frames")
    return np.stack(frames)
