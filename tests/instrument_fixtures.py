"""Synthetic bundles with known maps, for the instrument's tests (no model needed).

The map of token t at (step s, block b, head h) is a Gaussian blob whose centre moves left to
right across the latent frames; its height depends on (s, b, h) and its radius on t, so every
axis leaves a distinct, predictable mark, and ``expected`` recomputes any slice in numpy.
"""

from __future__ import annotations

import numpy as np

WORDS = ("a", "red", "kiss", "</s>")
# prompt pieces: "▁a" "▁red" "▁ki" "ss" "</s>" -> word "kiss" spans two pieces
PIECES = (("▁a", "a", 0), ("▁red", "red", 1), ("▁ki", "kiss", 2), ("ss", "kiss", 2), ("</s>", "</s>", 3))


def blob(f: int, h: int, w: int, token: int, s: int, b: int, hd: int) -> np.ndarray:
    """[F', H', W'] float32 in (0, 1)."""
    ff, yy, xx = np.meshgrid(np.arange(f), np.arange(h), np.arange(w), indexing="ij")
    cx = (ff + 0.5 * s) / max(f - 1, 1) * (w - 1) * 0.8 + 0.1 * (w - 1)
    cy = (h - 1) * (0.3 + 0.4 * (b % 3) / 2)
    r = 1.0 + 0.5 * token + 0.3 * hd
    amp = 0.05 + 0.9 * ((s * 7 + b * 3 + hd * 5 + token) % 11) / 10
    return (amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)) * 0.2).astype(np.float32)


def expected_maps(steps: int, blocks: int, heads: int, latent=(4, 6, 8)) -> np.ndarray:
    """[step, block, head, piece, F', H', W'] float16, exactly what the fixture bundle stores."""
    f, h, w = latent
    out = np.zeros((steps, blocks, heads, len(PIECES), f, h, w), np.float16)
    for s in range(steps):
        for b in range(blocks):
            for hd in range(heads):
                for t in range(len(PIECES)):
                    out[s, b, hd, t] = blob(f, h, w, t, s, b, hd)
    return out


def make_bundle(path, steps: int = 3, blocks: int = 4, heads: int = 2, latent=(4, 6, 8), video: bool = True,
                fps: int = 8, preview: bool = True):
    """Write a bundle with known maps (and a video whose frame k is a flat gray of level 20*k,
    and previews whose step s is a flat color) to ``path``; returns the [S,B,H,T,F,H,W] maps."""
    import torch

    from paik.capture.layout import Layout
    from paik.capture.writer import BundleWriter

    f, h, w = latent
    maps = expected_maps(steps, blocks, heads, latent)
    frames, width, height = (f - 1) * 4 + 1, w * 16, h * 16
    layout = Layout(steps=list(range(steps)), blocks=list(range(blocks)), heads=heads, head_mean=False,
                    n_heads=heads, tokens=list(range(len(PIECES))), latent=(f, h, w), n_real=len(PIECES), seq_len=16)
    tokens = [dict(index=i, id=100 + i, piece=p, word=wd, word_index=wi, special=p == "</s>")
              for i, (p, wd, wi) in enumerate(PIECES)]
    manifest = {
        "layout": layout.to_json(), "tokens": tokens, "prompt": "a red kiss",
        "settings": {"frames": frames, "width": width, "height": height, "fps": fps, "steps": steps, "guidance": 5.0},
        "video": {"file": "video.mp4"} if video else None,
    }
    wr = BundleWriter(path, manifest)
    for s in range(steps):
        tensors = {
            "maps": torch.from_numpy(maps[s].copy()),
            "padding": torch.zeros((blocks, heads, f, h, w), dtype=torch.float16),
        }
        if preview:
            tensors["preview"] = torch.full((f, 2 * h, 2 * w, 3), 0, dtype=torch.uint8)
            tensors["preview"][..., s % 3] = 200
        wr.add_step({"index": s, "timestep": 1000.0 * (1 - s / steps), "sigma": 1 - s / steps, "expert": "transformer"},
                    tensors)
    wr.close()
    if video:
        write_gray_video(path / "video.mp4", frames, width, height, fps)
    return maps


def write_gray_video(path, frames: int, width: int, height: int, fps: int) -> None:
    import av

    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = width, height, "yuv444p"
        st.options = {"crf": "0"}
        for k in range(frames):
            img = np.full((height, width, 3), min(255, 20 * k), np.uint8)
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
