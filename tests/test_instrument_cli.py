"""The instrument's commands end to end: renders decoded back with PyAV, PNG grids, and the
messages a user gets for mistakes (no tracebacks)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from paik.cli import main
from instrument_fixtures import make_bundle


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    p = tmp_path_factory.mktemp("cli") / "b"
    make_bundle(p, steps=3, blocks=4, heads=2, fps=8)
    return p


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_render_decodes_to_expected_frames_rate_and_pixels(bundle_dir, tmp_path, capsys):
    import av

    out = tmp_path / "kiss.mp4"
    code, stdout, err = run(capsys, "render", bundle_dir, "--token", "kiss", "--view", "sweep", "--out", out,
                            "--size", "64x48", "--fps", "10", "--duration", "1.5", "--colormap", "grayscale",
                            "--quiet")
    assert code == 0, err
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert s.average_rate == 10 and (s.width, s.height) == (64, 48)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
    assert len(frames) == 15
    # the same frames rendered headless: the encode must carry the picture (H.264 at crf 16)
    from paik.instrument.cli import _params, default_look_args

    from paik.instrument.render.headless import Offscreen, egl_context
    from paik.instrument.render.offline import frame_times
    from paik.instrument.render.renderer import Renderer
    from paik.instrument.render.source import Source

    src = Source.open(bundle_dir, "cpu")
    p = _params(default_look_args(token="kiss", colormap="grayscale"), src, "sweep")
    ctx = egl_context()
    r, off = Renderer(ctx, src), Offscreen(ctx, (64, 48))
    for k in (0, 7, 14):
        off.use()
        r.draw(p, float(frame_times(15)[k]), (0, 0, 64, 48))
        want = off.read()[..., :3].astype(float)
        assert np.abs(frames[k].astype(float) - want).mean() < 3.0
    # and the sweep moves: first and last frames differ
    assert np.abs(frames[0].astype(float) - frames[-1].astype(float)).mean() > 5


def test_prores_4444_keeps_alpha(bundle_dir, tmp_path, capsys):
    import av

    out = tmp_path / "kiss.mov"
    code, _, err = run(capsys, "render", bundle_dir, "--token", "kiss", "--view", "single", "--out", out,
                       "--size", "32x24", "--duration", "0.5", "--codec", "prores", "--composite", "alpha", "--quiet")
    assert code == 0, err
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "prores" and "a" in s.codec_context.pix_fmt[:4]
        frame = next(c.decode(s)).to_ndarray(format="rgba")
    assert frame[..., 3].min() < 60 and frame[..., 3].max() > 200


def test_grid_writes_labelled_pngs(bundle_dir, tmp_path, capsys):
    from PIL import Image

    code, stdout, err = run(capsys, "grid", bundle_dir, "--token", "kiss", "--view", "blocks", "--step", "0,2",
                            "--time", "0,1", "--cell-width", "40", "--out", tmp_path / "figs")
    assert code == 0, err
    paths = stdout.split()
    assert len(paths) == 4 and all(p.endswith(".png") for p in paths)
    img = np.asarray(Image.open(paths[0]))
    # 4 blocks at aspect 4:3 -> 2x2 cells of 40x30 with a 2-pixel gap, plus the title strip
    assert img.shape[1] == 82 and img.shape[0] > 62
    code, stdout, err = run(capsys, "grid", bundle_dir, "--token", "red", "--view", "heads-steps", "--block", "3",
                            "--out", tmp_path / "figs")
    assert code == 0 and "block3" in stdout


@pytest.mark.parametrize("argv,message", [
    (["render", "{missing}", "--out", "x.mp4"], "no such bundle directory"),
    (["render", "{bundle}", "--token", "kis", "--out", "x.mp4"], "'kis' is not in the prompt"),
    (["render", "{bundle}", "--step", "9", "--out", "x.mp4"], "--step 9 is not in this bundle; captured steps: 0-2"),
    (["render", "{bundle}", "--block", "-5", "--out", "x.mp4"], "--block -5 is not in this bundle"),  # -1: the last
    (["render", "{bundle}", "--head", "2", "--out", "x.mp4"], "--head 2 is out of range"),
    (["render", "{bundle}", "--colormap", "jett", "--out", "x.mp4"], "unknown colormap 'jett'"),
    (["render", "{bundle}", "--size", "33x20", "--out", "x.mp4"], "even width and height"),
    (["render", "{bundle}", "--codec", "prores", "--out", "x.mp4"], "name the output .mov"),
    (["render", "{bundle}", "--duration", "0", "--out", "x.mp4"], "--duration must be a positive"),
    (["grid", "{bundle}", "--view", "blocks", "--step", "1,x", "--out", "f"], "expected indices like 0,12,24"),
    (["grid", "{bundle}", "--view", "steps", "--block", "4", "--out", "f"], "--block 4 is not in this bundle"),
    (["grid", "{bundle}", "--time", "2", "--out", "f"], "--time 2.0: positions run from 0"),
    (["play", "{notabundle}"], "not a Paik bundle"),
    (["render", "{bundle}", "--size", "10x", "--out", "x.mp4"], "argument --size: '10x': expected WIDTHxHEIGHT"),
    (["render", "{bundle}", "--view", "nope", "--out", "x.mp4"], "argument --view: invalid choice: 'nope'"),
    (["render", "{bundle}", "--fps", "0", "--out", "x.mp4"], "--fps must be positive, not 0"),
    (["render", "{bundle}", "--out", "{notabundle}"], "is a directory: name the video file"),
    (["render", "{bundle}", "--out", "x.xyz"], "cannot tell a video format from the name x.xyz"),
    (["render", "{bundle}", "--out", "{file}/x.mp4"], "file.txt is a file, not a directory"),
    (["grid", "{bundle}", "--out", "{file}"], "file.txt is a file, not a directory"),
    (["grid", "{bundle}", "--cell-width", "0", "--out", "f"], "--cell-width must be at least 1"),
    (["play", "{bundle}", "--headless", "--record", "{file}/x.mp4"], "file.txt is a file, not a directory"),
    (["bench", "render", "--bundle", "{bundle}", "--frames", "0"], "--frames must be at least 1"),
    (["bench", "words", "--clips", "0"], "--clips: must be at least 1"),
    (["bench", "words", "--threads", "0"], "--threads: must be at least 1"),
    (["bench", "words", "--json", "{missing}/r.json"], "nope does not exist"),
    (["bench", "shapes", "--json", "{notabundle}"], "cannot write a file there"),
    (["bench", "faithfulness", "--threads", "0"], "--threads: must be at least 1"),
    # a typo points to the subcommand's help, with the flag meant
    (["play", "--tokn", "x"], "paik play: error: unrecognized arguments: --tokn; did you mean --token? "
                              "(see 'paik play --help')"),
    (["bench", "words", "--clipz", "3"], "paik bench words: error: unrecognized arguments: --clipz 3; did you "
                                         "mean --clips? (see 'paik bench words --help')"),
    (["render", "{bundle}", "--out", "x.mp4", "--qiet"], "paik render: error: unrecognized arguments: --qiet; "
                                                         "did you mean --quiet?"),
    # flags are checked before the bundle is opened: a missing bundle is not what is said first
    (["render", "{missing}", "--gain", "99", "--out", "x.mp4"], "--gain 99.0 is out of range (0..16)"),
    (["render", "{missing}", "--codec", "prores", "--out", "x.mp4"], "name the output .mov"),
    (["render", "{missing}", "--size", "33x20", "--out", "x.mp4"], "even width and height"),
    (["render", "{missing}", "--colormap", "jett", "--out", "x.mp4"], "unknown colormap 'jett'"),
    (["play", "{missing}", "--seconds", "0"], "--seconds must be a positive number of seconds"),
    (["play", "{missing}", "--step", "late"], "--step 'late': expected a number"),
    (["grid", "{missing}", "--time", "2", "--out", "f"], "--time 2.0: positions run from 0"),
])
def test_user_errors_are_clear(bundle_dir, tmp_path, capsys, argv, message):
    (tmp_path / "plain").mkdir()
    (tmp_path / "file.txt").write_text("")
    subs = {"{bundle}": bundle_dir, "{missing}": tmp_path / "nope", "{notabundle}": tmp_path / "plain",
            "{file}": tmp_path / "file.txt"}

    def sub(a):
        for k, v in subs.items():
            if a.startswith(k):
                return str(v) + a[len(k):]
        return str(tmp_path / a) if a in ("x.mp4", "x.xyz", "f") else a

    argv = [sub(a) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err, err
    assert "Traceback" not in err and re.match(r"paik( [\w-]+)*: error: ", err) and err.count("\n") == 1, err


def test_bench_render_prints_a_table_and_json(bundle_dir, tmp_path, capsys):
    import json

    out = tmp_path / "bench.json"
    code, stdout, err = run(capsys, "bench", "render", "--bundle", bundle_dir, "--sizes", "64x36", "--frames", "3",
                            "--views", "single,grid-heads-steps,sweep", "--json", out)
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].split()[:4] == ["view", "resolution", "p50", "ms"]
    assert [ln.split()[0] for ln in lines[1:4]] == ["single", "grid-heads-steps", "sweep"]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 3 and all(r["p50_ms"] > 0 for r in rows)


def test_bench_words_progress_counts_every_forward_pass():
    """`paik bench words` shows a tqdm bar (stderr) over the probe's forward passes: its total,
    probe_forwards, is the number word_reliance really makes (here with a toy transformer)."""
    import torch

    from paik.shapes.train import probe_forwards, word_reliance

    class Toy(torch.nn.Module):
        dtype = torch.float32

        def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
            return (hidden_states * 0 + encoder_hidden_states.mean(),)

    class Bar:
        n = 0

        def update(self, k=1):
            self.n += k

    n = 18  # two batches of 16
    x0, noise, weight = torch.zeros(n, 2, 1, 2, 2), torch.ones(n, 2, 1, 2, 2), torch.ones(n, 2, 1, 2, 2)
    embs = {k: torch.full((n, 4, 3), float(i)) for i, k in enumerate(("true", "shape", "colour"))}
    bar = Bar()
    r = word_reliance(Toy(), x0, noise, weight, embs, bar=bar)
    assert bar.n == probe_forwards(n, len(embs)) == len(r["sigma"]) * 3 * 2
