"""The live engine: generation in a worker thread, maps resident in the store, asynchronous
selection, and ``paik live`` played over real UDP (tiny model and the default paik-shapes)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from instrument_fixtures import make_bundle

ROOT = Path(__file__).resolve().parents[1]


def msg(address, *args) -> bytes:
    b = OscMessageBuilder(address)
    for a in args:
        b.add_arg(a)
    return b.build().dgram


@pytest.fixture(scope="module")
def tiny():
    from paik.capture.models import load_pipeline

    return load_pipeline("tiny", device="cpu")


def _engine(tiny, tmp_path, **defaults):
    from paik.capture.engine import Engine
    from paik.capture.generate import GenerateOptions

    return Engine(tiny, GenerateOptions(prompt="a red kiss", out="", **defaults), tmp_path / "takes")


def _events_until(engine, kinds, timeout=120.0):
    """Poll (bounded in time) until an event of one of ``kinds``; returns every event seen."""
    seen = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for ev in engine.poll():
            seen.append(ev)
            if type(ev).__name__ in kinds:
                return seen
        time.sleep(0.01)
    raise AssertionError(f"no {kinds} in {timeout} s; saw {[type(e).__name__ for e in seen]}")


# -- the engine, in process ------------------------------------------------------------------------
def test_resident_store_and_bundle_on_disk_hold_identical_maps(tiny, tmp_path):
    from paik.capture.bundle import open_bundle
    from paik.capture.engine import TakeRequest
    from paik.instrument.render.reduce import Reducer, Selection
    from paik.instrument.render.resident import LiveTake, TorchReducer

    eng = _engine(tiny, tmp_path)
    try:
        eng.submit(TakeRequest(prompt="a cat kisses a dog", seed=7))
        evs = _events_until(eng, ("TakeDone", "TakeFailed"))
    finally:
        eng.close()
    kinds = [type(e).__name__ for e in evs]
    assert kinds[0] == "TakeStarted" and kinds[-1] == "TakeDone", evs[-1]
    steps = [e for e in evs if type(e).__name__ == "StepDone"]
    assert [s.done for s in steps] == list(range(1, len(steps) + 1)) and steps[0].total == len(steps)
    started, done = evs[0], evs[-1]
    b = open_bundle(done.path)
    assert b.status == "complete" and b.video_path is not None and b.step_indices == [s.index for s in steps]
    store = started.store
    for s in b.step_indices:  # exactly the same float16 values, on disk and in the store
        np.testing.assert_array_equal(b.step_arrays(s)["maps"], store.maps[store.step_slot[s]].numpy())
    take = LiveTake(done.path, started.manifest, store.maps, store.step_slot)
    for s in steps:
        take.add_step(s.index, s.preview.numpy())
    np.testing.assert_array_equal(take.preview(steps[1].index), b.preview(steps[1].index))
    torch_r, numpy_r = TorchReducer(take), Reducer(b, "cpu")
    n_s, n_b = len(b.step_indices), len(b.layout.blocks)
    word = b.resolve("kisses")
    for sel in (Selection(tuple(word), (1,), (0,), (1,), ("step", "block")),
                Selection(tuple(word), tuple(range(n_s)), tuple(range(n_b)), None, (), "mean"),
                Selection(tuple(word), tuple(range(n_s)), (1,), None, ("step", "block", "head"), "max")):
        np.testing.assert_allclose(torch_r.volumes(sel), numpy_r.volumes(sel), rtol=1e-5, atol=1e-6)
    # the grand mean against the bundle's own select, an independent path
    grand = torch_r.volumes(Selection(tuple(word), tuple(range(n_s)), tuple(range(n_b)), None, ()))[0]
    np.testing.assert_allclose(grand, b.select("kisses"), rtol=1e-5, atol=1e-6)


def test_flood_queues_one_take_and_cancel_keeps_finished_steps(tiny, tmp_path):
    from paik.capture.bundle import open_bundle
    from paik.capture.engine import TakeRequest

    eng = _engine(tiny, tmp_path, steps=40)
    try:
        eng.submit(TakeRequest(prompt="a first take"))
        _events_until(eng, ("StepDone",))
        for k in range(200):  # a flood while the first take runs: only the newest waits
            eng.submit(TakeRequest(prompt=f"take number {k}", seed=k))
        assert eng.replaced == 199
        assert eng.cancel()  # stops the running take and drops the waiting one
        evs = _events_until(eng, ("TakeFailed", "TakeDone"))
        failed = evs[-1]
        assert type(failed).__name__ == "TakeFailed" and failed.cancelled, failed
        time.sleep(0.3)
        assert not eng.busy and not [e for e in eng.poll() if type(e).__name__ == "TakeStarted"]
        b = open_bundle(failed.path)
        assert b.status == "interrupted" and 1 <= len(b.step_indices) < 40 and b.select("first").std() > 0
        # again: one take runs, and of the flood behind it only the newest request follows
        eng.submit(TakeRequest(prompt="a cat", steps=8))
        prompts = [e.manifest["prompt"] for e in _events_until(eng, ("TakeStarted",)) if hasattr(e, "manifest")]
        for k in range(50):
            eng.submit(TakeRequest(prompt=f"a dog number {k}", steps=2))
        end = time.monotonic() + 120
        while len(prompts) < 2 or eng.busy:
            assert time.monotonic() < end
            prompts += [e.manifest["prompt"] for e in eng.poll() if type(e).__name__ == "TakeStarted"]
            time.sleep(0.01)
        prompts += [e.manifest["prompt"] for e in eng.poll() if type(e).__name__ == "TakeStarted"]
        assert len(prompts) == 2 and prompts[-1] == "a dog number 49", prompts
    finally:
        eng.close()


def test_faults_are_one_line_failed_events_and_the_engine_goes_on(tiny, tmp_path):
    from paik.capture.engine import TakeRequest

    eng = _engine(tiny, tmp_path, max_capture_gb=3000 / 1024**3)  # the tiny capture is 4,608 bytes
    try:
        eng.submit(TakeRequest(prompt="a cat", tokens=("zebra",)))
        ev = _events_until(eng, ("TakeFailed",))[-1]
        assert "zebra" in ev.message and "\n" not in ev.message
        eng.submit(TakeRequest(prompt="a cat", height=70, width=64))
        ev = _events_until(eng, ("TakeFailed",))[-1]
        assert "--height 70" in ev.message
        eng.submit(TakeRequest(prompt="a cat"))  # too large for the budget: the flags that would fit
        ev = _events_until(eng, ("TakeFailed",))[-1]
        assert "does not fit" in ev.message and "--heads mean" in ev.message and "\n" not in ev.message
        eng.defaults.max_capture_gb = None
        eng.submit(TakeRequest(prompt="a cat", steps=2))
        assert type(_events_until(eng, ("TakeDone", "TakeFailed"))[-1]).__name__ == "TakeDone"
    finally:
        eng.close()


# -- asynchronous selection ------------------------------------------------------------------------
class SlowReducer:
    """A reducer that takes ``delay`` seconds per selection (as a first grand-view selection does
    on a paper-size capture)."""

    def __init__(self, inner, delay):
        self.inner, self.delay = inner, delay
        self.latent, self.device = inner.latent, inner.device
        self.calls = 0

    def volumes(self, sel):
        self.calls += 1
        time.sleep(self.delay)
        return self.inner.volumes(sel)


def test_a_slow_reducer_never_stops_the_frames(tmp_path):
    from paik.instrument.control.params import Params
    from paik.instrument.render import colormaps
    from paik.instrument.render.headless import Offscreen, egl_context
    from paik.instrument.render.renderer import Renderer
    from paik.instrument.render.source import Source

    try:
        ctx = egl_context()
    except Exception as e:
        pytest.skip(f"no EGL: {e}")
    make_bundle(tmp_path / "b", steps=3, blocks=4, heads=2, video=False)
    src = Source.open(tmp_path / "b", device="cpu")
    src.reducer = slow = SlowReducer(src.reducer, delay=0.6)
    off = Offscreen(ctx, (48, 32))
    off.use()
    r = Renderer(ctx, src, asynchronous=True)
    p = Params().bind(len(src.words), 3, 4, 2, colormaps.available())
    p.colormap = "grayscale"
    p.token = [w.label for w in src.words].index("kiss")
    try:
        r.draw(p, 0.0, (0, 0, 48, 32))  # the first frame has nothing to keep: it waits for its map
        ctx.finish()
        first = off.read().copy()
        p.step = 2.0
        p.view = "grand"
        times, frames = [], []
        t_end = time.monotonic() + 5.0
        while time.monotonic() < t_end and len(frames) < 400:
            t0 = time.perf_counter()
            r.draw(p, 0.0, (0, 0, 48, 32))
            ctx.finish()
            times.append(time.perf_counter() - t0)
            frames.append(off.read().copy())
            if r.selector.settled and len(times) > 5:
                break
        assert r.selector.settled, "the new selection never arrived"
        # while the 0.6 s reduction ran, frames kept coming, showing the old map
        assert len(times) > 5 and max(times[:-1]) < 0.3, (len(times), max(times))
        assert np.array_equal(frames[0], first) and r.selector.late >= 5
        assert not np.array_equal(frames[-1], first)  # then the grand view replaced it
        # and it is the same picture a synchronous renderer draws
        sync = Renderer(ctx, Source.open(tmp_path / "b", device="cpu"))
        sync.draw(p, 0.0, (0, 0, 48, 32))
        ctx.finish()
        assert np.array_equal(off.read(), frames[-1])
        assert slow.calls == 2
    finally:
        r.selector.close()
        off.release()
        ctx.release()


def _gl(tmp_path):
    from paik.instrument.render.headless import Offscreen, egl_context

    try:
        ctx = egl_context()
    except Exception as e:
        pytest.skip(f"no EGL: {e}")
    off = Offscreen(ctx, (48, 32))
    off.use()
    return ctx, off


def _bank(src, **kw):
    from paik.instrument.control.params import Params
    from paik.instrument.render import colormaps

    d = src.dims
    p = Params().bind(len(src.words), d.n_steps, d.n_blocks, d.n_heads, colormaps.available())
    p.colormap = "grayscale"
    p.token = [w.label for w in src.words].index("kiss")
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def test_a_new_source_never_stops_the_frames(tmp_path):
    """A loaded bundle (or a new take) whose first selection is slow: the Stage keeps drawing the
    old source with its last bank, frame after frame, then swaps to exactly what a synchronous
    renderer draws for the new one."""
    from paik.instrument.render.renderer import Renderer, Stage
    from paik.instrument.render.source import Source

    ctx, off = _gl(tmp_path)
    make_bundle(tmp_path / "a", steps=3, blocks=4, heads=2, video=False)
    make_bundle(tmp_path / "b", steps=2, blocks=3, heads=2, latent=(4, 4, 8), video=False)
    a, b = Source.open(tmp_path / "a", device="cpu"), Source.open(tmp_path / "b", device="cpu")
    b.reducer = slow = SlowReducer(b.reducer, delay=0.6)
    stage = Stage(ctx, a, asynchronous=True)
    try:
        r, q = stage.frame(a, _bank(a))
        r.draw(q, 0.0, (0, 0, 48, 32))
        ctx.finish()
        first = off.read().copy()
        want = _bank(b, step=1.0)
        times, frames = [], []
        t_end = time.monotonic() + 5.0
        while time.monotonic() < t_end:
            t0 = time.perf_counter()
            r, q = stage.frame(b, want)
            r.draw(q, q.time, (0, 0, 48, 32))
            ctx.finish()
            times.append(time.perf_counter() - t0)
            frames.append(off.read().copy())
            if r.src is b and stage.settled:
                break
        assert stage.renderer.src is b and stage.swaps == 1, "the new source never took over"
        assert stage.held >= 5 and max(times[:-1]) < 0.3, (stage.held, max(times))
        assert [i for i, f in enumerate(frames[:-1]) if not np.array_equal(f, first)] == [], len(frames)  # the old picture while it primed
        sync = Renderer(ctx, Source.open(tmp_path / "b", device="cpu"))
        sync.draw(want, 0.0, (0, 0, 48, 32))
        ctx.finish()
        assert np.array_equal(off.read(), frames[-1]) and not np.array_equal(first, frames[-1])
        assert slow.calls == 1
        sync.release()
    finally:
        stage.release()
        off.release()
        ctx.release()


def test_slow_ranges_and_backgrounds_never_stop_the_frames(tmp_path):
    """The percentiles behind a new normalization and a video background are made off the render
    thread too: frames keep coming with what they showed, then the picture is the synchronous one."""
    from paik.instrument.render.renderer import Renderer
    from paik.instrument.render.source import Source

    ctx, off = _gl(tmp_path)
    make_bundle(tmp_path / "v", steps=3, blocks=4, heads=2, video=True)
    src = Source.open(tmp_path / "v", device="cpu")
    r = Renderer(ctx, src, asynchronous=True)
    slow_stat, slow_bg = r._range_stat, r._background_data

    def range_stat(prep, key):
        if key[0] == "frame":
            time.sleep(0.6)
        return slow_stat(prep, key)

    def background_data(mode):
        time.sleep(0.6)
        return slow_bg(mode)

    r.selector.range_stat = range_stat
    r._backgrounds.compute = background_data
    try:
        p = _bank(src, composite="heatmap")
        r.draw(p, 0.3, (0, 0, 48, 32))
        ctx.finish()
        first = off.read().copy()
        for change in ({"norm": "frame", "clip_hi": 90.0}, {"composite": "overlay"}):
            for k, v in change.items():
                setattr(p, k, v)
            times, frames = [], []
            t_end = time.monotonic() + 5.0
            while time.monotonic() < t_end:
                t0 = time.perf_counter()
                r.draw(p, 0.3, (0, 0, 48, 32))
                ctx.finish()
                times.append(time.perf_counter() - t0)
                frames.append(off.read().copy())
                if r.settled and len(times) > 5:
                    break
            assert r.settled, change
            assert len(times) > 5 and max(times[:-1]) < 0.3, (change, len(times), max(times))
            if "norm" in change:  # what it showed, until the new ranges were made
                assert np.array_equal(frames[0], first), change
            else:  # the composite applies at once; the video comes in once decoded
                assert not np.array_equal(frames[0], frames[-1]), change
            sync = Renderer(ctx, Source.open(tmp_path / "v", device="cpu"))
            sync.draw(p, 0.3, (0, 0, 48, 32))
            ctx.finish()
            assert np.array_equal(off.read(), frames[-1]) and not np.array_equal(first, frames[-1]), change
            sync.release()
            first = frames[-1]
    finally:
        r.release()
        off.release()
        ctx.release()


# -- paik live over real UDP ---------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        for _ in range(50):
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                t.bind(("127.0.0.1", port))
                return port
            except OSError:
                u.close()
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raise RuntimeError("no free port")


class Client:
    """A subscriber on 127.0.0.1 that records every feedback message in order."""

    def __init__(self, port):
        self.dest = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.log: list[tuple[str, list]] = []
        self.state: dict[str, list] = {}

    def send(self, address, *args):
        self.sock.sendto(msg(address, *args), self.dest)

    def pump(self, seconds=0.1):
        """Read what arrives for up to ``seconds`` (feedback streams every frame: never read until quiet)."""
        end = time.monotonic() + seconds
        try:
            while (left := end - time.monotonic()) > 0:
                self.sock.settimeout(min(left, 0.2))  # never outlasts the window asked for
                for m in OscPacket(self.sock.recvfrom(65536)[0]).messages:
                    self.log.append((m.message.address, list(m.message.params)))
                    self.state[m.message.address] = list(m.message.params)
        except socket.timeout:
            pass

    def wait(self, pred, timeout, proc, what):
        end = time.monotonic() + timeout
        while not pred():
            assert proc.poll() is None, f"paik live ended: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < end, f"timeout waiting for {what}; last: {self.log[-8:]}"
            self.pump()

    def close(self):
        self.sock.close()


def _start(tmp_path, *extra):
    port = _free_port()
    argv = [sys.executable, "-m", "paik", "live", "--headless", "--osc-port", str(port), "--size", "64x48",
            "--seconds", "300", "--no-zeroconf", "--console", "off", "--smooth", "0", "--colormap", "grayscale",
            "--takes", str(tmp_path / "takes"), "--out-dir", str(tmp_path), *extra]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    c = Client(port)
    end = time.monotonic() + 90
    while "/paik/counts" not in c.state:  # subscribe until the instrument is up
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < end, "paik live did not come up"
        c.send("/paik/subscribe")
        c.pump()
    return proc, c


def _stop(proc, c):
    c.close()
    if proc.poll() is None:
        proc.terminate()
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err[-3000:]
    return err


def _snapshot(c, proc, path):
    c.send("/paik/snapshot", path.name)  # snapshots are plain names in --out-dir
    c.wait(path.exists, 30, proc, f"snapshot {path.name}")
    from PIL import Image

    return np.asarray(Image.open(path)).astype(int)


def _offline(bundle, step, size=(64, 48)):
    """The same view rendered synchronously from the bundle on disk (the reference)."""
    from paik.instrument.control.params import Params
    from paik.instrument.render import colormaps
    from paik.instrument.render.headless import Offscreen, egl_context
    from paik.instrument.render.renderer import Renderer
    from paik.instrument.render.source import Source

    ctx = egl_context()
    try:
        src = Source.open(bundle, device="cpu")
        off = Offscreen(ctx, size)
        off.use()
        p = Params().bind(len(src.words), src.dims.n_steps, src.dims.n_blocks, src.dims.n_heads, colormaps.available())
        p.colormap, p.step, p.playing, p.composite = "grayscale", float(step), False, "heatmap"
        Renderer(ctx, src).draw(p, 0.0, (0, 0, *size), gap=2.0)
        ctx.finish()
        return off.read()[..., :3].astype(int)
    finally:
        ctx.release()


def test_paik_live_tiny_over_udp(tmp_path):
    """a complete first take on disk; generate -> progress before completion and the first step's
    map on screen before completion (as drawn from disk); cancel; bad tokens, sizes and prompts
    reported while the show goes on; a kill mid-take leaves the finished steps."""
    from paik.capture.bundle import open_bundle

    proc, c = _start(tmp_path, "--model", "tiny", "--prompt", "a cat kisses a dog", "--steps", "2")
    try:
        c.wait(lambda: any(a == "/paik/progress" and v == [2, 2] for a, v in c.log), 120, proc, "the first take")
        end = time.monotonic() + 60
        while (b1 := open_bundle(tmp_path / "takes" / "take_0001")).status != "complete":
            assert time.monotonic() < end, b1.status
            time.sleep(0.2)
        assert b1.manifest["prompt"] == "a cat kisses a dog" and len(b1.step_indices) == 2 and b1.video_path
        # a take far longer than the test: it is still forming when its first step is drawn
        c.log.clear()
        c.send("/paik/steps", 1000)
        c.send("/paik/generate", "a red kiss", 5)
        c.wait(lambda: any(a == "/paik/progress" and v[0] >= 1 and v[1] == 1000 for a, v in c.log), 120, proc,
               "progress of the second take")
        first = next(v for a, v in c.log if a == "/paik/progress" and v[1] == 1000)
        assert first[0] < first[1]
        c.wait(lambda: c.state.get("/paik/counts", [0, 0])[1] >= 1 and c.state.get("/paik/take") == ["take_0002"],
               30, proc, "the second take on screen")
        c.send("/paik/follow", 0)  # hold step 0 while later steps keep arriving
        c.send("/paik/playing", 0)
        c.send("/paik/time", 0.0)
        c.send("/paik/step", 0.0)
        for name, value in (("token", 0), ("block", 0.0), ("norm", "global"), ("composite", "heatmap")):
            c.send(f"/paik/{name}", value)  # the reference's look, not the first-run defaults
        shot = _snapshot(c, proc, tmp_path / "forming.png")
        c.pump()
        assert c.state["/paik/progress"][0] < 1000
        # cancel it: the bundle keeps its finished steps, and its step 0 is what was on screen
        c.log.clear()
        c.send("/paik/generate/cancel")
        c.wait(lambda: any(a == "/paik/error" and "cancelled" in v[0] for a, v in c.log), 60, proc, "cancelled")
        time.sleep(0.5)
        b2 = open_bundle(tmp_path / "takes" / "take_0002")
        assert b2.status == "interrupted" and 1 <= len(b2.step_indices) < 1000
        assert b2.manifest["prompt"] == "a red kiss" and b2.manifest["seed"] == 5
        assert shot.std() > 1 and np.abs(shot - _offline(b2.path, 0)).max() <= 1  # step 0, as drawn from disk
        c.send("/paik/steps", 2)
        # faults: each a one-line /paik/error, and the instrument plays on
        c.log.clear()
        c.send("/paik/tokens", "zebra")
        c.send("/paik/generate")
        c.wait(lambda: any(a == "/paik/error" and "zebra" in v[0] for a, v in c.log), 60, proc, "the token error")
        c.send("/paik/tokens/reset")
        c.send("/paik/size", "70x64")
        c.send("/paik/generate")
        c.wait(lambda: any(a == "/paik/error" and "--width 70" in v[0] for a, v in c.log), 60, proc, "the size error")
        c.send("/paik/size", "")
        c.send("/paik/prompt", "")
        c.send("/paik/generate")
        c.wait(lambda: any(a == "/paik/error" and "prompt is empty" in v[0] for a, v in c.log), 30, proc,
               "the empty prompt error")
        c.send("/paik/generate/cancel")
        c.wait(lambda: any(a == "/paik/error" and "nothing is generating" in v[0] for a, v in c.log), 30, proc,
               "cancel with nothing running")
        # seed next, over the grammar
        c.send("/paik/cmd", "seed next")
        c.wait(lambda: c.state.get("/paik/seed") == [6], 30, proc, "seed next")
        # a kill mid-take: the finished steps stay on disk
        c.log.clear()
        c.send("/paik/steps", 1000)
        c.send("/paik/generate", "a cat", 11)
        c.wait(lambda: any(a == "/paik/progress" and v[0] >= 3 for a, v in c.log), 120, proc, "the fourth take")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed = sorted((tmp_path / "takes").iterdir())[-1]
        b4 = open_bundle(killed)
        assert len(b4.step_indices) >= 2 and b4.select("cat").std() > 0
    finally:
        if proc.poll() is None:
            _stop(proc, c)
        else:
            c.close()


def test_paik_live_default_model_over_udp(tmp_path):
    """`paik live --headless` with the shipped paik-shapes model: progress before completion, and
    a complete bundle that loads."""
    from paik.capture.bundle import open_bundle
    from paik.capture.models import DEFAULT_MODEL

    if DEFAULT_MODEL != "paik-shapes":
        pytest.skip("paik-shapes is not shipped in this copy")
    proc, c = _start(tmp_path, "--steps", "4", "--frames", "5", "--height", "64", "--width", "64")
    try:
        c.wait(lambda: any(a == "/paik/progress" and v[0] >= 1 for a, v in c.log), 240, proc, "progress")
        first = next(v for a, v in c.log if a == "/paik/progress" and v[0] >= 1)
        assert first[0] < first[1] == 4
        c.wait(lambda: c.state.get("/paik/progress") == [4, 4], 240, proc, "the take to finish")
        end = time.monotonic() + 60
        while True:
            b = open_bundle(tmp_path / "takes" / "take_0001")
            if b.status == "complete":
                break
            assert time.monotonic() < end, b.status
            time.sleep(0.2)
        assert b.manifest["model"]["id"] == "paik-shapes" and len(b.step_indices) == 4 and b.video_path
        assert b.select("circle").std() > 0
        assert c.state["/paik/take"] == ["take_0001"] and c.state["/paik/counts"][1] == 4
    finally:
        err = _stop(proc, c)
    assert "error" not in err.lower(), err[-2000:]


def test_a_bundle_loaded_whole_onto_the_device_reads_as_on_disk(tmp_path):
    from paik.capture.bundle import open_bundle
    from paik.instrument.render.reduce import Selection
    from paik.instrument.render.resident import ResidentSource, load_resident

    maps = make_bundle(tmp_path / "b", steps=3, blocks=4, heads=2)
    b = open_bundle(tmp_path / "b")
    seen = []
    take = load_resident(b, "cpu", progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)] and take.step_indices == [0, 1, 2] and take.video_path == b.video_path
    np.testing.assert_array_equal(take.maps.numpy(), maps)
    np.testing.assert_array_equal(take.preview(2), b.preview(2))
    src = ResidentSource(take)
    kiss = tuple(b.resolve("kiss"))
    got = src.reducer.volumes(Selection(kiss, (0, 1, 2), (0, 1, 2, 3), None, (), "max"))[0]
    np.testing.assert_allclose(got, b.select("kiss", reduce="max"), rtol=1e-6)
    got = src.reducer.volumes(Selection(kiss, (1,), (3,), (1,), ("step", "block")))[0]
    np.testing.assert_allclose(got, b.select("kiss", step=1, block=3, head=1), rtol=1e-6)
    from paik.instrument.render.source import Source

    assert [w.label for w in src.words] == [w.label for w in Source(b, "cpu").words]


def test_a_followed_take_growing_never_waits_for_its_new_step():
    """Following a take as it forms, the newest step's selection is not waited for (the frame
    keeps its map; the next one shows it), while a performer's own change still gets the budget."""
    from types import SimpleNamespace

    from paik.instrument.control.params import Params
    from paik.instrument.render.resident import AsyncSelector

    class Reducer:
        def volumes(self, sel):
            time.sleep(0.3)
            return np.full(1, float(hash(sel) % 97), np.float32)

    sel = AsyncSelector(Reducer(), budget=5.0)
    plan = lambda p: SimpleNamespace(selection=(p.token, p.step))  # noqa: E731
    try:
        p = Params()
        p.step = 0.0
        first = plan(p)
        assert sel.ready(first, p, growing=True)[0] is first  # the first frame waits: nothing to keep
        p.step = 1.0  # the take grew: its newest step
        t0 = time.perf_counter()
        shown, _, _ = sel.ready(plan(p), p, growing=True)
        assert time.perf_counter() - t0 < 0.15 and shown is first and sel.late == 1
        while not sel.request(plan(p).selection):
            time.sleep(0.01)
        assert sel.ready(plan(p), p, growing=True)[0].selection == (p.token, 1.0)  # the next frame shows it
        p.token = 1  # the performer's own change, while the take grows: waited for, drawn at once
        t0 = time.perf_counter()
        assert sel.ready(plan(p), p, growing=True)[0].selection == (1, 1.0)
        assert 0.2 < time.perf_counter() - t0 < 4.0
        p.step = 2.0  # not a growing take (a bundle played): a step change is waited for too
        assert sel.ready(plan(p), p, growing=False)[0].selection == (1, 2.0) and sel.late == 1
    finally:
        sel.close()


