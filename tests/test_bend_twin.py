"""The twin and diff views (issue 17): a bent take beside its unbent twin, or their difference,
drawn with real GL (EGL) from synthetic bundles whose maps are known, checked pixel by pixel
against the single view of each bundle drawn on its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from instrument_fixtures import PIECES, expected_maps, write_gray_video
from paik.errors import PaikError

STEPS, BLOCKS, HEADS, LATENT = 2, 2, 2, (2, 4, 4)
KISS = [i for i, (_, w, _) in enumerate(PIECES) if w == "kiss"]


def write_bundle(path: Path, maps: np.ndarray, gray: int, twin: dict | None = None) -> None:
    """A bundle of ``maps`` [S, B, H, T, F', H', W'] over a flat video of level ``gray``."""
    import av
    import torch

    from paik.capture.layout import Layout
    from paik.capture.writer import BundleWriter

    s_, b_, h_, t_, f, h, w = maps.shape
    frames, width, height = (f - 1) * 4 + 1, w * 16, h * 16
    layout = Layout(steps=list(range(s_)), blocks=list(range(b_)), heads=h_, head_mean=False, n_heads=h_,
                    tokens=list(range(t_)), latent=(f, h, w), n_real=t_, seq_len=16)
    tokens = [dict(index=i, id=100 + i, piece=p, word=wd, word_index=wi, special=p == "</s>")
              for i, (p, wd, wi) in enumerate(PIECES)]
    manifest = {"layout": layout.to_json(), "tokens": tokens, "prompt": "a red kiss", "seed": 3,
                "settings": {"frames": frames, "width": width, "height": height, "fps": 8, "steps": s_},
                "video": {"file": "video.mp4"}}
    if twin is not None:
        manifest["twin"] = twin
    from paik.capture.writer import BundleWriter

    wr = BundleWriter(path, manifest)
    for s in range(s_):
        wr.add_step({"index": s, "timestep": 1000.0 * (1 - s / s_), "sigma": 1 - s / s_, "expert": "transformer"},
                    {"maps": torch.from_numpy(maps[s].copy()),
                     "padding": torch.zeros((b_, h_, f, h, w), dtype=torch.float16)})
    wr.close()
    with av.open(str(path / "video.mp4"), "w") as c:
        st = c.add_stream("libx264", rate=8)
        st.width, st.height, st.pix_fmt = width, height, "yuv444p"
        st.options = {"crf": "0"}
        for _ in range(frames):
            for pkt in st.encode(av.VideoFrame.from_ndarray(np.full((height, width, 3), gray, np.uint8), "rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)


def bent_maps(unbent: np.ndarray) -> np.ndarray:
    """'kiss' amplified in the left half of the frame and suppressed in the right; the rest equal."""
    out = unbent.astype(np.float32).copy()
    w = out.shape[-1]
    out[:, :, :, KISS, ..., : w // 2] *= 1.8
    out[:, :, :, KISS, ..., w // 2:] *= 0.3
    return out.astype(np.float16)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("twin")
    unbent = expected_maps(STEPS, BLOCKS, HEADS, LATENT)
    bent = bent_maps(unbent)
    write_bundle(root / "bent", bent, 90, twin={"path": "twin", "role": "bent"})
    write_bundle(root / "bent" / "twin", unbent, 30, twin={"path": "..", "role": "unbent"})
    other = expected_maps(STEPS, BLOCKS, HEADS, (2, 4, 6))
    write_bundle(root / "other", other, 30)
    return root, bent, unbent


@pytest.fixture(scope="module")
def ctx():
    from paik.instrument.render.headless import egl_context

    return egl_context()


def params(src, **kw):
    from paik.instrument.control.params import Params
    from paik.instrument.render import colormaps

    d = src.dims
    p = Params().bind(len(src.words), d.n_steps, d.n_blocks, d.n_heads, colormaps.available())
    p.token = next(i for i, w in enumerate(src.words) if w.label == "kiss")
    p.step, p.block, p.head = 1.0, 1.0, -1
    p.norm, p.composite, p.background, p.opacity, p.colormap = "step", "screen", "video", 0.8, "magma"
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def draw(ctx, src, p, size, time=0.5, gap=0.0):
    from paik.instrument.render.headless import Offscreen
    from paik.instrument.render.renderer import Renderer

    r = Renderer(ctx, src)
    off = Offscreen(ctx, size)
    try:
        off.use()
        r.draw(p, time, (0, 0, *size), gap=gap)
        return off.read().astype(np.int16), r
    finally:
        off.release()


def test_twin_halves_are_the_single_views(pair, ctx):
    from paik.instrument.render.source import Source

    root, _, _ = pair
    bent = Source.open(root / "bent", "cpu")
    assert bent.twin is not None and bent.twin.bundle.path == (root / "bent" / "twin")
    unbent = Source.open(root / "bent" / "twin", "cpu")
    twin_img, r = draw(ctx, bent, params(bent, view="twin"), (128, 64))
    left, _ = draw(ctx, unbent, params(unbent, view="single"), (64, 64))
    right, _ = draw(ctx, bent, params(bent, view="single"), (64, 64))
    assert np.abs(twin_img[:, :64] - left).max() <= 1
    assert np.abs(twin_img[:, 64:] - right).max() <= 1
    assert np.abs(left - right).max() > 40  # the halves do differ: bent maps, another video
    assert r.plan.labels == ("unbent", "bent") and r.plan.cols == 2
    # each half over its own video: with the map transparent, the video's flat gray
    clear = params(bent, view="twin", opacity=0.0)
    img, _ = draw(ctx, bent, clear, (128, 64))
    assert abs(int(np.median(img[:, :64, 0])) - 30) <= 2 and abs(int(np.median(img[:, 64:, 0])) - 90) <= 2


def reference_diff(bent, unbent, p, latent):
    """The signed difference of the mean over heads at (step, block), as diff normalizes it."""
    d = (bent[int(p.step), int(p.block)][:, KISS].astype(np.float32).sum(1).mean(0)
         - unbent[int(p.step), int(p.block)][:, KISS].astype(np.float32).sum(1).mean(0))  # [F', H', W']
    return d


def bilinear(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w] sampled at the centres of a height x width image, clamped to the texel centres (GL_LINEAR)."""
    h, w = a.shape
    ty = np.clip((np.arange(height) + 0.5) / height * h - 0.5, 0, h - 1)
    tx = np.clip((np.arange(width) + 0.5) / width * w - 0.5, 0, w - 1)
    y0, x0 = np.floor(ty).astype(int), np.floor(tx).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ty - y0)[:, None], (tx - x0)[None, :]
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bot = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy) + bot * fy


def test_diff_is_neutral_where_equal_and_signed_where_not(pair, ctx):
    from paik.instrument.render import colormaps
    from paik.instrument.render.source import Source

    root, bent_maps_, unbent_maps_ = pair
    bent = Source.open(root / "bent", "cpu")
    lut = colormaps.lut_u8("diverging").astype(np.int16)
    # a word the bend did not touch: every pixel is the colormap's middle (black) on the heatmap
    a = params(bent, view="diff", composite="heatmap")
    a.token = next(i for i, w in enumerate(bent.words) if w.label == "red")
    img, r = draw(ctx, bent, a, (64, 64))
    assert tuple(lut[127]) == tuple(lut[128]) == (0, 0, 0)
    assert np.abs(img[..., :3]).max() <= 1
    assert r.plan.title.startswith("bent - unbent")
    # ... and over the video (screen), the bent take's video exactly as it is
    screen = params(bent, view="diff", composite="screen")
    screen.token = a.token
    img, _ = draw(ctx, bent, screen, (64, 64))
    assert abs(int(np.median(img[..., 0])) - 90) <= 2 and np.ptp(img[..., :3]) <= 3
    # 'kiss': amplified (left half) is orange, suppressed (right half) blue, as the reference signs say
    k = params(bent, view="diff", composite="heatmap", norm="global")
    img, _ = draw(ctx, bent, k, (64, 64))
    full = reference_diff(bent_maps_, unbent_maps_, k, LATENT)  # [F', H', W']
    m = np.abs(full).max()  # global: one symmetric range over the whole tile, every frame
    d = full.mean(0)  # time 0.5 of two latent frames: the two frames' values mixed half and half
    # the reference: normalized at the texels, bilinear at every pixel centre, the LUT interpolated
    n = bilinear(0.5 + d / (2 * m), 64, 64)
    z = np.clip(n, 0, 1) * 255
    i0 = np.floor(z).astype(int)
    i1 = np.minimum(i0 + 1, 255)
    want = lut[i0] * (1 - (z - i0))[..., None] + lut[i1] * (z - i0)[..., None]
    assert np.abs(img[..., :3] - want).max() <= 4
    dp = bilinear(d, 64, 64)
    orange, blue = dp > 0.2 * m, dp < -0.2 * m
    assert orange.any() and blue.any()
    assert (img[..., 0][orange] > img[..., 2][orange]).all() and (img[..., 2][blue] > img[..., 0][blue]).all()
    assert (d > 0.2 * m).any() and (d < -0.2 * m).any()


def test_mismatched_twin_falls_back_with_one_message(pair, ctx):
    from paik.instrument.render.headless import Offscreen
    from paik.instrument.render.renderer import Renderer
    from paik.instrument.render.source import Source

    root, _, _ = pair
    bent = Source.open(root / "bent", "cpu")
    bent.twin = Source.open(root / "other", "cpu")
    single, _ = draw(ctx, bent, params(bent, view="single"), (64, 64))
    r = Renderer(ctx, bent)
    off = Offscreen(ctx, (64, 64))
    off.use()
    with pytest.raises(PaikError, match="latent size") as e:
        r.draw(params(bent, view="twin"), 0.5, (0, 0, 64, 64))
    assert "\n" not in str(e.value)
    assert np.abs(off.read().astype(np.int16) - single).max() <= 1  # the view fell back to the single map
    r.draw(params(bent, view="diff"), 0.5, (0, 0, 64, 64))  # said once: the next frames draw quietly
    off.release()
    r.release()
    nobody = Source.open(root / "other", "cpu")
    with pytest.raises(PaikError, match="no unbent twin"):
        draw(ctx, nobody, params(nobody, view="diff"), (64, 64))


def test_cli_refuses_a_mismatched_twin_in_one_line(pair, tmp_path):
    from procs import run_paik  # real processes, forked from one interpreter that imported torch once

    root, _, _ = pair
    r, r2 = run_paik([["render", root / "bent", "--twin", root / "other", "--view", "twin", "--out", tmp_path / "x.mp4"],
                      ["grid", root / "other", "--view", "diff", "--out", tmp_path / "g"]], timeout=240)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "latent size" in lines[0], r.stderr
    assert not (tmp_path / "x.mp4").exists()
    assert r2.returncode != 0 and "Traceback" not in r2.stderr and "no unbent twin" in r2.stderr


def test_grid_twin_writes_a_labelled_figure(pair, tmp_path):
    from PIL import Image

    from procs import run_paik

    root, _, _ = pair
    (r,) = run_paik([["grid", root / "bent", "--view", "twin", "--out", tmp_path, "--cell-width", "64", "--gap", "0"]],
                    timeout=240)
    assert r.returncode == 0, r.stderr
    (png,) = tmp_path.glob("*twin*.png")
    img = np.asarray(Image.open(png))
    assert img.shape[1] == 128 and img.shape[0] > 64  # two cells of 64 and a title strip


def test_generate_twin_and_replay_no_bends_on_the_tiny_model(tmp_path):
    """paik generate --bend ... --twin: OUT bent, OUT/twin the same take unbent, paired in the
    manifests; --replay OUT --no-bends regenerates that twin (the same maps, bit for bit)."""
    from paik.capture.bundle import open_bundle

    from procs import run_paik  # each command a real process, forked from one interpreter

    out, again = tmp_path / "kiss", tmp_path / "again"
    r, r_again, r_grid, r_plain = run_paik([
        ["generate", "a kiss and a cat", "-m", "tiny", "-o", out, "-q", "--steps", "2", "--bend", "mute kiss", "--twin"],
        ["generate", "--replay", out, "--no-bends", "-o", again, "-q"],
        ["grid", out, "--view", "diff", "--out", tmp_path / "fig", "--cell-width", "32"],
        ["generate", "a kiss", "-m", "tiny", "-o", tmp_path / "plain", "-q", "--twin"],
    ], timeout=240)
    assert r.returncode == 0, r.stderr
    bent, twin = open_bundle(out), open_bundle(out / "twin")
    assert bent.manifest["twin"] == {"path": "twin", "role": "bent"}
    assert twin.manifest["twin"] == {"path": "..", "role": "unbent"}
    assert bent.manifest["bend_log"] and "bend_log" not in twin.manifest and not twin.manifest.get("bends")
    assert twin.manifest["seed"] == bent.manifest["seed"] and twin.manifest["settings"]["steps"] == 2
    kiss = bent.resolve("kiss")
    s = bent.step_indices[-1]
    assert np.abs(bent.step_arrays(s)["maps"][:, :, kiss]).max() == 0  # muted where bent ...
    assert np.abs(twin.step_arrays(s)["maps"][:, :, kiss]).max() > 0  # ... and not in its twin
    assert r_again.returncode == 0, r_again.stderr
    b = open_bundle(again)
    assert "bend_log" not in b.manifest and b.step_indices == twin.step_indices
    for st in b.step_indices:
        assert np.array_equal(b.step_arrays(st)["maps"], twin.step_arrays(st)["maps"])
    assert r_grid.returncode == 0, r_grid.stderr
    assert list((tmp_path / "fig").glob("*diff*.png"))
    r = r_plain
    assert r.returncode != 0 and "Traceback" not in r.stderr and "--twin" in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1


def test_live_slots_take_heads_and_pass(tmp_path):
    """A slot limited to heads and a pass: from the console line through the bank to the engine's
    take, recorded in bend_log, the muted word zero in those heads only; OSC addresses exist."""
    from paik.capture.bundle import open_bundle
    from paik.capture.engine import Engine, TakeRequest
    from paik.capture.generate import GenerateOptions
    from paik.capture.models import load_pipeline
    from paik.instrument.control import grammar
    from paik.instrument.control.osc import address_space, translate
    from paik.instrument.control.params import Command, Params
    from paik.instrument.control.takes import EngineLive
    from paik.instrument.render.resident import ResidentSource, blank_take
    from test_live import _events_until

    assert translate("/paik/bend2_pass", ["both"]) == Command("bend2_pass", "set", "both", "osc")
    paths = {a.path: a.types for a in address_space(Params())}
    assert paths["/paik/bend1_heads"] == ("s",) and "/paik/bend4_pass/cycle" in paths
    with pytest.raises(PaikError, match="cond, uncond or both"):
        grammar.parse("bend 1 mute cat pass sideways")

    eng = Engine(load_pipeline("tiny", device="cpu"), GenerateOptions(prompt="a cat", out="", steps=2),
                 tmp_path / "takes")
    src = ResidentSource(blank_take())
    live = EngineLive(src, Params().bind(len(src.words), 1, 1, 1, ("magma",)), eng, TakeRequest)
    try:
        live.put(grammar.parse("bend 1 mute cat heads 0 pass both"))
        live.update(0.0)
        t = live.target
        assert (t.bend1_op, t.bend1_word, t.bend1_heads, t.bend1_pass) == ("mute", "cat", "0", "both")
        assert not live.errors, live.errors
        assert [s.line() for s in eng.bends.specs() if s] == ["mute cat heads 0 pass both"]
        eng.submit(TakeRequest(seed=1, negative="a blurry cat"))  # pass both: the word in both prompts
        evs = _events_until(eng, ("TakeDone", "TakeFailed"))
    finally:
        eng.close()
    assert type(evs[-1]).__name__ == "TakeDone", evs[-1]
    assert not [e for e in evs if type(e).__name__ == "BendRefused"], [e.message for e in evs if hasattr(e, "message")]
    b = open_bundle(evs[-1].path)
    assert [e["bends"] for e in b.manifest["bend_log"]] == [["mute cat heads 0 pass both"]] * 2
    cat = b.resolve("cat")
    m = np.asarray(b.step_arrays(b.step_indices[-1])["maps"][:, :, cat], dtype=np.float32)  # [block, head, ...]
    assert m[:, 0].max() == 0 and m[:, 1:].max() > 0


def test_paik_live_makes_the_unbent_twin_behind_a_bent_take(tmp_path, ctx):
    """twin on + a bend slot: after the bent take, the engine generates its twin (no bends, same
    seed), attached to the bent take for the twin view (drawn here through the asynchronous
    selection of resident takes) and recorded in both manifests; the same settings again reuse it."""
    import time

    from paik.capture.bundle import open_bundle
    from paik.capture.engine import Engine, TakeRequest
    from paik.capture.generate import GenerateOptions
    from paik.capture.models import load_pipeline
    from paik.instrument.control import grammar
    from paik.instrument.control.params import Params
    from paik.instrument.control.takes import EngineLive
    from paik.instrument.render.headless import Offscreen
    from paik.instrument.render.renderer import Renderer
    from paik.instrument.render.resident import ResidentSource, blank_take
    from paik.instrument.render.source import twin_mismatch

    takes = tmp_path / "takes"
    eng = Engine(load_pipeline("tiny", device="cpu"), GenerateOptions(prompt="a cat", out="", steps=2), takes)
    src = ResidentSource(blank_take())
    live = EngineLive(src, Params().bind(len(src.words), 1, 1, 1, ("magma", "diverging")), eng, TakeRequest)

    def run_until(done, seconds=60.0):
        t0 = time.monotonic()
        while not done() and time.monotonic() - t0 < seconds:
            live.update(time.monotonic())
            time.sleep(0.02)
        assert done(), (live.errors, live.twins.want)

    try:
        for line in ("twin on", "prompt a cat", "steps 2", "seed 4", "bend 1 mute cat", "generate"):
            live.put(grammar.parse(line))
        run_until(lambda: live.twins.made == 1)
        bent = live.src
        assert bent.twin is not None and twin_mismatch(bent, bent.twin) is None
        # the pairing is recorded off the render thread, once each bundle's writer is done
        t_end = time.monotonic() + 60
        while time.monotonic() < t_end and not all(
                "twin" in json.loads((s.bundle.path / "manifest.json").read_text()) for s in (bent, bent.twin)):
            time.sleep(0.05)
        b, t = open_bundle(bent.bundle.path), open_bundle(bent.twin.bundle.path)
        assert b.manifest["bend_log"] and "bend_log" not in t.manifest and t.manifest["seed"] == b.manifest["seed"]
        assert b.manifest["twin"]["role"] == "bent" and t.manifest["twin"]["role"] == "unbent"
        assert (b.path / b.manifest["twin"]["path"]).resolve() == t.path.resolve()
        assert live.take_name == b.path.name  # the twin formed out of sight
        # the twin view of the resident pair, selected asynchronously, equals the single views
        p = live.target.copy()
        p.view, p.composite, p.token, p.step, p.block = "twin", "heatmap", 0, 1.0, 0.0
        r = Renderer(ctx, bent, asynchronous=True)
        off = Offscreen(ctx, (128, 64))
        off.use()
        for _ in range(200):
            r.draw(p, 0.5, (0, 0, 128, 64))
            subs = [r.selector, r.twin_views.unbent.selector]
            if all(s.settled for s in subs):
                break
            time.sleep(0.01)
        img = off.read().astype(np.int16)
        off.release()
        r.release()
        q = p.copy()
        q.view = "single"
        left, _ = draw(ctx, bent.twin, q, (64, 64))
        right, _ = draw(ctx, bent, q, (64, 64))
        assert np.abs(img[:, :64] - left).max() <= 1 and np.abs(img[:, 64:] - right).max() <= 1
        assert np.abs(left - right).max() > 0  # muted 'cat' vs not: the word's maps differ
        # the same bent take again: the resident unbent take is reused, nothing more is generated
        live.put(grammar.parse("generate"))
        run_until(lambda: live.takes_done == 2)
        live.update(time.monotonic())
        assert live.twins.made == 2 and live.src.twin is bent.twin
        assert len([d for d in takes.iterdir() if d.is_dir()]) == 3
    finally:
        eng.close()
