"""The instrument's subcommands: ``paik play``, ``paik render``, ``paik grid``, ``paik bench render``.

Parsing and user errors live here; the work is in window.py, offline.py and bench.py, imported
inside the handlers so ``paik --help`` stays instant and needs no GL.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from paik import indices
from paik.errors import PaikError

from paik.instrument.control.params import SPECS, VIEWS, Params

GRID_VIEWS = {"blocks": "grid-blocks", "steps": "grid-steps", "heads-steps": "grid-heads-steps", "grand": "grand",
              "twin": "twin", "diff": "diff"}
TWIN_VIEWS = ("twin", "diff")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, like 1920x1080") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be positive")
    return w, h


def _clip(text: str) -> tuple[float, float]:
    lo_spec, hi_spec = SPECS["clip_lo"], SPECS["clip_hi"]
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected two percentiles LO,HI, like 1,99.5") from None
    if not (lo_spec.lo <= lo < hi <= hi_spec.hi):
        raise argparse.ArgumentTypeError(f"{text!r}: need {lo_spec.lo:g} <= LO < HI <= {hi_spec.hi:g}")
    return lo, hi


# The look flags that are parameters of the bank: --NAME plays SPECS[NAME], and its type, choices,
# range (checked in _check_look, before anything loads), help and default all come from the spec.
# Only what the flags add is written here: the first look's own defaults (firstlook.py: frame
# normalization; a composite chosen from the bundle) and what those defaults mean.
LOOK_SHOW = ("head", "reduce")
LOOK_STYLE = ("colormap", "norm", "gain", "gamma", "threshold", "composite", "background", "opacity")
FIRST_LOOK = {"norm": "frame", "composite": None}
LOOK_HELP = {
    "colormap": "viridis, magma, inferno, plasma, turbo, grayscale, jet, or any presets/colormaps/NAME.json",
    "norm": "frame (default: every latent frame of every map or cell fills the colormap), step (one range per "
            "map or cell), global (one range for the whole view: cells and frames stay comparable, weak ones "
            "go dark)",
    "threshold": "the background shows, or real alpha in ProRes/NDI where there is none",
    "composite": "default screen: the map lights up the video, which stays as it is where attention is low; "
                 "heatmap, the map alone and opaque, for a bundle without a video",
    "background": "video, per-step preview, or none (then the map is the alpha: ProRes 4444 and NDI carry it)",
}


def _look_flag(g, name: str) -> None:
    spec = SPECS[name]
    default = FIRST_LOOK.get(name, spec.default)
    kw: dict = {"default": default}
    if spec.numeric:
        kw["type"] = int if spec.kind == "int" else float
    elif spec.choices:
        kw["choices"] = spec.choices
    parts = [spec.help]
    if spec.numeric:
        parts.append(spec.range_text())
    if name in LOOK_HELP:
        parts.append(LOOK_HELP[name])
    if name not in FIRST_LOOK:
        parts.append(f"default {default:g}" if spec.numeric else f"default {default}")
    kw["help"] = "; ".join(p for p in parts if p)
    g.add_argument(f"--{name}", **kw)


def _look_flags(ap: argparse.ArgumentParser, positions: bool = True) -> None:
    g = ap.add_argument_group("what to show")
    g.add_argument("--token", help="word or phrase of the prompt, 'eos', or #N for piece N (default: the first "
                   "content word: not 'a', 'the', 'of'..., never EOS)")
    if positions:
        g.add_argument("--step", help="denoising step (model index; 12.5 crossfades steps 12 and 13; default: the "
                       "last captured step, the finished picture)")
        g.add_argument("--block", help="transformer block (model index; fractions crossfade; default: the block "
                       "whose map agrees best with the mean over blocks)")
    for name in LOOK_SHOW:
        _look_flag(g, name)
    g = ap.add_argument_group("how it looks")
    for name in LOOK_STYLE:
        _look_flag(g, name)
        if name == "norm":  # --clip LO,HI sets the pair clip_lo, clip_hi
            lo, hi = SPECS["clip_lo"], SPECS["clip_hi"]
            g.add_argument("--clip", type=_clip, default=(lo.default, hi.default), metavar="LO,HI",
                           help=f"percentiles mapped to the colormap's ends, {lo.lo:g} <= LO < HI <= {hi.hi:g} "
                                f"(default {lo.default:g},{hi.default:g} = min,max)")
    g.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="where maps are reduced (auto: CUDA when torch sees one)")


def add_resident_flag(ap: argparse.ArgumentParser, default: str = "auto") -> None:
    ap.add_argument("--resident", choices=("auto", "on", "off"), default=default,
                    help="bring a bundle's whole capture onto the device in the background (progress on stderr) "
                         "when the memory plan says it fits, for it and every /paik/load; it streams from disk "
                         f"meanwhile, and for good when it does not fit. auto: on the GPU when there is one; on: the "
                         f"GPU, else host memory; off: always stream (default {default})")


def _check_look(args) -> None:
    """The look flags that need no bundle: checked before anything is opened or loaded."""
    from paik.instrument.render import colormaps

    names = colormaps.available()
    if args.colormap not in names:
        raise PaikError(f"unknown colormap {args.colormap!r}; available: {', '.join(names)}")
    for name in LOOK_SHOW + LOOK_STYLE:
        spec, value = SPECS[name], getattr(args, name)
        if not spec.numeric:
            continue  # choices: argparse refused the others
        if not math.isfinite(value):
            raise PaikError(f"--{name} {value}: expected a finite number")
        if spec.out_of_range(value):
            bounds = f"{spec.lo:g}..{spec.hi:g}" if spec.hi is not None else f"at least {spec.lo:g}"
            raise PaikError(f"--{name} {value} is out of range ({bounds})")
    for axis in ("step", "block"):
        value = getattr(args, axis, None)
        if value is not None:
            try:
                float(value)
            except ValueError:
                raise PaikError(f"--{axis} {value!r}: expected a number") from None


def _params(args, src, view: str) -> Params:
    from paik.instrument.render import colormaps, firstlook

    _check_look(args)
    p = Params().bind(len(src.words), src.dims.n_steps, src.dims.n_blocks, src.dims.n_heads, colormaps.available())
    if args.head != -1 and not 0 <= args.head < src.dims.n_heads:
        raise PaikError(f"--head {args.head} is out of range: this bundle stores {src.dims.n_heads} heads "
                        f"(0..{src.dims.n_heads - 1}), or -1 for all")
    if args.token:
        p.token = src.word_index(args.token)
    else:
        specials = {t.word for t in src.bundle.tokens if t.special}
        p.token = firstlook.content_word([w.label for w in src.words], specials)
    p.n_tokens = len(src.words)
    step, block = getattr(args, "step", None), getattr(args, "block", None)
    p.step = indices.position(step, src.dims.step_names, "--step", default="last")
    p.block = (float(firstlook.representative_block(src, src.words[p.token].positions, round(p.step)))
               if block is None else indices.position(block, src.dims.block_names, "--block"))
    p.head, p.reduce, p.view = args.head, args.reduce, view
    p.colormap, p.norm, (p.clip_lo, p.clip_hi) = args.colormap, args.norm, args.clip
    p.gain, p.gamma, p.threshold = args.gain, args.gamma, args.threshold
    p.composite, p.background, p.opacity = _composite(args, src), args.background, args.opacity
    return p


def _composite(args, src) -> str:
    """--composite as given, or the default: the map screened over what lies under it, the video
    or the previews (with --background none the map is the alpha, for compositing elsewhere);
    the plain heatmap when the video asked for is not in the bundle (nothing to see through to)."""
    if args.composite is not None:
        return args.composite
    if args.background == "video" and src.bundle.video_path is None:
        return "heatmap"
    return "screen"


def _source(args, view: str | None = None):
    """The bundle, with its unbent twin when --twin names one or the view needs the recorded one:
    a twin of another layout, or none for the twin/diff views, is refused here (one line)."""
    from paik.instrument.render.source import Source, twin_mismatch

    src = Source.open(args.bundle, args.device)
    given = getattr(args, "twin", None)
    if given:
        src.twin = Source.open(given, args.device)
    if given or view in TWIN_VIEWS:
        twin = src.twin
        if twin is None:
            raise PaikError(src.twin_error or f"--view {view}: {args.bundle} records no unbent twin; name one with "
                            "--twin UNBENT (make it with 'paik generate --replay BENT --no-bends --out UNBENT')")
        why = twin_mismatch(src, twin)
        if why is not None:
            raise PaikError(why)
    return src


def _twin_flag(ap) -> None:
    ap.add_argument("--twin", metavar="UNBENT", default=None,
                    help="the unbent twin of this (bent) bundle, for --view twin and diff (default: the twin its "
                         "manifest records, from 'paik generate --twin')")


# -- handlers ------------------------------------------------------------------------------------
def cmd_play(args) -> int:
    import signal

    from paik.instrument.control.hub import Control
    from paik.instrument.outputs.live import from_args, report

    _check_look(args)  # flag errors before the bundle is opened, GL or a window
    if args.seconds is not None and not (args.seconds > 0 and math.isfinite(args.seconds)):
        raise PaikError(f"--seconds must be a positive number of seconds, not {args.seconds}")
    if args.frames is not None and args.frames < 1:
        raise PaikError(f"--frames must be at least 1, not {args.frames}")
    outputs = from_args(args, args.size)
    src = _source(args, args.view)
    p = _params(args, src, args.view)
    p.help = args.show_keys
    p.record = bool(args.record)

    def stop(_sig, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a service manager's stop ends the show cleanly
    # keys, OSC, MIDI and the console all reach the bank through ctl.live (instrument/live.py)
    from paik.instrument.render.resident import resident_device

    with Control.from_args(args, src, p) as ctl:
        ctl.live.resident = resident_device(args.resident, args.device)
        ctl.live.bring_resident(src)
        if args.headless:
            from paik.instrument.render.headless import play_headless

            rc = play_headless(ctl.live, size=args.size, fps=args.out_fps, max_frames=args.frames,
                               run_for=args.seconds, fixed_step=args.fixed_step, outputs=outputs)
        else:
            from paik.instrument.render.window import play

            rc = play(ctl.live, size=args.size, fullscreen=args.fullscreen, monitor=args.monitor,
                      vsync=not args.no_vsync, max_frames=args.frames, screenshot=args.screenshot, outputs=outputs,
                      run_for=args.seconds)
    return report(outputs) or rc


def _check_render_out(out: Path, codec: str, size) -> None:
    """What can be said of ``paik render``'s output before the bundle or GL is touched (the
    video writer checks the same again when it opens the file)."""
    from paik.video import check_output

    check_output(out, codec, size)


def cmd_render(args) -> int:
    from paik.instrument.render.offline import fit_duration, render_video

    _check_look(args)
    out = Path(args.out)
    codec = args.codec
    _check_render_out(out, codec, args.size)
    if args.fps is not None and not (args.fps > 0 and math.isfinite(args.fps)):  # --fps 0 is a mistake
        raise PaikError(f"--fps must be positive, not {args.fps}")
    if args.duration is not None and not (args.duration > 0 and math.isfinite(args.duration)):
        raise PaikError(f"--duration must be a positive number of seconds, not {args.duration}")
    src = _source(args, args.view)
    p = _params(args, src, args.view)
    size = args.size or src.video_size
    fps = src.fps if args.fps is None else args.fps
    if not (fps > 0 and math.isfinite(fps)):
        raise PaikError(f"--fps must be positive, not {args.fps}")
    duration = fit_duration(args.duration, src)
    n = render_video(src, p, out, size, fps, duration, codec, progress=not args.quiet)
    print(f"wrote {out} ({n} frames, {size[0]}x{size[1]} @ {fps:g} fps, {codec})")
    return 0


def cmd_grid(args) -> int:
    from paik.instrument.render.offline import grid_figures

    view = GRID_VIEWS[args.view]
    _check_look(args)
    if args.cell_width < 1 or args.gap < 0:
        raise PaikError(f"--cell-width must be at least 1 and --gap at least 0 (pixels), not {args.cell_width} "
                        f"and {args.gap}")
    times = _times(args.time)
    from paik.video import check_dir

    check_dir(Path(args.out))
    src = _source(args, view)
    step_list, block_list = args.steps, args.blocks
    p = _params(args, src, view)  # defaults: the last step, the block closest to the mean over blocks
    if view in TWIN_VIEWS and block_list:
        p.block = indices.position(block_list, src.dims.block_names, "--block")
    if view in ("grid-blocks",) + TWIN_VIEWS:
        values = indices.positions(step_list, src.dims.step_names, "--step", default="last")
    elif view == "grand":
        values = [0.0]
    else:
        values = indices.positions(block_list, src.dims.block_names, "--block",
                                   default=str(src.dims.block_names[round(p.block)]))
    label = src.words[p.token].label
    paths = grid_figures(src, p, Path(args.out), view, values, times, args.cell_width, args.gap, label)
    for path in paths:
        print(path)
    return 0


def _times(text: str) -> list[float]:
    """--time as typed -> video positions 0..1."""
    times = []
    for part in text.split(","):
        try:
            t = float(part)
        except ValueError:
            raise PaikError(f"--time {text!r}: expected positions in the video like 0,1 (0 first, 1 last frame)") from None
        if not 0 <= t <= 1:
            raise PaikError(f"--time {t}: positions run from 0 (first frame) to 1 (last frame)")
        times.append(t)
    return times


def cmd_bench_render(args) -> int:
    from paik.instrument.bench import render as bench

    bundle = None
    if args.bundle:
        from paik.capture.bundle import open_bundle

        bundle = open_bundle(args.bundle)
    if args.frames < 1:
        raise PaikError(f"--frames must be at least 1, not {args.frames}")
    # the twin views need a twin: named with --views, not timed by default
    views = args.views.split(",") if args.views else [v for v in VIEWS if v not in ("twin", "diff")]
    bad = [v for v in views if v not in VIEWS]
    if bad:
        raise PaikError(f"--views: unknown {', '.join(bad)}; views: {', '.join(VIEWS)}")
    print(bench.HEADER, flush=True)
    rows = bench.run(bundle, sizes=args.sizes, frames=args.frames, views=views, device=args.device,
                     log=lambda s: print(s, flush=True) if not s.startswith(("GL", "capture")) else print(s, file=sys.stderr))
    worst = {}
    for r in rows:
        worst[r.size] = max(worst.get(r.size, 0.0), r.p99_ms)
    print("worst p99: " + ", ".join(f"{k} {v:.3f} ms" for k, v in worst.items()))
    if args.json:
        bench.write_json(rows, Path(args.json), {"frames": args.frames})
        print(f"wrote {args.json}")
    return 0


def cmd_bench_first_frame(args) -> int:
    from paik.instrument.bench import render as bench

    r = bench.first_frame(args.bundle, args.size, args.token, args.device)
    read = "n/a" if r["read_mib"] is None else f"{r['read_mib']:.1f} MiB read from storage in all, GL driver included"
    print(f"{r['bundle_gib']:.2f} GiB bundle: first {args.size[0]}x{args.size[1]} frame in {r['seconds']:.2f} s "
          f"({read}, memory +{r['rss_growth_mib']:.0f} MiB) on {r['gl']}")
    return 0


def cmd_bench_record(args) -> int:
    from paik.instrument.bench import record as bench_record

    bundle = None
    if args.bundle:
        from paik.capture.bundle import open_bundle

        bundle = open_bundle(args.bundle)
    if not args.seconds > 0:
        raise PaikError(f"--seconds must be positive, not {args.seconds}")
    print(bench_record.HEADER, flush=True)
    rows = bench_record.run(bundle, configs=args.configs, seconds=args.seconds, codec=args.codec, view=args.view,
                            device=args.device, keep=args.keep, baseline=args.baseline,
                            log=lambda s: print(s, file=sys.stderr if s.startswith("GL") else sys.stdout, flush=True))
    lost = sum(r.late + r.dropped for r in rows)
    print("none late or dropped" if lost == 0 else f"late or dropped frames: {lost}")
    if args.json:
        bench_record.write_json(rows, Path(args.json), {"seconds": args.seconds, "codec": args.codec})
        print(f"wrote {args.json}")
    return 0


def _configs(text: str):
    out = []
    for part in text.split(","):
        size, _, fps = part.partition("@")
        try:
            rate = float(fps) if fps else 60.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: expected WxH@FPS, like 1920x1080@60") from None
        if not 0 < rate <= 1000:
            raise argparse.ArgumentTypeError(f"{part!r}: the rate must be between 0 and 1000")
        out.append((_size(size), rate))
    return out


def cmd_bench_latency(args) -> int:
    from paik.instrument.bench import latency as bench_latency

    bundle = None
    if args.bundle:
        from paik.capture.bundle import open_bundle

        bundle = open_bundle(args.bundle)
    if args.messages < 2 or not args.rate > 0:
        raise PaikError("--messages must be at least 2 and --rate positive")
    from paik.instrument.render.headless import egl_context

    ctx = egl_context()
    gl = f"{ctx.info['GL_RENDERER']} | {ctx.info['GL_VERSION']}"
    ctx.release()
    print(f"GL: {gl}", file=sys.stderr, flush=True)
    print(f"{'size':>10} {'messages':>8} {'rate':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'missed':>6}", flush=True)
    for size in args.sizes:
        r = bench_latency.run(bundle, size=size, messages=args.messages, rate=args.rate, view=args.view,
                              device=args.device)
        print(f"{r['size']:>10} {r['messages']:>8} {r['rate_hz']:>6g} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
              f"{r['max_ms']:8.2f} {r['missed']:>6}", flush=True)
    return 0


def register(sub, bench) -> None:
    views = ", ".join(VIEWS)
    ap = sub.add_parser("play", help="play a bundle's attention live in a window",
                        description="Play a capture live. Press F1 in the window for the keys. Views: " + views)
    ap.add_argument("bundle", help="bundle directory (from 'paik generate --out DIR')")
    ap.add_argument("--view", choices=VIEWS, default="single")
    ap.add_argument("--size", type=_size, default=(1280, 720), help="window size WxH (default 1280x720)")
    ap.add_argument("--fullscreen", action="store_true", help="fullscreen on --monitor")
    ap.add_argument("--monitor", type=int, default=0, help="monitor index for fullscreen (default 0)")
    ap.add_argument("--no-vsync", action="store_true", help="do not wait for the display's refresh")
    ap.add_argument("--show-keys", action="store_true", help="start with the key overlay shown (F1 toggles it)")
    ap.add_argument("--frames", type=int, help=argparse.SUPPRESS)  # tests: quit after N frames
    ap.add_argument("--screenshot", help=argparse.SUPPRESS)  # tests: save the last frame
    ap.add_argument("--headless", action="store_true",
                    help="no window: render offscreen (EGL) at --size (--out-fps frames a second, and at once when a "
                         "control changes) for --record/--out, played by OSC/MIDI/console until stopped")
    ap.add_argument("--seconds", type=float, help="stop after this many seconds (default: until the window is "
                    "closed, or Ctrl-C)")
    ap.add_argument("--fixed-step", action="store_true", help=argparse.SUPPRESS)  # tests: frame/fps clock, no sleep
    add_resident_flag(ap)
    _twin_flag(ap)
    from paik.instrument.control.hub import add_flags
    from paik.instrument.outputs import add_play_flags

    add_play_flags(ap)
    _look_flags(ap)
    add_flags(ap)
    ap.set_defaults(func=cmd_play)

    ap = sub.add_parser("render", help="render a view to a video file, headless",
                        description="Render a view headless (EGL) to H.264 or ProRes 4444. Views: " + views)
    ap.add_argument("bundle")
    ap.add_argument("--out", required=True, help="output file (.mp4 for h264, .mov for prores)")
    ap.add_argument("--view", choices=VIEWS, default="sweep", help="default sweep (the step sweep)")
    ap.add_argument("--size", type=_size, help="WxH (default: the video's size)")
    ap.add_argument("--fps", type=float, help="frames per second (default: the video's)")
    ap.add_argument("--duration", type=float, help="seconds; the whole video is spanned (default: its length)")
    ap.add_argument("--codec", choices=("h264", "prores"), default="h264",
                    help="h264 (alpha premultiplied over black) or prores (4444 with straight alpha, .mov: "
                         "transparent where there is no picture: --background none, a --threshold on the heatmap, "
                         "the bars around a picture of another aspect)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    _twin_flag(ap)
    _look_flags(ap)
    ap.set_defaults(func=cmd_render)

    ap = sub.add_parser("grid", help="labelled PNG grids like the paper's figures",
                        description="Write labelled PNG grids: every block at given steps (Fig. 3), every step "
                                    "at given blocks (Fig. 4), heads x steps (Fig. 5), the grand average (Fig. 6), "
                                    "or a bent take beside its unbent twin (twin) or their difference (diff), "
                                    "at given steps.")
    ap.add_argument("bundle")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--view", choices=tuple(GRID_VIEWS), default="blocks")
    ap.add_argument("--steps", "--step", dest="steps",
                    help="for --view blocks, twin and diff: steps like 0,12,24, 'last' or 'all' (default: the last)")
    ap.add_argument("--blocks", "--block", dest="blocks", help="for --view steps/heads-steps (and one for twin/diff): blocks like 15 "
                    "(default: the block whose map agrees best with the mean over blocks)")
    ap.add_argument("--time", default="0", help="positions in the video, 0 = first frame, 1 = last (default 0), e.g. 0,1")
    ap.add_argument("--cell-width", type=int, default=208, help="pixels per cell (default 208)")
    ap.add_argument("--gap", type=int, default=2, help="pixels between cells (default 2)")
    _twin_flag(ap)
    _look_flags(ap, positions=False)
    ap.set_defaults(func=cmd_grid)

    ap = bench.add_parser("render", help="GPU time per frame of every view at 1080p and 4K (GL timer queries)")
    ap.add_argument("--bundle", help="a bundle to use (default: in-memory capture of Wan2.1-1.3B's layout)")
    ap.add_argument("--sizes", type=lambda s: [_size(x) for x in s.split(",")], default=[(1920, 1080), (3840, 2160)],
                    help="comma-separated WxH (default 1920x1080,3840x2160)")
    ap.add_argument("--frames", type=int, default=120, help="timed frames per view and size (default 120)")
    ap.add_argument("--views", help="comma-separated subset of: " + views)
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--json", help="also write the table as JSON here")
    ap.set_defaults(func=cmd_bench_render)

    ap = bench.add_parser("first-frame", help="seconds from opening a bundle to its first frame, headless",
                          description="Open BUNDLE, render its first frame headless and say how long that took "
                                      "and how much of the bundle was read (drop the page cache first for a "
                                      "cold start: sync; echo 3 > /proc/sys/vm/drop_caches).")
    ap.add_argument("bundle")
    ap.add_argument("--size", type=_size, default=(1920, 1080), help="WxH (default 1920x1080)")
    ap.add_argument("--token", help="a word to show (default: the first)")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.set_defaults(func=cmd_bench_first_frame)

    ap = bench.add_parser("latency", help="OSC packet to the first frame that shows it (p50/p99), headless",
                          description="Send /paik/step over UDP at --rate Hz (alternating two steps) to a headless "
                                      "instrument and time each packet until the first finished frame drawn from it.")
    ap.add_argument("--bundle", help="a bundle to use (default: in-memory capture of Wan2.1-1.3B's layout)")
    ap.add_argument("--sizes", type=lambda s: [_size(x) for x in s.split(",")], default=[(1280, 720)],
                    help="comma-separated WxH of the rendered frame (default 1280x720)")
    ap.add_argument("--messages", type=int, default=1000, help="OSC messages (default 1000)")
    ap.add_argument("--rate", type=float, default=60.0, help="messages per second (default 60)")
    ap.add_argument("--view", choices=VIEWS, default="single")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.set_defaults(func=cmd_bench_latency)

    ap = bench.add_parser("record", help="frame time and lost frames while recording at 1080p60 and 4K30, headless",
                          description="Render headless at each WxH@FPS while recording (as 'paik play --headless "
                                      "--record' does) and report frame-time p50/p99 and late or dropped frames.")
    ap.add_argument("--bundle", help="a bundle to use (default: in-memory capture of Wan2.1-1.3B's layout)")
    ap.add_argument("--configs", type=_configs, default=[((1920, 1080), 60.0), ((3840, 2160), 30.0)],
                    metavar="WxH@FPS,...", help="comma-separated (default 1920x1080@60,3840x2160@30)")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds per configuration (default 60)")
    ap.add_argument("--codec", choices=("h264", "prores"), default="h264")
    ap.add_argument("--view", choices=VIEWS, default="single")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--keep", help="keep the recordings in this directory (default: deleted)")
    ap.add_argument("--baseline", action="store_true", help="also run each configuration without recording")
    ap.add_argument("--json", help="also write the table as JSON here")
    ap.set_defaults(func=cmd_bench_record)


def default_look_args(**overrides) -> argparse.Namespace:
    """The parsed defaults of the shared view flags (for callers that build Params without a CLI)."""
    ap = argparse.ArgumentParser()
    _look_flags(ap)
    args = ap.parse_args([])
    for k, v in overrides.items():
        setattr(args, k, v)
    return args
