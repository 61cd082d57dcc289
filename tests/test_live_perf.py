"""The live engine's performance paths (issue 16, part 7 b, c, f): the bundle written behind a
take, exit waiting for it, continuous mode, and the reduction stream choice.

The slow disk is an injected delay in the writer thread (``PAIK_TEST_WRITE_DELAY_S``): these are
tests of ordering, and no slow file system is available to make a real one."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_live import Client, _engine, _events_until, _free_port  # noqa: F401 - shared helpers

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    from paik.capture.models import load_pipeline

    return load_pipeline("tiny", device="cpu")


def _kinds(evs):
    return [type(e).__name__ for e in evs]


def test_take_done_comes_before_the_bundle_is_complete_and_the_bundle_equals_the_store(tiny, tmp_path, monkeypatch):
    from paik.capture.bundle import open_bundle
    from paik.capture.engine import TakeRequest
    from paik.video import decode

    monkeypatch.setenv("PAIK_TEST_WRITE_DELAY_S", "1.5")
    eng = _engine(tiny, tmp_path, steps=3)
    try:
        eng.submit(TakeRequest(prompt="a cat kisses a dog", seed=3))
        evs = _events_until(eng, ("TakeDone", "TakeFailed"))
        assert _kinds(evs)[-1] == "TakeDone", evs[-1]
        done = evs[-1]
        on_disk = json.loads((done.path / "manifest.json").read_text())
        assert on_disk["status"] == "running" and len(on_disk["steps"]) < 3  # still writing behind
        assert not (done.path / "video.mp4").exists() and eng.writing == [done.name]
        evs += _events_until(eng, ("TakeWritten",), timeout=60)
    finally:
        assert eng.close() == []
    written = evs[-1]
    assert written.error is None and written.status == "complete"
    b = open_bundle(done.path)
    assert b.status == "complete" and len(b.step_indices) == 3 and b.video_path is not None
    store = evs[0].store
    for s in b.step_indices:  # the steps written behind are the resident maps, bit for bit
        np.testing.assert_array_equal(b.step_arrays(s)["maps"], store.maps[store.step_slot[s]].numpy())
        np.testing.assert_array_equal(b.step_arrays(s)["padding"], store.padding[store.step_slot[s]].numpy())
    assert all(isinstance(st.timestep, float) for st in b.steps)  # resolved by the writer, not synced for
    t = b.manifest["timings"]
    assert t["generate_s"] <= done.seconds + 0.5 and t["bundle_complete_s"] > t["generate_s"] + 0.8
    assert written.seconds == t["bundle_complete_s"]
    # the frames shown at TakeDone are the video the MP4 holds (up to the codec)
    mp4 = decode(b.video_path, "rgba")
    assert done.frames.shape == mp4.shape and done.frames.dtype == np.uint8
    assert np.abs(done.frames.astype(int) - mp4.astype(int)).mean() < 12


def test_at_most_one_take_writes_behind(tiny, tmp_path, monkeypatch):
    from paik.capture.engine import TakeRequest

    monkeypatch.setenv("PAIK_TEST_WRITE_DELAY_S", "0.3")
    eng = _engine(tiny, tmp_path, steps=2)
    evs = []
    try:
        for seed in (1, 2, 3):
            eng.submit(TakeRequest(seed=seed))
            evs += _events_until(eng, ("TakeStarted",))
        end = time.monotonic() + 120
        while _kinds(evs).count("TakeWritten") < 3 and time.monotonic() < end:
            evs += eng.poll()
            assert len(eng.writing) <= 2  # the forming take's own writer, and one behind
            time.sleep(0.01)
    finally:
        eng.close()
    order = [(type(e).__name__, e.take) for e in evs if type(e).__name__ in ("TakeStarted", "TakeDone", "TakeWritten")]
    assert order.index(("TakeStarted", 2)) < order.index(("TakeWritten", 1))  # started while 1 still wrote
    assert order.index(("TakeWritten", 1)) < order.index(("TakeStarted", 3))  # but 3 waited for 1's bundle
    assert [e.status for e in evs if type(e).__name__ == "TakeWritten"] == ["complete"] * 3


def test_paik_live_exit_waits_for_the_bundle_written_behind(tmp_path):
    from paik.capture.bundle import open_bundle
    from test_live import _start

    os.environ["PAIK_TEST_WRITE_DELAY_S"] = "0.8"  # inherited by the paik live process only
    try:
        proc, c = _start(tmp_path, "--model", "tiny", "--prompt", "a cat kisses a dog", "--steps", "3")
    finally:
        del os.environ["PAIK_TEST_WRITE_DELAY_S"]
    try:
        c.wait(lambda: any(a == "/paik/progress" and v == [3, 3] for a, v in c.log), 120, proc, "the take's last step")
        m = json.loads((tmp_path / "takes" / "take_0001" / "manifest.json").read_text())
        assert m["status"] == "running"  # the denoiser is done, the disk is not
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        c.close()
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in err, err[-3000:]
    assert "finishing the bundles of take_0001" in err
    b = open_bundle(tmp_path / "takes" / "take_0001")
    assert b.status == "complete" and len(b.step_indices) == 3 and b.video_path is not None


def test_continuous_mode_generates_takes_and_switches_to_them(tiny, tmp_path):
    """In process, frame by frame (no GL needed to drive the live state): at least two draft takes,
    each switched to once finished, the prompt list cycled, and old takes' stores let go."""
    from paik.capture.engine import TakeRequest
    from paik.instrument.control.params import Params
    from paik.instrument.control.takes import Continuous, EngineLive, read_prompts
    from paik.instrument.render import colormaps
    from paik.instrument.render.resident import LiveTake, ResidentSource, blank_take

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red kiss\n\n# skipped\na blue dog\n")
    assert read_prompts(prompts) == ["a red kiss", "a blue dog"]
    eng = _engine(tiny, tmp_path, steps=2)
    p = Params().bind(1, 1, 1, 1, colormaps.available())
    p.smooth, p.prompt, p.continuous = 0.0, "unused", True
    live = EngineLive(ResidentSource(blank_take()), p, eng, TakeRequest,
                      continuous=Continuous(size=(64, 64), steps=2, frames=5, prompts=read_prompts(prompts)))
    shown = []
    try:
        end = time.monotonic() + 120
        now = 0.0
        while len(set(shown)) < 4 and time.monotonic() < end:
            now += 1 / 60
            live.update(now)
            name = live.src.bundle.path.name
            if name.startswith("take_") and (not shown or shown[-1] != name):
                assert live.src.bundle.status == "complete"  # continuous mode shows finished takes only
                shown.append(name)
            time.sleep(1 / 240)
    finally:
        eng.close()
    assert len(set(shown)) >= 4, shown
    assert live.takes_shown >= 4 and not [m for _, m in live.errors]
    takes = sorted((tmp_path / "takes").iterdir())
    ms = [json.loads((d / "manifest.json").read_text()) for d in takes[:4]]
    assert [m["prompt"] for m in ms] == ["a red kiss", "a blue dog"] * 2
    assert all((m["settings"]["width"], m["settings"]["frames"], m["settings"]["steps"]) == (64, 5, 2) for m in ms)
    gc.collect()
    # this test's takes only: an earlier test's objects may still be waiting for their threads to end
    alive = [o for o in gc.get_objects() if isinstance(o, LiveTake) and o.path.parent == tmp_path / "takes"]
    assert len(alive) <= 3, [t.path.name for t in alive]  # shown, one waiting or forming: not every take


