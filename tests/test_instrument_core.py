"""Parameter bank, keys, reducer and shader hot reload."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from paik.errors import PaikError
from paik.instrument.control import keys
from paik.instrument.control.params import SPECS, Command, CommandQueue, Params, apply
from instrument_fixtures import make_bundle


def bank():
    return Params().bind(n_tokens=4, n_steps=3, n_blocks=5, n_heads=2, colormaps=("magma", "viridis"))


def test_commands_clamp_cycle_and_reject():
    p = bank()
    apply(p, Command("step", "nudge", 10))
    assert p.step == 2.0  # clamped to the last captured step
    apply(p, Command("block", "set", 1.25))
    assert p.block == 1.25
    apply(p, Command("head", "cycle", 1))  # -1 (all) -> 0 -> 1 -> -1
    apply(p, Command("head", "cycle", 1))
    apply(p, Command("head", "cycle", 1))
    assert p.head == -1
    apply(p, Command("colormap", "cycle", -1))
    assert p.colormap == "viridis"
    apply(p, Command("playing", "toggle"))
    assert p.playing is False
    for bad in (Command("nope", "set", 1), Command("view", "set", "sideways"), Command("gain", "set", "loud"),
                Command("view", "nudge", 1), Command("gain", "set", float("nan"))):
        with pytest.raises(PaikError):
            apply(p, bad)


def test_queue_applies_in_order_and_reports_errors():
    p, q = bank(), CommandQueue()
    q.put(Command("gain", "set", 2.0))
    q.put(Command("colormap", "set", "nonexistent"))
    q.put(Command("gain", "nudge", 0.5))
    errors = q.drain(p)
    assert p.gain == 2.5 and len(errors) == 1 and "colormap" in errors[0]
    assert q.drain(p) == []


def test_every_key_binding_is_a_valid_command_and_documented():
    p = bank()
    for key, shift, cmd, text in keys.BINDINGS:
        assert cmd.name in SPECS and text
        apply(p, cmd)  # must not raise
    assert keys.lookup("V", False) == Command("view", "cycle", 1)
    assert keys.lookup("V", True) == Command("view", "cycle", -1)
    assert keys.lookup("SPACE", True) == Command("playing", "toggle")  # shift falls back
    assert keys.lookup("F12", False) is None
    helptext = "\n".join(keys.help_lines())
    assert "play / pause" in helptext and "view: grid-heads-steps" in helptext and "quit" in helptext


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from paik.capture.bundle import open_bundle

    p = tmp_path_factory.mktemp("core") / "b"
    make_bundle(p, steps=4, blocks=4, heads=3, video=False)
    return open_bundle(p)


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_reducer_matches_bundle_select(bundle, reduce):
    from paik.instrument.render.reduce import Reducer, Selection

    r = Reducer(bundle, device="cpu")
    kiss = tuple(bundle.resolve("kiss"))
    allS, allB = tuple(range(4)), tuple(range(4))
    # small selection (read directly), kept axes in (step, block, head) order
    v = r.volumes(Selection(kiss, (1, 2), (0, 3), None, ("step", "block"), reduce))
    assert v.shape == (4, 4, 6, 8)
    np.testing.assert_allclose(v[3], bundle.select("kiss", step=2, block=3, reduce=reduce), rtol=1e-5, atol=1e-7)
    # the grand reduction goes through the per-token table
    g = r.volumes(Selection(kiss, allS, allB, None, (), reduce))
    np.testing.assert_allclose(g[0], bundle.select("kiss", reduce=reduce), rtol=1e-5, atol=1e-7)
    assert r._tables, "the grand average should have built the per-token table"
    # once built, the table serves smaller selections too
    b = r.volumes(Selection(kiss, (2,), allB, None, ("step",), reduce))
    np.testing.assert_allclose(b[0], bundle.select("kiss", step=2, block=None, reduce=reduce), rtol=1e-5, atol=1e-7)
    # heads kept
    hs = r.volumes(Selection(kiss, allS, (1,), None, ("step", "block", "head"), reduce))
    assert hs.shape[0] == 12
    np.testing.assert_allclose(hs[2 * 3 + 1], bundle.select("kiss", step=2, block=1, head=1), rtol=1e-5, atol=1e-7)


def test_views_reach_every_cell_and_crossfade_weights_sum_to_one(bundle):
    from paik.instrument.render.source import Source
    from paik.instrument.render.views import cell_table, plan

    src = Source(bundle, "cpu")
    p = bank()
    p.bind(len(src.words), 4, 4, 3, ("magma",))
    for view in ("single", "blocks", "steps", "grand", "sweep", "grid-blocks", "grid-steps", "grid-heads-steps"):
        p.view, p.step, p.block = view, 1.3, 2.6
        pl = plan(p, src.dims, src.words[2].positions, "kiss")
        n_tiles = int(np.prod(pl.selection.shape(3)))
        taps, bg = cell_table(p, src.dims, pl, 0.4)
        assert len(bg) == len(pl.labels) <= pl.rows * pl.cols
        np.testing.assert_allclose(taps[:, 1].sum(1), 1.0, atol=1e-6, err_msg=view)
        used = taps[:, 0][taps[:, 1] > 0].astype(int)
        assert used.max() < n_tiles and used.min() >= 0, view


def test_broken_shader_keeps_the_last_good_program(tmp_path):
    from paik.instrument.render.headless import Offscreen, egl_context
    from paik.instrument.render.renderer import Renderer
    from paik.instrument.render.shaders import SHADERS
    from paik.instrument.render.source import Source

    d = tmp_path / "shaders"
    shutil.copytree(SHADERS, d)
    b = tmp_path / "b"
    make_bundle(b, steps=2, blocks=2, heads=1, video=False, preview=False)
    ctx = egl_context()
    src = Source.open(b, "cpu")
    r = Renderer(ctx, src, shader_dir=d)
    off = Offscreen(ctx, (32, 24))
    p = Params().bind(len(src.words), 2, 2, 1, ("magma", "grayscale"))
    off.use()
    r.draw(p, 0.0, (0, 0, 32, 24))
    good = off.read().copy()
    prog, gen = r.program.prog, r.program.generation

    frag = d / "attention.frag"
    text = frag.read_text()
    frag.write_text(text.replace("frag = u_premultiply", "frag = undefined_thing +"))
    assert r.program.poll() is False
    assert r.program.error and "attention.frag" in r.program.error
    assert r.program.prog is prog and r.program.generation == gen
    r.draw(p, 0.0, (0, 0, 32, 24))
    assert np.array_equal(off.read(), good), "the last good program must keep drawing"
    assert r.program.poll() is False  # not retried until the file changes again

    # an edit that compiles is picked up at the next poll (mtime pushed ahead: coarse clocks)
    frag.write_text(text.replace("vec4 c = composite(", "vec4 c = vec4(1.0, 0.0, 0.0, 1.0); vec4 unused = composite("))
    import os
    import time

    os.utime(frag, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert r.program.poll() is True and r.program.error is None
    r.draw(p, 0.0, (0, 0, 32, 24))
    red = off.read()
    assert (red[..., 0] == 255).all() and (red[..., 1] == 0).all()


def test_the_atlas_places_every_tile_at_its_origin_and_zeroes_the_rest():
    """atlas.pack against a tile-by-tile placement: each tile at the origin atlas.origins gives,
    the unused slots of the last row zero (the atlas is made with np.empty, so they are written)."""
    from paik.instrument.render import atlas

    rng = np.random.default_rng(0)
    n, d, h, w = 5, 3, 3, 6
    tiles = rng.standard_normal((n, d, h, w, 1)).astype(np.float16) + 1  # no tile is zero anywhere
    packed, cols = atlas.pack(tiles, max_size=2 * w + 1)  # 2 columns: 3 rows, one slot unused
    assert cols == 2 and packed.shape == (d, 3 * h, 2 * w, 1)
    want = np.zeros_like(packed)
    for i, (x, y) in enumerate(atlas.origins(n, cols, w, h).astype(int)):
        want[:, y:y + h, x:x + w] = tiles[i]
    np.testing.assert_array_equal(packed, want)
    assert not packed[:, 2 * h:, w:].any()

    # laid out for more slots than tiles (a forming take's previews): the same tiles, more zeros
    more, cols = atlas.pack(tiles, max_size=2 * w + 1, slots=8)
    assert cols == 2 and more.shape == (d, 4 * h, 2 * w, 1)
    np.testing.assert_array_equal(more[:, :3 * h], want)
    assert not more[:, 3 * h:].any()
