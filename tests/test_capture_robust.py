"""What a user can get wrong, and what a crash leaves behind: interrupted runs keep their finished
steps, bad inputs get a message (never a traceback), bundles open lazily and reject junk."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from paik.capture.bundle import open_bundle, read_safetensors
from paik.errors import BundleError, PaikError
from paik.capture.generate import GenerateOptions, generate
from paik.capture.layout import Layout
from paik.capture.models import load_pipeline
from paik.capture.plan import MemoryPlan, check_video_size
from paik.indices import parse as parse_indices
from paik.capture.tokens import resolve_tokens, split_token_list, token_table
from paik.capture.writer import BundleWriter
from paik.cli import main as paik

PROMPT = "a red circle and a kissing cat"


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline("tiny")


@pytest.fixture(scope="module")
def table(tiny):
    return token_table(tiny[0].tokenizer, PROMPT)


# -- tokens ------------------------------------------------------------------------------------

def test_words_phrases_and_pieces(table):
    def pick(*q):
        return [g.tokens for g in resolve_tokens(table, list(q))]

    assert pick("kissing") == [(5, 6)]  # a multi-piece word keeps its pieces
    assert pick("Red circle") == [(1, 2)]  # phrase, any case
    assert pick("a") == [(0,)] and pick("a@2") == [(4,)]  # occurrences
    assert pick("eos") == [(8,)] and pick("</s>") == [(8,)]
    assert pick("#7") == [(7,)]
    assert split_token_list('kiss,"soccer ball", eos') == ["kiss", "soccer ball", "eos"]


@pytest.mark.parametrize("query, message", [
    ("dog", "is not in the prompt"), ("a@3", "occurs only 2 time"), ("#99", "has 9 pieces"), ("#x", "piece index"),
])
def test_unknown_words_list_the_prompt(table, query, message):
    with pytest.raises(PaikError, match=message) as e:
        resolve_tokens(table, [query])
    if "prompt" in message:
        assert "a red circle and a kissing cat </s>" in str(e.value)


# -- plans and sizes ---------------------------------------------------------------------------

def test_index_specs():
    assert parse_indices("all", 4, "--blocks") == [0, 1, 2, 3]
    assert parse_indices("every:10", 25, "--capture-steps") == [0, 10, 20, 24]
    assert parse_indices("0-2,7,-1", 30, "--blocks") == [0, 1, 2, 7, 29]
    for bad in ("30", "5-2", "x", "every:0"):
        with pytest.raises(PaikError):
            parse_indices(bad, 30, "--blocks")


def test_video_size_messages():
    check_video_size(480, 832, 81, 16, 4)
    with pytest.raises(PaikError, match=r"--height 470 must be a positive multiple of 16 \(try 464 or 480\)"):
        check_video_size(470, 832, 81, 16, 4)
    with pytest.raises(PaikError, match=r"--frames 80 must be 4k\+1 \(try 77 or 81\)"):
        check_video_size(480, 832, 80, 16, 4)


def test_memory_plan_matches_the_store_and_suggests_what_fits():
    from paik.capture.store import CaptureStore

    lay = Layout(steps=list(range(25)), blocks=list(range(30)), heads=12, head_mean=False, n_heads=12,
                 tokens=list(range(32)), latent=(16, 30, 52), n_real=32, seq_len=512)
    # the paper's settings: 25 x 30 x 12 x 32 x 24,960 x 2 bytes = 13.4 GiB of maps, + padding
    assert lay.bytes == 25 * 30 * 12 * 33 * 24960 * 2
    small = Layout(**{**lay.__dict__, "steps": [0, 1], "blocks": [0, 1], "latent": (2, 3, 4)})
    st = CaptureStore(small, "cpu")
    assert small.bytes == st.maps.numel() * 2 + st.padding.numel() * 2
    plan = MemoryPlan(lay, 4 * 1024**3, "cuda")
    with pytest.raises(PaikError) as e:
        plan.check()
    text = str(e.value)
    assert "13.8" in text and "--capture-steps every:" in text and "--heads mean" in text
    for tip in plan.suggestions():
        if tip == "--heads mean":
            assert lay.bytes / 12 <= plan.budget_bytes


# -- generation: interruption and crashes ------------------------------------------------------

def _opts(out, **kw):
    base = dict(prompt=PROMPT, out=str(out), steps=4, frames=9, height=64, width=64, quiet=True)
    return GenerateOptions(**{**base, **kw})


@pytest.mark.parametrize("where, kept", [("scheduler", [0, 1, 2]), ("forward", [0, 1])])
def test_ctrl_c_keeps_finished_steps(tiny, tmp_path, monkeypatch, where, kept):
    """A step is finished when its last pass (cond, then uncond) has run: Ctrl-C in step 2's
    scheduler update keeps its maps; Ctrl-C inside its uncond forward does not."""
    pipe = tiny[0]
    calls = {"n": 0}
    handle = None
    if where == "scheduler":
        real_step = pipe.scheduler.step

        def step(*a, **k):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return real_step(*a, **k)

        monkeypatch.setattr(pipe.scheduler, "step", step)
    else:
        def hook(module, args):
            calls["n"] += 1
            if calls["n"] == 6:  # steps 0 and 1 are forwards 1-4; step 2's cond is 5, its uncond 6
                raise KeyboardInterrupt

        handle = pipe.transformer.blocks[1].register_forward_pre_hook(hook)
    try:
        with pytest.raises(KeyboardInterrupt):
            generate(_opts(tmp_path / "b"), loaded=tiny)
    finally:
        if handle is not None:
            handle.remove()
    b = open_bundle(tmp_path / "b")
    assert b.status == "interrupted" and b.step_indices == kept
    assert b.video_path is None
    assert b.select("kissing", step=1, block=None, head=None).shape == b.layout.latent
    # the model is left as it was: no capture processor, no hook
    from paik.capture.processor import CaptureProcessor, attached

    assert not any(isinstance(blk.attn2.processor, CaptureProcessor) for blk in pipe.transformer.blocks)
    assert not attached(pipe.transformer) and "encode_prompt" not in pipe.__dict__


def test_crash_is_recorded_and_keeps_steps(tiny, tmp_path, monkeypatch):
    pipe = tiny[0]
    monkeypatch.setattr(pipe.vae, "decode", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("decoder broke")))
    with pytest.raises(RuntimeError):
        generate(_opts(tmp_path / "b"), loaded=tiny)
    b = open_bundle(tmp_path / "b")
    assert b.status == "failed" and "decoder broke" in b.manifest["error"]
    assert b.step_indices == [0, 1, 2, 3]


def test_sigkill_mid_run_leaves_a_bundle_that_opens(tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "paik", "generate", PROMPT, "--out", str(out), "--model", "tiny", "--steps", "200",
         "--frames", "17", "--height", "128", "--width", "128", "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            m = out / "manifest.json"
            if m.is_file() and len(json.loads(m.read_text())["steps"]) >= 3:
                break
            if proc.poll() is not None:
                pytest.fail(f"generate ended early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail("no steps written in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    b = open_bundle(out)
    assert b.status == "running" and len(b.step_indices) >= 3
    for s in b.step_indices:
        assert np.isfinite(b.select("cat", step=s)).all()
    assert not list((out / "maps").glob("step_*.safetensors"))[len(b.step_indices) + 1:]


# -- bundles: lazy, and junk is rejected --------------------------------------------------------

def _layout(steps=3):
    return Layout(steps=list(range(steps)), blocks=list(range(30)), heads=12, head_mean=False, n_heads=12,
                  tokens=list(range(32)), latent=(16, 30, 52), n_real=32, seq_len=512)


def _sparse_bundle(path: Path, steps=3) -> Path:
    """A full-size bundle (0.57 GiB of maps a step) whose files are sparse: nothing on disk, so
    opening and selecting prove that only the touched pages are read."""
    lay = _layout(steps)
    tokens = [{"index": i, "id": i, "piece": f"▁w{i}", "word": f"w{i}", "word_index": i, "special": False}
              for i in range(32)]
    path.mkdir()
    (path / "maps").mkdir()
    hdr_maps = [30, 12, 32, 16, 30, 52]
    hdr_pad = [30, 12, 16, 30, 52]
    n_maps = int(np.prod(hdr_maps)) * 2
    n_pad = int(np.prod(hdr_pad)) * 2
    header = json.dumps({"maps": {"dtype": "F16", "shape": hdr_maps, "data_offsets": [0, n_maps]},
                         "padding": {"dtype": "F16", "shape": hdr_pad, "data_offsets": [n_maps, n_maps + n_pad]}})
    header += " " * (-len(header) % 8)
    steps_info = []
    for s in range(steps):
        f = path / f"maps/step_{s:04d}.safetensors"
        with open(f, "wb") as fh:
            fh.write(len(header).to_bytes(8, "little") + header.encode())
            fh.truncate(8 + len(header) + n_maps + n_pad)
        steps_info.append({"index": s, "timestep": 999.0 - s, "sigma": 1.0, "expert": "transformer",
                           "file": f"maps/step_{s:04d}.safetensors"})
    manifest = {"format": "paik-bundle", "format_version": 1, "status": "complete", "layout": lay.to_json(),
                "tokens": tokens, "steps": steps_info}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_open_is_lazy_on_a_large_bundle(tmp_path):
    path = _sparse_bundle(tmp_path / "big")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    b = open_bundle(path)
    m = b.select("w3", step=1, block=7, head=2)
    elapsed = time.perf_counter() - t0
    grew_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert m.shape == (16, 30, 52) and (m == 0).all()
    assert elapsed < 1.0 and grew_mib < 100, (elapsed, grew_mib)


def test_junk_bundles_are_clear_errors(tmp_path):
    with pytest.raises(BundleError, match="no such bundle"):
        open_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no manifest.json"):
        open_bundle(tmp_path / "empty")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text('{"name": "something else"}')
    with pytest.raises(BundleError, match="not a Paik bundle"):
        open_bundle(foreign)
    (foreign / "manifest.json").write_text('{"format": "paik-bundle", "format_vers')
    with pytest.raises(BundleError, match="corrupt manifest"):
        open_bundle(foreign)
    # a step file cut short: the bundle is refused whole at open (only headers are read)...
    path = _sparse_bundle(tmp_path / "cut", steps=2)
    f = path / "maps/step_0001.safetensors"
    os.truncate(f, f.stat().st_size // 2)
    with pytest.raises(BundleError, match="step 1's file is damaged: tensor 'maps' is truncated"):
        open_bundle(path)
    # ...and `paik info` (strict=False) still opens it, naming the broken step
    b = open_bundle(path, strict=False)
    assert list(b.broken) == [1] and "BROKEN: 1 of 2 step files" in b.summary()
    assert b.select("w0", step=0, block=0, head=0).shape == (16, 30, 52)
    with pytest.raises(BundleError, match="truncated"):
        b.select("w0", step=1, block=0, head=0)
    f.write_bytes(b"\xff" * 16)
    with pytest.raises(BundleError, match="not a readable safetensors"):
        read_safetensors(f)


def test_selection_errors_name_what_exists(tmp_path):
    b = open_bundle(_sparse_bundle(tmp_path / "b", steps=2))
    with pytest.raises(PaikError, match=r"step 5 is not in this bundle; available steps: 0-1"):
        b.select("w0", step=5)
    with pytest.raises(PaikError, match=r"block 30 is not in this bundle; available blocks: 0-29"):
        b.select("w0", block=30)
    with pytest.raises(PaikError, match="is not in the prompt"):
        b.select("kiss")
    with pytest.raises(PaikError, match="reduce must be"):
        b.select("w0", reduce="median")


def test_reductions_against_numpy(tmp_path):
    lay = Layout(steps=[0, 1], blocks=[0, 2], heads=2, head_mean=False, n_heads=2, tokens=[0, 1], latent=(2, 2, 3),
                 n_real=2, seq_len=8)
    tokens = [{"index": i, "id": i, "piece": p, "word": w, "word_index": 0 if i < 2 else 1, "special": False}
              for i, (p, w) in enumerate([("▁kiss", "kissing"), ("ing", "kissing")])]
    w = BundleWriter(tmp_path / "r", {"layout": lay.to_json(), "tokens": tokens})
    g = torch.Generator().manual_seed(0)
    data = {}
    for s in (0, 1):
        maps = torch.rand(2, 2, 2, 2, 2, 3, generator=g).half()
        data[s] = maps.float().numpy()
        w.add_step({"index": s, "timestep": 0.0, "sigma": None, "expert": "transformer"},
                   {"maps": maps, "padding": torch.zeros(2, 2, 2, 2, 3).half()})
    w.close()
    b = open_bundle(tmp_path / "r")
    all_ = np.stack([data[0], data[1]])  # [step, block, head, token, F, H, W]
    word = all_.sum(3)
    assert np.allclose(b.select("kissing"), word.mean((0, 1, 2)), atol=1e-6)
    assert np.allclose(b.select("kissing", reduce="max"), word.max((0, 1, 2)), atol=1e-6)
    assert np.allclose(b.select("#1", step=1, block=2, head=None), all_[1, 1, :, 1].mean(0), atol=1e-6)
    assert np.allclose(b.select(0, step=[0, 1], block=0, head=1, reduce="max"), all_[:, 0, 1, 0].max(0), atol=1e-6)


# -- the command line: messages, not tracebacks -------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["generate", PROMPT, "--out", "{tmp}/x", "--height", "70"], "--height 70 must be a positive multiple of 16"),
    (["generate", PROMPT, "--out", "{tmp}/x", "--frames", "10"], "--frames 10 must be 4k+1"),
    (["generate", PROMPT, "--out", "{tmp}/x", "--tokens", "dog"], "'dog' is not in the prompt"),
    (["generate", PROMPT, "--out", "{tmp}/x", "--model", "{tmp}/missing"], "no such folder"),
    (["generate", PROMPT, "--out", "{tmp}/x", "--model", "notamodel"], "not a hub id"),
    (["generate", PROMPT, "--out", "{tmp}/x", "--blocks", "0-9"], "out of range: valid values are 0..2"),
    (["generate", PROMPT, "--out", "{tmp}/x", "--capture-uncond", "--guidance", "1"], "needs classifier-free"),
    (["generate", PROMPT, "--out", "{tmp}/x", "--max-capture-gb", "0.0000001"], "does not fit"),
    (["generate", PROMPT, "--out", "{tmp}/x", "--guidance-2", "3"], "--guidance-2 is for Wan2.2"),
    (["generate", " ", "--out", "{tmp}/x"], "the prompt is empty"),
    (["generate", PROMPT, "--out", "{tmp}/x", "--tokens", ","], "--tokens is empty"),
    (["generate", PROMPT, "--out", "{tmp}/x", "--steps", "0"], "--steps must be at least 1"),
    (["generate", PROMPT, "--out", "{tmp}/x", "--device", "gpu"], "--device 'gpu': expected cuda, cuda:N or cpu"),
    (["generate", PROMPT, "--out", "{tmp}/x", "--device", "cuda:99"], "--device cuda:99: this PyTorch sees"),
    (["generate", PROMPT, "--out", "{tmp}/file/x"], "file is a file, not a directory"),
    (["generate", "--out", "{tmp}/x"], "paik generate: error: the following arguments are required: prompt"),
    (["info", "{tmp}/nothing"], "no such bundle directory"),
])
def test_cli_errors_are_messages(argv, message, tmp_path, capsys):
    (tmp_path / "file").write_text("")  # not a directory
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] == "generate" and "--model" not in argv:
        argv += ["--model", "tiny"]  # the default may be the trained model: these are about messages
    code = paik(argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err


@pytest.mark.parametrize("argv, message", [
    (["--frames", "16"], "--frames 16 must be 4k+1"),
    (["--height", "70"], "--height 70 must be a positive multiple of 16"),
    (["--blocks", "0-9"], "out of range: valid values are 0..2"),
    (["--capture-steps", "7"], "out of range: valid values are 0..3"),
    (["--guidance-2", "3"], "--guidance-2 is for Wan2.2"),
    (["--tokens", "dog"], "'dog' is not in the prompt"),
    (["--capture-uncond", "--guidance", "1"], "needs classifier-free"),
])
def test_flags_and_sizes_are_checked_before_the_model_loads(argv, message, tmp_path, capsys, monkeypatch):
    def load(*a, **k):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr("paik.capture.generate.load_pipeline", load)
    code = paik(["generate", PROMPT, "--out", str(tmp_path / "x"), "--model", "tiny", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()


def test_bench_capture_on_cpu_does_not_judge_memory(capsys):
    argv = ["bench", "capture", "--config", "tiny", "--device", "cpu", "--steps", "1", "--repeats", "1",
            "--frames", "5", "--height", "64", "--width", "64"]
    assert paik(argv) == 0
    out = capsys.readouterr().out
    assert "peak memory is measured on CUDA only" in out and "OVER" not in out, out


def test_cli_generate_and_info(tmp_path, capsys):
    out = tmp_path / "b"
    assert paik(["generate", PROMPT, "--out", str(out), "--model", "tiny", "--tokens", 'kissing,"red circle"', "--heads", "mean",
                 "--capture-steps", "every:2", "--quiet"]) == 0
    assert paik(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "complete" in text and "[step 3/3, block 3, head mean of 2, token 4," in text
    assert "'kissing' -> [5, 6]" in text
    # an existing bundle is not overwritten by accident
    assert paik(["generate", PROMPT, "--out", str(out), "--model", "tiny", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_decoded_previews_per_step(tiny, tmp_path):
    import av

    generate(_opts(tmp_path / "p", preview="decode", capture_steps="0,3"), loaded=tiny)
    b = open_bundle(tmp_path / "p")
    assert b.step_indices == [0, 3]
    for s in (0, 3):
        with av.open(str(tmp_path / "p" / "previews" / f"step_{s:04d}.mp4")) as c:
            frames = list(c.decode(video=0))
        assert len(frames) == 9 and (frames[0].width, frames[0].height) == (64, 64)
        p = b.preview(s)
        assert p.shape == (*b.layout.latent[:1], 8, 8, 3) and p.dtype == np.uint8
        assert b.step_arrays(s)["x0"].shape == (16, *b.layout.latent[:1], 8, 8)


def test_step_files_are_standard_safetensors(tmp_path):
    """Decode what we encoded with safetensors' own reader: other tools can read bundles."""
    from safetensors import safe_open

    from paik.capture.writer import write_safetensors

    g = torch.Generator().manual_seed(0)
    t = {"maps": torch.rand(2, 3, 4, 5, generator=g).half(), "preview": torch.randint(0, 255, (3, 4, 3), dtype=torch.uint8),
         "x0": torch.randn(7, generator=g)}
    write_safetensors(tmp_path / "s.safetensors", t)
    with safe_open(str(tmp_path / "s.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(t)
        for k in t:
            assert torch.equal(f.get_tensor(k), t[k])
    mm = read_safetensors(tmp_path / "s.safetensors")
    assert np.array_equal(mm["maps"], t["maps"].numpy())


# -- the writer never hangs: a failed write ends the run with one line, keeping finished steps ---

def _tiny_writer(path: Path, **kw) -> BundleWriter:
    lay = Layout(steps=[0, 1, 2, 3], blocks=[0], heads=1, head_mean=False, n_heads=1, tokens=[0], latent=(2, 2, 2),
                 n_real=1, seq_len=4)
    tokens = [{"index": 0, "id": 0, "piece": "▁w", "word": "w", "word_index": 0, "special": False}]
    return BundleWriter(path, {"layout": lay.to_json(), "tokens": tokens}, **kw)


def _step_tensors(s: int) -> dict:
    return {"maps": torch.full((1, 1, 1, 2, 2, 2), s / 10).half(), "padding": torch.zeros(1, 1, 2, 2, 2).half()}


def _info(s: int) -> dict:
    return {"index": s, "timestep": 1.0, "sigma": None, "expert": "transformer"}


def _temporaries(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if "tmp" in p.name]


def test_close_returns_when_the_final_manifest_cannot_be_written(tmp_path, monkeypatch):
    """The hang of issue 14: the last manifest write failed, and close() waited forever."""
    import errno
    import threading

    w = _tiny_writer(tmp_path / "b")
    for s in (0, 1):
        w.add_step(_info(s), _step_tensors(s))
    w.update(note="x")
    while len(json.loads((tmp_path / "b/manifest.json").read_text())["steps"]) < 2:
        time.sleep(0.01)  # both steps on disk before the disk "fills"

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the real write_json_atomic fails after writing its temporary
    result = {}

    def close():
        try:
            w.close("complete")
        except PaikError as e:
            result["error"] = str(e)

    t = threading.Thread(target=close, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "BundleWriter.close hung"
    assert "No space left on device; free some space" in result["error"] and "2 finished steps" in result["error"]
    assert "\n" not in result["error"]
    monkeypatch.undo()
    assert not _temporaries(tmp_path / "b")
    assert open_bundle(tmp_path / "b").step_indices == [0, 1]  # the last good manifest stands


def _failing_writes(monkeypatch, fail_at: int, how):
    """Let the real write_safetensors write ``fail_at`` step files, then fail the next one with
    ``how(path)`` after its first tensor is on disk (so a partial temporary exists)."""
    import paik.capture.writer as writer

    real = writer.write_safetensors
    calls = {"n": 0}

    def write(path, tensors, progress=None):
        calls["n"] += 1
        if calls["n"] <= fail_at:
            return real(path, tensors, progress)

        def fail():
            assert path.exists()  # something partial was written
            how(path)

        return real(path, tensors, fail)

    monkeypatch.setattr(writer, "write_safetensors", write)


def _no_space(path):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def _no_permission(path):
    import errno

    raise PermissionError(errno.EACCES, "Permission denied", str(path))


@pytest.mark.parametrize("how, message, kept", [
    (_no_space, "No space left on device; free some space or choose another --out", [0, 1]),
    (_no_permission, "Permission denied", [0, 1]),
    ("vanish", "the bundle folder was removed while writing", None),
])
def test_a_failed_write_ends_generate_with_one_line(tiny, tmp_path, monkeypatch, how, message, kept):
    import shutil

    out = tmp_path / "b"
    if how == "vanish":
        def how(path):
            shutil.rmtree(out)
            open(path, "wb").close()  # the next write of the file fails: its folder is gone

    _failing_writes(monkeypatch, 2, how)
    t0 = time.monotonic()
    with pytest.raises(PaikError) as e:
        generate(_opts(out, steps=6), loaded=tiny)
    assert time.monotonic() - t0 < 60
    text = str(e.value)
    assert message in text and "\n" not in text, text
    if kept is None:
        assert not out.exists()
        return
    monkeypatch.undo()
    b = open_bundle(out)
    assert b.step_indices == kept and b.status == "failed" and message in b.manifest["error"]
    assert not _temporaries(out)


def test_a_disk_that_stops_answering_is_reported(tmp_path, monkeypatch):
    import threading

    import paik.capture.writer as writer

    release = threading.Event()
    monkeypatch.setattr(writer, "write_safetensors", lambda *a, **k: release.wait(30))
    w = _tiny_writer(tmp_path / "b", max_pending=1, stall_s=0.5)
    t0 = time.monotonic()
    try:
        with pytest.raises(PaikError, match="the disk made no progress for 0.5 s"):
            for s in range(4):  # the writer holds one, the queue one: the third put waits
                w.add_step(_info(s), _step_tensors(s))
        with pytest.raises(PaikError, match="no progress"):
            w.close("failed")
        assert time.monotonic() - t0 < 5
    finally:
        release.set()


def _tmpfs_works() -> str | None:
    import shutil

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare(1) to mount a private tmpfs"
    r = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=1m none /mnt"],
                       capture_output=True, timeout=30)
    return None if r.returncode == 0 else f"cannot mount a tmpfs here: {r.stderr.decode().strip()}"


def test_a_full_disk_during_generate_is_one_line_and_keeps_finished_steps(tiny, tmp_path):
    """A real 512 KiB tmpfs (in a private mount namespace) fills after about five steps."""
    why = _tmpfs_works()
    if why:
        pytest.skip(why)
    disk = tmp_path / "disk"
    disk.mkdir()
    check = (
        "import json, os, sys\n"
        "from paik.capture.bundle import open_bundle\n"
        "b = open_bundle(sys.argv[1])\n"
        "files = [os.path.join(d, f) for d, _, fs in os.walk(sys.argv[1]) for f in fs]\n"
        "print(json.dumps({'steps': b.step_indices, 'status': b.status, 'files': files}))\n"
    )
    script = (
        f"mount -t tmpfs -o size=512k none {disk} || exit 99; "
        f"timeout 120 {sys.executable} -m paik generate '{PROMPT}' --model tiny --out {disk}/b --steps 12 "
        f"--frames 17 --height 128 --width 128 --quiet; echo \"rc=$?\" >&2; "
        f"{sys.executable} -c \"$CHECK\" {disk}/b"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CHECK": check}
    t0 = time.monotonic()
    r = subprocess.run(["unshare", "--mount", "sh", "-c", script], env=env, capture_output=True, text=True,
                       timeout=200, cwd=Path(__file__).parent.parent)
    elapsed = time.monotonic() - t0
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert err[-1] == "rc=2", r.stderr[-3000:]
    assert len(err) == 2 and err[0].startswith("paik: error: writing the bundle") and "No space left" in err[0], err
    assert "Traceback" not in r.stderr
    found = json.loads(r.stdout.strip().splitlines()[-1])
    assert 1 <= len(found["steps"]) < 12 and found["status"] in ("failed", "running"), found
    assert not [f for f in found["files"] if "tmp" in os.path.basename(f)], found["files"]
    assert elapsed < 180