def test_paik_live_continuous_flags_make_takes(tmp_path):
    from test_live import _start, _stop

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red kiss\na blue dog\n")
    proc, c = _start(tmp_path, "--model", "tiny", "--continuous", "--prompts", str(prompts), "--continuous-size",
                     "64x64", "--continuous-steps", "2", "--continuous-frames", "5")
    try:
        c.wait(lambda: c.state.get("/paik/take", [""])[0] >= "take_0003", 120, proc, "three continuous takes")
        assert c.state.get("/paik/continuous") in ([True], [1])
        c.send("/paik/continuous", 0)
        c.wait(lambda: c.state.get("/paik/continuous") in ([False], [0]), 30, proc, "continuous off")
    finally:
        _stop(proc, c)
    ms = [json.loads((d / "manifest.json").read_text()) for d in sorted((tmp_path / "takes").iterdir())]
    # continuous off stops asking for takes; the one generating when the process was stopped may be
    # interrupted (keeping its finished steps), every one before it is complete
    assert len(ms) >= 3 and all(m["status"] == "complete" for m in ms[:-1]), [m["status"] for m in ms]
    assert ms[-1]["status"] in ("complete", "interrupted")
    assert {m["prompt"] for m in ms} == {"a red kiss", "a blue dog"}
    # a bad list is one line, no traceback
    bad = subprocess.run([sys.executable, "-m", "paik", "live", "--headless", "--model", "tiny", "--continuous",
                          "--prompts", str(tmp_path / "missing.txt")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert bad.returncode != 0 and "--prompts" in bad.stderr and "Traceback" not in bad.stderr


def test_reduce_stream_choices_compute_the_same_maps(tiny, tmp_path, monkeypatch):
    """On the CPU the high-priority and default streams are one code path (there are no streams):
    both must give the numpy reducer's maps, an independent computation; a bad choice is one line."""
    from paik.capture.bundle import open_bundle
    from paik.capture.engine import TakeRequest
    from paik.errors import PaikError
    from paik.instrument.render.reduce import Reducer, Selection
    from paik.instrument.render.resident import LiveTake, TorchReducer, reduce_stream

    eng = _engine(tiny, tmp_path, steps=2)
    try:
        eng.submit(TakeRequest(prompt="a cat kisses a dog", seed=1))
        evs = _events_until(eng, ("TakeDone", "TakeFailed"))
    finally:
        eng.close()
    started, done = evs[0], evs[-1]
    b = open_bundle(done.path)
    take = LiveTake(done.path, started.manifest, started.store.maps, started.store.step_slot)
    for s in b.step_indices:
        take.add_step(s)
    word = tuple(b.resolve("kisses"))
    sels = [Selection(word, (1,), (0,), (1,), ("step", "block")),
            Selection(word, (0, 1), tuple(range(len(b.layout.blocks))), None, (), "max")]
    got = {}
    for choice in ("high", "default"):
        monkeypatch.setenv("PAIK_REDUCE_STREAM", choice)
        r = TorchReducer(take)
        got[choice] = [r.volumes(s) for s in sels]
    ref = Reducer(b, "cpu")
    for sel, hi, de in zip(sels, got["high"], got["default"]):
        np.testing.assert_array_equal(hi, de)
        np.testing.assert_allclose(hi, ref.volumes(sel), rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("PAIK_REDUCE_STREAM", "fastest")
    with pytest.raises(PaikError, match="expected high or default"):
        reduce_stream("cuda")
