"""``paik play --headless --record`` end to end, as a user runs it: a real process, real OSC over
loopback to start and stop takes, and SIGKILL in the middle of a recording.

The bundle has a single latent frame, so every rendered frame is the same picture whatever the
playhead does: each decoded frame can be compared with one headless render."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from instrument_fixtures import make_bundle
from test_instrument_window import display  # noqa: F401 - the Xvfb fixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (64, 48)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    b = tmp_path_factory.mktemp("cli") / "b"
    make_bundle(b, steps=2, blocks=2, heads=1, latent=(1, 6, 8), video=False, preview=False)
    return b


@pytest.fixture(scope="module")
def picture(bundle):
    """The frame every recording of this bundle shows (CLI defaults, token 'kiss'), RGB."""
    from paik.instrument.cli import _params, default_look_args
    from paik.instrument.render.headless import Offscreen, egl_context
    from paik.instrument.render.renderer import Renderer
    from paik.instrument.render.source import Source

    src = Source.open(bundle, "cpu")
    p = _params(default_look_args(token="kiss"), src, "single")
    ctx = egl_context()
    off = Offscreen(ctx, SIZE)
    off.use()
    Renderer(ctx, src).draw(p, 0.0, (0, 0, *SIZE), gap=2.0)
    img = off.read()[..., :3].astype(int)
    assert img.std() > 5
    return img


def play(bundle, *extra, **kw):
    argv = [sys.executable, "-m", "paik", "play", str(bundle), "--headless", "--size", "64x48",
            "--token", "kiss", "--osc-port", "-1", "--console", "off", *extra]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, **kw)


def decode(path):
    """Decoded frames up to the first damage (a killed recording may end mid-fragment)."""
    import av

    frames, rate = [], None
    try:
        with av.open(str(path)) as c:
            st = c.streams.video[0]
            rate = st.average_rate
            for f in c.decode(st):
                frames.append((f.pts * st.time_base, f.to_ndarray(format="rgb24")))
    except av.error.FFmpegError:
        pass
    return rate, frames


def test_headless_record_writes_every_frame_at_the_rate(bundle, picture, tmp_path):
    out = tmp_path / "take.mp4"
    proc = play(bundle, "--record", str(out), "--out-fps", "25", "--frames", "15", "--fixed-step")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"wrote {out} (15 frames)" in stdout
    rate, frames = decode(out)
    assert rate == 25 and len(frames) == 15
    assert [t * 25 for t, _ in frames] == list(range(15))
    for _, img in frames:
        assert np.abs(img.astype(int) - picture).mean() < 4


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_osc_stops_and_starts_takes(bundle, tmp_path):
    from pythonosc.udp_client import SimpleUDPClient

    out = tmp_path / "live.mp4"
    port = free_udp_port()
    proc = play(bundle, "--record", str(out), "--out-fps", "20", "--seconds", "30", "--osc-port", str(port),
                "--oscquery-port", "-1", "--no-zeroconf")
    try:
        osc = SimpleUDPClient("127.0.0.1", port)
        wait_for_frames(out, 5, proc)
        osc.send_message("/paik/record", 0)  # stop the first take
        second = tmp_path / "live_2.mp4"
        time.sleep(0.5)
        assert not second.exists()
        osc.send_message("/paik/record/toggle", [])  # and start another
        wait_for_frames(second, 5, proc)
        proc.send_signal(signal.SIGTERM)  # a clean stop finishes the second take
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert f"wrote {out} (" in stdout and f"wrote {second} (" in stdout, (stdout, stderr)
    for path in (out, second):
        rate, frames = decode(path)
        assert rate == 20 and len(frames) >= 5


def wait_for_frames(path, n, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        if path.exists() and len(decode(path)[1]) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"{path} did not reach {n} frames")


def test_a_recording_killed_with_sigkill_decodes_up_to_the_kill(bundle, picture, tmp_path):
    out = tmp_path / "crash.mp4"
    proc = play(bundle, "--record", str(out), "--out-fps", "20", "--seconds", "60")
    try:
        wait_for_frames(out, 20, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    rate, frames = decode(out)
    assert rate == 20 and len(frames) >= 20, "frames written before the kill are in the file"
    assert [t * 20 for t, _ in frames] == list(range(len(frames))), "and they are every slot, in order"
    for _, img in frames:
        assert np.abs(img.astype(int) - picture).mean() < 4


def test_bench_record_prints_a_table_and_json(bundle, tmp_path):
    import json

    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "paik", "bench", "record", "--bundle", str(bundle),
                        "--configs", "64x48@20", "--seconds", "1", "--baseline", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["resolution", "fps", "rec", "secs"] and "p99" in lines[0]
    rows = json.loads(out.read_text())["rows"]
    assert [(row["size"], row["recording"]) for row in rows] == [("64x48", False), ("64x48", True)]
    rec = rows[1]
    assert rec["expected"] == 20 and 19 <= rec["frames"] <= 21 and rec["p99_ms"] > 0
    assert rec["frames"] >= rec["expected"] - rec["late"] - rec["dropped"] - 1


def test_window_records_at_the_output_size_and_shows_rec(display, bundle, picture, tmp_path):
    from PIL import Image

    shots = {}
    out = tmp_path / "win.mp4"
    for rec in (False, True):
        shot = tmp_path / f"shot{rec}.png"
        argv = [sys.executable, "-m", "paik", "play", str(bundle), "--token", "kiss", "--size", "320x240",
                "--frames", "12", "--screenshot", str(shot), "--osc-port", "-1", "--console", "off", "--no-vsync"]
        if rec:
            argv += ["--record", str(out), "--out-size", "64x48", "--out-fps", "30"]
        r = subprocess.run(argv, env={**os.environ, "DISPLAY": display}, capture_output=True, text=True,
                           timeout=120, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        shots[rec] = np.asarray(Image.open(shot)).astype(float)
    assert f"wrote {out}" in r.stdout
    rate, frames = decode(out)
    assert rate == 30 and frames and frames[0][1].shape == (48, 64, 3)
    for _, img in frames:  # drawn at 64x48 for the recording, not scaled from the window
        assert np.abs(img.astype(int) - picture).mean() < 4
    # the REC line sits bottom-right over the window's picture (the recording has no overlays)
    assert np.abs(shots[True][-40:, -160:] - shots[False][-40:, -160:]).mean() > 5
