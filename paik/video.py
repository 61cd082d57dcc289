"""Writing frames to MP4 with PyAV (H.264, yuv420p: plays everywhere)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[F, H, W, 3] floats in [0, 1] (or uint8) -> uint8."""
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 17) -> Path:
    """Encode [F, H, W, 3] RGB frames as H.264; written to a temporary name, then renamed."""
    import av
    from fractions import Fraction

    path = Path(path)
    frames = to_uint8(np.asarray(frames))
    f, h, w, _ = frames.shape
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    rate = Fraction(fps).limit_denominator(1001)
    try:
        with av.open(str(tmp), "w") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height = w + (w % 2), h + (h % 2)
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": "medium"}
            for frame in frames:
                if frame.shape[:2] != (stream.height, stream.width):  # yuv420p needs even sizes
                    frame = np.pad(frame, ((0, stream.height - h), (0, stream.width - w), (0, 0)), mode="edge")
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            container.mux(stream.encode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave a half-written temporary behind
        raise
    return path
