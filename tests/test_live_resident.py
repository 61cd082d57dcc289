"""Bundles brought whole onto the device (host memory here, without CUDA) by ``paik play`` and
``/paik/load``: the same maps as from disk, a refused or failed load keeps playing from disk, and
a headless ``paik play`` over real UDP keeps rendering while it happens."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pythonosc.osc_message_builder import OscMessageBuilder

from instrument_fixtures import expected_maps, make_bundle

ROOT = Path(__file__).resolve().parents[1]


def _live(src, tmp_path):
    from paik.instrument.control.live import Live
    from paik.instrument.control.scenes import SceneStore
    from paik.instrument.render import colormaps
    from paik.instrument.control.params import Params

    d = src.dims
    p = Params().bind(len(src.words), d.n_steps, d.n_blocks, d.n_heads, colormaps.available())
    lv = Live(src, p, SceneStore(tmp_path / "scenes", shipped=None))
    lv.resident = "cpu"
    return lv


def _until(lv, cond, seconds=20.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        lv.update(time.monotonic())
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"not within {seconds} s; errors: {list(lv.errors)}")


def test_a_bundle_brought_resident_gives_the_maps_the_disk_gives(tmp_path):
    from paik.instrument.render.reduce import Selection
    from paik.instrument.render.resident import ResidentSource
    from paik.instrument.render.source import Source

    make_bundle(tmp_path / "a", steps=3, blocks=4, heads=2, video=False)
    want = expected_maps(3, 4, 2).astype(np.float32)  # the fixture's maps, computed independently
    disk = Source.open(tmp_path / "a", "cpu")
    lv = _live(disk, tmp_path)
    lv.bring_resident(disk)
    _until(lv, lambda: isinstance(lv.src, ResidentSource))
    res = lv.src
    assert res.dims.n_steps == 3 and res.words == disk.words and lv.loading is None
    for sel, ref in (
        (Selection((1,), (2,), (3,), (1,), ()), want[2, 3, 1, 1]),
        (Selection((1, 2), (0, 1, 2), (0, 1, 2, 3), None, ()), want[:, :, :, 1:3].sum(3).mean((0, 1, 2))),
        (Selection((0,), (0, 1, 2), (1,), None, ("step",)), want[:, 1, :, 0].mean(1)),
        (Selection((3,), (0, 2), (0, 1, 2, 3), None, ("block",), "max"), want[[0, 2], :, :, 3].max((0, 2))),
    ):
        got = res.reducer.volumes(sel)
        assert np.allclose(got.reshape(-1, *ref.shape[-3:]), ref.reshape(-1, *ref.shape[-3:]), atol=1e-6), sel
        assert np.allclose(got, disk.reducer.volumes(sel), atol=1e-6), sel


def test_a_failed_resident_load_keeps_the_bundle_streaming(tmp_path):
    from paik.instrument.render.source import Source

    make_bundle(tmp_path / "a", steps=3, blocks=4, heads=2, video=False)
    disk = Source.open(tmp_path / "a", "cpu")
    with open(tmp_path / "a" / "maps" / "step_0002.safetensors", "r+b") as f:
        f.truncate(100)  # damaged after it was opened: the device copy cannot be made
    lv = _live(disk, tmp_path)
    lv.bring_resident(disk)
    _until(lv, lambda: lv.errors)
    message = lv.errors[-1][1]
    assert "load a" in message and "Traceback" not in message, message
    for _ in range(5):
        lv.update(time.monotonic())
    assert lv.src is disk and lv.loading is None


def test_a_bundle_that_does_not_fit_streams_with_a_message(tmp_path, capfd):
    from paik.instrument.render.resident import ResidentSource, resident_bytes
    from paik.instrument.render.source import Source

    big = tmp_path / "big"
    make_bundle(big, steps=2, blocks=1, heads=1, video=False, preview=False)
    m = json.loads((big / "manifest.json").read_text())
    # the same files, announced as a capture larger than half of this machine's free memory
    free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    per_head = 2 * len(m["tokens"]) * 64 * 128 * 128 * 2  # bytes of one head's maps over both steps
    heads = free // (2 * 40 * per_head) + 1
    m["layout"].update(latent=[64, 128, 128], blocks=list(range(40)), heads=heads, n_heads=heads)
    (big / "manifest.json").write_text(json.dumps(m))
    for step in (0, 1):  # sparse files of that size, with real safetensors headers: nothing on disk
        shapes = {"maps": [40, heads, len(m["tokens"]), 64, 128, 128], "padding": [40, heads, 64, 128, 128]}
        header, offset = {}, 0
        for k, shape in shapes.items():
            n = int(np.prod(shape)) * 2
            header[k] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + n]}
            offset += n
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(big / "maps" / f"step_{step:04d}.safetensors", "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            f.truncate(8 + len(raw) + offset)
    from paik.capture.bundle import open_bundle

    bundle = open_bundle(big)
    assert resident_bytes(bundle) > free // 2

    class Disk:  # the bundle as a playing source sees it; only its bundle is read here
        pass

    disk = Disk()
    disk.bundle = bundle
    make_bundle(tmp_path / "small", steps=1, blocks=1, heads=1, video=False, preview=False)
    lv = _live(Source.open(tmp_path / "small", "cpu"), tmp_path)
    before = lv.src
    lv._bring_resident(disk)
    assert "does not fit on cpu" in capfd.readouterr().err
    lv.update(time.monotonic())
    assert lv.src is before and not isinstance(lv.src, ResidentSource) and not lv.errors


def _msg(address, *args) -> bytes:
    b = OscMessageBuilder(address)
    for a in args:
        b.add_arg(a)
    return b.build().dgram


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_play_and_load_bring_bundles_onto_the_device_over_udp(tmp_path):
    make_bundle(tmp_path / "bundles" / "a", steps=3, blocks=4, heads=2)
    make_bundle(tmp_path / "bundles" / "b", steps=2, blocks=1, heads=1)
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "paik", "play", str(tmp_path / "bundles" / "a"), "--headless", "--size", "64x48",
         "--seconds", "60", "--osc-port", str(port), "--resident", "on", "--out-fps", "20"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(0.2)
    try:
        counts = []
        end = time.monotonic() + 40
        subscribed = loaded = False
        while time.monotonic() < end and proc.poll() is None:
            if not subscribed:
                client.sendto(_msg("/paik/subscribe"), ("127.0.0.1", port))
            try:
                data = client.recv(65536)
            except (socket.timeout, ConnectionRefusedError):
                continue
            subscribed = True
            if b"/paik/counts" in data:
                counts.append(data)
                if not loaded:
                    client.sendto(_msg("/paik/load", "b"), ("127.0.0.1", port))
                    loaded = True
                elif len(counts) >= 2:
                    break
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(2.0)  # b is small: brought over within this
        client.sendto(_msg("/paik/step", 1.0), ("127.0.0.1", port))
        time.sleep(0.5)
        assert proc.poll() is None
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        client.close()
    assert len(counts) >= 2, err
    assert "bringing a onto cpu: 3/3 steps" in err and "bringing b onto cpu: 2/2 steps" in err, err
    assert "Traceback" not in err, err


def test_bench_live_d_and_e_run_on_the_cpu_at_a_tiny_size(tmp_path):
    """(d) on a synthetic capture and on a --bundle, (e) offline generate against the plain call:
    runnable without a GPU (the numbers that matter come from one; nothing here is timed)."""
    make_bundle(tmp_path / "a", steps=3, blocks=4, heads=2)
    out = {}
    for name, extra in (("synthetic", ["--parts", "d,e", "--e-repeats", "2", "--synthetic", "3x2x2x4", "--latent", "2x3x4"]),
                        ("bundle", ["--parts", "d", "--bundle", str(tmp_path / "a"), "--probe", "--heap", "default"])):
        js = tmp_path / f"{name}.json"
        r = subprocess.run([sys.executable, "-m", "paik", "bench", "live", *extra, "--size", "96x54", "--seconds", "1",
                            "--steps", "3", "--frames", "5", "--height", "32", "--width", "32", "--json", str(js)],
                           cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                           timeout=400)
        assert r.returncode == 0, r.stderr[-3000:]
        out[name] = json.loads(js.read_text())
    syn, bun = out["synthetic"], out["bundle"]
    assert syn["d_capture"].startswith("synthetic 3x2x2x4 at 2x3x4") and syn["d_steps_blocks"] == [3, 2]
    assert bun["d_capture"].endswith("(resident on cpu)") and bun["d_steps_blocks"] == [3, 4]
    for r in (syn, bun):
        assert r["d_frames"] > 5 and r["d_worst_interval_ms"] > 0 and r["d_p99_osc_to_frame_ms"] > 0
    assert syn["e_generate_s"] > 0 and syn["e_plain_pipeline_mp4_s"] > 0 and syn["e_settings"] == [3, 5, 32, 32]
    assert syn["e_step_buffers"] == 3 and "e_generate_peak_gib" not in syn  # no GPU: no GPU memory to report
    # after a warm-up of both, two timed runs each, in alternating order; the take's own timings kept
    assert syn["e_repeats"] == 2 and len(syn["e_generate_runs_s"]) == len(syn["e_plain_runs_s"]) == 2
    assert syn["e_capture"]["captured"][0] == 3 and syn["e_capture"]["bundle_gib"] > 0
    assert syn["e_plain_steps"] == [3, 3]  # the timed plain calls at the take's settings, not the warm-up's
    assert syn["e_generate_s"] == statistics.median(syn["e_generate_runs_s"])
    assert all(t["total_s"] > 0 and t["write_s_total"] > 0 for t in syn["e_generate_timings"])
    # the diagnostics: collections counted, the heap frozen (as paik live) or left alone, the probe's wake-ups
    assert syn["heap"] == "frozen" and syn["gc_frozen_objects"] > 0 and syn["gc_collect_before_freeze_ms"] > 0
    assert bun["heap"] == "default" and bun["gc_frozen_objects"] == 0 and bun["gc_collect_before_freeze_ms"] is None
    for r in (syn, bun):
        assert len(r["d_gc"]["collections"]) == 3 and r["gc_full_collection_ms"] >= 0
    assert all("probe_late_ms" in w for w in bun["d_worst_frames"]) and not any("probe_late_ms" in w for w in syn["d_worst_frames"])


def test_bench_live_refuses_bad_parts_and_counts_in_one_line_before_loading_anything(tmp_path):
    for extra, said in ((["--parts", "d,x"], "--parts d,x: no part x"), (["--e-repeats", "0"], "--e-repeats 0: needs at least 1"),
                        (["--step-buffers", "-1"], "--step-buffers -1: needs at least 1")):
        r = subprocess.run([sys.executable, "-m", "paik", "bench", "live", *extra], cwd=tmp_path, capture_output=True,
                           text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
        assert r.returncode != 0 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "loading" not in r.stderr


@pytest.mark.skipif(not getattr(sys, "_is_gil_enabled", lambda: True)(), reason="no interpreter lock to hold")
def test_the_probe_names_the_thread_holding_the_interpreter_lock():
    """--probe's watchdog dump is taken while the holder still holds the lock: a thread summing a
    long range in C (no switch to another thread until it is done) is caught at that very line,
    never at its sleeps (a thread parked in a sleep or a wait is left out); stop() disarms it."""
    import threading
    import time

    from paik.instrument.bench.live import Probe

    probe = Probe(dumps=True)
    probe.start()
    time.sleep(0.05)

    def hog():
        for _ in range(3):
            time.sleep(0.02)
            sum(range(5 * 10**6))  # the line the dump must show

    th = threading.Thread(target=hog, name="the-hog")
    th.start()
    th.join()
    time.sleep(0.05)
    out = probe.since_last()
    probe.stop()
    assert out["probe_late_ms"] > Probe.DUMP_MS, out
    line = hog.__code__.co_firstlineno + 3
    held = [k for k in probe.stacks if k.startswith("the-hog: ")]
    assert held and all(k.startswith(f"the-hog: test_live_resident.py:{line} hog") for k in held), probe.stacks
    assert not any(k.startswith("MainThread: ") for k in probe.stacks), probe.stacks  # parked in join and sleep


def test_the_torch_reducer_keeps_its_index_lists_on_the_maps_device_bounded():
    """The device path's block, head and token lists: long tensors on the maps' device with the
    values asked, made once per list (the copy that makes them is not repeated each selection)
    and at most 64 kept."""
    import torch

    from paik.instrument.bench.live import synthetic_take
    from paik.instrument.render.resident import TorchReducer

    r = TorchReducer(synthetic_take(2, 3, 2, 4, (2, 3, 4), "cpu"))
    a = r._index([2, 0, 1])
    assert a.dtype == torch.long and a.device == r.take.maps.device and a.tolist() == [2, 0, 1]
    assert r._index((2, 0, 1)) is a and r._index(np.array([2, 0, 1])) is a
    for i in range(70):
        r._index([i])
    assert len(r._indices) == 64 and r._index([2, 0, 1]) is not a and r._index([69]).tolist() == [69]
