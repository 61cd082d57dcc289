"""The live engine in its own process (paik.capture.engine_process), on the CPU with the tiny
model: the maps the instrument reads are the child's store itself (shared memory here, CUDA IPC
on a GPU) and equal the bundle on disk; a model that cannot load is one line; and an instrument
killed with SIGKILL mid-take leaves the take's finished steps on disk and no engine process behind."""

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

from paik.errors import PaikError
from test_live import _events_until as _until

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _options(**kw):
    from paik.capture.generate import GenerateOptions

    return GenerateOptions(prompt="a red kiss", out="", quiet=True, **kw)


def test_the_instrument_reads_the_child_store_and_it_equals_the_bundle(tmp_path):
    from paik.capture.bundle import open_bundle
    from paik.capture.engine import TakeRequest
    from paik.capture.engine_process import EngineProcess

    eng = EngineProcess(("tiny", "auto", "cpu", None), _options(steps=3), tmp_path / "takes")
    try:
        assert not eng.busy
        eng.submit(TakeRequest(prompt="a cat kisses a dog", seed=7))
        assert eng.busy  # at once, before the child has said so
        evs = _until(eng, ("TakeDone", "TakeFailed"))
        kinds = [type(e).__name__ for e in evs]
        assert kinds[0] == "TakeStarted" and kinds[-1] == "TakeDone", evs[-1]
        started, done = evs[0], evs[-1]
        steps = [e for e in evs if type(e).__name__ == "StepDone"]
        assert [s.done for s in steps] == [1, 2, 3] and all(s.ready is None and s.preview is not None for s in steps)
        maps = started.store.maps
        assert maps.is_shared()  # the child's own pages, not a copy
        # the frames came whole, as RGBA
        assert done.frames.shape[-1] == 4 and done.frames.dtype == np.uint8
        end = time.monotonic() + 60
        while eng.writing and time.monotonic() < end:
            time.sleep(0.05)
        b = open_bundle(done.path)
        assert b.status == "complete" and b.step_indices == [s.index for s in steps]
        for s in b.step_indices:  # the same float16 values, on disk and in the shared store
            np.testing.assert_array_equal(b.step_arrays(s)["maps"], maps[started.store.step_slot[s]].numpy())
        # a second take: a new store, the first one still readable
        eng.submit(TakeRequest(prompt="a blue dog", seed=8, steps=2))
        evs2 = _until(eng, ("TakeDone", "TakeFailed"))
        (started2,) = [e for e in evs2 if type(e).__name__ == "TakeStarted"]
        assert type(evs2[-1]).__name__ == "TakeDone" and started2.store.maps.data_ptr() != maps.data_ptr()
        np.testing.assert_array_equal(b.step_arrays(b.step_indices[0])["maps"], maps[started.store.step_slot[0]].numpy())
        # annotate goes through the child, after the bundle's writer
        eng.annotate(done.path, {"note": "kept"})
    finally:
        problems = eng.close()
    assert problems == []
    assert json.loads((done.path / "manifest.json").read_text())["note"] == "kept"
    assert not eng._proc.is_alive()


def test_a_model_that_cannot_load_is_one_line(tmp_path):
    from paik.capture.engine_process import EngineProcess

    with pytest.raises(PaikError) as e:
        EngineProcess((str(tmp_path / "no-such-model"), "auto", "cpu", None), _options(), tmp_path / "takes")
    assert "\n" not in str(e.value) and "no-such-model" in str(e.value)


KILLED = r"""
import sys, time
from paik.capture.engine import TakeRequest
from paik.capture.engine_process import EngineProcess
from paik.capture.generate import GenerateOptions
eng = EngineProcess(("tiny", "auto", "cpu", None), GenerateOptions(prompt="a red kiss", out="", quiet=True, steps=40),
                    sys.argv[1])
print("child", eng._proc.pid, flush=True)
eng.submit(TakeRequest())
while True:
    for ev in eng.poll():
        if type(ev).__name__ == "StepDone" and ev.done >= 2:
            print("steps", ev.done, flush=True)
    time.sleep(0.01)
"""


def test_an_instrument_killed_mid_take_leaves_its_steps_and_no_engine(tmp_path):
    from paik.capture.bundle import open_bundle

    takes = tmp_path / "takes"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(takes)], stdout=subprocess.PIPE, text=True, env=ENV,
                            cwd=tmp_path)
    child = None
    try:
        end = time.monotonic() + 180
        while time.monotonic() < end:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("child"):
                child = int(line.split()[1])
            if line.startswith("steps"):
                break
        assert child is not None and proc.poll() is None, "the take never got going"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        end = time.monotonic() + 120  # the child sees its pipe close, stops at a step end, finishes the bundle
        while time.monotonic() < end:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            if Path(f"/proc/{child}/stat").is_file() and Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
                break  # ended; only its entry waits for a reaper
            time.sleep(0.2)
        else:
            os.kill(child, signal.SIGKILL)
            raise AssertionError("the engine process outlived its instrument")
    finally:
        if proc.poll() is None:
            proc.kill()
    (take,) = sorted(takes.iterdir())
    b = open_bundle(take)
    assert b.status in ("interrupted", "cancelled") and 2 <= len(b.step_indices) < 40, (b.status, b.step_indices)
    assert not list(take.rglob("*.tmp"))
