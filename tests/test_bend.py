"""Attention bending is exact: the tiny Wan transformer's attn2 with the bending processor equals
an explicit float32 attention over all 512 keys with the same bent, renormalized probabilities,
for every operation; a bent take records the maps the model used and the bends of every step, and
replays to the same take."""

from __future__ import annotations

import math

import av
import numpy as np
import pytest
import torch

from paik.capture.bend import (OPS, BendSpec, bend_maps, load_preset, available_presets, parse_bend,
                               resolve_bends, spatial)
from paik.capture.bundle import open_bundle
from paik.capture.generate import GenerateOptions, generate
from paik.capture.layout import Layout
from paik.capture.models import load_pipeline
from paik.capture.processor import CaptureProcessor
from paik.capture.replay import replay_options
from paik.capture.store import CaptureStore, Recorder
from paik.capture.tokens import token_table
from paik.capture.writer import BundleWriter
from paik.errors import PaikError
from procs import run_paik

PROMPT = "a red circle and a kissing cat"
LATENT = (3, 8, 10)  # F', H', W': non-square, so rotations and shifts cannot hide a transposed axis
L = 512


# ---------------------------------------------------------------------------------------------
# The grammar
# ---------------------------------------------------------------------------------------------

def test_lines_read_as_written():
    assert parse_bend("mute cat") == BendSpec("mute", "cat")
    assert parse_bend("gain kiss 2") == BendSpec("gain", "kiss", (2.0,))
    s = parse_bend("gain kiss 2 blocks 10-20 steps 0-12")
    assert (s.blocks, s.steps, s.heads, s.pass_, s.strength) == ("10-20", "0-12", None, "cond", 1.0)
    assert parse_bend("swap cat dog").args == ("dog",)
    assert parse_bend("shift cat 0.2 0").args == (0.2, 0.0)
    s = parse_bend("blur cat 2 strength 0.5 pass both heads 0-3")
    assert (s.args, s.strength, s.pass_, s.heads) == ((2.0,), 0.5, "both", "0-3")
    assert parse_bend('mask "soccer ball" circle').word == "soccer ball"
    assert parse_bend("flip cat horizontal").args == ("h",)
    for line in ["mute cat", "gain 'soccer ball' 2 strength 0.5 blocks 1,3 heads 0 steps 0-2 pass both",
                 "shift cat -0.25 0.5", "mask cat /tmp/x.png", "inject kiss takes/a", "rotate cat 12.5"]:
        assert parse_bend(parse_bend(line).line()) == parse_bend(line)


@pytest.mark.parametrize("line, says", [
    ("mut cat", "unknown operation 'mut'"),
    ("gain cat", "gain needs gain WORD FACTOR"),
    ("gain cat x", "must be a number"),
    ("gain cat -1", "at least 0"),
    ("mute soccer ball", 'quote a phrase: mute "soccer ball"'),
    ("gain cat 2 blok 3", "unexpected 'blok'"),
    ("gain cat 2 blocks 1-x", "is not a range"),
    ("gain cat 2 strength 1.5", "strength must be a number from 0 to 1"),
    ("gain cat 2 pass sideways", "pass must be cond, uncond or both"),
    ("flip cat d", "flip takes h"),
    ('mute "cat', "close the quote"),
    ("zoom cat 0", "at least"),
    ("gain cat nan", "finite"),
    ("inject cat b pass both", "use pass cond"),
    ("gain cat 2 steps", "needs a value"),
])
def test_bad_lines_are_one_line_errors(line, says):
    with pytest.raises(PaikError) as e:
        parse_bend(line)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_resolve_checks_words_ranges_and_masks(tiny, tmp_path):
    pipe, info = tiny
    table = token_table(pipe.tokenizer, PROMPT)
    neg = token_table(pipe.tokenizer, "blurry dog")

    def res(line, negative=neg):
        return resolve_bends([parse_bend(line)], table, negative, info.num_layers, info.num_heads, 4, LATENT)

    bad = tmp_path / "mask.png"
    bad.write_bytes(b"not an image at all")
    for line, says in [("mute dog", "'dog' is not in the prompt"),
                       ("gain cat 2 blocks 7", "out of range: valid values are 0..2"),
                       ("gain cat 2 steps 4", "out of range: valid values are 0..3"),
                       ("gain cat 2 heads 2", "out of range: valid values are 0..1"),
                       ("mute cat pass uncond", "the negative prompt"),
                       ("swap cat cat", "cannot swap with itself"),
                       (f"mask cat {bad}", "nor a readable image"),
                       ("mask cat nowhere.png", "no such file"),
                       ("inject cat nowhere", "cannot be opened")]:
        with pytest.raises(PaikError) as e:
            res(line)
        assert says in str(e.value) and "\n" not in str(e.value), (line, str(e.value))
    with pytest.raises(PaikError, match="no unconditional pass"):
        res("mute cat pass uncond", negative=None)
    assert res("mute dog pass uncond").bends[0].passes == {"uncond": ((1,), ())}
    # a phrase bends all its pieces: "kissing" is "▁kiss" "ing"
    assert res("mute kissing").bends[0].passes["cond"][0] == (5, 6)


