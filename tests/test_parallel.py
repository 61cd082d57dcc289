"""Context-parallel capture (paik.capture.parallel): real gloo processes on the CPU running
diffusers' own context parallelism (Ulysses) on the tiny Wan2.1 pipeline, against the
single-process capture of the same seed; the bundle read by Paik and by a plain safetensors
reader following the documented format; a multi-rank run killed mid-way still opens."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import made_once
from paik.capture.bundle import open_bundle

PAIK = [sys.executable, "-m", "paik"]
PROMPT = "a cat kissing a dog"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _generate(out: Path, *extra: str, model: str = "tiny", timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*PAIK, "generate", PROMPT, "--model", str(model), "--out", str(out), "-q", *extra],
                          capture_output=True, text=True, env=ENV, timeout=timeout)


def _pair(root: Path, model: str = "tiny", n: int = 2, *extra: str) -> tuple[Path, Path]:
    """The single-process capture of ``model`` and the ``--parallel n`` one, same seed and sizes."""
    one, many = root / "one", root / f"p{n}"
    r1 = _generate(one, *extra, model=model)
    assert r1.returncode == 0, r1.stderr
    r2 = _generate(many, *extra, "--parallel", str(n), "--cp", "ulysses", model=model)
    assert r2.returncode == 0, r2.stderr
    return one, many


def _frames(p: Path) -> np.ndarray:
    import av

    with av.open(str(p)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.int16)


def _assert_videos_close(one: Path, many: Path, n_frames: int = 9) -> None:
    a, b = _frames(one / "video.mp4"), _frames(many / "video.mp4")
    assert a.shape == b.shape and a.shape[0] == n_frames
    # Ulysses reorders float sums (last bits); H.264 may turn such a difference into a few
    # flipped pixels, so the video is compared as a whole, the maps exactly
    d = np.abs(a - b)
    assert d.mean() <= 0.5 and (d > 4).mean() <= 0.01, (d.mean(), (d > 4).mean())


def _assert_maps_close(one: Path, many: Path, world: int) -> None:
    """Every step's maps and padding of the sharded bundle (through Paik and through the plain
    reader) against the single-process capture; the maps differ between tokens."""
    a, b = open_bundle(one), open_bundle(many)
    assert b.status == "complete" and b.step_indices == a.step_indices
    size = a.layout.positions // world
    assert b.layout.shards == [[r * size, (r + 1) * size] for r in range(world)]
    assert [s.expert for s in b.steps] == [s.expert for s in a.steps]
    plain = _plain_read(many)
    assert sorted(plain) == a.step_indices
    for s in a.step_indices:
        ref = np.asarray(a.step_arrays(s)["maps"], np.float32)
        got = np.asarray(b.step_arrays(s)["maps"], np.float32)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-3
        assert np.abs(plain[s].astype(np.float32) - ref).max() <= 1e-3
        pad_ref = np.asarray(a.step_arrays(s)["padding"], np.float32)
        assert np.abs(np.asarray(b.step_arrays(s)["padding"], np.float32) - pad_ref).max() <= 1e-3
    last = a.step_indices[-1]
    assert np.abs(a.select("cat", step=last) - a.select("dog", step=last)).max() > 1e-3


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return made_once(tmp_path_factory, "parallel", _pair)


def _plain_read(path: Path) -> dict[int, np.ndarray]:
    """The documented format without Paik: manifest.json's layout.shards and shards.manifests;
    a step is complete when every rank lists it; join the rank files on the position axis."""
    from safetensors.numpy import load_file

    m = json.loads((path / "manifest.json").read_text())
    lay = m["layout"]
    listings = [m] + [json.loads((path / name).read_text()) for name in m["shards"]["manifests"][1:]]
    files = [{s["index"]: s["file"] for s in lst["steps"]} for lst in listings]
    done = sorted(set.intersection(*(set(f) for f in files)))
    out = {}
    for step in done:
        parts = [load_file(str(path / f[step]))["maps"] for f in files]
        for (a, b), p in zip(lay["shards"], parts):
            assert p.shape[-1] == b - a
        out[step] = np.concatenate(parts, -1).reshape(*parts[0].shape[:-1], *lay["latent"])
    return out


def test_maps_equal_the_single_process_capture(bundles):
    one, two = bundles
    _assert_maps_close(one, two, 2)
    a, b = open_bundle(one), open_bundle(two)
    assert b.step_indices == [0, 1, 2, 3]
    assert b.layout.shards == [[0, 24], [24, 48]]  # 3x4x4 positions, split as diffusers splits them
    for s in a.step_indices:
        for word in ("cat", "kissing"):
            assert np.abs(b.select(word, step=s) - a.select(word, step=s)).max() <= 1e-3
        # leading-axis selections read only the parts they need and agree with the joined array
        sub = b.step_arrays(s)["maps"][np.ix_([0, 2], [1], [1, 2])]
        assert np.array_equal(sub, np.asarray(b.step_arrays(s)["maps"])[np.ix_([0, 2], [1], [1, 2])])
    # the maps differ between tokens: equality above is not the equality of zeros
    assert np.abs(a.select("cat", step=3) - a.select("dog", step=3)).max() > 1e-3
    assert b.preview(3) is not None  # rank 0's files carry the previews of the whole video
    assert np.abs(b.preview(3).astype(int) - a.preview(3).astype(int)).max() <= 2


def test_videos_equal_within_the_parallel_attention(bundles):
    _assert_videos_close(*bundles)


# -- Wan2.2 A14B: both experts made parallel, the switch at the boundary on every rank ----------
@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    # 3 steps: timesteps 999, ~900 (high-noise expert) and ~700 (low-noise expert, below 875)
    return made_once(tmp_path_factory, "a14b", lambda d: _pair(d, "tiny-a14b", 2, "--steps", "3"))


def test_a14b_maps_equal_the_single_process_capture(a14b):
    one, two = a14b
    experts = [s.expert for s in open_bundle(one).steps]
    assert "transformer" in experts and "transformer_2" in experts  # both experts' steps are compared
    _assert_maps_close(one, two, 2)


def test_a14b_videos_equal_within_the_parallel_attention(a14b):
    _assert_videos_close(*a14b)


def test_info_reads_the_sharded_bundle(bundles):
    r = subprocess.run([*PAIK, "info", str(bundles[1])], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "complete" in r.stdout and "steps    0-3" in r.stdout


def test_a_missing_rank_step_is_not_a_step(bundles, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(bundles[1], b)
    listing = json.loads((b / "manifest.rank1.json").read_text())
    listing["steps"] = listing["steps"][:2]  # rank 1 "finished" two steps only
    (b / "manifest.rank1.json").write_text(json.dumps(listing))
    assert open_bundle(b).step_indices == [0, 1]


def test_interrupted_multi_rank_run_keeps_finished_steps(tmp_path):
    out = tmp_path / "cut"
    p = subprocess.Popen([*PAIK, "generate", PROMPT, "--model", "tiny", "--out", str(out), "-q", "--steps", "40",
                          "--parallel", "2", "--preview", "none"], env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and p.poll() is None:
            if (out / "maps" / "step_0001.rank1.safetensors").exists():
                break
            time.sleep(0.2)
        assert p.poll() is None, p.stderr.read().decode()[-2000:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # the parent and its rank processes: our own session
        p.wait(30)
    b = open_bundle(out)
    assert b.status == "running"  # killed: never closed
    assert len(b.step_indices) >= 1 and b.step_indices == list(range(len(b.step_indices)))
    assert b.select("cat", step=0).shape == (3, 4, 4)


def test_parallel_that_does_not_divide_the_heads_is_one_line(tmp_path):
    r = _generate(tmp_path / "x", "--parallel", "3", timeout=120)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "divide" in r.stderr


# -- three processes: a tiny Wan2.1 folder with 3 heads (Ulysses gives each rank one) ------------
def _three_head_folder(root: Path) -> Path:
    """The built-in tiny Wan2.1 at 3 heads, saved as an ordinary diffusers folder, with the tiny
    sizes as its paik.json defaults (3x4x4 = 48 positions: 16 a rank)."""
    from diffusers import WanPipeline

    from paik.capture.tiny import tiny_components

    folder = root / "tiny-3heads"
    WanPipeline(**tiny_components("t2v", heads=3)).save_pretrained(folder)
    (folder / "paik.json").write_text(json.dumps({"defaults": {"frames": 9, "height": 64, "width": 64, "steps": 2}}))
    return folder


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    def make(root):
        folder = _three_head_folder(root)
        return (folder, *_pair(root, folder, 3))

    return made_once(tmp_path_factory, "three", make)


def test_three_processes_equal_the_single_process_capture(three):
    folder, one, many = three
    assert json.loads((folder / "transformer" / "config.json").read_text())["num_attention_heads"] == 3
    assert open_bundle(many).layout.shards == [[0, 16], [16, 32], [32, 48]]
    _assert_maps_close(one, many, 3)
    _assert_videos_close(one, many)


def test_three_processes_need_positions_that_divide_by_three(three, tmp_path):
    # 5 frames -> 2 latent frames: 2x4x4 = 32 positions; diffusers' sharder asserts an even split
    r = _generate(tmp_path / "x", "--frames", "5", "--parallel", "3", model=three[0], timeout=120)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "does not divide the 32 video positions" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
