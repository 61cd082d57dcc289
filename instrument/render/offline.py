"""``paik render`` and ``paik grid``: the live pictures, made headless for artworks and figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from paik.errors import PaikError

from paik.video import VideoWriter, ensure_dir
from paik.instrument.render.headless import Offscreen, egl_context
from paik.instrument.control.params import Params
from paik.instrument.render.renderer import Renderer
from paik.instrument.render.source import Source


# Sizes a render or grid may ask for. Checked before anything is allocated: a typo (or a damaged
# manifest's frame count) must be one line, not minutes of work and then an out-of-memory death.
MAX_RENDER_FRAMES = 1_000_000  # about 4.6 hours at 60 fps
MAX_PIXELS = 8192 * 8192  # one RGBA8 frame of this is 256 MiB; the renderer holds a few


def check_frames(duration: float, fps: float) -> int:
    """The number of frames ``duration`` seconds at ``fps`` make, refused when absurd."""
    n = duration * fps
    if not (math.isfinite(n) and round(n) <= MAX_RENDER_FRAMES):
        raise PaikError(f"--duration {duration:g} s at --fps {fps:g} is {n:,.0f} frames; a render makes at most "
                        f"{MAX_RENDER_FRAMES:,}: give a shorter --duration or a lower --fps")
    return max(1, round(n))


def check_size(size: tuple[int, int], what: str, ctx=None) -> None:
    """Refuse an output size no GPU buffer can hold, before the renderer allocates anything."""
    w, h = size
    if w < 1 or h < 1:
        raise PaikError(f"{what} {w}x{h}: width and height must be positive")
    limit = int(ctx.info["GL_MAX_RENDERBUFFER_SIZE"]) if ctx is not None else None
    if limit is not None and (w > limit or h > limit):
        raise PaikError(f"{what} {w}x{h} is larger than this GPU's limit of {limit} pixels a side")
    if w * h > MAX_PIXELS:
        raise PaikError(f"{what} {w}x{h} is {w * h / 1e6:.0f} megapixels; at most {MAX_PIXELS / 1e6:.0f} "
                        "(8192x8192) are rendered: choose a smaller size")


def frame_times(n: int) -> np.ndarray:
    """Video positions (0..1) of n output frames: first and last frames of the video included,
    so a render of any length spans the whole generation."""
    return np.zeros(1) if n == 1 else np.arange(n) / (n - 1)


def render_video(src: Source, p: Params, out: Path, size: tuple[int, int], fps: float, duration: float,
                 codec: str = "h264", progress: bool = True, ctx=None) -> int:
    """Render ``duration`` seconds at ``fps`` to ``out``; returns the number of frames written."""
    n = check_frames(duration, fps)
    check_size(size, "--size")
    ctx = ctx or egl_context()
    check_size(size, "--size", ctx)
    renderer = Renderer(ctx, src)
    off = Offscreen(ctx, size)
    enc = VideoWriter(out, size, fps, codec, crf=16)
    from tqdm import tqdm

    try:
        for i in tqdm(range(n), desc=f"render {out.name}", unit="frame", disable=not progress):
            t = 0.0 if n == 1 else i / (n - 1)  # as frame_times(n), without an array of n
            off.use()
            renderer.draw(p, float(t), (0, 0, *size), premultiply=(codec == "h264"))
            enc.write(off.read(), "rgba")  # premultiplied for H.264 (alpha dropped), straight for ProRes
    finally:
        enc.close()
        off.release()
    return n


def cell_rects(size, rows, cols, gap, title_h=0):
    """(x, y, w, h) of every cell in image pixels, as attention.frag lays them out."""
    w, h = size
    px, py = (w + gap) / cols, (h + gap) / rows
    return [(c * px, title_h + r * py, px - gap, py - gap) for r in range(rows) for c in range(cols)]


def label_grid(img: np.ndarray, labels, rows, cols, gap, title: str):
    """A title strip above the grid and each cell's label in its corner (like the paper's figures)."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = img.shape[:2]
    fs = max(10, min(18, int(min(w / cols, h / rows) / 9)))
    font = ImageFont.load_default(size=fs)
    title_h = fs * 2
    canvas = Image.new("RGB", (w, h + title_h), (255, 255, 255))
    canvas.paste(Image.fromarray(img[..., :3]), (0, title_h))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, fs // 2), title, fill=(0, 0, 0), font=font)
    if len(labels) > 1:
        for (x, y, _, _), text in zip(cell_rects((w, h), rows, cols, gap, title_h), labels):
            draw.text((x + 3, y + 2), text, fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    return canvas


def grid_figures(src: Source, p: Params, out_dir: Path, view: str, values: list[float], times: list[float],
                 cell_width: int, gap: int, token_label: str, ctx=None) -> list[Path]:
    """One labelled PNG per value (step for 'blocks', 'twin' and 'diff', block for 'steps'/'heads-steps')
    and time."""
    from dataclasses import replace

    from paik.instrument.render.views import plan

    axis = "step" if view in ("grid-blocks", "twin", "diff") else "block"
    sizes = []
    for value in values:  # every figure's size is checked before the first is drawn
        setattr(p, axis, float(value))
        q = p.copy()
        if view in ("twin", "diff"):  # one map, twice side by side or once
            q.view = "single"
        pl = plan(q, src.dims, src.words[p.token].positions, token_label)
        if view == "twin":
            pl = replace(pl, cols=2, labels=("unbent", "bent"), title=f"unbent | bent  {pl.title}")
        elif view == "diff":
            pl = replace(pl, title=f"bent - unbent  {pl.title}")
        cell_h = max(1, round(cell_width / src.dims.aspect))
        size = (pl.cols * cell_width + (pl.cols - 1) * gap, pl.rows * cell_h + (pl.rows - 1) * gap)
        check_size(size, f"the grid ({pl.rows}x{pl.cols} cells of --cell-width {cell_width}, --gap {gap})")
        sizes.append((value, pl, size))
    ensure_dir(out_dir)
    ctx = ctx or egl_context()
    renderer = Renderer(ctx, src)
    written = []
    for value, pl, size in sizes:
        check_size(size, f"the grid ({pl.rows}x{pl.cols} cells of --cell-width {cell_width}, --gap {gap})", ctx)
        setattr(p, axis, float(value))
        off = Offscreen(ctx, size)
        for t in times:
            off.use()
            renderer.draw(p, float(t), (0, 0, *size), gap=gap, premultiply=True)
            img = off.read()
            name_val = "" if view == "grand" else f"_{axis}{_model_index(src, axis, value)}"
            pl = renderer.plan if view in ("twin", "diff") else pl  # as drawn
            path = out_dir / f"{_slug(token_label)}_{view}{name_val}_t{t:.2f}.png"
            label_grid(img, pl.labels, pl.rows, pl.cols, gap, f"{pl.title}  t={t:.2f}").save(path)
            written.append(path)
        off.release()
    return written


def _model_index(src: Source, axis: str, pos: float) -> int:
    names = src.dims.step_names if axis == "step" else src.dims.block_names
    return names[int(round(pos))]


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in text.strip("▁"))
    return keep.strip("-") or "token"


def fit_duration(duration: float | None, src: Source) -> float:
    d = src.duration() if duration is None else duration
    if not (d > 0 and math.isfinite(d)):
        raise PaikError(f"--duration must be a positive number of seconds, not {duration}")
    return d
