"""The live window opens and renders under a virtual X display (Xvfb)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from instrument_fixtures import make_bundle


@pytest.fixture(scope="module")
def display():
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    for n in range(90, 110):
        if not os.path.exists(f"/tmp/.X11-unix/X{n}") and not os.path.exists(f"/tmp/.X{n}-lock"):
            break
    proc = subprocess.Popen([xvfb, f":{n}", "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while not os.path.exists(f"/tmp/.X11-unix/X{n}"):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.skip("Xvfb did not start")
        time.sleep(0.05)
    yield f":{n}"
    proc.terminate()
    proc.wait(timeout=10)


def test_window_opens_renders_and_shows_keys(display, tmp_path):
    from PIL import Image

    b = tmp_path / "b"
    make_bundle(b, steps=2, blocks=2, heads=1)
    shots = {}
    for keys_shown in (False, True):
        shot = tmp_path / f"shot{keys_shown}.png"
        argv = [sys.executable, "-m", "paik", "play", str(b), "--token", "kiss", "--size", "320x240",
                "--frames", "3", "--screenshot", str(shot), "--colormap", "grayscale"]
        if keys_shown:
            argv.append("--show-keys")
        env = {**os.environ, "DISPLAY": display}
        r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert r.returncode == 0, r.stderr
        shots[keys_shown] = np.asarray(Image.open(shot)).astype(float)
    plain = shots[False]
    assert plain.shape == (240, 320, 3)
    assert plain.std() > 10, "the map should be visible"
    # the help overlay darkens and writes over the top-left of the picture
    assert np.abs(shots[True][:120, :160] - plain[:120, :160]).mean() > 5


def test_play_without_display_is_a_clear_error(tmp_path):
    b = tmp_path / "b"
    make_bundle(b, steps=1, blocks=1, heads=1, video=False)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    r = subprocess.run([sys.executable, "-m", "paik", "play", str(b), "--frames", "1"], env=env,
                       capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 2 and "paik: error:" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_window_plays_for_seconds_with_the_defaults_pillarboxed(display, tmp_path):
    from PIL import Image

    b = tmp_path / "b"
    make_bundle(b, steps=2, blocks=2, heads=1)  # 128x96: 4:3
    shot = tmp_path / "shot.png"
    argv = [sys.executable, "-m", "paik", "play", str(b), "--size", "480x240", "--seconds", "1.5",
            "--screenshot", str(shot), "--osc-port", "-1"]
    t0 = time.monotonic()
    r = subprocess.run(argv, env={**os.environ, "DISPLAY": display}, capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 100
    img = np.asarray(Image.open(shot)).astype(float)
    assert img.shape == (240, 480, 3)
    # 4:3 in 480x240: a 320x240 picture between two 80-pixel bars, not stretched
    # (the status line at the bottom left is written over the picture and the bar for a while)
    assert img[:150, :78].max() == 0 and img[:150, 402:].max() == 0
    assert img[:, 82:398].mean() > 20 and img[:, 82:398].std() > 5
