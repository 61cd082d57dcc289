"""Broken bundles are refused whole, with one line, before they reach the renderer; a step file
that turns bad while playing is an error, never a crash or a hang.

A corpus of damaged bundles is generated here from a good one (every case issue 15 found) and
run through ``open_bundle``, ``paik info``, ``paik render`` and ``paik play --headless``, in this
process (bounded by an alarm: a FIFO opened for reading would block forever) and as real
processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from instrument_fixtures import make_bundle
from paik.capture.bundle import open_bundle
from paik.cli import main as paik
from paik.errors import BundleError
from procs import run_paik

STEPS = 3


class Hung(BaseException):
    """Raised by the alarm; a BaseException so that no ``except OSError`` can swallow it."""


@contextmanager
def deadline(seconds: float):
    def fire(_sig, _frame):
        raise Hung(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("good") / "b"
    make_bundle(p, steps=STEPS, blocks=4, heads=2, video=False)
    return p


# -- the corpus -------------------------------------------------------------------------------
def _manifest(b: Path, edit) -> None:
    m = json.loads((b / "manifest.json").read_text())
    edit(m)
    (b / "manifest.json").write_text(json.dumps(m))


def _step(b: Path, s: int = 1) -> Path:
    return b / f"maps/step_{s:04d}.safetensors"


def _raw_header(b: Path, header: bytes, length: int | None = None, size: int | None = None) -> None:
    """Step 1 replaced by an 8-byte length (``length``, default the header's), ``header`` and
    zeros up to ``size`` bytes (sparse)."""
    f = _step(b)
    with open(f, "wb") as fh:
        fh.write((len(header) if length is None else length).to_bytes(8, "little") + header)
        if size:
            fh.truncate(size)


def _tensors(b: Path, **over) -> None:
    """Step 1 rewritten as a valid safetensors file with some tensors changed or removed."""
    import torch

    from paik.capture.bundle import read_safetensors
    from paik.capture.writer import write_safetensors

    t = {k: torch.from_numpy(np.array(v)) for k, v in read_safetensors(_step(b)).items()}
    for k, v in over.items():
        if v is None:
            t.pop(k)
        else:
            t[k] = v(t[k])
    write_safetensors(_step(b), t)


def _set(path_keys: str, value):
    def edit(m):
        d = m
        keys = path_keys.split(".")
        for k in keys[:-1]:
            d = d[int(k)] if isinstance(d, list) else d[k]
        d[int(keys[-1]) if isinstance(d, list) else keys[-1]] = value
    return lambda b: _manifest(b, edit)


def _loop_step(b: Path) -> None:
    f = _step(b)
    f.unlink()
    f.symlink_to(f.name)  # points at itself


def _loop_maps(b: Path) -> None:
    shutil.rmtree(b / "maps")
    (b / "maps").symlink_to("maps")


def _fifo(b: Path, name: str) -> None:
    f = b / name
    f.unlink()
    os.mkfifo(f)


def _device(b: Path) -> None:
    f = _step(b)
    f.unlink()
    f.symlink_to("/dev/zero")


def _truncate(b: Path) -> None:
    os.truncate(_step(b), _step(b).stat().st_size - 100)


CORPUS = {
    # step files: the safetensors header
    "header length 2^63": lambda b: _raw_header(b, b"{}", length=1 << 63),
    "header length 99 MB": lambda b: _raw_header(b, b"{}", length=99_000_000, size=100_000_000),
    "header not a dict": lambda b: _raw_header(b, b"[1, 2, 3]"),
    "header not JSON": lambda b: _raw_header(b, b"\xff\xfe{{{"),
    "header entry not a dict": lambda b: _raw_header(b, b'{"maps": 7}'),
    "offsets past the end": lambda b: _raw_header(
        b, json.dumps({"maps": {"dtype": "F16", "shape": [4, 2, 5, 4, 6, 8],
                                "data_offsets": [0, 4 * 2 * 5 * 4 * 6 * 8 * 2]}}).encode()),
    "offsets disagree with the shape": lambda b: _raw_header(
        b, json.dumps({"maps": {"dtype": "F16", "shape": [4, 2, 5, 4, 6, 8], "data_offsets": [0, 2]}}).encode(),
        size=4096),
    # step files: the tensors against the layout
    "wrong map shape": lambda b: _tensors(b, maps=lambda t: t.reshape(2, 4, *t.shape[2:])),
    "wrong map dtype": lambda b: _tensors(b, maps=lambda t: t.float()),
    "no maps tensor": lambda b: _tensors(b, maps=None),
    "wrong padding shape": lambda b: _tensors(b, padding=lambda t: t[:, :1]),
    "preview of another shape": lambda b: _tensors(b, preview=lambda t: t[:, :4]),
    "truncated step file": _truncate,
    "empty step file": lambda b: os.truncate(_step(b), 0),
    "missing step file": lambda b: _step(b).unlink(),
    # what a step file or folder is
    "step-file symlink loop": _loop_step,
    "folder symlink loop": _loop_maps,
    "FIFO as a step file": lambda b: _fifo(b, "maps/step_0001.safetensors"),
    "FIFO as the manifest": lambda b: _fifo(b, "manifest.json"),
    "device as a step file": _device,
    "step file is a folder": lambda b: (_step(b).unlink(), _step(b).mkdir()),
    # manifest: sizes
    "zero latent": _set("layout.latent", [0, 6, 8]),
    "negative latent": _set("layout.latent", [4, -6, 8]),
    "huge latent": _set("layout.latent", [4, 6, 10**9]),
    "huge positions": _set("layout.latent", [2048, 2048, 2048]),
    "zero heads": _set("layout.heads", 0),
    "huge heads": _set("layout.heads", 10**9),
    "no blocks": _set("layout.blocks", []),
    "10^9 frames": _set("settings.frames", 10**9),
    "zero width": _set("settings.width", 0),
    "fps 0": _set("settings.fps", 0),
    "token index past the prompt": _set("layout.tokens", [0, 1, 2, 3, 99]),
    "step not in the layout": _set("steps.1.index", 7),
    # manifest: types
    "latent a string": _set("layout.latent", "4x6x8"),
    "heads a string": _set("layout.heads", "2"),
    "head_mean a number": _set("layout.head_mean", 1),
    "layout a list": _set("layout", [1, 2]),
    "tokens a string": _set("tokens", "a red kiss"),
    "token piece a number": _set("tokens.0.piece", 5),
    "steps an object": _set("steps", {"0": "x"}),
    "step index a string": _set("steps.0.index", "0"),
    "step timestep a string": _set("steps.0.timestep", "late"),
    "settings a string": _set("settings", "fast"),
    "width a string": _set("settings.width", "wide"),
    "model a string": _set("model", "tiny"),
    "groups of numbers": _set("groups", [1, 2]),
    "status a number": _set("status", 5),
    "manifest a list": lambda b: (b / "manifest.json").write_text("[]"),
    "version a string": _set("format_version", "1"),
    # manifest: paths that leave the bundle
    "step file outside the bundle": _set("steps.0.file", "../../../../etc/passwd"),
    "video outside the bundle": _set("video", {"file": "../../../../etc/passwd"}),
}


@pytest.fixture(scope="module")
def corpus(good, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    out = {}
    for i, (name, damage) in enumerate(CORPUS.items()):
        b = root / f"case{i:02d}"
        shutil.copytree(good, b, symlinks=True)
        damage(b)
        out[name] = b
    return out


def test_the_good_bundle_opens(good):
    b = open_bundle(good)
    assert b.step_indices == list(range(STEPS)) and not b.broken
    assert b.select("kiss", step=1).shape == (4, 6, 8)


@pytest.mark.parametrize("case", list(CORPUS))
def test_open_refuses_with_one_line(corpus, case):
    with deadline(10):
        with pytest.raises(BundleError) as e:
            open_bundle(corpus[case])
    text = str(e.value)
    assert "\n" not in text and str(corpus[case]) in text, text


def _one_line_error(capsys, code: int) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, err)
    assert "Traceback" not in err and "Traceback" not in captured.out
    assert len(err.splitlines()) == 1 and err.startswith("paik: error: "), err
    return err


@pytest.mark.parametrize("case", list(CORPUS))
def test_info_render_and_play_refuse(corpus, case, tmp_path, capsys):
    b = str(corpus[case])
    with deadline(30):
        code = paik(["info", b])
    _one_line_error(capsys, code)
    assert "complete" not in capsys.readouterr().out
    with deadline(30):
        code = paik(["render", b, "--out", str(tmp_path / "r.mp4"), "--quiet"])
    _one_line_error(capsys, code)
    assert not (tmp_path / "r.mp4").exists()
    with deadline(30):
        code = paik(["play", b, "--headless", "--seconds", "1", "--osc-port", "0"])
    _one_line_error(capsys, code)


def test_info_lists_broken_step_files_and_never_says_complete(corpus, capsys):
    b = corpus["truncated step file"]
    assert paik(["info", str(b)]) == 2
    out, err = capsys.readouterr()
    assert "BROKEN: 1 of 3 step files fail checks; recorded as complete" in out
    assert "broken   step 1:" in out and "truncated" in out
    assert "1 of 3 step files are damaged" in err and "Traceback" not in err


REAL = ["FIFO as a step file", "step-file symlink loop", "folder symlink loop", "device as a step file",
        "truncated step file", "10^9 frames", "header length 99 MB", "model a string"]


@pytest.fixture(scope="module")
def real_runs(corpus, tmp_path_factory):
    """info, render and play on each REAL case, each a real process (forked from one driver that
    imported Paik once: tests/procs.py), bounded: a hang (a FIFO opened for reading, a thread that
    keeps the process alive) is killed at the deadline and fails; a loaded machine is not a hang."""
    out = tmp_path_factory.mktemp("real")
    argvs = []
    for case in REAL:
        argvs += [["info", str(corpus[case])],
                  ["render", str(corpus[case]), "--out", str(out / "r.mp4"), "--quiet"],
                  ["play", str(corpus[case]), "--headless", "--seconds", "1", "--osc-port", "0"]]
    runs = run_paik(argvs, cwd=out, timeout=120)
    assert not (out / "r.mp4").exists()
    return {case: runs[3 * i:3 * i + 3] for i, case in enumerate(REAL)}


@pytest.mark.parametrize("case", REAL)
def test_real_processes_refuse_in_bounded_time(real_runs, case):
    for r in real_runs[case]:
        err = r.stderr.strip()
        assert r.returncode == 2 and len(err.splitlines()) == 1 and err.startswith("paik: error: "), (r.argv, err)


# -- opening stays lazy ----------------------------------------------------------------------
def test_opening_reads_headers_not_data(good, tmp_path):
    """Step files that claim 2 GiB each (sparse: nothing on disk) open at once and a selection
    reads only its pages: checking a bundle reads headers, never data."""
    from paik.capture.layout import Layout
    from paik.capture.writer import BundleWriter

    lay = Layout(steps=[0, 1], blocks=list(range(32)), heads=32, head_mean=False, n_heads=32,
                 tokens=list(range(4)), latent=(64, 64, 64), n_real=4, seq_len=8)
    tokens = [dict(index=i, id=i, piece=f"▁w{i}", word=f"w{i}", word_index=i, special=False) for i in range(4)]
    w = BundleWriter(tmp_path / "big", {"layout": lay.to_json(), "tokens": tokens})
    w.close()
    n = 32 * 32 * 4 * 64**3 * 2  # 2 GiB a step
    header = json.dumps({"maps": {"dtype": "F16", "shape": [32, 32, 4, 64, 64, 64], "data_offsets": [0, n]}}).encode()
    m = json.loads((tmp_path / "big/manifest.json").read_text())
    for s in (0, 1):
        f = tmp_path / f"big/maps/step_{s:04d}.safetensors"
        with open(f, "wb") as fh:
            fh.write(len(header).to_bytes(8, "little") + header)
            fh.truncate(8 + len(header) + n)
        m["steps"].append({"index": s, "timestep": 1.0, "sigma": None, "expert": "transformer",
                           "file": f"maps/step_{s:04d}.safetensors"})
    (tmp_path / "big/manifest.json").write_text(json.dumps(m))
    assert os.stat(f).st_blocks * 512 < 1 << 20  # sparse: 2 GiB claimed, nothing stored
    t0 = time.perf_counter()
    b = open_bundle(tmp_path / "big")
    assert time.perf_counter() - t0 < 1.0 and not b.broken
    assert b.select("w1", step=1, block=3, head=5).shape == (64, 64, 64)


# -- step files that turn bad while playing ---------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "fifo", "delete", "loop", "wrong shape"])
def test_a_step_file_turning_bad_while_playing_is_an_error(good, tmp_path, damage):
    from paik.instrument.render.reduce import Selection
    from paik.instrument.render.source import Source

    b = tmp_path / "b"
    shutil.copytree(good, b)
    src = Source.open(b, "cpu")
    word = src.words[src.word_index("kiss")].positions
    sel = lambda s, blk: Selection(word, (s,), (blk,), None, keep=())  # noqa: E731
    before = src.reducer.volumes(sel(1, 0))  # step 1 mapped and read
    assert before.shape == (1, 4, 6, 8) and before.max() > 0
    f = _step(b)
    saved = f.read_bytes()
    if damage == "truncate":
        os.truncate(f, 100)  # in place: the old mapping would SIGBUS on its next read
    elif damage == "fifo":
        f.unlink()
        os.mkfifo(f)
    elif damage == "delete":
        f.unlink()
    elif damage == "loop":
        f.unlink()
        f.symlink_to(f.name)
    else:
        _tensors(b, maps=lambda t: t.reshape(2, 4, *t.shape[2:]))
    with deadline(10):
        with pytest.raises(BundleError) as e:
            src.reducer.volumes(sel(1, 1))
    assert "step 1" in str(e.value) and "\n" not in str(e.value)
    assert np.array_equal(src.reducer.volumes(sel(0, 1)), src.reducer.volumes(sel(0, 1)))  # other steps play on
    # put back, it plays again (a new file: checked and mapped afresh)
    if f.is_symlink() or f.exists():
        f.unlink()
    f.write_bytes(saved)
    after = src.reducer.volumes(sel(1, 2))
    ref = open_bundle(good).select("kiss", step=1, block=2, head=None)
    assert np.allclose(after[0], ref, atol=1e-6)


def test_empty_token_is_a_message(good):
    from paik.errors import PaikError

    b = open_bundle(good)
    for t in ("", " "):
        with pytest.raises(PaikError, match="the token is empty"):
            b.resolve(t)


# -- render and grid refuse absurd sizes before allocating ------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["render", "{b}", "--out", "{tmp}/r.mp4", "--size", "100000x10"], "larger than this GPU's limit"),
    (["render", "{b}", "--out", "{tmp}/r.mp4", "--size", "16000x16000"], "megapixels"),
    (["render", "{b}", "--out", "{tmp}/r.mp4", "--duration", "1e9"], "a render makes at most 1,000,000"),
    (["render", "{b}", "--out", "{tmp}/r.mp4", "--fps", "1e300", "--duration", "1e300"], "a render makes at most"),
    (["grid", "{b}", "--out", "{tmp}/g", "--cell-width", "1000000"], "the grid (2x2 cells of --cell-width 1000000"),
    (["grid", "{b}", "--out", "{tmp}/g", "--view", "heads-steps", "--cell-width", "4000"], "megapixels"),
])
def test_render_and_grid_refuse_absurd_sizes(good, tmp_path, capsys, argv, message):
    argv = [a.replace("{b}", str(good)).replace("{tmp}", str(tmp_path)) for a in argv]
    t0 = time.monotonic()
    with deadline(30):
        code = paik(argv + (["--quiet"] if argv[0] == "render" else []))
    err = _one_line_error(capsys, code)
    assert message in err, err
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "r.mp4").exists() and not (tmp_path / "g").exists()