def test_presets_are_data_and_ship(tmp_path):
    shipped = available_presets()
    assert {"kiss-dream", "kiss-mirror", "kiss-drift"} <= set(shipped)
    for name in shipped:
        assert load_preset(name)
    assert [s.line() for s in load_preset("kiss-mirror")] == ["flip kiss h", "mask kiss left strength 0.5"]
    (tmp_path / "m.png").write_bytes(b"")
    p = tmp_path / "mine.toml"
    p.write_text('bends = ["mute cat", {op = "gain", word = "kiss", factor = 2, blocks = "1-2"}]\n'
                 '[[bend]]\nop = "mask"\nword = "cat"\nshape = "m.png"\n')
    specs = load_preset(str(p))
    assert [s.line() for s in specs[:2]] == ["mute cat", "gain kiss 2 blocks 1-2"]
    assert specs[2].args == (str(tmp_path / "m.png"),)  # relative to the preset
    p.write_text('bends = ["mute cat", "gian kiss 2"]\n')
    with pytest.raises(PaikError, match="bend 2.*unknown operation 'gian'"):
        load_preset(str(p))
    p.write_text('[[bend]]\nop = "gain"\nword = "kiss"\nfactr = 2\n')
    with pytest.raises(PaikError, match="unknown key 'factr'"):
        load_preset(str(p))
    with pytest.raises(PaikError, match="no bend preset 'nope'"):
        load_preset("nope")


# ---------------------------------------------------------------------------------------------
# What the operations do to a map (independent definitions where a plain one exists)
# ---------------------------------------------------------------------------------------------

def _maps(seed=0, shape=(2, 3, *LATENT)):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _op(line, x, latent=LATENT):
    s = parse_bend(line)
    return spatial(s.op, s, x.flatten(2), latent).view(x.shape)


def test_spatial_operations_move_maps_where_they_say():
    x = _maps()
    assert torch.equal(_op("flip a h", x), x.flip(-1))
    assert torch.equal(_op("flip a v", x), x.flip(-2))
    # a shift by whole cells is a roll that lets zeros in: 0.2 of W'=10 is 2 cells right, 0.25 of H'=8 is 2 up
    y = _op("shift a 0.2 -0.25", x)
    ref = torch.zeros_like(x)
    ref[..., :6, 2:] = x[..., 2:, :8]
    assert torch.allclose(y, ref, atol=1e-6)
    sq = _maps(shape=(2, 3, 2, 6, 6))
    assert torch.allclose(_op("rotate a 90", sq, (2, 6, 6)), torch.rot90(sq, 1, (-2, -1)), atol=1e-5)  # ccw
    assert torch.allclose(_op("rotate a 0", x), x, atol=1e-6) and torch.allclose(_op("zoom a 1", x), x, atol=1e-6)
    z = _op("zoom a 2", x)
    # magnified about the centre: the centre cell's neighbourhood grows, the border leaves the frame
    assert torch.allclose(z[..., 3:5, 4:6].mean((-2, -1)), x[..., 3:5, 4:6].mean((-2, -1)), atol=0.3)
    assert not torch.allclose(z, x, atol=1e-2)
    # blur keeps the mass of a centred spike (nothing reaches an edge) and spreads it as a Gaussian
    spike = torch.zeros(1, 1, 1, 21, 21)
    spike[..., 10, 10] = 1
    b = _op("blur a 2", spike, (1, 21, 21))[0, 0, 0]
    g = torch.exp(-0.5 * (torch.arange(-10, 11.0) / 2) ** 2)
    g = torch.outer(g, g)
    assert abs(b.sum().item() - 1) < 1e-5
    assert torch.allclose(b, g / g.sum(), atol=2e-4)
    s = _op("sharpen a 1", spike, (1, 21, 21))[0, 0, 0]
    assert s[10, 10] > 1.5 and s[10, 12] < 0  # overshoot at the peak, undershoot around it (clamped later)
    left = _op("mask a left", x)
    assert torch.equal(left[..., :5], x[..., :5]) and not left[..., 5:].any()
    c = _op("mask a circle", torch.ones(1, 1, *LATENT))[0, 0, 0]
    yy, xx = torch.meshgrid(torch.arange(8) - 3.5, torch.arange(10) - 4.5, indexing="ij")
    assert torch.equal(c, (xx ** 2 + yy ** 2 <= 16).float())  # the largest centred disc


