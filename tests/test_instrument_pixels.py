"""Headless EGL renders compared pixel by pixel with a numpy reference of the same view.

The reference takes its volumes from the capture's own ``Bundle.select`` (not the instrument's
reducer), then upsamples, normalizes, shapes, colors and composites in float64 following the
definitions in shaders/README.md and instrument/normalize.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from paik.instrument.render import colormaps, normalize
from paik.instrument.control.params import Params
from instrument_fixtures import make_bundle

W, H = 96, 72


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    p = tmp_path_factory.mktemp("pix") / "b"
    make_bundle(p, steps=3, blocks=4, heads=2)
    return p


@pytest.fixture(scope="module")
def ctx():
    from paik.instrument.render.headless import egl_context

    try:
        c = egl_context()
    except Exception as e:  # no EGL at all on this machine
        pytest.skip(f"no EGL: {e}")
    yield c
    c.release()


@pytest.fixture(scope="module")
def rig(ctx, bundle_dir):
    from paik.instrument.render.headless import Offscreen
    from paik.instrument.render.renderer import Renderer
    from paik.instrument.render.source import Source

    src = Source.open(bundle_dir, device="cpu")
    return src, Renderer(ctx, src), Offscreen(ctx, (W, H))


def params(src, **kw) -> Params:
    p = Params().bind(len(src.words), src.dims.n_steps, src.dims.n_blocks, src.dims.n_heads, colormaps.available())
    p.token = [w.label for w in src.words].index("kiss")
    p.composite = "heatmap"
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def gl_render(rig, p, time, gap=0.0):
    src, r, off = rig
    off.use()
    r.draw(p, time, (0, 0, W, H), gap=gap, premultiply=False)
    return off.read().astype(np.float64)


# -- the reference ----------------------------------------------------------------------------
def f16(a):
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float64)


def sample(vol, u, v, z):
    """Trilinear sample of vol [F, H, W] at texture coords u, v in 0..1 (half-texel centers,
    clamped to the edge) and latent frame position z."""
    f, h, w = vol.shape
    x = np.clip(u * w, 0.5, w - 0.5) - 0.5
    y = np.clip(v * h, 0.5, h - 0.5) - 0.5
    zz = min(max(z, 0.0), f - 1.0)
    x0, y0, z0 = np.floor(x).astype(int), np.floor(y).astype(int), int(math.floor(zz))
    x1, y1, z1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1), min(z0 + 1, f - 1)
    fx, fy, fz = x - x0, y - y0, zz - z0

    def plane(k):
        a = vol[k]
        top = a[y0[:, None], x0[None, :]] * (1 - fx)[None, :] + a[y0[:, None], x1[None, :]] * fx[None, :]
        bot = a[y1[:, None], x0[None, :]] * (1 - fx)[None, :] + a[y1[:, None], x1[None, :]] * fx[None, :]
        return top * (1 - fy)[:, None] + bot * fy[:, None]

    return plane(z0) * (1 - fz) + plane(z1) * fz


def norm_value(vol, rng, u, v, z):
    """rng [F, 2] (lo, hi) per frame, interpolated like the map."""
    f = vol.shape[0]
    zz = min(max(z, 0.0), f - 1.0)
    z0 = int(math.floor(zz))
    z1 = min(z0 + 1, f - 1)
    lo, hi = rng[z0] * (1 - (zz - z0)) + rng[z1] * (zz - z0)
    return np.clip((sample(vol, u, v, z) - lo) / max(hi - lo, 1e-20), 0, 1)


def shape_color(n, p, bg=None):
    n = np.clip(n * p.gain, 0, 1) ** p.gamma
    m = (n >= p.threshold).astype(np.float64)
    lut = colormaps.lut_u8(p.colormap).astype(np.float64) / 255
    idx = n * 255
    i0 = np.floor(idx).astype(int)
    i1 = np.minimum(i0 + 1, 255)
    heat = lut[i0] * (1 - (idx - i0))[..., None] + lut[i1] * (idx - i0)[..., None]
    if p.composite == "heatmap":  # opaque but where the threshold masks
        rgb, a = heat, m
    elif p.composite == "alpha":
        rgb, a = (heat if bg is None else bg), n * m
    elif bg is None:  # nothing under the map: the map is the alpha
        rgb, a = heat, p.opacity * n * m
    else:
        blended = {"overlay": heat, "multiply": bg * heat, "screen": 1 - (1 - bg) * (1 - heat)}[p.composite]
        k = (p.opacity * m)[..., None]
        rgb, a = bg * (1 - k) + blended * k, np.ones_like(n)
    return np.concatenate([rgb, a[..., None]], -1) * 255


def picture_rect(rows, cols, gap, aspect=4 / 3):
    """(x0, y0, w, h) from the top left: the largest picture of rows x cols cells of the video's
    aspect (the fixture's 128x96) that fits the W x H output, centered; whole pixels."""
    cell_h = min((W - gap * (cols - 1)) / (cols * aspect), (H - gap * (rows - 1)) / rows)
    w, h = cols * aspect * cell_h + gap * (cols - 1), rows * cell_h + gap * (rows - 1)
    w, h = (W if w > W - 1 else round(w)), (H if h > H - 1 else round(h))
    return (W - w) // 2, H - h - (H - h) // 2, w, h  # GL centres from the bottom


def grid_cells(rows, cols, gap, w=W, h=H, x0=0, y0=0):
    """Yield (cell index, row slice mask, col mask, u, v) for every cell, like attention.frag,
    of a picture w x h placed at (x0, y0) from the top left of the W x H output."""
    px = np.arange(W) + 0.5 - x0
    py = np.arange(H) + 0.5 - y0
    pitch_x, pitch_y = (w + gap) / cols, (h + gap) / rows
    cx, cy = np.floor(px / pitch_x).astype(int), np.floor(py / pitch_y).astype(int)
    lx, ly = px - cx * pitch_x, py - cy * pitch_y
    for r in range(rows):
        for c in range(cols):
            xs = (cx == c) & (lx < pitch_x - gap) & (px >= 0) & (px < w)
            ys = (cy == r) & (ly < pitch_y - gap) & (py >= 0) & (py < h)
            yield r * cols + c, ys, xs, lx[xs] / (pitch_x - gap), ly[ys] / (pitch_y - gap)


def compare(img, ref, max_abs=3, frac_off=0.001):
    """GPU texture filtering keeps about 8 bits of fraction: allow a few levels, rare outliers
    (llvmpipe measures within 1 level everywhere)."""
    d = np.abs(img - ref)
    assert d.mean() < 0.5, f"mean abs diff {d.mean():.2f}"
    off = (d > max_abs).mean()
    assert off <= frac_off, f"{off:.2%} of channels differ by more than {max_abs} (max {d.max():.0f})"


# -- tests --------------------------------------------------------------------------------------
def test_single_map_global_norm(rig):
    src = rig[0]
    p = params(src, view="single", step=1.0, block=2.0, head=-1, colormap="magma")
    img = gl_render(rig, p, 0.4)
    vol = f16(src.bundle.select("kiss", step=1, block=2, head=None))
    rng = np.broadcast_to([vol.min(), vol.max()], (vol.shape[0], 2))
    u = (np.arange(W) + 0.5) / W
    v = (np.arange(H) + 0.5) / H
    ref = shape_color(norm_value(vol, rng, u, v, 0.4 * 3), p)
    compare(img, ref)
    # a real picture, not a flat field: the blob is there
    assert img[..., :3].std() > 20


def test_step_crossfade_frame_norm_shaping_over_video(rig, bundle_dir):
    import av

    src = rig[0]
    p = params(src, view="single", step=0.25, block=1.0, head=1, norm="frame", clip_lo=5.0, clip_hi=95.0,
               gain=1.5, gamma=0.7, threshold=0.2, composite="overlay", opacity=0.6, colormap="viridis",
               background="video")
    t = 0.55
    img = gl_render(rig, p, t)
    vols = [f16(src.bundle.select("kiss", step=s, block=1, head=1)) for s in (0, 1)]
    rngs = normalize.ranges(np.stack(vols).astype(np.float32), "frame", 5.0, 95.0)
    u = (np.arange(W) + 0.5) / W
    v = (np.arange(H) + 0.5) / H
    z = t * 3
    n = 0.75 * norm_value(vols[0], rngs[0], u, v, z) + 0.25 * norm_value(vols[1], rngs[1], u, v, z)
    with av.open(str(bundle_dir / "video.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    k = round(t * (len(frames) - 1))
    bg = frames[k].astype(np.float64) / 255
    ys = np.clip(((np.arange(H) + 0.5) / H * bg.shape[0]).astype(int), 0, bg.shape[0] - 1)
    xs = np.clip(((np.arange(W) + 0.5) / W * bg.shape[1]).astype(int), 0, bg.shape[1] - 1)
    ref = shape_color(n, p, bg[ys][:, xs])  # the test video is flat per frame: no filtering to model
    compare(img, ref)
    assert 0.0 < (n >= 0.2).mean() < 1.0, "the threshold should cut part of the picture"


@pytest.mark.parametrize("view,sel", [
    ("blocks", dict(step=2, block=None, head=None)),
    ("steps", dict(step=None, block=3, head=None)),
    ("grand", dict(step=None, block=None, head=None)),
])
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_reductions(rig, view, sel, reduce):
    src = rig[0]
    p = params(src, view=view, step=2.0, block=3.0, head=-1, reduce=reduce, colormap="inferno")
    img = gl_render(rig, p, 0.0)
    vol = f16(src.bundle.select("kiss", reduce=reduce, **sel))
    rng = np.broadcast_to([vol.min(), vol.max()], (vol.shape[0], 2))
    u = (np.arange(W) + 0.5) / W
    v = (np.arange(H) + 0.5) / H
    compare(img, shape_color(norm_value(vol, rng, u, v, 0.0), p))


def test_grid_of_blocks_with_gaps_and_step_norm(rig):
    src = rig[0]
    p = params(src, view="grid-blocks", step=1.0, norm="step", colormap="turbo")
    gap = 3.0
    img = gl_render(rig, p, 1.0, gap=gap)
    from paik.instrument.render.views import plan

    pl = plan(p, src.dims, src.words[p.token].positions, "kiss")
    ref = np.zeros((H, W, 4))  # the gaps: no picture, transparent black
    for cell, ys, xs, u, v in grid_cells(pl.rows, pl.cols, gap):
        if cell >= src.dims.n_blocks:
            continue
        vol = f16(src.bundle.select("kiss", step=1, block=cell, head=None))
        rng = np.broadcast_to([vol.min(), vol.max()], (vol.shape[0], 2))
        ref[np.ix_(ys, xs)] = shape_color(norm_value(vol, rng, u, v, 3.0), p)
    compare(img, ref, frac_off=0.005)  # a cell edge may land on a pixel edge at float precision


def test_heads_by_steps_grid(rig):
    src = rig[0]
    p = params(src, view="grid-heads-steps", block=2.0, colormap="grayscale")
    img = gl_render(rig, p, 0.0, gap=0.0)
    ref = np.zeros((H, W, 4))
    vols = {(s, h): f16(src.bundle.select("kiss", step=s, block=2, head=h)) for s in range(3) for h in range(2)}
    allv = np.stack(list(vols.values()))
    rng = np.broadcast_to([allv.min(), allv.max()], (allv.shape[1], 2))
    # 3 rows x 2 columns of 4:3 cells are 64x72 in the 96x72 output: pillarboxed, not stretched
    for cell, ys, xs, u, v in grid_cells(3, 2, 0.0, w=64, h=72, x0=16):
        ref[np.ix_(ys, xs)] = shape_color(norm_value(vols[divmod(cell, 2)], rng, u, v, 0.0), p)
    compare(img, ref, frac_off=0.005)


def sweep_ref(src, block, steps, frame):
    """The sweep view's normalized value (reference): halfway between two steps' maps of "kiss"
    (head mean) at latent frame position ``frame``, both normalized over all three steps."""
    vols = [f16(src.bundle.select("kiss", step=s, block=block, head=None)) for s in range(3)]
    allv = np.stack(vols)
    rng = np.broadcast_to([allv.min(), allv.max()], (allv.shape[1], 2))
    u = (np.arange(W) + 0.5) / W
    v = (np.arange(H) + 0.5) / H
    return sum(0.5 * norm_value(vols[s], rng, u, v, frame) for s in steps)


def test_sweep_follows_time_through_steps(rig):
    src = rig[0]
    p = params(src, view="sweep", block=0.0, colormap="plasma")
    t = 0.75  # step position 1.5: halfway between steps 1 and 2, latent frame 2.25
    img = gl_render(rig, p, t)
    compare(img, shape_color(sweep_ref(src, 0, (1, 2), 2.25), p))


def test_alpha_composite_over_previews(rig):
    src = rig[0]
    p = params(src, view="single", step=2.0, block=0.0, composite="alpha", background="preview")
    img = gl_render(rig, p, 0.0)
    vol = f16(src.bundle.select("kiss", step=2, block=0, head=None))
    rng = np.broadcast_to([vol.min(), vol.max()], (vol.shape[0], 2))
    u = (np.arange(W) + 0.5) / W
    v = (np.arange(H) + 0.5) / H
    bg = np.zeros((H, W, 3))
    bg[..., 2] = 200 / 255  # the fixture's preview of step 2 is flat (0, 0, 200)
    compare(img, shape_color(norm_value(vol, rng, u, v, 0.0), p, bg))
    assert img[..., 3].min() < 40 and img[..., 3].max() > 250


def test_custom_colormap_and_screen(rig):
    src = rig[0]
    p = params(src, view="heads", step=0.0, block=0.0, colormap="kiss", composite="screen", background="none")
    img = gl_render(rig, p, 0.0)
    vol = f16(src.bundle.select("kiss", step=0, block=0, head=None))
    rng = np.broadcast_to([vol.min(), vol.max()], (vol.shape[0], 2))
    u = (np.arange(W) + 0.5) / W
    v = (np.arange(H) + 0.5) / H
    compare(img, shape_color(norm_value(vol, rng, u, v, 0.0), p))  # background none: the map is the alpha


# -- the two passes (renderer.py): map-resolution field + backdrop, then one sample of each ------
def preview_color(step):
    """The fixture's preview of a step: flat, 200 in channel step % 3."""
    c = np.zeros(3)
    c[step % 3] = 200 / 255
    return c


def test_step_and_block_crossfade_four_taps_clamped_each(rig):
    """Four tiles in one cell (an RGBA field): each is clamped to 0..1 before the blend, so the
    clipped percentiles of one tile do not leak into the others."""
    src = rig[0]
    p = params(src, view="single", step=0.5, block=1.25, head=0, norm="frame", clip_lo=10.0, clip_hi=90.0,
               colormap="magma")
    t = 0.3
    img = gl_render(rig, p, t)
    pairs = [((0, 1), 0.5), ((1, 2), 0.25)]
    vols, ws = [], []
    for s, ws_ in zip(pairs[0][0], (0.5, 0.5)):
        for b, wb in zip(pairs[1][0], (0.75, 0.25)):
            vols.append(f16(src.bundle.select("kiss", step=s, block=b, head=0)))
            ws.append(ws_ * wb)
    rngs = normalize.ranges(np.stack(vols).astype(np.float32), "frame", 10.0, 90.0)
    u = (np.arange(W) + 0.5) / W
    v = (np.arange(H) + 0.5) / H
    n = sum(w * norm_value(vol, rng, u, v, t * 3) for w, vol, rng in zip(ws, vols, rngs))
    ref = shape_color(n, p)
    compare(img, ref)
    # clamping once after the blend would look different here: the comparison can tell them apart
    z0, fz = 0, t * 3
    lo_hi = [rng[z0] * (1 - fz) + rng[z0 + 1] * fz for rng in rngs]
    late = np.clip(sum(w * (sample(vol, u, v, t * 3) - lh[0]) / (lh[1] - lh[0])
                       for w, vol, lh in zip(ws, vols, lo_hi)), 0, 1)
    assert np.abs(shape_color(late, p) - ref).max() > 20


@pytest.mark.parametrize("view", ["grid-steps", "grid-heads-steps"])
def test_grids_over_their_own_previews(rig, view):
    """Cells show their step's preview (a backdrop tile per row, or per cell); block crossfade."""
    src = rig[0]
    p = params(src, view=view, block=1.5, head=-1, composite="overlay", opacity=0.7, background="preview",
               colormap="viridis", norm="step", clip_hi=98.0)
    gap, t = 2.0, 0.6
    img = gl_render(rig, p, t, gap=gap)
    from paik.instrument.render.views import plan

    pl = plan(p, src.dims, src.words[p.token].positions, "kiss")
    if view == "grid-steps":
        keys = [(s, None) for s in range(3)]
    else:
        keys = [(s, h) for s in range(3) for h in range(2)]
    tiles = {}
    for s, h in keys:
        for b in (1, 2):
            tiles[(s, h, b)] = f16(src.bundle.select("kiss", step=s, block=b, head=h))
    order = list(tiles)
    rngs = dict(zip(order, normalize.ranges(np.stack([tiles[k] for k in order]).astype(np.float32), "step",
                                            0.0, 98.0)))
    ref = np.zeros((H, W, 4))  # the gaps and bars: no picture, transparent black
    x0, y0, w, h = picture_rect(pl.rows, pl.cols, gap)
    for cell, ys, xs, u, v in grid_cells(pl.rows, pl.cols, gap, w, h, x0, y0):
        if cell >= len(keys):
            continue
        s, h = keys[cell]
        n = sum(w * norm_value(tiles[(s, h, b)], rngs[(s, h, b)], u, v, t * 3) for b, w in ((1, 0.5), (2, 0.5)))
        bg = np.broadcast_to(preview_color(s), (len(v), len(u), 3))
        ref[np.ix_(ys, xs)] = shape_color(n, p, bg)
    compare(img, ref, frac_off=0.005)


def test_sweep_crossfades_the_previews_too(rig):
    src = rig[0]
    p = params(src, view="sweep", block=3.0, composite="screen", background="preview", colormap="plasma")
    t = 0.25  # step position 0.5: halfway between steps 0 and 1 (maps and previews), latent frame 0.75
    img = gl_render(rig, p, t)
    n = sweep_ref(src, 3, (0, 1), 0.75)
    bg = np.broadcast_to(0.5 * preview_color(0) + 0.5 * preview_color(1), (H, W, 3))
    compare(img, shape_color(n, p, bg))


def test_pass_one_runs_only_when_its_inputs_change(rig):
    src, r, off = rig
    p = params(src, view="grid-blocks", step=1.0, composite="overlay", background="preview", colormap="magma")
    gl_render(rig, p, 0.2)
    before = dict(r.bakes)
    gl_render(rig, p, 0.2)
    p.gain, p.gamma, p.threshold, p.opacity, p.colormap = 1.3, 0.8, 0.1, 0.5, "inferno"  # pass 2 only
    p.composite = "multiply"
    shaped = gl_render(rig, p, 0.2)
    assert r.bakes == before
    gl_render(rig, p, 0.3)  # time moves: the field follows; the previews too (they blend frames)
    assert r.bakes["field"] == before["field"] + 1 and r.bakes["backdrop"] == before["backdrop"] + 1
    p.norm = "frame"
    gl_render(rig, p, 0.3)
    assert r.bakes["field"] == before["field"] + 2 and r.bakes["backdrop"] == before["backdrop"] + 1
    # and another output size in between shares the same pass 1 (outputs, recording)
    from paik.instrument.render.headless import Offscreen

    other = Offscreen(r.ctx, (40, 30))
    other.use()
    r.draw(p, 0.3, (0, 0, 40, 30), premultiply=False)
    assert other.read()[..., :3].std() > 5
    assert r.bakes["field"] == before["field"] + 2
    other.release()
    assert shaped[..., :3].std() > 5


def test_the_plan_is_remade_only_when_its_parameters_change(rig):
    src, r, _ = rig
    p = params(src, view="grid-heads-steps", block=1.0)
    gl_render(rig, p, 0.2)
    pl = r.plan
    p.gain, p.colormap, p.norm = 2.0, "inferno", "frame"  # pass 2 and ranges: not the plan
    gl_render(rig, p, 0.4)
    assert r.plan is pl
    p.block = 1.5
    gl_render(rig, p, 0.4)
    assert r.plan is not pl and r.plan.title != pl.title
    assert r.plan.labels is pl.labels  # labels depend on the bundle alone: kept through a glide


def test_pass_one_shader_hot_reload(ctx, bundle_dir, tmp_path):
    import os
    import shutil
    import time

    from paik.instrument.render.headless import Offscreen
    from paik.instrument.render.renderer import Renderer
    from paik.instrument.render.shaders import SHADERS
    from paik.instrument.render.source import Source

    d = tmp_path / "shaders"
    shutil.copytree(SHADERS, d)
    src = Source.open(bundle_dir, device="cpu")
    r = Renderer(ctx, src, shader_dir=d)
    off = Offscreen(ctx, (32, 24))
    p = params(src, view="single", step=1.0, block=1.0, colormap="grayscale")
    off.use()
    r.draw(p, 0.0, (0, 0, 32, 24), premultiply=False)
    assert off.read()[..., 0].std() > 5
    frag = d / "field.frag"
    text = frag.read_text()
    frag.write_text(text.replace("frag = v;", "frag = v +;"))
    os.utime(frag, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert r.program.poll() is False and "field.frag" in r.program.error
    frag.write_text(text.replace("frag = v;", "frag = vec4(1.0);"))  # every tap at its range's top
    os.utime(frag, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert r.program.poll() is True and r.program.error is None
    r.draw(p, 0.0, (0, 0, 32, 24), premultiply=False)
    assert (off.read()[..., 0] == 255).all(), "a new pass-1 program must redraw the field"
    off.release()
