"""``paik bench live``: the live engine measured in one process, as ``paik live`` runs it.

(a) from the ``/paik/generate`` UDP packet to the first finished frame that shows the take's first
    map; (b) while that take generates, the render loop paced at --rate: late frames (finished
    more than one period after their tick) and the p99 frame interval; (c) the take's time inside
    the engine (capture, previews, bundle writing and video export included) against the plain
    ``WanPipeline`` call at the same settings, no capture; (d) the finished take played while
    every parameter moves at --rate over OSC (token through every word, view through every view,
    step and block faders sweeping the whole range): worst frame interval, p99 OSC-to-frame. The
    capture is ``--bundle`` (brought onto the device when it fits) or, without one, a synthetic
    capture of the paper's layout (25 steps x 30 blocks x 12 heads x 32 tokens at 16x30x52, 13.4
    GiB) made in device memory; (e) offline ``paik generate`` (capture, previews, the bundle written
    with --step-buffers, the MP4; model loading excluded) against the plain ``WanPipeline`` call plus
    an MP4 export, and the GPU peak memory of each.

Runs on a CPU at a tiny size too (``--model tiny``); the numbers that matter come from a GPU.
"""

from __future__ import annotations

import faulthandler
import gc
import json
import os
import re
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float("nan")


def _dims(text: str, n: int, flag: str) -> tuple[int, ...]:
    from paik.errors import PaikError

    try:
        out = tuple(int(x) for x in text.lower().split("x"))
    except ValueError:
        out = ()
    if len(out) != n or min(out) < 1:
        raise PaikError(f"{flag} {text!r}: expected {n} positive numbers joined by x")
    return out


def synthetic_take(steps: int, blocks: int, heads: int, tokens: int, latent, device: str, seed: int = 0):
    """A finished LiveTake of random maps made where they are played (no host copy of 13 GiB)."""
    import torch

    from paik.capture.layout import Layout
    from paik.instrument.render.resident import LiveTake

    layout = Layout(steps=list(range(steps)), blocks=list(range(blocks)), heads=heads, head_mean=False,
                    n_heads=heads, tokens=list(range(tokens)), latent=tuple(latent), n_real=tokens, seq_len=512)
    f, h, w = latent
    table = [dict(index=i, id=i, piece=f"▁w{i}", word=f"w{i}", word_index=i, special=False) for i in range(tokens)]
    manifest = {"layout": layout.to_json(), "tokens": table, "prompt": " ".join(t["word"] for t in table),
                "settings": {"frames": (f - 1) * 4 + 1, "width": w * 16, "height": h * 16, "fps": 16,
                             "steps": steps}}
    g = torch.Generator(device).manual_seed(seed)
    maps = torch.empty((steps, blocks, heads, tokens, f, h, w), dtype=torch.float16, device=device)
    for s in range(steps):  # a step at a time: no float32 temporary of the whole capture
        maps[s] = torch.rand(maps.shape[1:], generator=g, device=device).to(torch.float16) / tokens
    take = LiveTake("<synthetic capture>", manifest, maps)
    for s in range(steps):
        take.add_step(s)
    take.finish(None)
    return take


class Collections:
    """Every garbage collection while started (any thread): its generation and duration."""

    def __init__(self):
        self.log: list[tuple[int, float]] = []  # (generation, ms)
        self._seen = 0  # collections already counted into a frame
        self._t = None

    def _on_gc(self, phase, info):
        if phase == "start":
            self._t = time.perf_counter()
        elif self._t is not None:
            self.log.append((info["generation"], (time.perf_counter() - self._t) * 1e3))
            self._t = None

    def start(self):
        gc.callbacks.append(self._on_gc)

    def stop(self):
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def clear(self):
        self.log.clear()
        self._seen = 0

    def since_last(self) -> dict:
        """The collections since the last call (a frame's, or its wait's), for that frame's phases."""
        new, self._seen = self.log[self._seen:], len(self.log)
        return {"gc_ms": sum(ms for _, ms in new), "gc_generation": max(g for g, _ in new)} if new else {}

    def summary(self) -> dict:
        """Collections per generation and the longest, since the last clear."""
        return {"collections": [sum(1 for g, _ in self.log if g == gen) for gen in range(3)],
                "max_ms": round(max((ms for _, ms in self.log), default=0.0), 3),
                "full_max_ms": round(max((ms for g, ms in self.log if g == 2), default=0.0), 3)}


