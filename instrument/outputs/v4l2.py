"""A Linux virtual camera (pyvirtualcam on v4l2loopback, ``pip install 'paik[v4l2]'``): the
output appears as a webcam in OBS, browsers and video-call apps. RGB, alpha premultiplied over
black (cameras have no alpha)."""

from __future__ import annotations

import numpy as np

from paik.errors import PaikError

from paik.instrument.outputs._extras import need
from paik.instrument.outputs.base import ThreadedSink

LOOPBACK_HINT = ("load the v4l2loopback kernel module first, e.g. 'sudo modprobe v4l2loopback devices=1 "
                 "video_nr=10 card_label=Paik exclusive_caps=1' (Debian/Ubuntu: apt install v4l2loopback-dkms), "
                 "then use --out v4l2:/dev/video10")


class V4L2Sink(ThreadedSink):
    label = "v4l2"
    components = 3

    def __init__(self, device: str, size, fps, lib=None):
        pvc = lib if lib is not None else need("pyvirtualcam", "v4l2", "The virtual camera output", "linux")
        self.label = f"v4l2:{device}"
        self.device = device
        w, h = size
        try:
            self.cam = pvc.Camera(width=w, height=h, fps=fps, fmt=pvc.PixelFormat.RGB, device=device,
                                  backend="v4l2loopback")
        except RuntimeError as e:
            raise PaikError(f"cannot open the virtual camera {device} ({e}); {LOOPBACK_HINT}") from None
        super().__init__(size, fps)

    def _deliver(self, frame: np.ndarray, index: int) -> None:
        self.cam.send(np.ascontiguousarray(frame[::-1]))

    def _release(self) -> None:
        self.cam.close()
