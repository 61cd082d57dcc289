"""Backgrounds for compositing: the bundle's generated video and its per-step previews, as RGBA8
tiles for :mod:`paik.instrument.render.atlas`.

The video is decoded once (PyAV) into a [frames, H, W] volume, downscaled only if the GPU's 3D
texture limit demands it; the shader picks the frame at the map's time, so video and maps stay
in sync at any output rate.
"""

from __future__ import annotations

import logging

import numpy as np


log = logging.getLogger(__name__)


def decode_video(path, max_size: int) -> np.ndarray:
    """[frames, H, W, 4] uint8 RGBA of every frame that fits a 3D texture of side ``max_size``."""
    from paik.video import decode

    frames = decode(path, "rgba", max_size=max_size, max_frames=max_size + 1)
    if len(frames) > max_size:
        log.warning("%s: only the first %d frames fit a 3D texture here", path, max_size)
        frames = frames[:max_size]
    return frames


def previews(bundle) -> np.ndarray | None:
    """[steps, F', h, w, 4] uint8 RGBA of every captured step's preview, or None if absent."""
    out = []
    for s in bundle.step_indices:
        p = bundle.preview(s)
        if p is None:
            return None
        p = np.asarray(p)
        out.append(np.concatenate([p, np.full(p.shape[:-1] + (1,), 255, np.uint8)], -1))
    return np.stack(out) if out else None
