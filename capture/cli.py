"""Subcommands of the capture side: ``paik generate``, ``paik info``, ``paik bench capture``."""

from __future__ import annotations

import argparse

from paik.capture.models import ALIASES, DEFAULT_MODEL, TINY


def add_take_flags(ap: argparse.ArgumentParser) -> None:
    """The settings of one generation, shared by ``paik generate`` (its flags) and ``paik live``
    (the defaults of every take, which the bank then changes live): one definition of each."""
    ap.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"hub id, local diffusers folder, or one of: {', '.join(list(TINY) + list(ALIASES))}")
    ap.add_argument("--negative", default=None, help="negative prompt")
    ap.add_argument("--seed", type=int, default=0)
    # defaults: the model folder's paik.json ("defaults"), else its family's (paik.capture.models)
    ap.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: the model's own, from its paik.json; else 50; 4 for tiny models)")
    ap.add_argument("--frames", type=int, default=None,
                   help="frames, 4k+1 (default: the model's own; else 81, 121 for TI2V-5B, 9 for tiny models)")
    ap.add_argument("--height", type=int, default=None,
                   help="a multiple of the model's VAE factor x patch (16 for Wan2.1, 32 for TI2V-5B, 8 for "
                        "paik-shapes); default: the model's own, else 480 (704 TI2V-5B, 64 tiny)")
    ap.add_argument("--width", type=int, default=None,
                   help="as --height; default: the model's own, else 832 (1280 TI2V-5B, 64 tiny)")
    ap.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (1 = off)")
    ap.add_argument("--guidance-2", type=float, default=None,
                   help="guidance of Wan2.2 A14B's low-noise expert (default: --guidance)")
    ap.add_argument("--flow-shift", type=float, default=None, help="scheduler flow shift (default: the model's)")
    ap.add_argument("--fps", type=float, default=16.0, help="frame rate of the written video")
    ap.add_argument("--tokens", default=None,
                   help='words or phrases to capture, e.g. kiss,"soccer ball",eos (default: every real token)')
    ap.add_argument("--capture-steps", default="all", metavar="SPEC",
                   help="steps to capture: all, every:N, a list 0,12,24 or a range 0-9")
    ap.add_argument("--blocks", default="all", metavar="SPEC", help="blocks to capture: all, a list or a range")
    ap.add_argument("--heads", default="all", choices=["all", "mean"], help="keep every head, or their mean")
    ap.add_argument("--capture-uncond", action="store_true",
                   help="also capture the unconditional (negative prompt) pass")
    ap.add_argument("--max-capture-gb", type=float, default=None,
                   help="refuse captures larger than this (default: what fits beside the model)")
    ap.add_argument("--max-sequence-length", type=int, default=512, help="text length the prompt is padded to")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    ap.add_argument("--offload", default=None, choices=["model", "sequential"], help="CPU offload for small GPUs")
    ap.add_argument("--preview", default="latent", choices=["latent", "decode", "none"],
                   help="per-step previews of the denoised estimate: cheap latent projection, full VAE decode, none")


def take_fields(args, tokens: list[str]) -> dict:
    """The :class:`paik.capture.generate.GenerateOptions` fields that :func:`add_take_flags` set."""
    return dict(
        model=args.model, negative=args.negative, seed=args.seed, steps=args.steps, frames=args.frames,
        height=args.height, width=args.width, guidance=args.guidance, guidance_2=args.guidance_2,
        flow_shift=args.flow_shift, fps=args.fps, tokens=tokens, capture_steps=args.capture_steps,
        capture_blocks=args.blocks, heads=args.heads, capture_uncond=args.capture_uncond,
        max_capture_gb=args.max_capture_gb, max_sequence_length=args.max_sequence_length, dtype=args.dtype,
        offload=args.offload, preview=args.preview,
    )


