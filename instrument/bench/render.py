"""``paik bench render``: GPU time per frame of every view (GL timer queries), headless.

Without a bundle it uses an in-memory capture of Wan2.1-1.3B's full layout for one token (25
steps x 30 blocks x 12 heads x 16x30x52, random maps and previews): the shader's cost depends on
the layout, not on the values. Per view it also reports the one-off cost of a selection change
(reduce + upload), which is what a performer feels when switching views.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paik.capture.layout import Layout
from paik.capture.tokens import Token

from paik.instrument.control.params import VIEWS, Params

SIZES = ((1920, 1080), (3840, 2160))


class SyntheticBundle:
    """The slice of the Bundle API the instrument reads, over arrays in memory."""

    def __init__(self, steps=25, blocks=30, heads=12, latent=(16, 30, 52), seed=0):
        f, h, w = latent
        rng = np.random.default_rng(seed)
        self.path = Path("<synthetic Wan2.1-1.3B layout>")
        self.layout = Layout(steps=list(range(steps)), blocks=list(range(blocks)), heads=heads, head_mean=False,
                             n_heads=heads, tokens=[0], latent=latent, n_real=2, seq_len=512)
        self.tokens = [Token(0, 0, "▁kiss", "kiss", 0, False), Token(1, 1, "</s>", "</s>", 1, True)]
        self.step_indices = list(range(steps))
        self.manifest = {"prompt": "kiss", "settings": {"frames": (f - 1) * 4 + 1, "width": w * 16,
                                                        "height": h * 16, "fps": 16}}
        self.video_path = None
        base = rng.random((blocks, heads, 1, f, h, w), dtype=np.float32).astype(np.float16)
        # distinct per step without 25x the random generation
        self._maps = [np.roll(base, s, axis=-1) for s in range(steps)]
        self._preview = rng.integers(0, 255, (f, 2 * h, 2 * w, 3), dtype=np.uint8)

    def step_arrays(self, step):
        return {"maps": self._maps[step]}

    def preview(self, step):
        return np.roll(self._preview, step, axis=2)

    def resolve(self, token, uncond=False):
        return [0]


@dataclass
class Row:
    view: str
    size: str
    p50_ms: float
    p99_ms: float
    select_ms: float


def run(bundle=None, sizes=SIZES, frames: int = 120, views=VIEWS, composite="overlay", background="preview",
        device="auto", log=print) -> list[Row]:
    from paik.instrument.render.headless import Offscreen, egl_context
    from paik.instrument.render.renderer import Renderer
    from paik.instrument.render.source import Source
    from paik.instrument.render import colormaps

    bundle = bundle if bundle is not None else SyntheticBundle()
    src = Source(bundle, device)
    ctx = egl_context()
    log(f"GL: {ctx.info['GL_RENDERER']} | {ctx.info['GL_VERSION']} | reducer on {src.reducer.device}")
    d = src.dims
    log(f"capture: {d.n_steps} steps x {d.n_blocks} blocks x {d.n_heads} heads, latent {src.reducer.latent}")
    renderer = Renderer(ctx, src)
    rows = []
    for w, h in sizes:
        off = Offscreen(ctx, (w, h))
        off.use()
        for view in views:
            p = Params().bind(len(src.words), d.n_steps, d.n_blocks, d.n_heads, colormaps.available())
            # mid-way positions so every crossfade is active (the most taps per pixel)
            p.view, p.step, p.block, p.composite, p.background = view, d.n_steps / 2 - 0.5, d.n_blocks / 2 - 0.5, composite, background
            p.norm, p.clip_hi = "frame", 99.5
            t0 = time.perf_counter()
            renderer.draw(p, 0.0, (0, 0, w, h), gap=2.0)
            ctx.finish()
            select_ms = (time.perf_counter() - t0) * 1e3
            for i in range(5):  # warm-up
                renderer.draw(p, i / 7, (0, 0, w, h), gap=2.0)
            times = []
            for i in range(frames):
                q = ctx.query(time=True)
                with q:
                    renderer.draw(p, (i % 97) / 96, (0, 0, w, h), gap=2.0)
                times.append(q.elapsed / 1e6)  # ns -> ms; reading it waits for the GPU
            a = np.array(times)
            rows.append(Row(view, f"{w}x{h}", float(np.percentile(a, 50)), float(np.percentile(a, 99)), select_ms))
            log(_fmt(rows[-1]))
        off.release()
    return rows


HEADER = f"{'view':<18} {'resolution':>10} {'p50 ms':>8} {'p99 ms':>8} {'select ms':>10}"


def _fmt(r: Row) -> str:
    return f"{r.view:<18} {r.size:>10} {r.p50_ms:8.3f} {r.p99_ms:8.3f} {r.select_ms:10.1f}"


def write_json(rows: list[Row], path: Path, info: dict) -> None:
    path.write_text(json.dumps({**info, "rows": [r.__dict__ for r in rows]}, indent=1) + "\n")


def first_frame(path, size=(1920, 1080), token=None, device: str = "auto") -> dict:
    """Seconds from opening a bundle to its first finished frame (headless, default view), and
    how much of the bundle that read: opening must not read the maps (design: a 13 GiB bundle
    shows within 1 s)."""
    import resource

    from paik.instrument.render import colormaps
    from paik.instrument.render.headless import Offscreen, egl_context
    from paik.instrument.render.renderer import Renderer
    from paik.instrument.render.source import Source

    if device != "cpu":  # program start-up, not the bundle: load torch (CUDA probe) before timing
        try:
            import torch

            torch.cuda.is_available()
        except ImportError:
            pass
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    io0 = _read_bytes()
    t0 = time.perf_counter()
    src = Source.open(path, device)
    ctx = egl_context()
    renderer = Renderer(ctx, src)
    off = Offscreen(ctx, size)
    off.use()
    d = src.dims
    p = Params().bind(len(src.words), d.n_steps, d.n_blocks, d.n_heads, colormaps.available())
    if token is not None:
        p.token = src.word_index(token)
    renderer.draw(p, 0.0, (0, 0, *size), gap=2.0)
    ctx.finish()
    seconds = time.perf_counter() - t0
    maps = sum(f.stat().st_size for f in Path(path).glob("maps/*.safetensors"))
    io1 = _read_bytes()
    return {"seconds": seconds, "bundle_gib": maps / 2**30, "gl": ctx.info["GL_RENDERER"],
            "read_mib": None if io0 is None or io1 is None else (io1 - io0) / 2**20,
            "rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024}


def _read_bytes() -> int | None:
    """Bytes this process has read from storage so far (Linux), or None."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