class Probe:
    """--probe: a thread sleeping 1 ms at a time; how late it wakes says whether another thread held
    the interpreter lock. With ``dumps`` (--probe-dumps) it arms faulthandler's watchdog before each
    sleep (a C thread, which needs no lock) to dump every thread's stack if the probe is not back
    within ``DUMP_MS``: the dump is taken while the holder still holds the lock, so it shows the
    line the holder is stuck in. That is a diagnostic with a price: the watchdog reads the other
    threads' frames without the lock, so a thread running Python code meanwhile can crash the
    process (seen twice in CPU runs on a loaded 2-core machine, never on the H200 host), and
    cancelling it waits for the watchdog thread with the lock held (0.06 ms median on an idle
    16-core host, about 2 ms on a loaded 2-core one)."""

    DUMP_MS = 8.0

    def __init__(self, dumps: bool = False):
        self.with_dumps = dumps
        self.late = 0.0  # the longest oversleep (ms) since the last since_last()
        self.stacks: dict[str, int] = {}  # "thread: innermost frames" of threads not waiting, over all dumps
        self.dumps: list[dict] = []  # the dumps since the last since_last(): {thread: frames}
        self._stop = False
        self._file = self._thread = None
        self._names: dict[int, str] = {}

    def start(self):
        if self.with_dumps:
            self._file = tempfile.TemporaryFile()
        self._thread = threading.Thread(target=self._run, name="paik-bench-probe", daemon=True)
        self._thread.start()

    def stop(self):
        """Stop the thread and its watchdog (none may fire after this, at exit least of all)."""
        self._stop = True
        if self._thread is not None:
            self._thread.join(1.0)
        if self._file is not None:
            faulthandler.cancel_dump_traceback_later()
            self._file.close()
            self._file = None

    def since_last(self) -> dict:
        out, self.late = {"probe_late_ms": self.late}, 0.0
        if self.dumps:
            out["probe_dumps"], self.dumps = self.dumps[:2], []
        return out

    def _sleep(self) -> None:
        t = time.perf_counter()
        time.sleep(0.001)
        self.late = max(self.late, (time.perf_counter() - t - 0.001) * 1e3)

    def _run(self):
        if self._file is None:
            while not self._stop:
                self._sleep()
            return
        fd, seen, n = self._file.fileno(), 0, 0
        try:
            while not self._stop:
                if n % 100 == 0:  # names of the threads alive now: one that ends before its dump is read keeps its name
                    self._names.update({th.ident: th.name for th in threading.enumerate()})
                n += 1
                faulthandler.dump_traceback_later(self.DUMP_MS / 1e3, file=fd)
                self._sleep()
                faulthandler.cancel_dump_traceback_later()
                size = os.fstat(fd).st_size
                if size > seen:
                    text, seen = os.pread(fd, size - seen, seen).decode(errors="replace"), size
                    for dump in parse_dumps(text, self._names):
                        self.dumps.append(dump)
                        for thread, frames in dump.items():
                            key = f"{thread}: {frames}"
                            self.stacks[key] = self.stacks.get(key, 0) + 1
        finally:
            faulthandler.cancel_dump_traceback_later()


_FRAME = re.compile(r'File "(?P<path>.*)", line (?P<line>\d+) in (?P<func>.*)$')
_THREAD = re.compile(r"^(?:Current thread|Thread) 0x(?P<ident>[0-9a-fA-F]+)")
# a thread whose innermost Python line calls one of these is parked in C, the lock let go
_PARKED = re.compile(r"\b(?:sleep|wait|wait_for|join|acquire|get|recv|recvfrom|recv_into|select|poll|accept|"
                     r"synchronize)\(")


def _parked(path: str, line: int) -> bool:
    import linecache

    return bool(_PARKED.search(linecache.getline(path, line)))


def parse_dumps(text: str, names: dict[int, str] | None = None) -> list[dict]:
    """faulthandler's watchdog output -> one {thread name: innermost frames} per dump that shows a
    thread at work: the probe itself and threads parked in a wait, a sleep or a receive (told by
    the source line their innermost Python frame is at) are left out; lines it cannot read are
    skipped."""
    names = {**(names or {}), **{th.ident: th.name for th in threading.enumerate()}}
    out = []
    for chunk in text.split("Timeout (")[1:]:
        dump, thread, frames, first = {}, None, [], None

        def flush():
            if thread is not None and frames and not thread.startswith("paik-bench-probe") \
                    and not (first is not None and _parked(*first)):
                dump[thread] = " < ".join(frames[:4])

        for line in chunk.splitlines():
            line = line.strip()
            m = _THREAD.match(line)
            if m:
                flush()
                ident = int(m["ident"], 16)
                thread, frames, first = names.get(ident, hex(ident)), [], None
                continue
            m = _FRAME.match(line)
            if m and thread is not None:
                if first is None:
                    first = (m["path"], int(m["line"]))
                frames.append(f"{Path(m['path']).name}:{m['line']} {m['func']}")
        flush()
        if dump:
            out.append(dump)
    return out


