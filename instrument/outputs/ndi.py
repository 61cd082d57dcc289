"""NDI output (cyndilib, ``pip install 'paik[ndi]'``): frames as an NDI source on the network,
for TouchDesigner, Resolume, OBS, VDMX. RGBA with straight alpha; NDI compresses on send."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from paik.instrument.outputs._extras import need
from paik.instrument.outputs.base import ThreadedSink


class NDISink(ThreadedSink):
    label = "ndi"
    components = 4

    def __init__(self, name: str, size, fps, lib=None):
        if lib is None:
            need("cyndilib", "ndi", "NDI output")
            from cyndilib.sender import Sender
            from cyndilib.video_frame import VideoSendFrame
            from cyndilib.wrapper.ndi_structs import FourCC
        else:  # tests: a stand-in namespace with the same three names
            Sender, VideoSendFrame, FourCC = lib.Sender, lib.VideoSendFrame, lib.FourCC
        self.label = f"ndi:{name}"
        self.name = name
        vf = VideoSendFrame()
        vf.set_resolution(*size)
        vf.set_frame_rate(Fraction(fps).limit_denominator(1001))
        vf.set_fourcc(FourCC.RGBA)
        # we pace frames ourselves (the output's cadence): NDI must not block on its own clock
        self.sender = Sender(name, clock_video=False)
        self.sender.set_video_frame(vf)
        self.sender.open()
        super().__init__(size, fps)

    def _deliver(self, frame: np.ndarray, index: int) -> None:
        # NDI wants the top row first; one copy, on this thread
        self.sender.write_video(np.ascontiguousarray(frame[::-1]).ravel())

    def connections(self) -> int:
        return int(self.sender.get_num_connections(0))

    def _release(self) -> None:
        self.sender.close()