def test_a_growing_takes_previews_keep_one_texture_and_show_each_new_step(tmp_path):
    """Composited over its per-step previews, a take that grows one step at a time keeps a single
    background texture (its atlas sized for every planned step), and each frame shows the newest
    step's preview once it arrives: real pixels."""
    import torch

    from paik.instrument.bench.live import synthetic_take
    from paik.instrument.render.renderer import Renderer
    from paik.instrument.render.resident import LiveTake, ResidentSource

    ctx, off = _gl(tmp_path)
    done = synthetic_take(4, 2, 2, 3, (3, 4, 6), "cpu")
    manifest = {**done.manifest, "tokens": [dict(t, word="kiss" if i == 0 else t["word"]) for i, t in
                                            enumerate(done.manifest["tokens"])]}
    take = LiveTake(tmp_path / "take_0001", manifest, torch.zeros_like(done.maps))
    colors = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]
    src = r = None
    try:
        textures = set()
        for s, c in enumerate(colors):
            take.maps[s] = done.maps[s]
            take.add_step(s, np.broadcast_to(np.array(c, np.uint8), (3, 4, 6, 3)).copy())
            src = src or ResidentSource(take)
            src.refresh()
            if r is None:
                r = Renderer(ctx, src, asynchronous=True)
            p = _bank(src, step=float(s), block=0.0, composite="overlay", opacity=0.0, background="preview")
            t_end = time.monotonic() + 20
            while time.monotonic() < t_end:
                r.draw(p, 0.5, (0, 0, 48, 32))
                ctx.finish()
                if r.settled:
                    break
                time.sleep(0.01)
            assert r.settled
            textures.add(id(r.bg))
            rgb = off.read()[16, 24, :3].astype(int)  # the picture's centre: the preview of step s
            assert np.abs(rgb - np.array(c)).max() <= 2, (s, rgb, c)
        assert len(textures) == 1 and r.bg_info[0] == 4
        # the heatmap alone and back: the previews' texture was kept, shown again at the first frame
        shown = r.bg
        r.draw(_bank(src, step=3.0, block=0.0, composite="heatmap"), 0.5, (0, 0, 48, 32))
        assert r.bg is not shown
        r.draw(p, 0.5, (0, 0, 48, 32))
        ctx.finish()
        assert r.bg is shown
        assert np.abs(off.read()[16, 24, :3].astype(int) - np.array(colors[-1])).max() <= 2
    finally:
        if r is not None:
            r.release()
        off.release()
        ctx.release()