def _d_source(args, device: str):
    """(d)'s capture: --bundle, resident when it fits (else streamed), or the synthetic one."""
    from paik.capture.bundle import open_bundle
    from paik.instrument.render.resident import ResidentSource, fits_on, load_resident, resident_bytes
    from paik.instrument.render.source import Source

    if args.bundle:
        bundle = open_bundle(args.bundle)
        if fits_on(device, resident_bytes(bundle)):
            return ResidentSource(load_resident(bundle, device)), f"{bundle.path} (resident on {device})"
        return Source(bundle, device if device != "cpu" else "auto"), f"{bundle.path} (streamed from disk)"
    s, b, h, t = _dims(args.synthetic, 4, "--synthetic")
    latent = _dims(args.latent, 3, "--latent")
    src = ResidentSource(synthetic_take(s, b, h, t, latent, device))
    what = f"synthetic {s}x{b}x{h}x{t} at {'x'.join(map(str, latent))} on {device}"
    if not args.no_twin:  # the twin and diff views play it against an unbent twin of the same layout
        src.twin = ResidentSource(synthetic_take(s, b, h, t, latent, device, seed=1))
        src._twin_known = True
        what += ", with a synthetic unbent twin"
    return src, what


def offline(args, loaded, results: dict) -> None:
    """(e): ``paik generate`` as the CLI runs it, against the plain pipeline call and an MP4.
    Both are warmed first by a two-step run of each at the same size (the first call's kernel
    selection and allocator growth belong to neither), then timed ``--e-repeats`` times each in
    alternating order (g p, p g, ...); the ratio is of the medians, every time is kept."""
    import shutil
    import statistics

    import torch

    from paik.capture.generate import GenerateOptions, generate
    from paik.capture.tokens import split_token_list
    from paik.video import write_mp4

    pipe, info, device = loaded
    cuda = str(device).startswith("cuda")
    work = Path(tempfile.mkdtemp(prefix="paik-bench-offline-"))

    def measure(fn):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return round(time.perf_counter() - t0, 3), (torch.cuda.max_memory_allocated() if cuda else None)

    def paik_generate(out: Path, steps=None):
        generate(GenerateOptions(prompt=args.prompt, out=str(out), model=args.model, steps=steps or args.steps,
                                 frames=args.frames, height=args.height, width=args.width, guidance=args.guidance,
                                 tokens=split_token_list(args.tokens) if args.tokens else [], quiet=True,
                                 step_buffers=args.step_buffers), loaded=loaded)

    def plain(steps=None):
        plain_steps.append(steps or s["steps"])
        with torch.inference_mode():
            out = pipe(prompt=args.prompt, height=s["height"], width=s["width"], num_frames=s["frames"],
                       num_inference_steps=steps or s["steps"], guidance_scale=s["guidance"],
                       generator=torch.Generator("cpu").manual_seed(0), output_type="np")
        write_mp4(work / "plain.mp4", out.frames[0], s["fps"])

    def timed_generate(i: int):
        """One timed take in a folder of its own, removed afterwards outside the timing: deleting
        a 14 GiB bundle (what --overwrite does first) took 3-4 s on the H200 machine, and is not
        writing one. Its manifest gives the plain call every setting."""
        nonlocal s, capture
        take = work / f"take{i}"
        gen.append(measure(lambda: paik_generate(take)))
        m = json.loads((take / "manifest.json").read_text())
        s, t, lay = m["settings"], m.get("timings", {}), m["layout"]
        capture = {"captured": [len(lay["steps"]), len(lay["blocks"]), lay["heads"], len(lay["tokens"])],
                   "bundle_gib": sum(f.stat().st_size for f in take.rglob("*") if f.is_file()) / 1024**3}
        timings.append({k: v for k, v in t.items() if not isinstance(v, list)}
                       | {"write_s_total": round(sum(t.get("write_s", [])), 3),
                          "step_s_total": round(sum(t.get("step_s", [])), 3)})
        shutil.rmtree(take)

    gen, pl, timings, plain_steps, capture, s = [], [], [], [], {}, None
    try:
        measure(lambda: paik_generate(work / "warm-up", 2))  # warm-up (the plain call's sizes: its manifest's)
        s = json.loads((work / "warm-up" / "manifest.json").read_text())["settings"]
        shutil.rmtree(work / "warm-up")
        measure(lambda: plain(2))
        for i in range(args.e_repeats):  # g p, p g, ...: the first timed run is a take (the plain call's settings)
            if i % 2 == 0:
                timed_generate(i)
                pl.append(measure(plain))
            else:
                pl.append(measure(plain))
                timed_generate(i)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gen_s = statistics.median(g for g, _ in gen)
    plain_s = statistics.median(p for p, _ in pl)
    results.update(e_generate_s=gen_s, e_plain_pipeline_mp4_s=plain_s, e_ratio=gen_s / plain_s,
                   e_generate_runs_s=[g for g, _ in gen], e_plain_runs_s=[p for p, _ in pl],
                   e_generate_timings=timings, e_repeats=len(gen), e_plain_steps=plain_steps[1:],
                   e_capture=capture,
                   e_step_buffers=args.step_buffers, e_settings=[s["steps"], s["frames"], s["height"], s["width"]])
    if cuda:
        gen_peak, plain_peak = max(m for _, m in gen), max(m for _, m in pl)
        results.update(e_generate_peak_gib=gen_peak / 1024**3, e_plain_peak_gib=plain_peak / 1024**3,
                       e_extra_gib=(gen_peak - plain_peak) / 1024**3)


