"""Offline generation with a ring of K step buffers on the device: the maps on disk are the
same as with every step kept, a slot is reused only after the writer has its copy, and the
memory plan counts the ring, not the whole capture."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest
import torch

from paik.capture.bundle import open_bundle
from paik.capture.layout import GiB, Layout
from paik.capture.plan import MemoryPlan
from paik.capture.store import CaptureStore, Recorder
from paik.capture.writer import BundleWriter
from paik.cli import main as paik_cli
from paik.errors import PaikError

PROMPT = "a red circle and a kissing cat"
BASE = ["--model", "tiny", "--seed", "5", "--steps", "5", "--frames", "9", "--height", "64", "--width", "64",
        "--quiet", "--capture-uncond", "--negative", "blurry grey"]


def _arrays(path):
    b = open_bundle(path)
    assert b.status == "complete"
    return b, {s: {k: np.asarray(v) for k, v in b.step_arrays(s).items()} for s in b.step_indices}


@pytest.mark.parametrize("k", [1, 2])
def test_maps_on_disk_equal_with_k_buffers_and_all_resident(tmp_path, k, capsys):
    assert paik_cli(["generate", PROMPT, "--out", str(tmp_path / "all"), "--keep-on-device", *BASE]) == 0
    assert paik_cli(["generate", PROMPT, "--out", str(tmp_path / "ring"), "--step-buffers", str(k),
                     *BASE[:-1], BASE[-1]]) == 0
    full, want = _arrays(tmp_path / "all")
    ring, got = _arrays(tmp_path / "ring")
    assert full.step_indices == ring.step_indices == [0, 1, 2, 3, 4]
    for s in want:
        assert set(got[s]) == set(want[s]) >= {"maps", "padding", "maps_uncond", "padding_uncond", "preview"}
        for name in want[s]:
            if name == "preview":  # the colour projection is refitted per run (lstsq): +-1 level
                assert np.abs(got[s][name].astype(int) - want[s][name]).max() <= 1
                continue
            assert np.array_equal(got[s][name], want[s][name]), (s, name)
    # the steps differ from one another, so a slot written twice or read late could not hide
    assert not np.array_equal(want[0]["maps"], want[4]["maps"])
    assert ring.manifest["settings"]["steps"] == 5


def test_plan_describes_the_ring_and_is_enforced_on_it():
    lay = Layout(steps=list(range(25)), blocks=list(range(30)), heads=12, head_mean=False, n_heads=12,
                 tokens=list(range(32)), latent=(16, 30, 52), n_real=32, seq_len=512)
    ring = MemoryPlan(lay, 2 * GiB, "cuda", buffers=3)
    assert ring.device_bytes == lay.bytes // 25 * 3 and ring.device_bytes < 2 * GiB  # 1.66 GiB of 13.8
    ring.check()
    assert "3 step buffers = 1.66 GiB" in ring.describe() and "13.81 GiB" in ring.describe()
    with pytest.raises(PaikError, match="does not fit"):
        MemoryPlan(lay, 2 * GiB, "cuda").check()
    tight = MemoryPlan(lay, int(1.2 * GiB), "cuda", buffers=3)
    with pytest.raises(PaikError) as e:
        tight.check()
    assert "--step-buffers 2" in str(e.value)
    assert MemoryPlan(lay, None, "cuda", buffers=100).device_bytes == lay.bytes  # more slots than steps


def _small():
    return Layout(steps=[0, 1, 2, 3], blocks=[0, 1], heads=2, head_mean=False, n_heads=2, tokens=[0, 1],
                  latent=(2, 3, 4), n_real=2, seq_len=8)


class GatedWriter(BundleWriter):
    """A real writer whose disk is as slow as the test says: each step waits for ``gate``."""

    def __init__(self, *a, **k):
        self.gate = threading.Event()
        super().__init__(*a, **k)

    def _write_step(self, info, host):
        assert self.gate.wait(10)
        super()._write_step(info, host)


def _fill(store, step, value):
    slot = store.step_slot[step]
    store.maps[slot].fill_(value)
    store.padding[slot].fill_(value / 2)


def test_a_slot_is_reused_only_after_the_writer_has_copied_it(tmp_path):
    store = CaptureStore(_small(), "cpu", buffers=2)
    assert store.ring and store.maps.shape[0] == 2
    writer = GatedWriter(tmp_path / "b", {"layout": _small().to_json(), "settings": {"steps": 4}})
    rec = Recorder(store)
    rec.wait_check = writer.check_waiting
    for step in (0, 1):
        rec.begin_pass("cond", step, 0.5, "transformer", None)
        _fill(store, step, 0.1 * (step + 1))
        writer.add_step({"index": step}, {"maps": store.maps[store.step_slot[step]],
                                          "padding": store.padding[store.step_slot[step]]},
                        lambda step=step: store.release(step))
    got = {}
    waiter = threading.Thread(target=lambda: got.setdefault("r", rec.begin_pass("cond", 2, 0.5, "transformer", None)))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive(), "step 2 took a slot while both were still waiting for the disk"
    writer.gate.set()
    waiter.join(5)
    assert not waiter.is_alive() and 2 in store.step_slot and 0 not in store.step_slot
    _fill(store, 2, 0.9)  # overwrites step 0's old slot, now that step 0 is on disk
    writer.add_step({"index": 2}, {"maps": store.maps[store.step_slot[2]],
                                   "padding": store.padding[store.step_slot[2]]}, lambda: store.release(2))
    writer.close("complete")
    from safetensors.numpy import load_file

    from paik.capture.bundle import STEP_FILE

    for step, value in ((0, 0.1), (1, 0.2), (2, 0.9)):
        saved = load_file(tmp_path / "b" / STEP_FILE.format(step))  # read by the reference library
        assert np.all(saved["maps"] == np.float16(value)) and np.all(saved["padding"] == np.float16(value / 2)), step


def test_a_failed_writer_never_leaves_the_generation_waiting(tmp_path):
    store = CaptureStore(_small(), "cpu", buffers=1)
    writer = BundleWriter(tmp_path / "b", {"layout": _small().to_json(), "settings": {"steps": 4}}, stall_s=5)
    rec = Recorder(store)
    rec.wait_check = writer.check_waiting
    rec.begin_pass("cond", 0, 0.5, "transformer", None)
    shutil.rmtree(tmp_path / "b" / "maps")  # the disk goes away mid-run
    writer.add_step({"index": 0}, {"maps": store.maps[0], "padding": store.padding[0]}, lambda: store.release(0))
    t0 = time.monotonic()
    try:
        rec.begin_pass("cond", 1, 0.5, "transformer", None)  # the slot came back, failure or not
        assert store.step_slot == {1: 0}
    except PaikError as e:
        assert "writing the bundle" in str(e)
    assert time.monotonic() - t0 < 5
    with pytest.raises(PaikError, match="writing the bundle"):
        writer.add_step({"index": 1}, {"maps": store.maps[0], "padding": store.padding[0]}, lambda: store.release(1))
    assert store._free.qsize() == 1  # given back on the refused add_step too
    with pytest.raises(PaikError, match="removed while writing"):
        writer.close("failed")


def test_library_ring_needs_a_bundle_and_select_says_where_to_read(tmp_path):
    import paik
    from paik.capture.models import load_pipeline

    pipe = load_pipeline("tiny")[0]
    with pytest.raises(PaikError, match="needs N >= 1 and out=DIR"):
        paik.capture_attention(pipe, buffers=2)
    with paik.capture_attention(pipe, tokens=["cat"], out=tmp_path / "b", buffers=1) as cap:
        with torch.inference_mode():
            pipe(PROMPT, num_frames=9, height=64, width=64, num_inference_steps=3, guidance_scale=1.0,
                 generator=torch.Generator("cpu").manual_seed(1), output_type="latent")
    assert cap.status == "complete" and cap.store.maps.shape[0] == 1 and cap.steps == [0, 1, 2]
    with pytest.raises(PaikError, match="open_bundle"):
        cap.select("cat")
    assert cap.open_bundle().step_indices == [0, 1, 2]


def test_bad_step_buffers_is_a_message(tmp_path, capsys):
    assert paik_cli(["generate", PROMPT, "--out", str(tmp_path / "x"), "--step-buffers", "0", *BASE]) != 0
    err = capsys.readouterr().err
    assert "--step-buffers 0: needs at least 1" in err and "Traceback" not in err
