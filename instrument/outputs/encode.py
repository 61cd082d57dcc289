"""Video files from rendered frames (PyAV): H.264 for sharing, ProRes 4444 with alpha for
compositing in an editor."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from paik.errors import PaikError

CODECS = ("h264", "prores")


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


class Encoder:
    def __init__(self, path: Path, size: tuple[int, int], fps: float, codec: str = "h264", crf: int = 16):
        import av

        w, h = size
        if codec == "h264" and (w % 2 or h % 2):
            raise PaikError(f"H.264 needs an even width and height, not {w}x{h} (or use --codec prores)")
        if codec == "prores" and path.suffix.lower() not in (".mov", ".mxf"):
            raise PaikError(f"--codec prores writes QuickTime: name the output .mov, not {path.name}")
        if path.is_dir():
            raise PaikError(f"{path} is a directory: name the video file, like {path / 'out.mp4'}")
        ensure_dir(path.parent)
        rate = Fraction(fps).limit_denominator(1001)
        self.codec = codec
        try:
            self.container = av.open(str(path), "w")
        except ValueError:  # FFmpeg knows no container for this file name
            raise PaikError(f"cannot tell a video format from the name {path.name}: name it .mp4 (or .mov)") from None
        except (av.FFmpegError, OSError) as e:
            raise PaikError(f"cannot write {path} ({e})") from None
        if codec == "h264":
            self.stream = self.container.add_stream("libx264", rate=rate)
            self.stream.pix_fmt = "yuv420p"
            self.stream.options = {"crf": str(crf), "preset": "medium"}
            self.fmt = "rgb24"
        elif codec == "prores":
            self.stream = self.container.add_stream("prores_ks", rate=rate)
            self.stream.pix_fmt = "yuva444p10le"
            self.stream.options = {"profile": "4", "alpha_bits": "16", "vendor": "apl0"}  # 4 = 4444
            self.fmt = "rgba"
        else:
            raise PaikError(f"unknown codec {codec!r}; choose {', '.join(CODECS)}")
        self.stream.width, self.stream.height = w, h

    def write(self, rgba: np.ndarray) -> None:
        """rgba [H, W, 4] uint8 (premultiplied for H.264, straight alpha for ProRes)."""
        import av

        img = rgba[..., :3] if self.fmt == "rgb24" else rgba
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format=self.fmt)
        for pkt in self.stream.encode(frame):
            self.container.mux(pkt)

    def close(self) -> None:
        for pkt in self.stream.encode():
            self.container.mux(pkt)
        self.container.close()
