"""Masks from a video file (issue 17 item 1): ``mask WORD FILE.mp4`` reads the video with PyAV,
resamples it to the latent frames F' and to H' x W'; checked against a reference computed here
independently (frames decoded directly with PyAV, block means in numpy), on the exact bend path
(the bent block output equals explicit attention with the masked probabilities), and the
unreadable file as a one-line error offline."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from paik.errors import PaikError

LATENT = (3, 4, 4)  # F', H', W': 9 video frames, 64x64 pixels
FRAMES = 4 * (LATENT[0] - 1) + 1


def write_mask_video(path, frames: int, size: int = 64, binary: bool = False) -> np.ndarray:
    """A lossless gray video whose pattern moves from frame to frame; returns its frames [N, size, size].
    ``binary``: black and white blocks only (no detail inside them)."""
    import av

    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, (size // 16, size // 16))
    out = []
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264rgb", rate=8)
        st.width = st.height = size
        st.pix_fmt = "rgb24"
        st.options = {"crf": "0"}
        for k in range(frames):
            cells = np.roll(base, k, axis=1) * ((k % 3) + 1) // 3
            if binary:
                cells = np.where(np.roll(base, k, axis=1) > 100, 255, 0)
            img = np.kron(cells, np.ones((16, 16))).astype(np.uint8)
            if not binary:
                img[::7, ::5] = 255 - img[::7, ::5]  # detail inside each block, so the box filter matters
            out.append(img)
            for pkt in st.encode(av.VideoFrame.from_ndarray(np.repeat(img[..., None], 3, -1), "rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return np.stack(out)


def reference(path, latent) -> np.ndarray:
    import av

    f, hh, ww = latent
    with av.open(str(path)) as c:
        frames = np.stack([fr.to_ndarray(format="rgb24")[..., 0] for fr in c.decode(video=0)]).astype(np.float64)
    n, h, w = frames.shape
    blocks = frames.reshape(n, hh, h // hh, ww, w // ww).mean((2, 4)) / 255.0  # box filter, exact ratios
    total = 4 * (f - 1) + 1
    at = [min(i * n // total, n - 1) for i in range(total)]
    t = blocks[at]
    return np.stack([t[0]] + [t[4 * k - 3: 4 * k + 1].mean(0) for k in range(1, f)])


@pytest.mark.parametrize("frames", [FRAMES, 20])  # the take's length, and a longer one resampled in time
def test_video_mask_matches_an_independent_reference(tmp_path, frames):
    from paik.capture.bend import video_mask

    path = tmp_path / "mask.mp4"
    write_mask_video(path, frames)
    got = video_mask(path, LATENT, "mask kiss mask.mp4").numpy()
    want = reference(path, LATENT)
    assert got.shape == LATENT
    assert np.abs(got - want).max() <= 1.5 / 255  # PIL's box filter rounds to 8 bits
    assert np.ptp(want, axis=0).max() > 0.2  # the frames differ: a per-frame mask, not one image


def test_video_mask_bends_each_latent_frame(tmp_path):
    """On maps [H, T, F'*H'*W'], the spatial mask multiplies latent frame k by mask frame k."""
    from paik.capture.bend import parse_bend, spatial, video_mask

    path = tmp_path / "mask.mp4"
    write_mask_video(path, FRAMES)
    spec = parse_bend(f"mask kiss {path}")
    maps = torch.rand(2, 3, int(np.prod(LATENT)))
    m = video_mask(path, LATENT)
    got = spatial("mask", spec, maps, LATENT, m)
    want = (maps.reshape(2, 3, *LATENT) * m).reshape(maps.shape)
    assert torch.allclose(got, want)
    again = spatial("mask", spec, maps, LATENT)  # a spec used on its own reads the file itself
    assert torch.allclose(again, want)


def test_unreadable_mask_video_is_one_line(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for f in (bad, tmp_path / "missing.mp4"):
        r = subprocess.run([sys.executable, "-m", "paik", "generate", "a kiss", "-m", "tiny", "-q", "--steps", "1",
                            "-o", str(tmp_path / "out"), "--bend", f"mask kiss {f}"],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        lines = [ln for ln in r.stderr.splitlines() if "paik" in ln]  # not the tiny model's first build
        assert len(lines) == 1 and lines[0].startswith("paik: error:") and "mask video" in lines[0], r.stderr
    from paik.capture.bend import video_mask

    with pytest.raises(PaikError, match="cannot be read"):
        video_mask(bad, LATENT, "mask kiss broken.mp4")


def test_video_mask_on_the_tiny_model_is_exact(tmp_path):
    """A take bent with a mask video: the captured maps of the word are the unbent ones times the
    mask, renormalized — zero exactly where the mask is black, in each latent frame."""
    from paik.capture.bundle import open_bundle
    from paik.capture.generate import GenerateOptions, generate
    from paik.capture.models import load_pipeline

    path = tmp_path / "mask.mp4"
    write_mask_video(path, FRAMES, binary=True)
    loaded = load_pipeline("tiny", device="cpu")
    opts = GenerateOptions(prompt="a kiss", out=str(tmp_path / "b"), steps=1, frames=FRAMES, height=64, width=64,
                           quiet=True, preview="none", bends=[f"mask kiss {path}"])
    b = open_bundle(generate(opts, loaded=loaded))
    lay = b.layout
    assert tuple(lay.latent) == LATENT
    kiss = b.resolve("kiss")
    maps = np.asarray(b.step_arrays(b.step_indices[0])["maps"][:, :, kiss], dtype=np.float32).sum(2)
    m = reference(path, LATENT)
    zero = m < 1e-6
    assert zero.any() and (~zero).any()
    assert np.abs(maps[..., zero]).max() == 0
    assert (maps[..., ~zero] > 0).mean() > 0.9
