"""``paik live``: the instrument with a model loaded, and ``paik bench live``.

The one module that joins the two packages: it loads the pipeline and starts the live engine
(paik.capture.engine) and hands both to the instrument (paik.instrument.control.takes); the
capture side never imports GL and the instrument never imports diffusers.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile

from paik.errors import PaikError

DEFAULT_PROMPT = "a red circle and a blue square"


ENGINES = ("process", "thread")
DEFAULT_ENGINE = "thread"  # measured: see docs/performance.md, paik bench live --engine


def start_engine(kind: str, model, dtype, device, offload, defaults, takes, loaded=None):
    """The live engine: ``process`` (paik.capture.engine_process: the model loaded in a child) or
    ``thread`` (paik.capture.engine, on ``loaded`` or a pipeline loaded here)."""
    if kind == "process":
        from paik.capture.engine_process import EngineProcess

        return EngineProcess((model, dtype, device, offload), defaults, takes)
    from paik.capture.engine import Engine
    from paik.capture.models import load_pipeline

    return Engine(loaded or load_pipeline(model, dtype, device, offload), defaults, takes)


def add_generation_flags(ap: argparse.ArgumentParser) -> None:
    """``paik generate``'s settings, here the defaults of every take (the bank's prompt, seed,
    steps, frames, size, guidance and tokens then change them live)."""
    from paik.capture.cli import add_take_flags

    g = ap.add_argument_group("generation (defaults of every take; /paik/prompt, /paik/seed ... change them live)")
    g.add_argument("--prompt", default=None, help=f"the first take's prompt (default {DEFAULT_PROMPT!r})")
    add_take_flags(g)
    g.add_argument("--takes", metavar="DIR",
                   help="write every take as a bundle here (default: a temporary folder, deleted at exit)")
    g.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE,
                   help="where takes are generated: thread (default: in the instrument's process) or process (a "
                        "child process holding the model, its maps shared with the instrument through CUDA IPC, so "
                        "generation and drawing never share one interpreter lock; measured no better on an H200)")
    c = ap.add_argument_group("continuous mode (/paik/continuous 1, or 'continuous on' on the console)")
    c.add_argument("--continuous", action="store_true",
                   help="start in continuous mode: keep generating draft takes, each shown at the loop point of the "
                        "one playing (the next seed each time, or the next line of --prompts)")
    c.add_argument("--continuous-size", default="416x240", metavar="WxH", help="draft takes' size (default 416x240)")
    c.add_argument("--continuous-steps", type=int, default=10, help="draft takes' steps (default 10)")
    c.add_argument("--continuous-frames", type=int, default=33, help="draft takes' frames, 4k+1 (default 33)")
    c.add_argument("--prompts", metavar="FILE", help="continuous mode cycles these prompts (one a line)")


def register(sub, bench) -> None:
    from paik.instrument.cli import _look_flags, _size, add_resident_flag
    from paik.instrument.control.hub import add_flags
    from paik.instrument.control.params import VIEWS
    from paik.instrument.render.headless import PRIORITIES
    from paik.instrument.outputs import add_play_flags

    ap = sub.add_parser(
        "live", help="the instrument with a model loaded: generate takes live and watch their maps form",
        description="Play attention live while generating: /paik/generate (or 'generate' on the console, or a "
                    "MIDI pad) starts a take from the bank's prompt, seed, steps, frames, size, guidance and "
                    "tokens; its maps appear step by step. Without BUNDLE, a first take starts at once.")
    ap.add_argument("bundle", nargs="?", help="a bundle to play until the first take (default: start generating)")
    ap.add_argument("--view", choices=VIEWS, default="single")
    ap.add_argument("--size", type=_size, default=(1280, 720), help="window size WxH (default 1280x720)")
    ap.add_argument("--fullscreen", action="store_true")
    ap.add_argument("--monitor", type=int, default=0)
    ap.add_argument("--no-vsync", action="store_true")
    ap.add_argument("--show-keys", action="store_true")
    ap.add_argument("--max-frames", type=int, help=argparse.SUPPRESS)  # tests: quit after N rendered frames
    ap.add_argument("--screenshot", help=argparse.SUPPRESS)
    ap.add_argument("--headless", action="store_true", help="no window: render offscreen (EGL) at --size")
    ap.add_argument("--seconds", type=float, help="--headless: stop after this many seconds (default: Ctrl-C)")
    ap.add_argument("--no-follow", action="store_true",
                    help="keep playing the current take while a new one forms (default: show its newest step)")
    add_generation_flags(ap)
    add_resident_flag(ap, "on")  # a live instrument keeps its maps where the renderer reads them
    add_play_flags(ap)
    _look_flags(ap)
    add_flags(ap)
    ap.set_defaults(func=cmd_live)

    b = bench.add_parser(
        "live", help="the live engine: generate-to-first-map, frames while generating, overhead, playing",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="(a) /paik/generate to the first rendered frame showing the take's first map; (b) the render "
                    "loop at --size@--rate while a take generates: late frames and p99 interval; (c) the take's "
                    "time inside the engine vs the plain WanPipeline call at the same settings; (d) a capture "
                    "played while every parameter moves at --rate: worst frame interval, p99 OSC-to-frame (a --bundle, "
                    "else an in-memory synthetic capture of --synthetic layout); (e) offline 'paik generate' (bundle "
                    "writing included, model loading excluded) vs the plain WanPipeline call plus an MP4 export, "
                    "with the GPU peak memory of each.")
    b.add_argument("--model", "-m", default="tiny", help="model (a full-size random folder on the GPU machine)")
    b.add_argument("--prompt", default=DEFAULT_PROMPT)
    b.add_argument("--steps", type=int, default=None)
    b.add_argument("--frames", type=int, default=None)
    b.add_argument("--height", type=int, default=None)
    b.add_argument("--width", type=int, default=None)
    b.add_argument("--guidance", type=float, default=5.0)
    b.add_argument("--tokens", default=None)
    b.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    b.add_argument("--size", type=_size, default=(1920, 1080), help="render size")
    b.add_argument("--rate", type=float, default=60.0, help="frames (and parameter moves) per second")
    b.add_argument("--seconds", type=float, default=10.0, help="seconds of (d)")
    b.add_argument("--parts", default="a,b,c,d,e", help="which parts to run")
    b.add_argument("--cold", action="store_true",
                   help="(a): measure the very first take after loading, without the warm-up take paik live makes")
    b.add_argument("--bundle", default=None, help="(d): play this capture (brought onto the device when it fits)")
    b.add_argument("--synthetic", default="25x30x12x32", metavar="SxBxHxT",
                   help="(d) without --bundle: steps x blocks x heads x tokens of the synthetic capture (the paper's)")
    b.add_argument("--latent", default="16x30x52", metavar="FxHxW", help="(d): the synthetic capture's token grid")
    b.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE, help="(a, b, c): as paik live --engine")
    b.add_argument("--no-twin", action="store_true",
                   help="(d): without the synthetic unbent twin that the twin and diff views play against")
    b.add_argument("--reduce-stream", choices=["high", "default"], default=None,
                   help="the CUDA stream live selections reduce on (PAIK_REDUCE_STREAM; default high)")
    b.add_argument("--step-buffers", type=int, default=3, help="(e): paik generate's device step buffers")
    b.add_argument("--e-repeats", type=int, default=3,
                   help="(e): timed runs of each, alternating which goes first, after a warm-up of both; "
                        "the ratio is of the medians")
    b.add_argument("--gl-priority", choices=PRIORITIES, default=None,
                   help="the GL context's scheduling priority (EGL_IMG_context_priority, where offered)")
    b.add_argument("--heap", choices=["frozen", "default"], default="frozen",
                   help="frozen (as paik live): the loaded heap is moved out of the garbage collector's "
                        "reach when the instrument starts; default: left to it (a diagnostic)")
    b.add_argument("--probe", action="store_true",
                   help="a thread sleeping 1 ms at a time records how late it wakes in each frame (probe_late_ms): "
                        "whether something held the interpreter lock (a diagnostic; it adds a thread)")
    b.add_argument("--probe-dumps", action="store_true",
                   help="--probe, and when the probe is kept out over 8 ms every thread's stack, taken by "
                        "faulthandler's watchdog while the holder holds the lock (it names the holder's line). "
                        "A diagnostic that can crash the bench: the watchdog reads running threads' frames "
                        "without the lock; it also costs the render thread up to a few ms on a loaded CPU")
    b.add_argument("--frames-json", default=None, help="(b): write every frame's interval and phases here")
    b.add_argument("--json", default=None, help="write the results as JSON here")
    b.set_defaults(func=cmd_bench_live)


def generate_options(args):
    from paik.capture.generate import GenerateOptions
    from paik.capture.tokens import split_token_list

    tokens = split_token_list(args.tokens) if args.tokens is not None else []
    if args.tokens is not None and not tokens:
        raise PaikError("--tokens is empty; name words like kiss,\"soccer ball\",eos (or leave it out for every token)")
    return GenerateOptions(
        prompt=args.prompt or DEFAULT_PROMPT, out="", model=args.model, negative=args.negative, seed=args.seed,
        steps=args.steps, frames=args.frames, height=args.height, width=args.width, guidance=args.guidance,
        guidance_2=args.guidance_2, flow_shift=args.flow_shift, fps=args.fps, tokens=tokens,
        capture_steps=args.capture_steps, capture_blocks=args.blocks, heads=args.heads,
        capture_uncond=args.capture_uncond, max_capture_gb=args.max_capture_gb,
        max_sequence_length=args.max_sequence_length, dtype=args.dtype, offload=args.offload,
        device=None if args.device == "auto" else args.device, preview=args.preview, quiet=True,
    )


def _check_bank_values(args) -> None:
    if not 0 <= args.seed < 2**31:
        raise PaikError(f"--seed {args.seed}: expected 0..2147483647")
    if not 1.0 <= args.guidance <= 20.0:
        raise PaikError(f"--guidance {args.guidance}: expected 1..20 (1 = off)")
    for name, v in (("steps", args.steps), ("frames", args.frames)):
        if v is not None and v < 1:
            raise PaikError(f"--{name} must be at least 1, not {v}")
    if (args.height is None) != (args.width is None):
        raise PaikError("--height and --width go together (or leave both out for the model's size)")


def continuous_settings(args):
    """``--continuous-*`` and ``--prompts`` -> :class:`paik.instrument.control.takes.Continuous`."""
    from paik.capture.engine import parse_size
    from paik.instrument.control.takes import Continuous, read_prompts

    for name in ("continuous_steps", "continuous_frames"):
        if getattr(args, name) < 1:
            raise PaikError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    return Continuous(size=parse_size(args.continuous_size), steps=args.continuous_steps,
                      frames=args.continuous_frames, prompts=read_prompts(args.prompts) if args.prompts else [])


def cmd_live(args) -> int:
    import signal

    from paik.capture.engine import TakeRequest
    from paik.instrument.cli import _params
    from paik.instrument.control.hub import Control
    from paik.instrument.control.params import Command
    from paik.instrument.control.takes import EngineLive
    from paik.instrument.outputs.live import from_args, report
    from paik.instrument.render.resident import ResidentSource, blank_take, resident_device
    from paik.instrument.render.source import Source

    outputs = from_args(args, args.size)  # flag errors before any model or GL
    _check_bank_values(args)
    continuous = continuous_settings(args)
    defaults = generate_options(args)
    src = Source.open(args.bundle, args.device) if args.bundle else ResidentSource(blank_take())
    if not args.bundle:
        args.token = args.step = args.block = None  # the position flags are for a bundle; the blank take has none
    p = _params(args, src, args.view)
    p.help, p.record, p.follow = args.show_keys, bool(args.record), not args.no_follow
    p.prompt, p.negative, p.seed = defaults.prompt, defaults.negative or "", defaults.seed
    p.steps, p.frames, p.guidance = defaults.steps or 0, defaults.frames or 0, defaults.guidance
    p.size = f"{args.width}x{args.height}" if args.width else ""
    p.tokens = args.tokens or ""
    p.continuous = args.continuous
    where = " in the engine process" if args.engine == "process" else ""
    print(f"paik: loading {args.model}{where} ...", file=sys.stderr, flush=True)
    temporary = args.takes is None
    takes = tempfile.mkdtemp(prefix="paik-takes-") if temporary else args.takes
    try:
        engine = start_engine(args.engine, args.model, args.dtype, defaults.device, args.offload, defaults, takes)
    except BaseException:
        if temporary:
            shutil.rmtree(takes, ignore_errors=True)
        raise
    print(f"paik: takes are written to {takes}{' (deleted at exit; keep them with --takes DIR)' if temporary else ''}",
          file=sys.stderr, flush=True)

    def stop(_sig, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        with Control.from_args(args, src, p, lambda s, q, sc, **kw: EngineLive(s, q, engine, TakeRequest, sc, continuous,
                                                                        **kw)) as ctl:
            ctl.live.resident = resident_device(args.resident, args.device)
            if not args.bundle and not args.continuous:  # continuous mode starts its own
                ctl.live.put(Command("generate", "start", {}, "live"))
            else:
                ctl.live.bring_resident(src)
            if args.headless:
                from paik.instrument.render.headless import play_headless

                rc = play_headless(ctl.live, size=args.size, fps=args.out_fps, max_frames=args.max_frames,
                                   run_for=args.seconds, outputs=outputs)
            else:
                from paik.instrument.render.window import play

                rc = play(ctl.live, size=args.size, fullscreen=args.fullscreen, monitor=args.monitor,
                          vsync=not args.no_vsync, max_frames=args.max_frames, screenshot=args.screenshot,
                          outputs=outputs)
    finally:
        # a take still running stops at its step end; bundles still written behind are waited for
        if engine.writing:
            print(f"paik: finishing the bundles of {', '.join(engine.writing)} ...", file=sys.stderr, flush=True)
        for problem in engine.close():
            print(f"paik: {problem}", file=sys.stderr, flush=True)
        if temporary:
            shutil.rmtree(takes, ignore_errors=True)
    return report(outputs) or rc


def cmd_bench_live(args) -> int:
    from paik.instrument.bench import live as bench

    return bench.main(args)