def test_mask_image_is_resized_to_the_grid(tmp_path):
    from PIL import Image

    img = np.zeros((80, 100), np.uint8)
    img[:, 50:] = 255  # right half white
    Image.fromarray(img).save(tmp_path / "right.png")
    x = _maps()
    y = _op(f"mask a {tmp_path / 'right.png'}", x)
    assert torch.allclose(y[..., 5:], x[..., 5:]) and not y[..., :5].any()


# ---------------------------------------------------------------------------------------------
# Exactness on the tiny Wan transformer's attn2
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    pipe, info, _ = load_pipeline("tiny")
    for block in pipe.transformer.blocks:  # peaked maps: an error cannot hide in 1/512
        with torch.no_grad():
            block.attn2.norm_k.weight.mul_(12.0)
    return pipe, info


def _inputs(seed, n_real, dim):
    g = torch.Generator().manual_seed(seed)
    s = math.prod(LATENT)
    hidden = torch.randn(1, s, dim, generator=g) * 2
    text = torch.empty(1, L, dim)
    text[0, :n_real] = torch.randn(n_real, dim, generator=g)
    text[0, n_real:] = torch.randn(dim, generator=g) * 0.1  # WanPipeline's zero padding: identical rows
    return hidden, text


def _recorder(info, n_real, bends=None):
    lay = Layout(steps=[0], blocks=list(range(info.num_layers)), heads=info.num_heads, head_mean=False,
                 n_heads=info.num_heads, tokens=list(range(n_real)), latent=LATENT, n_real=n_real, seq_len=L)
    rec = Recorder(CaptureStore(lay, "cpu"))
    rec.bends = bends
    rec.begin_pass("cond", 0, 1.0, "transformer", None)
    return rec


def _run(attn, rec, block, hidden, text):
    saved = attn.processor
    attn.set_processor(CaptureProcessor(rec, block))
    try:
        with torch.no_grad():
            return attn(hidden, encoder_hidden_states=text)
    finally:
        attn.set_processor(saved)


def _reference(attn, hidden, text, bendset, block):
    """Explicit float32 attention over all L keys, the bend applied to its probabilities and every
    position renormalized over all keys: O = P' V, then to_out."""
    with torch.no_grad():
        q = attn.norm_q(attn.to_q(hidden)).unflatten(2, (attn.heads, -1))[0]  # [S, H, D]
        k = attn.norm_k(attn.to_k(text)).unflatten(2, (attn.heads, -1))[0]  # [L, H, D]
        v = attn.to_v(text).unflatten(2, (attn.heads, -1))[0]
        p = torch.softmax(torch.einsum("shd,lhd->hls", q, k) / math.sqrt(q.shape[-1]), dim=1)  # [H, L, S]
        unbent = p.clone()
        for b in bendset.bends:
            mine, other = b.passes["cond"]
            group = list(mine) + list(other)
            cur = p[:, group]
            new = bend_maps(b, cur, len(mine), LATENT, 0, block).clamp(0, 1)
            p[:, group] = cur + b.heads.view(-1, 1, 1) * (new - cur)
        p = p / p.sum(1, keepdim=True)
        out = torch.einsum("hls,lhd->shd", p, v).flatten(1)[None]
        return attn.to_out[1](attn.to_out[0](out)), p, unbent


@pytest.fixture(scope="module")
def source_take(tiny, tmp_path_factory):
    """An unbent capture of other hidden states, written as a bundle: what inject takes maps from."""
    pipe, info = tiny
    table = token_table(pipe.tokenizer, PROMPT)
    n = len(table)
    hidden, text = _inputs(7, n, pipe.transformer.blocks[0].attn2.inner_dim)
    rec = _recorder(info, n)
    for blk in range(info.num_layers):
        _run(pipe.transformer.blocks[blk].attn2, rec, blk, hidden, text)
    path = tmp_path_factory.mktemp("src") / "take"
    w = BundleWriter(path, {"layout": rec.store.layout.to_json(), "tokens": [t.to_json() for t in table]})
    w.add_step({"index": 0, "timestep": 999.0, "sigma": 1.0, "expert": "transformer"},
               {"maps": rec.store.maps[0], "padding": rec.store.padding[0]})
    w.close()
    return path


