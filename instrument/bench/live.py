"""``paik bench live``: the live engine measured in one process, as ``paik live`` runs it.

(a) from the ``/paik/generate`` UDP packet to the first finished frame that shows the take's first
    map; (b) while that take generates, the render loop paced at --rate: late frames (finished
    more than one period after their tick) and the p99 frame interval; (c) the take's time inside
    the engine (capture, previews, bundle writing and video export included) against the plain
    ``WanPipeline`` call at the same settings, no capture; (d) the finished take played while
    every parameter moves at --rate over OSC (token through every word, view through every view,
    step and block faders sweeping the whole range): worst frame interval, p99 OSC-to-frame.

Runs on a CPU at a tiny size too (``--model tiny``); the numbers that matter come from a GPU.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float("nan")


def main(args) -> int:
    import torch
    from pythonosc.osc_message_builder import OscMessageBuilder

    from paik.capture.engine import Engine, TakeRequest
    from paik.capture.generate import GenerateOptions
    from paik.capture.models import load_pipeline
    from paik.capture.tokens import split_token_list
    from paik.instrument.control.osc import OscServer
    from paik.instrument.control.params import VIEWS, Params
    from paik.instrument.control.takes import EngineLive
    from paik.instrument.render import colormaps
    from paik.instrument.render.headless import Offscreen, egl_context
    from paik.instrument.render.renderer import Renderer
    from paik.instrument.render.resident import ResidentSource, blank_take

    parts = set(args.parts.split(","))
    period = 1.0 / args.rate
    loaded = load_pipeline(args.model, args.dtype)
    pipe, info, device = loaded
    tokens = split_token_list(args.tokens) if args.tokens else []
    opts = GenerateOptions(prompt=args.prompt, out="", model=args.model, steps=args.steps, frames=args.frames,
                           height=args.height, width=args.width, guidance=args.guidance, tokens=tokens, quiet=True)
    takes = tempfile.mkdtemp(prefix="paik-bench-live-")
    engine = Engine(loaded, opts, takes)
    src = ResidentSource(blank_take())
    p = Params().bind(1, 1, 1, 1, colormaps.available())
    p.smooth, p.prompt, p.guidance, p.steps = 0.0, args.prompt, args.guidance, args.steps or 0
    p.frames = args.frames or 0
    p.size = f"{args.width}x{args.height}" if args.width else ""
    p.tokens = args.tokens or ""
    live = EngineLive(src, p, engine, TakeRequest)
    osc = OscServer(live, "127.0.0.1", 0).start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dest = ("127.0.0.1", osc.port)

    def send(address, *values):
        b = OscMessageBuilder(address)
        for v in values:
            b.add_arg(v)
        client.sendto(b.build().dgram, dest)

    ctx = egl_context()
    gl = f"{ctx.info['GL_RENDERER']}"
    off = Offscreen(ctx, tuple(args.size))
    renderer = Renderer(ctx, live.src, asynchronous=True)
    results: dict = {"model": info.id, "device": str(device), "gl": gl, "size": list(args.size), "rate": args.rate,
                     "gpu": torch.cuda.get_device_name() if str(device).startswith("cuda") else None}

    def frame(now):
        nonlocal renderer
        q = live.update(now)
        if renderer.src is not live.src:
            if renderer.selector is not None:
                renderer.selector.close()
            renderer = Renderer(ctx, live.src, asynchronous=True)
        off.use()
        renderer.draw(q, q.time, (0, 0, *args.size), gap=2.0)
        ctx.finish()
        return q

    def run_loop(until, on_frame=None, limit=600.0):
        """Frames paced at --rate until ``until()``; returns (intervals, late)."""
        t_start = time.perf_counter()
        next_tick = t_start
        last, intervals, late = None, [], 0
        while not until() and time.perf_counter() - t_start < limit:
            now = time.perf_counter()
            if now < next_tick:
                time.sleep(next_tick - now)
            tick = next_tick
            q = frame(time.perf_counter())
            done = time.perf_counter()
            if done - tick > period:
                late += 1
            next_tick = max(tick + period, done - period)  # a late frame does not queue a burst
            if last is not None:
                intervals.append(done - last)
            last = done
            if on_frame is not None:
                on_frame(done, q)
        return intervals, late

    try:
        frame(time.perf_counter())  # the blank take: GL and programs warm
        if parts & {"a", "b", "c"}:
            t_send = time.perf_counter()
            send("/paik/generate")
            first = {}

            def on_frame(done, q):
                if "t" not in first and isinstance(live.src, ResidentSource) and live.src.bundle.path.name.startswith(
                        "take_") and renderer.selector.settled and renderer.src is live.src:
                    first["t"] = done - t_send

            failed = lambda: any("generate" in m for _, m in live.errors)  # noqa: E731
            intervals, late = run_loop(lambda: live.takes_done >= 1 or failed(), on_frame)
            results["a_generate_to_first_map_s"] = first.get("t")
            results["b_frames"] = len(intervals) + 1
            results["b_late_fraction"] = late / max(len(intervals) + 1, 1)
            results["b_p99_interval_ms"] = _pct(intervals, 99) * 1e3
            results["b_max_interval_ms"] = max(intervals, default=float("nan")) * 1e3
            take_s = None
            for e in live.errors:
                results.setdefault("errors", []).append(e[1])
            path = live.src.bundle.path if isinstance(live.src, ResidentSource) else None
            if path is not None and (path / "manifest.json").is_file():
                m = json.loads((path / "manifest.json").read_text())
                take_s = m.get("timings", {}).get("total_s")
            results["c_take_in_live_s"] = take_s
        if "c" in parts:
            s = json.loads((live.src.bundle.path / "manifest.json").read_text())["settings"]
            t0 = time.perf_counter()
            with torch.inference_mode():
                pipe(prompt=args.prompt, height=s["height"], width=s["width"], num_frames=s["frames"],
                     num_inference_steps=s["steps"], guidance_scale=s["guidance"],
                     generator=torch.Generator("cpu").manual_seed(0), output_type="np")
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            results["c_plain_pipeline_s"] = round(time.perf_counter() - t0, 3)
            if results.get("c_take_in_live_s"):
                results["c_ratio"] = results["c_take_in_live_s"] / results["c_plain_pipeline_s"]
        if "d" in parts and isinstance(live.src, ResidentSource) and live.src.dims.n_steps > 1:
            d = live.src.dims
            n_words = len(live.src.words)
            sent: dict[int, float] = {}
            lat, k = [], [0]
            t_end = time.perf_counter() + args.seconds
            send("/paik/follow", 0)

            def move(done, q):
                # the gain encodes which message a frame shows: the latency of the newest one drawn
                shown = int(round(q.gain * 100))
                if shown in sent:
                    lat.append(done - sent.pop(shown))
                    for old in [j for j in sent if j < shown]:
                        sent.pop(old)
                i = k[0] = k[0] + 1
                x = (i % 120) / 119.0
                send("/paik/token", i % n_words)
                send("/paik/view", VIEWS[(i // 30) % len(VIEWS)])
                send("/paik/step/norm", x)
                send("/paik/block/norm", 1.0 - x)
                sent[i % 1000 + 1] = time.perf_counter()
                send("/paik/gain", (i % 1000 + 1) / 100.0)

            intervals, late = run_loop(lambda: time.perf_counter() > t_end, move)
            results["d_frames"] = len(intervals) + 1
            results["d_worst_interval_ms"] = max(intervals, default=float("nan")) * 1e3
            results["d_p99_interval_ms"] = _pct(intervals, 99) * 1e3
            results["d_late_over_two_periods"] = int(sum(x > 2 * period for x in intervals))
            results["d_p99_osc_to_frame_ms"] = _pct(lat, 99) * 1e3
            results["d_steps_blocks"] = [d.n_steps, d.n_blocks]
    finally:
        engine.close()
        osc.stop()
        client.close()
        off.release()
        import shutil

        shutil.rmtree(takes, ignore_errors=True)
    rows = [
        ("a  /paik/generate -> first map on screen", results.get("a_generate_to_first_map_s"), "s"),
        ("b  late frames while generating", results.get("b_late_fraction"), "fraction"),
        ("b  p99 frame interval while generating", results.get("b_p99_interval_ms"), "ms"),
        ("c  take inside paik live", results.get("c_take_in_live_s"), "s"),
        ("c  plain WanPipeline call", results.get("c_plain_pipeline_s"), "s"),
        ("c  ratio", results.get("c_ratio"), "x"),
        ("d  worst frame interval, all parameters moving", results.get("d_worst_interval_ms"), "ms"),
        ("d  p99 OSC -> frame", results.get("d_p99_osc_to_frame_ms"), "ms"),
    ]
    print(f"paik bench live: {results['model']} on {results['device']}, GL {gl}, "
          f"{args.size[0]}x{args.size[1]} @ {args.rate:g} Hz")
    for name, v, unit in rows:
        print(f"{name:<50} {'n/a' if v is None else f'{v:.4g}':>10} {unit}")
    if results.get("errors"):
        print("errors: " + " | ".join(results["errors"]), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    return 0