def test_a_replaced_resident_capture_is_freed_without_a_garbage_collection(tmp_path):
    """When a Stage swaps a resident capture (and its unbent twin, every view drawn) for another
    source, nothing keeps the old maps alive: their memory (on a GPU, device memory the memory
    plan counts as free) goes at once, not at Python's next full collection."""
    import gc
    import weakref

    from paik.instrument.bench.live import synthetic_take
    from paik.instrument.control.params import VIEWS, Params
    from paik.instrument.render import colormaps
    from paik.instrument.render.renderer import Stage
    from paik.instrument.render.resident import ResidentSource, blank_take

    ctx, off = _gl(tmp_path)
    src = ResidentSource(synthetic_take(3, 2, 2, 4, (2, 4, 4), "cpu"))
    src.twin = ResidentSource(synthetic_take(3, 2, 2, 4, (2, 4, 4), "cpu", seed=1))
    src._twin_known = True
    gone = [weakref.ref(src.bundle.maps), weakref.ref(src.twin.bundle.maps)]
    p = Params().bind(len(src.words), 3, 2, 2, colormaps.available())
    stage = Stage(ctx, src, asynchronous=True)

    def frames(source, n, view):
        p.view = view
        for _ in range(n):
            r, shown = stage.frame(source, p)
            r.draw(shown, shown.time, (0, 0, 48, 32))
            ctx.finish()
            time.sleep(0.005)

    gc.disable()
    try:
        for view in VIEWS:
            frames(src, 8, view)
        assert all(ref() is not None for ref in gone)
        blank = ResidentSource(blank_take())
        del src
        t_end = time.monotonic() + 20
        while stage.renderer.src is not blank and time.monotonic() < t_end:
            frames(blank, 1, "single")
        frames(blank, 3, "single")
        assert stage.renderer.src is blank
        assert [ref() is None for ref in gone] == [True, True]
    finally:
        gc.enable()
        stage.renderer.release()
        off.release()
        ctx.release()