def main(args) -> int:
    import torch
    from pythonosc.osc_message_builder import OscMessageBuilder

    from paik.capture.engine import TakeRequest
    from paik.capture.generate import GenerateOptions
    from paik.capture.models import load_pipeline
    from paik.capture.tokens import split_token_list
    from paik.errors import PaikError
    from paik.instrument.control.osc import OscServer
    from paik.instrument.control.params import VIEWS, Command, Params
    from paik.instrument.control.live import Live
    from paik.instrument.control.takes import EngineLive
    from paik.instrument.render import colormaps
    from paik.instrument.render.headless import Offscreen, egl_context
    from paik.instrument.render.renderer import Stage
    from paik.instrument.render.resident import ResidentSource, blank_take

    if getattr(args, "reduce_stream", None):
        os.environ["PAIK_REDUCE_STREAM"] = args.reduce_stream
    parts = set(args.parts.split(","))
    unknown = parts - set("abcde")
    if unknown:
        raise PaikError(f"--parts {args.parts}: no part {', '.join(sorted(unknown))} (the parts are a, b, c, d and e)")
    for flag, v in (("--e-repeats", args.e_repeats), ("--step-buffers", args.step_buffers)):
        if v < 1:
            raise PaikError(f"{flag} {v}: needs at least 1")
    period = 1.0 / args.rate
    engine = loaded = None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if parts & {"a", "b", "c", "e"}:
        loaded = load_pipeline(args.model, args.dtype)
        pipe, info, device = loaded
    tokens = split_token_list(args.tokens) if args.tokens else []
    opts = GenerateOptions(prompt=args.prompt, out="", model=args.model, steps=args.steps, frames=args.frames,
                           height=args.height, width=args.width, guidance=args.guidance, tokens=tokens, quiet=True)
    takes = tempfile.mkdtemp(prefix="paik-bench-live-")
    if parts & {"a", "b", "c"}:
        from paik.live import DEFAULT_ENGINE, start_engine

        kind = getattr(args, "engine", DEFAULT_ENGINE)
        engine = start_engine(kind, args.model, args.dtype, None, None, opts, takes, loaded=loaded)
    src = ResidentSource(blank_take())
    p = Params().bind(1, 1, 1, 1, colormaps.available())
    p.smooth, p.prompt, p.guidance, p.steps = 0.0, args.prompt, args.guidance, args.steps or 0
    p.frames = args.frames or 0
    p.size = f"{args.width}x{args.height}" if args.width else ""
    p.tokens = args.tokens or ""
    from paik.instrument.control import live as live_module

    live_module.FREEZE_HEAP = getattr(args, "heap", "frozen") == "frozen"
    live = EngineLive(src, p, engine, TakeRequest) if engine is not None else Live(src, p)
    osc = OscServer(live, "127.0.0.1", 0).start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dest = ("127.0.0.1", osc.port)

    def send(address, *values):
        b = OscMessageBuilder(address)
        for v in values:
            b.add_arg(v)
        client.sendto(b.build().dgram, dest)

    ctx = egl_context(getattr(args, "gl_priority", None))
    gl = f"{ctx.info['GL_RENDERER']}"
    off = Offscreen(ctx, tuple(args.size))
    stage = Stage(ctx, live.src, asynchronous=True)  # as paik live's loops: a new source never waits
    results: dict = {"model": info.id if loaded else None, "device": str(device), "gl": gl, "size": list(args.size), "rate": args.rate,
                     "gpu": torch.cuda.get_device_name() if str(device).startswith("cuda") else None,
                     "reduce_stream": os.environ.get("PAIK_REDUCE_STREAM", "high"),
                     "switch_interval_s": sys.getswitchinterval(),
                     "engine": getattr(args, "engine", None) if engine is not None else None,
                     "gl_priority_asked": getattr(args, "gl_priority", None),
                     "gl_priority": (ctx.extra or {}).get("priority"),
                     "heap": getattr(args, "heap", "frozen"), "gc_frozen_objects": gc.get_freeze_count(),
                     "gc_collect_before_freeze_ms": live_module.HEAP.get("collect_ms")}
    t_gc = time.perf_counter()
    gc.collect()  # what a full collection costs from here on (frozen: only what was made since the freeze)
    results["gc_full_collection_ms"] = round((time.perf_counter() - t_gc) * 1e3, 3)
    phases: list = []  # per frame of the running loop: what it spent where (the worst frames are reported)
    collections = Collections()
    probing = getattr(args, "probe", False) or getattr(args, "probe_dumps", False)
    probe = Probe(dumps=getattr(args, "probe_dumps", False))

    def frame(now, tick=None):
        t0 = time.perf_counter()
        q = live.update(now)
        t1 = time.perf_counter()
        off.use()
        renderer, shown = stage.frame(live.src, q)  # noqa: F841 - renderer read below
        ts = time.perf_counter()
        try:
            renderer.draw(shown, shown.time, (0, 0, *args.size), gap=2.0)
        except PaikError as e:  # as the loops do: said, and the show goes on
            live.error(str(e), kind="render")
        t2 = time.perf_counter()
        ctx.finish()
        t3 = time.perf_counter()
        prof = {**renderer.profile, **collections.since_last(), **(probe.since_last() if probing else {})}
        phases.append((t0, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, shown.view,
                       stage.next is not None, renderer.selector.late if renderer.selector else 0,
                       {"start_late_ms": 0.0 if tick is None else (t0 - tick) * 1e3, "stage_ms": (ts - t1) * 1e3,
                        **{k: round(v, 3) if isinstance(v, float) else v for k, v in prof.items()},
                        "steps": getattr(live.src.dims, "n_steps", None)}))
        return q

    def worst(intervals, n=6):
        """The n longest frame intervals with what the frame that ended each spent where (interval i
        ends with the loop's frame i + 1)."""
        out = []
        for i in sorted(range(len(intervals)), key=lambda i: -intervals[i])[:n]:
            ph = phases[i + 1]
            out.append({"interval_ms": round(intervals[i] * 1e3, 2), "update_ms": round(ph[1], 2),
                        "draw_ms": round(ph[2], 2), "finish_ms": round(ph[3], 2), "view": ph[4],
                        "swap_pending": ph[5], **ph[7]})
        return out

    def every(intervals):
        """Every frame of a run: its interval (from the frame before) and its phases."""
        return [{"interval_ms": round(intervals[i - 1] * 1e3, 3) if i else None, "update_ms": round(ph[1], 3),
                 "draw_ms": round(ph[2], 3), "finish_ms": round(ph[3], 3), **ph[7]} for i, ph in enumerate(phases)]

    def settle(limit=120.0):
        """Frames until the source Live shows is the one on screen (a Stage swaps once it is ready)."""
        t_end = time.perf_counter() + limit
        while time.perf_counter() < t_end:
            frame(time.perf_counter())
            if stage.renderer.src is live.src and stage.settled:
                return
            time.sleep(0.005)

    def run_loop(until, on_frame=None, limit=600.0):
        """Frames paced at --rate until ``until()``; returns (intervals, late)."""
        t_start = time.perf_counter()
        next_tick = t_start
        last, intervals, late = None, [], 0
        phases.clear()
        collections.clear()
        while not until() and time.perf_counter() - t_start < limit:
            now = time.perf_counter()
            if now < next_tick:
                time.sleep(next_tick - now)
            tick = next_tick
            q = frame(time.perf_counter(), tick)
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
        collections.start()
        if probing:
            probe.start()
        frame(time.perf_counter())  # the blank take: GL and programs warm
        if parts & {"a", "b", "c"} and not args.cold:
            # paik live starts a first take when it opens, so a performer's /paik/generate finds the
            # pipeline warm (kernels chosen, allocator grown): a one-step take here does the same
            from paik.capture.engine import TakeDone, TakeFailed

            engine.submit(TakeRequest(steps=1))
            t_warm, warm = time.perf_counter(), []
            while not warm and time.perf_counter() - t_warm < 600:
                warm = [e for e in engine.poll() if isinstance(e, (TakeDone, TakeFailed))]
                time.sleep(0.05)
            results["warm_up_take_s"] = round(time.perf_counter() - t_warm, 3)
        if parts & {"a", "b", "c"}:
            t_send = time.perf_counter()
            send("/paik/generate")
            first = {}

            def on_frame(done, q):
                if "t" not in first and isinstance(live.src, ResidentSource) and live.src.bundle.path.name.startswith(
                        "take_") and stage.settled and stage.renderer.src is live.src:
                    first["t"] = done - t_send

            failed = lambda: any("generate" in m for _, m in live.errors)  # noqa: E731
            intervals, late = run_loop(lambda: live.takes_done >= 1 or failed(), on_frame)
            results["a_generate_to_first_map_s"] = first.get("t")
            results["b_frames"] = len(intervals) + 1
            results["b_late_fraction"] = late / max(len(intervals) + 1, 1)
            results["b_p99_interval_ms"] = _pct(intervals, 99) * 1e3
            results["b_max_interval_ms"] = max(intervals, default=float("nan")) * 1e3
            results["b_worst_frames"] = worst(intervals)
            results["b_gc"] = collections.summary()
            if args.frames_json:
                Path(args.frames_json).write_text(json.dumps(every(intervals)))
            take_s = None
            for e in live.errors:
                results.setdefault("errors", []).append(e[1])
            path = live.src.bundle.path if isinstance(live.src, ResidentSource) else None
            # the bundle is written behind the take: its manifest has the take's timings once complete
            t_wait = time.perf_counter()
            while path is not None and time.perf_counter() - t_wait < 300:
                try:
                    m = json.loads((path / "manifest.json").read_text())
                except (OSError, ValueError):
                    m = {}
                if m.get("status") == "complete" and "total_s" in m.get("timings", {}):
                    take_s = m["timings"]["total_s"]
                    results["c_bundle_complete_s"] = m["timings"].get("bundle_complete_s")
                    break
                time.sleep(0.1)
            results["c_take_in_live_s"] = take_s
        if "c" in parts:
            s = json.loads((live.src.bundle.path / "manifest.json").read_text())["settings"]
            if results.get("engine") == "process":  # the takes warmed the child's pipeline, not this one
                with torch.inference_mode():
                    pipe(prompt=args.prompt, height=s["height"], width=s["width"], num_frames=s["frames"],
                         num_inference_steps=1, guidance_scale=s["guidance"], output_type="np")
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
            # the same take with the engine polled at --rate but nothing drawn: what the render
            # loop costs the generation, apart from the engine's own work
            done = live.takes_done
            live.put(Command("generate", "start", {}, "bench"))
            t_end = time.perf_counter() + 600
            while live.takes_done == done and not failed() and time.perf_counter() < t_end:
                live.update(time.perf_counter())
                time.sleep(period)
            path = live._pending_src.bundle.path if live._pending_src is not None else live.src.bundle.path
            t_wait = time.perf_counter() + 300
            while time.perf_counter() < t_wait:
                try:
                    m = json.loads((path / "manifest.json").read_text())
                except (OSError, ValueError):
                    m = {}
                if m.get("status") == "complete" and "total_s" in m.get("timings", {}):
                    results["c_take_no_render_s"] = m["timings"]["total_s"]
                    results["c_no_render_ratio"] = m["timings"]["total_s"] / results["c_plain_pipeline_s"]
                    break
                time.sleep(0.1)
        if "d" in parts:
            live._pending_src, results["d_capture"] = _d_source(args, str(device))
            settle()  # swapped in; its first selection computed
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
            results["d_worst_frames"] = worst(intervals)
            results["d_gc"] = collections.summary()
            results["d_render_errors"] = sorted({m for _, m in live.errors if "render" in m or "view" in m})[:5]
            live._pending_src = ResidentSource(blank_take())  # (e) needs the device memory back
            settle()
            if str(device).startswith("cuda"):
                torch.cuda.empty_cache()
        if "e" in parts:
            offline(args, loaded, results)
    finally:
        collections.stop()
        probe.stop()
        if probe.stacks:  # what the threads not waiting were doing while the probe was kept out
            results["probe_stacks"] = dict(sorted(probe.stacks.items(), key=lambda kv: -kv[1])[:24])
        if engine is not None:
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
        ("c  the same take, nothing drawn (diagnostic)", results.get("c_take_no_render_s"), "s"),
        ("d  worst frame interval, all parameters moving", results.get("d_worst_interval_ms"), "ms"),
        ("d  p99 OSC -> frame", results.get("d_p99_osc_to_frame_ms"), "ms"),
        ("e  offline paik generate", results.get("e_generate_s"), "s"),
        ("e  plain WanPipeline call + MP4", results.get("e_plain_pipeline_mp4_s"), "s"),
        ("e  ratio", results.get("e_ratio"), "x"),
        ("e  GPU peak, paik generate", results.get("e_generate_peak_gib"), "GiB"),
        ("e  GPU peak, plain call", results.get("e_plain_peak_gib"), "GiB"),
        ("e  extra GPU memory", results.get("e_extra_gib"), "GiB"),
    ]
    print(f"paik bench live: {results['model']} on {results['device']}, GL {gl}, "
          f"{args.size[0]}x{args.size[1]} @ {args.rate:g} Hz" + (f"; (d) {results['d_capture']}"
                                                                 if results.get("d_capture") else ""))
    for name, v, unit in rows:
        print(f"{name:<50} {'n/a' if v is None else f'{v:.4g}':>10} {unit}")
    if results.get("gc_full_collection_ms") is not None:
        before = results.get("gc_collect_before_freeze_ms")
        print(f"   a full garbage collection: {results['gc_full_collection_ms']:.1f} ms with the heap {results['heap']}"
              + (f" ({results['gc_frozen_objects']} objects frozen; {before:.1f} ms before the freeze)"
                 if before is not None else ""))
    for part in ("b", "d"):
        for w in results.get(f"{part}_worst_frames", [])[:3]:
            print(f"{part}  a worst frame: {w['interval_ms']:.1f} ms interval; update {w['update_ms']:.1f}, draw "
                  f"{w['draw_ms']:.1f} (selection wait {w.get('ready_ms', 0):.1f}, uploads {w.get('upload_ms', 0):.1f}), "
                  f"finish {w['finish_ms']:.1f} ms; view {w['view']}{'; a swap pending' if w['swap_pending'] else ''}"
                  + (f"; garbage collection {w['gc_ms']:.1f} ms (generation {w['gc_generation']})" if "gc_ms" in w else "")
                  + (f"; probe woke {w['probe_late_ms']:.1f} ms late" if "probe_late_ms" in w else ""))
            for dump in w.get("probe_dumps", []):  # the threads not waiting while the probe was kept out
                for thread, frames in dump.items():
                    print(f"     running then: {thread}: {frames}")
        if f"{part}_gc" in results:
            g = results[f"{part}_gc"]
            print(f"{part}  garbage collections (generations 0, 1, 2): {g['collections']}; longest {g['max_ms']:.1f} ms, "
                  f"longest full {g['full_max_ms']:.1f} ms")
    if results.get("e_generate_runs_s"):
        print(f"e  every run (alternating, after a warm-up of both): paik generate {results['e_generate_runs_s']} s, "
              f"plain + MP4 {results['e_plain_runs_s']} s; captured (steps, blocks, heads, tokens) "
              f"{results['e_capture']['captured']}, a bundle of {results['e_capture']['bundle_gib']:.2f} GiB")
    for key, n in list(results.get("probe_stacks", {}).items())[:6]:
        print(f"   probe kept out {n}x while running: {key}")
    if results.get("errors"):
        print("errors: " + " | ".join(results["errors"]), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    return 0