EVERY_OP = [
    "gain cat 3", "gain kissing 0.3", "mute cat", "swap cat red", "swap kissing circle", "shift cat 0.2 -0.25",
    "rotate cat 30", "flip cat h", "flip kissing v", "zoom cat 1.7", "zoom cat 0.6", "blur cat 2",
    "sharpen cat 2", "mask cat circle", "mask kissing left", "inject cat {src}", "inject kissing {src}",
    "gain cat 3 strength 0.5", "blur cat 2 heads 1", "mute cat blocks 1-2",
    "gain cat 50",  # clamped at 1, and the denominator far from 1
]


@pytest.mark.parametrize("line", EVERY_OP)
def test_bent_block_output_equals_explicit_attention(tiny, source_take, line):
    assert {parse_bend(x.format(src="s")).op for x in EVERY_OP} == set(OPS)
    pipe, info = tiny
    table = token_table(pipe.tokenizer, PROMPT)
    n = len(table)
    spec = parse_bend(line.format(src=source_take))
    bends = resolve_bends([spec], table, None, info.num_layers, info.num_heads, 1, LATENT)
    worst, moved = 0.0, 0.0
    for blk in range(info.num_layers):
        attn = pipe.transformer.blocks[blk].attn2
        hidden, text = _inputs(blk, n, attn.inner_dim)
        rec = _recorder(info, n, bends)
        got = _run(attn, rec, blk, hidden, text)
        plain = _run(attn, _recorder(info, n), blk, hidden, text)
        if blk not in bends.bends[0].blocks:
            assert torch.equal(got, plain)  # outside its blocks a bend does nothing, not even rounding
            continue
        ref, p, unbent = _reference(attn, hidden, text, bends, blk)
        scale = ref.abs().max().item()
        worst = max(worst, (got - ref).abs().max().item() / scale)
        moved = max(moved, (plain - ref).abs().max().item() / scale)
        # the maps captured are the bent, renormalized probabilities the reference used
        maps = rec.store.maps[0, blk].float().flatten(2)
        pad = rec.store.padding[0, blk].float().flatten(1)
        assert (maps - p[:, :n]).abs().max() < 1e-3 and (pad - p[:, n:].sum(1)).abs().max() < 1e-3
        assert ((maps.sum(1) + pad) - 1).abs().max() < 3e-3 and maps.min() >= 0 and torch.isfinite(maps).all()
        assert unbent[:, :n].max() > 0.3  # sharpened: the word's attention is not 1/512
    assert worst <= 1e-3, worst
    assert moved > 1e-2, moved  # the bend changed the output: the comparison can fail


def test_strength_zero_is_identity_and_mute_zeroes_the_word(tiny):
    pipe, info = tiny
    table = token_table(pipe.tokenizer, PROMPT)
    n = len(table)
    attn = pipe.transformer.blocks[1].attn2
    hidden, text = _inputs(3, n, attn.inner_dim)
    plain_rec = _recorder(info, n)
    plain = _run(attn, plain_rec, 1, hidden, text)
    for line in ["gain cat 3 strength 0", "mute kissing strength 0", "rotate cat 45 strength 0"]:
        bends = resolve_bends([parse_bend(line)], table, None, info.num_layers, info.num_heads, 1, LATENT)
        rec = _recorder(info, n, bends)
        assert torch.equal(_run(attn, rec, 1, hidden, text), plain)
        assert torch.equal(rec.store.maps, plain_rec.store.maps)
    bends = resolve_bends([parse_bend("mute kissing heads 1")], table, None, info.num_layers, info.num_heads, 1, LATENT)
    rec = _recorder(info, n, bends)
    _run(attn, rec, 1, hidden, text)
    maps = rec.store.maps[0, 1]
    assert not maps[1, 5:7].any()  # both pieces of "kissing", in head 1
    assert maps[0, 5:7].float().max() > 0.05  # head 0 is outside the bend