def test_a_gl_context_made_through_egl_directly_draws_real_pixels(caplog):
    """paik bench live --gl-priority makes its GL context through EGL itself (to pass
    EGL_CONTEXT_PRIORITY_LEVEL_IMG, which glcontext cannot): that path, forced here where Mesa
    does not offer the extension, must give a working moderngl context; asking for a priority the
    driver does not offer falls back to the default context and says so."""
    from paik.errors import PaikError
    from paik.instrument.render.headless import Offscreen, _priority_context, egl_context

    try:
        egl_context().release()
    except Exception as e:
        pytest.skip(f"no EGL: {e}")
    ctx = _priority_context("high", force=True)
    assert ctx is not None and ctx.version_code >= 330
    off = Offscreen(ctx, (8, 4))
    off.use()
    ctx.clear(0.2, 0.4, 0.6, 1.0)
    ctx.finish()
    assert off.read()[2, 3].tolist() == [51, 102, 153, 255]
    off.release()
    ctx.release()
    import logging

    with caplog.at_level(logging.INFO, logger="paik.instrument.render.headless"):
        fallback = egl_context("high")
    granted = (fallback.extra or {}).get("priority")
    said = [r.getMessage() for r in caplog.records if "the default context" in r.getMessage()]
    # granted (a driver that offers it) and nothing said, or the default context and the reason said
    assert (granted in ("high", "medium", "low") and not said) or (granted is None and len(said) == 1), (granted, said)
    fallback.release()
    with pytest.raises(PaikError, match="expected one of"):
        egl_context("urgent")