def register(sub, bench) -> None:
    g = sub.add_parser(
        "generate", help="generate a video while capturing cross-attention maps into a bundle",
        description="Generate a video with a Wan pipeline and capture the exact cross-attention map of every "
                    "chosen prompt token, per step, block and head, into a bundle directory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g.add_argument("prompt", nargs="?", default=None, help="the text prompt (with --replay: replaces the take's)")
    g.add_argument("--out", "-o", required=True, help="bundle directory to write")
    add_take_flags(g)
    g.add_argument("--step-buffers", type=int, default=3, metavar="K",
                   help="steps of maps held on the device at once, each reused once the bundle writer has copied "
                        "its step off (default 3)")
    g.add_argument("--keep-on-device", action="store_true",
                   help="keep every captured step on the device until the end (as paik live does)")
    g.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if present)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    g.add_argument("--bend", action="append", default=[], metavar="BEND",
                   help='bend the cross-attention while generating, e.g. "mute cat", "gain kiss 2 blocks 10-20 '
                        'steps 0-12", "blur cat 2 strength 0.5 pass both heads 0-3"; repeatable (see paik.capture.bend)')
    g.add_argument("--bends", action="append", default=[], metavar="PRESET",
                   help="bends from a preset: a name in ~/.config/paik/bends or presets/bends, or a .toml file")
    g.add_argument("--replay", default=None, metavar="BUNDLE",
                   help="regenerate a take from its manifest, bends and all; flags given here replace its settings")
    g.add_argument("--twin", action="store_true",
                   help="also generate the unbent twin (same prompt, seed and sizes, no bends) into OUT/twin, for "
                        "the twin and diff views (paik play/render/grid --view twin|diff find it)")
    g.add_argument("--no-bends", action="store_true",
                   help="with --replay: regenerate the take without its bends (its unbent twin)")
    g.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="split the video's positions across N processes with diffusers' context parallelism (one "
                        "GPU each; gloo processes on the CPU); each writes its own part of the bundle")
    g.add_argument("--cp", default="ulysses", choices=["ulysses", "ring"],
                   help="context parallelism: ulysses (heads all-to-all; needs N to divide the heads) or ring "
                        "(CUDA only)")
    g.set_defaults(func=_generate, _parser=g)

    i = sub.add_parser("info", help="summarize a capture bundle and check its step files",
                       description="Summarize a bundle and check its manifest and every step file's header "
                                   "(exit 2, naming the broken steps, when any is damaged).")
    i.add_argument("bundle")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(func=_info)

    b = bench.add_parser(
        "capture", help="time and memory of capture vs none on the full-size Wan2.1-1.3B architecture",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Builds the Wan2.1-1.3B transformer from its config with random weights (the same cost as the "
                    "real one) on the GPU and times denoising steps (cond + uncond forward) without capture and "
                    "with capture of every block, head and token into the preallocated store.",
    )
    b.add_argument("--steps", type=int, default=25, help="denoising steps per measurement (the paper: 25)")
    b.add_argument("--frames", type=int, default=61)
    b.add_argument("--height", type=int, default=480)
    b.add_argument("--width", type=int, default=832)
    b.add_argument("--tokens", type=int, default=32, help="real prompt tokens")
    b.add_argument("--repeats", type=int, default=2, help="alternating repeats of each variant")
    b.add_argument("--config", default="wan2.1-1.3b", choices=["wan2.1-1.3b", "wan2.1-14b", "tiny"],
                   help="transformer architecture")
    b.add_argument("--check", action="store_true", help="also check maps against an fp32 512-key reference")
    b.add_argument("--write", default=None, metavar="DIR",
                   help="also time capture plus writing every step to a bundle in DIR")
    b.add_argument("--json", default=None, help="write the results as JSON here")
    b.add_argument("--device", default="cuda", help="cuda or cpu (with --parallel: rank r takes cuda:r)")
    b.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="time the context-parallel transformer on N processes (diffusers' own context parallelism; "
                        "NCCL, one GPU each; gloo processes with --device cpu); rank 0 reports")
    b.add_argument("--cp", default="ulysses", choices=["ulysses", "ring"],
                   help="with --parallel: ulysses (needs N to divide the heads) or ring (CUDA only)")
    b.set_defaults(func=_bench)

    from paik.capture.bench_bend import register as register_bend_bench
    from paik.capture.sweep import register as register_sweep

    register_sweep(sub)

    register_bend_bench(bench)

    from paik.capture.bench_project import register as register_parallel_plan

    register_parallel_plan(bench)



def _generate(args) -> int:
    from paik.capture.bend import parse_bends
    from paik.capture.generate import GenerateOptions, generate, generate_twin
    from paik.errors import PaikError
    from paik.capture.tokens import split_token_list

    tokens = split_token_list(args.tokens) if args.tokens is not None else []
    if args.tokens is not None and not tokens:
        raise PaikError("--tokens is empty; name words like kiss,\"soccer ball\",eos (or leave it out for every token)")
    if args.prompt is None and args.replay is None:
        args._parser.error("the following arguments are required: prompt (or --replay BUNDLE, to regenerate a take)")
    fields = dict(
        prompt=args.prompt, out=args.out, **take_fields(args, tokens),
        device=args.device, overwrite=args.overwrite, quiet=args.quiet,
        # parsed here, so a typo in a bend is reported before the model loads
        bends=parse_bends(args.bend, args.bends), parallel=args.parallel, cp=args.cp,
    )
    if args.step_buffers < 1:
        raise PaikError(f"--step-buffers {args.step_buffers}: needs at least 1 (or --keep-on-device)")
    buffers = None if args.keep_on_device else args.step_buffers
    if args.no_bends and args.replay is None:
        raise PaikError("--no-bends is for --replay BUNDLE (regenerate a take unbent); a new take has no bends "
                        "unless --bend/--bends give some")
    if args.no_bends and args.twin:
        raise PaikError("--no-bends --twin: an unbent take has no twin to make; give one of them")
    if args.replay is None:
        opts = GenerateOptions(**fields, step_buffers=buffers)
        if args.twin:
            generate_twin(opts)
        else:
            generate(opts)
        return 0
    from paik.capture.replay import replay_options

    # only the flags given (those that differ from their defaults) replace the take's settings
    dest = {"capture_blocks": "blocks"}
    given = {k: v for k, v in fields.items() if k not in ("out", "bends") and getattr(args, dest.get(k, k))
             != args._parser.get_default(dest.get(k, k))}
    if fields["bends"]:
        given["bends"] = fields["bends"]  # refused by replay_options, with the reason
    opts = replay_options(args.replay, args.out, no_bends=args.no_bends, **given)
    opts.step_buffers = buffers
    if args.twin:
        generate_twin(opts)
    else:
        generate(opts)
    return 0


def _info(args) -> int:
    import json

    from paik.capture.bundle import open_bundle
    from paik.errors import BundleError

    # strict=False: a bundle whose step files are damaged is still summarized, with the broken
    # ones listed, and then reported as an error (exit 2), never as "complete"
    b = open_bundle(args.bundle, strict=False)
    print(json.dumps(b.manifest, indent=1, ensure_ascii=False) if args.json else b.summary(), flush=True)
    if b.broken:
        first = next(iter(b.broken.values()))
        raise BundleError(f"{len(b.broken)} of {len(b.steps)} step files are damaged (first: {first}); "
                          "regenerate the bundle")
    return 0


def _bench(args) -> int:
    from paik.capture.bench import run_bench

    return run_bench(args)
