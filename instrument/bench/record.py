"""``paik bench record``: does recording cost the performance anything?

Headless (EGL), for each size@rate: render the view every tick at that rate, as ``paik play
--headless --record`` does, for ``seconds``, recording to a scratch file; then report the
frame time (draw + readback + hand-off, up to the GPU finishing: ``ctx.finish()`` per frame,
as a swap would wait) and what the recording lost: ``late`` slots (the loop missed a tick, the
recording repeated a frame), ``dropped`` frames (the encoder fell behind and its queue was
full), and how long the encoder needed after the last frame to finish the file (its backlog).
The goal is none late and none dropped.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONFIGS = (((1920, 1080), 60.0), ((3840, 2160), 30.0))


@dataclass
class Row:
    size: str
    fps: float
    recording: bool
    seconds: float
    expected: int  # frames the rate promises over the run
    frames: int  # frames in the file
    p50_ms: float
    p99_ms: float
    max_ms: float
    late: int
    dropped: int
    finish_s: float  # encoder backlog when the loop stopped
    file_mb: float


HEADER = (f"{'resolution':>10} {'fps':>4} {'rec':>4} {'secs':>5} {'frames':>7} {'expected':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'max ms':>7} {'budget':>7} {'late':>5} {'dropped':>7} {'finish s':>8} {'MB':>7}")


def fmt(r: Row) -> str:
    return (f"{r.size:>10} {r.fps:4g} {'on' if r.recording else 'off':>4} {r.seconds:5g} {r.frames:7d} {r.expected:8d} {r.p50_ms:7.2f} {r.p99_ms:7.2f} "
            f"{r.max_ms:7.2f} {1e3 / r.fps:7.2f} {r.late:5d} {r.dropped:7d} {r.finish_s:8.2f} {r.file_mb:7.1f}")


def measure(src, p, ctx, size, fps: float, seconds: float, path: Path, codec: str = "h264",
            record: bool = True) -> Row:
    """One run; ``record=False`` is the baseline: the same loop with nothing recorded."""
    from paik.instrument.render.headless import Offscreen
    from paik.instrument.outputs.live import Outputs, RecordSettings
    from paik.instrument.outputs.record import Cadence
    from paik.instrument.render.renderer import Renderer

    renderer = Renderer(ctx, src)
    off = Offscreen(ctx, size)
    outs = Outputs(ctx, renderer, [], RecordSettings(path, size, fps, codec))
    p.record = record
    w, h = size
    period = 1.0 / fps
    work = []
    for i in range(3):  # warm-up: selection upload, shader compile
        off.use()
        renderer.draw(p, i / 10, (0, 0, w, h), gap=2.0)
    ctx.finish()
    cadence = Cadence(fps)
    start = time.perf_counter()
    i = 0
    try:
        while True:
            now = time.perf_counter() - start
            if now >= seconds:
                break
            t0 = time.perf_counter()
            cadence.tick(now)
            t = (now / 4.0) % 1.0  # the playhead moves: the sweep and video change every frame
            off.use()
            renderer.draw(p, t, (0, 0, w, h), gap=2.0)
            outs.frame(p, t, now, drawn=(off.fbo, size))
            ctx.finish()
            done = time.perf_counter()
            work.append((done - t0) * 1e3)
            i += 1
            wait = start + i * period - done
            if wait > 0:
                time.sleep(wait)
    finally:
        t_close = time.perf_counter()
        takes = outs.close()
        finish_s = time.perf_counter() - t_close
        off.release()
    take = takes[0] if takes else {"frames": 0, "late": 0, "dropped": 0}
    if not record:  # the loop's own misses, counted as a recording would count them
        take["late"] = cadence.late
    a = np.array(work) if work else np.zeros(1)
    return Row(f"{w}x{h}", fps, record, seconds, int(round(seconds * fps)), take["frames"], float(np.percentile(a, 50)),
               float(np.percentile(a, 99)), float(a.max()), take["late"], take["dropped"], finish_s,
               path.stat().st_size / 2**20 if path.exists() else 0.0)


def run(bundle=None, configs=CONFIGS, seconds: float = 60.0, codec: str = "h264", view: str = "single",
        device: str = "auto", keep: Path | None = None, baseline: bool = False, log=print) -> list[Row]:
    from paik.instrument.render import colormaps
    from paik.instrument.bench.render import SyntheticBundle
    from paik.instrument.render.headless import egl_context
    from paik.instrument.control.params import Params
    from paik.instrument.render.source import Source

    bundle = bundle if bundle is not None else SyntheticBundle()
    src = Source(bundle, device)
    ctx = egl_context()
    log(f"GL: {ctx.info['GL_RENDERER']} | {ctx.info['GL_VERSION']}")
    d = src.dims
    rows = []
    with tempfile.TemporaryDirectory(prefix="paik-bench-record-") as tmp:
        out_dir = Path(keep) if keep else Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for size, fps in configs:
            p = Params().bind(len(src.words), d.n_steps, d.n_blocks, d.n_heads, colormaps.available())
            p.view, p.step, p.block = view, d.n_steps / 2 - 0.5, d.n_blocks / 2 - 0.5
            p.composite, p.background = "overlay", "preview"
            ext = ".mp4" if codec == "h264" else ".mov"
            path = out_dir / f"bench_{size[0]}x{size[1]}_{fps:g}{ext}"
            for record in ((False, True) if baseline else (True,)):
                rows.append(measure(src, p, ctx, size, fps, seconds, path, codec, record))
                log(fmt(rows[-1]))
    return rows


def write_json(rows: list[Row], path: Path, info: dict) -> None:
    path.write_text(json.dumps({**info, "rows": [r.__dict__ for r in rows]}, indent=1) + "\n")