def test_no_bend_can_make_nan(tiny):
    """Every key of a position muted: the denominator would be 0; it is held, and stays finite."""
    pipe, info = tiny
    table = token_table(pipe.tokenizer, "cat")
    n = len(table)
    attn = pipe.transformer.blocks[0].attn2
    hidden, text = _inputs(5, n, attn.inner_dim)
    text[0, n:] = -50 * text[0, 0]  # padding keys nobody attends to: the real tokens take everything
    specs = [parse_bend("mute cat"), parse_bend("mute eos"), parse_bend("gain cat 1e9")]
    bends = resolve_bends(specs[:2], table, None, info.num_layers, info.num_heads, 1, LATENT)
    rec = _recorder(info, n, bends)
    out = _run(attn, rec, 0, hidden, text)
    assert torch.isfinite(out).all() and torch.isfinite(rec.store.maps.float()).all()
    bends = resolve_bends(specs[2:], table, None, info.num_layers, info.num_heads, 1, LATENT)
    rec = _recorder(info, n, bends)
    assert torch.isfinite(_run(attn, rec, 0, hidden, text)).all()
    assert rec.store.maps.float().max() <= 1.0 + 1e-3


def test_inject_source_of_another_layout_is_refused(tiny, source_take):
    pipe, info = tiny
    table = token_table(pipe.tokenizer, PROMPT)
    with pytest.raises(PaikError, match="another layout") as e:
        resolve_bends([parse_bend(f"inject cat {source_take}")], table, None, info.num_layers, info.num_heads, 1,
                      (3, 4, 4))
    assert "\n" not in str(e.value)
    with pytest.raises(PaikError, match="has no step 1"):
        resolve_bends([parse_bend(f"inject cat {source_take} steps 0-1")], table, None, info.num_layers,
                      info.num_heads, 2, LATENT)


# ---------------------------------------------------------------------------------------------
# Takes: paik generate --bend, the manifest's record, and replay
# ---------------------------------------------------------------------------------------------

def _video(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float32)


def _same_take(a, b):
    """The model computed the same take: every step's maps and denoised estimate bit-identical.
    (The H.264 files are compared separately: libx264 here does not always encode identical
    frames to identical bytes.)"""
    assert a.step_indices == b.step_indices
    for s in a.step_indices:
        x, y = a.step_arrays(s), b.step_arrays(s)
        for k in ("maps", "padding", "x0"):
            assert np.array_equal(x[k], y[k]), (s, k)


# Mean |difference| in 8-bit levels between two encodes of identical frames: about 0.06 measured
# here. The tiny model's random weights make faint videos, where a mute moves about 0.7.
ENCODE_NOISE = 0.15


@pytest.fixture(scope="module")
def takes(tmp_path_factory):
    loaded = load_pipeline("tiny")
    for block in loaded[0].transformer.blocks:
        with torch.no_grad():
            block.attn2.norm_k.weight.mul_(12.0)
    root = tmp_path_factory.mktemp("takes")

    def take(name, bends=(), **kw):
        opts = GenerateOptions(prompt=PROMPT, out=str(root / name), steps=4, quiet=True, bends=list(bends), **kw)
        return open_bundle(generate(opts, loaded=loaded))

    t = {"loaded": loaded, "root": root, "plain": take("plain"),
         "mute": take("mute", ["mute cat blocks 1-2 steps 1-3", "gain red 2 steps 2"]),
         "zero": take("zero", ["mute cat strength 0", "blur red 3 strength 0 pass both"], negative="blurry red")}
    t["zero_plain"] = take("zero_plain", negative="blurry red")
    return t


def test_mute_zeroes_the_words_maps_and_changes_the_video(takes):
    plain, mute = takes["plain"], takes["mute"]
    for s in mute.step_indices:
        for blk in range(3):
            cat = mute.select("cat", step=s, block=blk, reduce="max")
            if s >= 1 and blk >= 1:
                assert not cat.any(), (s, blk)
            else:
                assert cat.max() > 0.05, (s, blk)
        a = mute.step_arrays(s)
        total = a["maps"].astype(np.float32).sum(2) + a["padding"].astype(np.float32)
        assert np.abs(total - 1).max() < 3e-3
    # step 0 is before the bend: the same computation as the unbent take, bit for bit
    assert np.array_equal(mute.step_arrays(0)["x0"], plain.step_arrays(0)["x0"])
    assert not np.array_equal(mute.step_arrays(3)["x0"], plain.step_arrays(3)["x0"])
    diff = np.abs(_video(mute.video_path) - _video(plain.video_path)).mean()
    assert diff > 3 * ENCODE_NOISE, diff


