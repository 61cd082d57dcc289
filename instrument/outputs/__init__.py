"""Live outputs of ``paik play``: ``--out KIND:TARGET[,size=WxH][,fps=N]`` (repeatable).

=============================  ================================================  ==============
spec                           what                                              extra
=============================  ================================================  ==============
``ndi:NAME``                   an NDI source called NAME                          ``paik[ndi]``
``syphon:NAME``                a Syphon server (macOS), GL texture, no CPU copy   ``paik[syphon]``
``spout:NAME``                 a Spout sender (Windows), GL texture, no CPU copy  ``paik[spout]``
``v4l2:/dev/videoN``           a v4l2loopback virtual camera (Linux)              ``paik[v4l2]``
=============================  ================================================  ==============

Each output renders at its own size and rate (defaults: ``--out-size``/``--out-fps``), from the
same parameters as the window but without its overlays. Libraries are imported only when
their output is opened; a missing one is a PaikError naming the extra to install.
"""

from __future__ import annotations

from dataclasses import dataclass

from paik.errors import PaikError

KINDS = ("ndi", "syphon", "spout", "v4l2")
EXAMPLES = "ndi:Paik, syphon:Paik, spout:Paik, v4l2:/dev/video10, ndi:Paik,size=1280x720,fps=30"


@dataclass(frozen=True)
class OutSpec:
    kind: str
    target: str  # NDI/Syphon/Spout name, or the v4l2 device path
    size: tuple[int, int] | None = None
    fps: float | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise PaikError(f"{text!r}: expected WIDTHxHEIGHT, like 1920x1080") from None
    if w < 1 or h < 1:
        raise PaikError(f"{text!r}: width and height must be positive")
    return w, h


def parse_fps(text: str) -> float:
    try:
        fps = float(text)
    except ValueError:
        raise PaikError(f"fps {text!r}: expected a number of frames per second, like 60") from None
    if not 0 < fps <= 1000:
        raise PaikError(f"fps {text!r}: expected a number of frames per second between 0 and 1000")
    return fps


def parse_out(text: str) -> OutSpec:
    """``KIND:TARGET[,size=WxH][,fps=N]`` -> OutSpec, with a clear error for anything else."""
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in KINDS:
        raise PaikError(f"--out {text!r}: expected KIND:NAME with KIND one of {', '.join(KINDS)} "
                        f"(e.g. {EXAMPLES})")
    target, *opts = rest.split(",")
    target = target.strip()
    if not target:
        raise PaikError(f"--out {text!r}: give a {'device, like /dev/video10' if kind == 'v4l2' else 'name'} "
                        f"after '{kind}:'")
    if kind == "v4l2" and not target.startswith("/dev/"):
        raise PaikError(f"--out {text!r}: the virtual camera is a device path, like v4l2:/dev/video10")
    size = fps = None
    for opt in opts:
        key, eq, value = opt.partition("=")
        key = key.strip().lower()
        if key == "size" and eq:
            size = parse_size(value.strip())
        elif key == "fps" and eq:
            fps = parse_fps(value.strip())
        else:
            raise PaikError(f"--out {text!r}: unknown option {opt!r}; options are size=WxH and fps=N")
    return OutSpec(kind, target, size, fps)


def parse_outs(texts) -> list[OutSpec]:
    specs = [parse_out(t) for t in texts or ()]
    seen = set()
    for s in specs:
        if (s.kind, s.target) in seen:
            raise PaikError(f"--out {s} is given twice")
        seen.add((s.kind, s.target))
    return specs


def open_output(spec: OutSpec, size: tuple[int, int], fps: float, lib=None):
    """Open the sink for ``spec`` (its own size/fps, else the defaults given)."""
    size = spec.size or size
    fps = spec.fps or fps
    if spec.kind == "ndi":
        from paik.instrument.outputs.ndi import NDISink

        return NDISink(spec.target, size, fps, lib=lib)
    if spec.kind == "syphon":
        from paik.instrument.outputs.syphon import SyphonSink

        return SyphonSink(spec.target, size, fps, lib=lib)
    if spec.kind == "spout":
        from paik.instrument.outputs.spout import SpoutSink

        return SpoutSink(spec.target, size, fps, lib=lib)
    from paik.instrument.outputs.v4l2 import V4L2Sink

    return V4L2Sink(spec.target, size, fps, lib=lib)


def add_play_flags(ap) -> None:
    """``paik play``'s flags for recording and live outputs (``paik render --out`` is its file;
    here ``--out`` is a live output)."""
    import argparse

    def size(text):
        try:
            return parse_size(text)
        except PaikError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    def fps(text):
        try:
            return parse_fps(text)
        except PaikError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    g = ap.add_argument_group("recording and live outputs")
    g.add_argument("--record", metavar="FILE",
                   help="record from the start to FILE (.mp4 H.264, or .mov with --record-codec prores); F10, "
                        "OSC or MIDI (parameter 'record') stop and start it, each new take as FILE_2, FILE_3 ...")
    g.add_argument("--record-codec", choices=("h264", "prores"), default="h264",
                   help="h264 (yuv420p, alpha premultiplied over black) or prores (4444 with alpha, .mov)")
    g.add_argument("--out", action="append", default=[], metavar="KIND:NAME",
                   help="send the output live (repeatable): ndi:NAME, syphon:NAME (macOS), spout:NAME (Windows), "
                        "v4l2:/dev/videoN (Linux); add ,size=WxH or ,fps=N for that output alone")
    g.add_argument("--out-size", type=size, metavar="WxH",
                   help="size of recordings and outputs (default: --size); independent of the window")
    g.add_argument("--out-fps", type=fps, default=60.0, metavar="N",
                   help="frame rate of recordings and outputs (default 60)")
