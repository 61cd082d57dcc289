"""``paik bench latency``: from an OSC packet leaving a client to the first rendered frame that
shows the new state.

A client thread sends ``/paik/step`` over real UDP on loopback at ``rate`` Hz, alternating
between two captured steps (each change is a new selection: reduce + upload, as a performer's
fader would cause), and notes when each packet left. The instrument runs as ``paik play
--headless`` does (the OSC thread parses and enqueues; the loop renders at ``fps`` and at once
when a command arrives) with smoothing off. After every frame, finished on the GPU (glFinish),
the loop notes which step it drew. A message's latency is the time from its send to the end of
the first frame drawn with its value (consecutive messages differ, so that frame is its own).
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
from pythonosc.osc_message_builder import OscMessageBuilder


def run(bundle=None, size=(1280, 720), messages: int = 1000, rate: float = 60.0, fps: float = 60.0,
        view: str = "single", device: str = "auto", log=print) -> dict:
    from paik.instrument.render import colormaps
    from paik.instrument.bench.render import SyntheticBundle
    from paik.instrument.render.headless import play_headless
    from paik.instrument.control.live import Live
    from paik.instrument.control.osc import OscServer
    from paik.instrument.control.params import Params
    from paik.instrument.control.scenes import SceneStore
    from paik.instrument.render.source import Source

    bundle = bundle if bundle is not None else SyntheticBundle()
    src = Source(bundle, device)
    d = src.dims
    p = Params().bind(len(src.words), d.n_steps, d.n_blocks, d.n_heads, colormaps.available())
    p.view, p.smooth, p.playing = view, 0.0, False
    live = Live(src, p, SceneStore(None, shipped=None))
    server = OscServer(live, "127.0.0.1", 0).start()
    values = (0.0, float(min(1, d.n_steps - 1)))
    if values[0] == values[1]:
        values = (0.0, 0.5)
    sent: list[tuple[float, float]] = []
    frames: list[tuple[float, float]] = []
    stop = threading.Event()
    warm = threading.Event()

    def client():
        warm.wait(30)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            dgrams = []
            for v in values:
                b = OscMessageBuilder("/paik/step")
                b.add_arg(v, "f")
                dgrams.append(b.build().dgram)
            period = 1.0 / rate
            t0 = time.perf_counter() + 0.2
            for k in range(messages):
                target = t0 + k * period
                while (now := time.perf_counter()) < target:
                    time.sleep(min(0.002, target - now))
                v = k % 2 == 0  # the first message moves away from the starting step
                sent.append((time.perf_counter(), values[1] if v else values[0]))
                s.sendto(dgrams[1 if v else 0], ("127.0.0.1", server.port))
            time.sleep(1.0)
        stop.set()

    def on_frame(done, params):
        frames.append((done, params.step))
        if len(frames) == 10:
            warm.set()  # shaders compiled, first uploads done

    th = threading.Thread(target=client, daemon=True)
    th.start()
    try:
        play_headless(live, size=size, fps=fps, stop=stop, on_frame=on_frame)
    finally:
        server.stop()
    th.join(timeout=5)
    done = np.array([f[0] for f in frames])
    drawn = np.array([f[1] for f in frames])
    lat = []
    missed = 0
    for t, v in sent:
        idx = np.nonzero((done > t) & (drawn == v))[0]
        if len(idx) == 0:
            missed += 1
            continue
        lat.append((done[idx[0]] - t) * 1e3)
    a = np.array(lat) if lat else np.array([np.nan])
    return {"size": f"{size[0]}x{size[1]}", "messages": messages, "rate_hz": rate, "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(np.max(a)), "missed": missed,
            "frames": len(frames), "renderer": None}
