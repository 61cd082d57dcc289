"""A first run that looks right: what `paik render`, `paik grid` and `paik play` show with no
look flags, read back as real pixels (EGL renders, PyAV decodes)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from paik.cli import main
from instrument_fixtures import make_bundle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checker_video(path, frames, width, height, fps, cell=16):
    """A black and white checkerboard, shifting one cell every frame: a video you can see."""
    import av

    yy, xx = np.mgrid[:height, :width]
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = width, height, "yuv444p"
        st.options = {"crf": "0"}
        for k in range(frames):
            on = ((xx // cell + yy // cell + k) % 2).astype(np.uint8) * 255
            for pkt in st.encode(av.VideoFrame.from_ndarray(np.repeat(on[..., None], 3, -1), format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    p = tmp_path_factory.mktemp("look") / "b"
    make_bundle(p, steps=3, blocks=4, heads=2, fps=8)  # 128x96, 13 frames, prompt "a red kiss"
    checker_video(p / "video.mp4", 13, 128, 96, 8)
    return p


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def decode(path, fmt="rgb24"):
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format=fmt) for f in c.decode(video=0)]


def test_defaults_pick_a_content_word_the_last_step_and_the_consensus_block(bundle_dir):
    from paik.instrument.cli import _params, default_look_args
    from paik.instrument.render.source import Source

    src = Source.open(bundle_dir, "cpu")
    p = _params(default_look_args(), src, "single")
    assert src.words[p.token].label == "red", "'a' is a stop word: the first content word is 'red'"
    assert p.step == src.dims.n_steps - 1
    assert (p.norm, p.composite, p.background) == ("frame", "screen", "video")
    # the consensus block, recomputed from the capture's own select (not the instrument's reducer)
    maps = np.stack([src.bundle.select("red", step=2, block=b, head=None).astype(np.float64).ravel()
                     for b in range(4)])
    mean = maps.mean(0)
    corr = [np.corrcoef(m, mean)[0, 1] for m in maps]
    assert p.block == float(np.argmax(corr))
    assert len(set(np.round(corr, 6))) == 4, "the fixture's blocks differ: the choice is not a tie"


def test_without_a_video_the_default_is_the_opaque_heatmap(tmp_path):
    from paik.instrument.cli import _params, default_look_args
    from paik.instrument.render.source import Source

    make_bundle(tmp_path / "b", steps=1, blocks=1, heads=1, video=False)
    src = Source.open(tmp_path / "b", "cpu")
    assert _params(default_look_args(), src, "single").composite == "heatmap"
    assert _params(default_look_args(background="none"), src, "single").composite == "screen"  # the map as alpha


@pytest.mark.parametrize("words,specials,want", [
    (["a", "red", "kiss", "</s>"], {"</s>"}, 1),
    (["The", "of", "Kiss", "</s>"], {"</s>"}, 2),
    (["a", ",", "and", "</s>"], {"</s>"}, 0),  # nothing but stop words: the first word, still not EOS
    (["</s>", "a"], {"</s>"}, 1),
    (["<pad>", "dog"], set(), 1),
])
def test_content_word(words, specials, want):
    from paik.instrument.render.firstlook import content_word

    assert content_word(words, specials) == want


def test_default_render_shows_the_video_under_the_map(bundle_dir, tmp_path, capsys):
    out = tmp_path / "default.mp4"
    code, _, err = run(capsys, "render", bundle_dir, "--out", out, "--quiet")
    assert code == 0, err
    frames = decode(out)
    assert frames[0].shape == (96, 128, 3) and len(frames) == 13
    video = decode(bundle_dir / "video.mp4")
    none = tmp_path / "none.mp4"
    assert run(capsys, "render", bundle_dir, "--out", none, "--quiet", "--background", "none")[0] == 0
    alone = decode(none)
    for k in (0, 6, 12):
        got = frames[k].astype(float).mean(-1)
        board = video[k].astype(float).mean(-1)
        # the checkerboard is there: it explains most of the picture's variation...
        assert np.corrcoef(got.ravel(), board.ravel())[0, 1] > 0.6
        # ...and where attention is lowest the video is shown as it is
        low = alone[k].astype(float).mean(-1) < 8
        assert low.mean() > 0.2 and np.abs(got[low] - board[low]).mean() < 25
        # and the map is on top of it: it lights up the black squares where attention is high
        high = (alone[k].astype(float).mean(-1) > 100) & (board < 128)
        assert high.any() and (got[high] - board[high]).mean() > 40


def test_the_late_sweep_is_not_black(bundle_dir, tmp_path, capsys):
    """The render's default view, the step sweep, per-frame normalized: every frame's map fills
    the colormap; one global range would leave weak steps dark (the fixture's step 2 of block 0)."""
    peaks = {}
    for norm in ("frame", "global"):
        out = tmp_path / f"{norm}.mp4"
        code, _, err = run(capsys, "render", bundle_dir, "--out", out, "--quiet", "--composite", "heatmap",
                           "--colormap", "grayscale", "--block", "0", *(["--norm", "global"] if norm == "global" else []))
        assert code == 0, err
        peaks[norm] = [f.astype(float).max() for f in decode(out)]
    # (a frame between two latent frames blends two blobs that have moved: its peak is below white)
    assert min(peaks["frame"]) > 200
    assert all(f >= g - 2 for f, g in zip(peaks["frame"], peaks["global"]))
    assert min(peaks["global"]) < 160, "the fixture should have a weak step for this test to mean something"


def test_a_wide_bundle_is_letterboxed_not_stretched(tmp_path, capsys):
    b = tmp_path / "wide"
    make_bundle(b, steps=2, blocks=2, heads=1, latent=(4, 4, 8))  # 128x64: 2:1
    pics = {}
    for size in ("64x64", "64x32"):
        out = tmp_path / f"{size}.mov"
        code, _, err = run(capsys, "render", b, "--out", out, "--size", size, "--codec", "prores", "--quiet",
                           "--view", "single", "--composite", "heatmap")
        assert code == 0, err
        pics[size] = decode(out, "rgba")
    for square, wide in zip(pics["64x64"], pics["64x32"]):
        assert (square[:16] == 0).all() and (square[48:] == 0).all(), "bars above and below: no picture"
        # the picture between them is the 2:1 render itself, pixel for pixel (ProRes: nearly lossless)
        assert np.abs(square[16:48].astype(int) - wide.astype(int)).max() <= 3
        assert wide[..., :3].std() > 20
    # a grid in a window: 2 blocks of 2:1 stacked are 1:1, pillarboxed in a 2:1 output
    from paik.instrument.cli import _params, default_look_args
    from paik.instrument.render.headless import Offscreen, egl_context
    from paik.instrument.render.renderer import Renderer
    from paik.instrument.render.source import Source

    src = Source.open(b, "cpu")
    p = _params(default_look_args(composite="heatmap"), src, "grid-blocks")
    ctx = egl_context()
    off = Offscreen(ctx, (128, 64))
    off.use()
    r = Renderer(ctx, src)
    r.draw(p, 0.5, (0, 0, 128, 64), gap=0.0, premultiply=False)
    img = off.read()
    assert r.plan.rows == 2 and r.plan.cols == 1 and r.picture == (32, 0, 64, 64)
    assert (img[:, :32] == 0).all() and (img[:, 96:] == 0).all() and (img[:, 32:96, 3] == 255).all()
    off.release()
    ctx.release()


def test_prores_carries_real_alpha(bundle_dir, tmp_path, capsys):
    cases = {"none": (["--background", "none"], "varies"),
             "threshold": (["--composite", "heatmap", "--threshold", "0.5"], "holes"),
             "video": ([], "opaque")}
    for name, (flags, want) in cases.items():
        out = tmp_path / f"{name}.mov"
        code, _, err = run(capsys, "render", bundle_dir, "--out", out, "--codec", "prores", "--duration", "0.5",
                           "--quiet", *flags)
        assert code == 0, err
        alpha = np.stack([f[..., 3] for f in decode(out, "rgba")]).astype(int)
        if want == "varies":
            assert alpha.min() < 30 and alpha.max() > 150 and len(np.unique(alpha)) > 20
        elif want == "holes":
            assert (alpha <= 2).mean() > 0.2 and (alpha >= 253).mean() > 0.05
            assert ((alpha > 2) & (alpha < 253)).mean() < 0.05, "a threshold cuts, it does not fade"
        else:
            assert alpha.min() >= 253, "over the video nothing is transparent"


def test_default_grid_is_the_last_step_each_cell_normalized(bundle_dir, tmp_path, capsys):
    from PIL import Image

    code, stdout, err = run(capsys, "grid", bundle_dir, "--out", tmp_path / "g", "--cell-width", "64", "--gap",
                            "0", "--composite", "heatmap", "--colormap", "grayscale")
    assert code == 0, err
    (path,) = stdout.split()
    assert os.path.basename(path) == "red_grid-blocks_step2_t0.00.png"
    img = np.asarray(Image.open(path)).astype(float)[..., :3]
    cells = img[-96:]  # 2x2 cells of 64x48 under the title
    for r in range(2):
        for c in range(2):
            assert cells[r * 48:(r + 1) * 48, c * 64:(c + 1) * 64].max() > 240, "every cell fills the colormap"


def test_play_headless_defaults_render(bundle_dir, tmp_path, capsys):
    shot = tmp_path / "rec.mov"
    code, _, err = run(capsys, "play", bundle_dir, "--headless", "--frames", "3", "--fixed-step", "--size", "64x64",
                       "--record", shot, "--record-codec", "prores", "--background", "none", "--osc-port", "-1")
    assert code == 0, err
    frames = decode(shot, "rgba")
    assert frames, "a recording"
    a = np.stack([f[..., 3] for f in frames]).astype(int)
    assert (a[:, :8] == 0).all(), "4:3 in 64x64: the bars carry no picture"
    assert a.max() > 150 and len(np.unique(a)) > 20, "--record in ProRes carries the map as alpha"


def test_no_display_is_one_line_without_glfw_noise(tmp_path):
    b = tmp_path / "b"
    make_bundle(b, steps=1, blocks=1, heads=1, video=False)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    r = subprocess.run([sys.executable, "-m", "paik", "play", str(b), "--osc-port", "-1"], env=env,
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("paik: error: cannot open a window") and r.stderr.count("\n") == 1, r.stderr
    assert "GLFWError" not in r.stderr and "--headless" in r.stderr