def test_manifest_records_the_bends_of_every_step(takes):
    m = takes["mute"].manifest
    assert m["bends"] == ["mute cat blocks 1-2 steps 1-3", "gain red 2 steps 2"]
    assert [e["step"] for e in m["bend_log"]] == [0, 1, 2, 3]
    assert [e["bends"] for e in m["bend_log"]] == [
        [], ["mute cat blocks 1-2 steps 1-3"], ["mute cat blocks 1-2 steps 1-3", "gain red 2 steps 2"],
        ["mute cat blocks 1-2 steps 1-3"]]
    assert [s["bends"] for s in m["steps"]] == [e["bends"] for e in m["bend_log"]]
    assert "bends" not in takes["plain"].manifest and "bend_log" not in takes["plain"].manifest


def test_strength_zero_gives_the_unbent_take(takes):
    _same_take(takes["zero"], takes["zero_plain"])
    diff = np.abs(_video(takes["zero"].video_path) - _video(takes["zero_plain"].video_path)).mean()
    assert diff < ENCODE_NOISE, diff


def test_replay_reproduces_a_bent_take(takes):
    mute = takes["mute"]
    opts = replay_options(str(mute.path), str(takes["root"] / "replay"), quiet=True)
    assert (opts.prompt, opts.seed, opts.steps, opts.replay_bends["log"]) == (
        PROMPT, 0, 4, mute.manifest["bend_log"])
    again = open_bundle(generate(opts, loaded=takes["loaded"]))
    _same_take(again, mute)
    assert again.manifest["bend_log"] == mute.manifest["bend_log"]
    diff = np.abs(_video(again.video_path) - _video(mute.video_path)).mean()
    assert diff < ENCODE_NOISE, diff
    # with twice the steps, the recording is followed proportionally
    opts = replay_options(str(mute.path), str(takes["root"] / "replay8"), quiet=True, steps=8, height=32, width=32)
    longer = open_bundle(generate(opts, loaded=takes["loaded"]))
    assert [e["bends"] for e in longer.manifest["bend_log"]] == [
        e["bends"] for e in mute.manifest["bend_log"] for _ in (0, 1)]
    assert longer.layout.latent == (3, 2, 2)
    assert not longer.select("cat", step=2, block=1, reduce="max").any()
    assert longer.select("cat", step=1, block=1, reduce="max").max() > 0.05


def test_cli_bend_errors_are_one_line_and_replay_runs(tmp_path):
    """Real ``paik generate`` processes (forked from one driver: tests/procs.py), in order."""
    a, b, c, x = (str(tmp_path / n) for n in "abcx")
    r = run_paik([
        ["generate", PROMPT, "-m", "tiny", "-o", x, "--bend", "mut cat"],
        ["generate", PROMPT, "-m", "tiny", "-o", x, "-q", "--bend", "gain dog 2"],
        ["generate", PROMPT, "-m", "tiny", "-o", a, "-q", "--steps", "2", "--bend", "mute cat", "--bends", "kiss-drift"],
        ["generate", "a kiss and a cat", "-m", "tiny", "-o", a, "-q", "--steps", "2", "--bend", "mute cat",
         "--bends", "kiss-drift"],
        ["generate", "--replay", a, "-o", b, "-q", "--seed", "3"],
        ["generate", "--replay", a, "-o", c, "--bend", "mute kiss"],
    ], cwd=tmp_path, timeout=300)
    assert all("Traceback" not in p.stderr for p in r), [p.stderr for p in r]
    assert r[0].returncode == 2 and r[0].stderr.strip().splitlines() == [
        "paik: error: bend 'mut cat': unknown operation 'mut'; operations: " + ", ".join(OPS)]
    assert r[1].returncode == 2
    assert r[1].stderr.strip().splitlines()[-1].startswith("paik: error: bend 'gain dog 2': token 'dog' is not in the prompt")
    assert not (tmp_path / "x").exists()
    assert r[2].returncode == 2 and "token 'kiss' is not in the prompt" in r[2].stderr  # the preset's word
    assert r[3].returncode == 0, r[3].stderr
    assert r[4].returncode == 0, r[4].stderr
    a, b = open_bundle(tmp_path / "a"), open_bundle(tmp_path / "b")
    assert b.manifest["seed"] == 3 and b.manifest["bend_log"] == a.manifest["bend_log"]
    assert a.manifest["bends"] == ["shift kiss 0.25 0", "rotate kiss 15 strength 0.5", "mute cat"]
    assert r[5].returncode == 2 and "--replay plays the take's own bends" in r[5].stderr
