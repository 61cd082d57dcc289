"""``paik bench parallel-plan``: what N GPUs will hold under context parallelism, projected from
one measured single-GPU run of ``paik bench capture --json``.

Under diffusers' context parallelism for Wan every rank keeps the whole transformer and 1/N of
the video positions; the capture shards itself by position, so each rank stores 1/N of every
map. The projection takes, from the measured run: the peak without capture (weights plus the
working memory of one step), splits it into the weights (counted exactly, by building the
architecture on the meta device) and the working memory, scales the working memory with the
positions a rank holds, and fills what is left of the card with map steps (each step: the tokens and the padding's map, of
[blocks x heads x positions / N] float16: the layout's own size). It is a projection: the
benchmark on N GPUs measures it."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from paik.capture.layout import GiB, Layout
from paik.errors import PaikError

RESERVE_GIB = 2.0  # the allocator's slack, NCCL buffers and the all-to-all's own temporaries


def weight_bytes(config: str) -> int:
    """Parameter bytes of the architecture as the benchmark builds it (bfloat16, the fp32-kept
    modules in float32), counted on the meta device: nothing is allocated."""
    import torch

    from paik.capture.bench import build_transformer

    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()  # the fp32-kept modules are kept by build_transformer itself
    try:
        model, _ = build_transformer(config, "meta", torch.bfloat16)
    finally:
        dlog.set_verbosity(level)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def latent_grid(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """[F', H', W'] of the transformer's positions for Wan2.1 (VAE 4x8x8, patch 1x2x2)."""
    return ((frames - 1) // 4 + 1, height // 16, width // 16)


def project(measured: dict, gpus: list[int], frames: int, height: int, width: int, tokens: int, steps: int,
            card_gib: float, weights: int | None = None) -> dict:
    from paik.capture.bench import CONFIGS

    config = measured["config"]
    if config not in CONFIGS:
        raise PaikError(f"the measurement is of {config!r}; the projection knows {', '.join(CONFIGS)}")
    c = CONFIGS[config]
    weights = weight_bytes(config) if weights is None else weights
    f0, h0, w0 = measured["grid"]
    measured_positions = f0 * h0 * w0
    working = measured["best"]["none"]["peak_gib"] * GiB - weights
    if working <= 0:
        raise PaikError("the measured peak is below the weights: not a measurement of this architecture")
    grid = latent_grid(frames, height, width)
    positions = math.prod(grid)
    rows = []
    for n in gpus:
        if n < 1 or c["num_attention_heads"] % n:
            raise PaikError(f"{n} GPUs: Ulysses needs the {c['num_attention_heads']} heads to divide by the GPU count")
        local = math.ceil(positions / n)
        # the store's own size: each step holds the captured tokens and the padding's map
        step = Layout(steps=[0], blocks=list(range(c["num_layers"])), heads=c["num_attention_heads"], head_mean=False,
                      n_heads=c["num_attention_heads"], tokens=list(range(tokens)), latent=(1, 1, local),
                      n_real=tokens, seq_len=512).bytes
        unit = step // (tokens + 1)  # one map slot of one step
        work = working * local / measured_positions
        free = card_gib * GiB - weights - work - RESERVE_GIB * GiB
        rows.append({
            "gpus": n, "positions_per_gpu": local, "weights_gib": weights / GiB, "working_gib": work / GiB,
            "capture_gib_per_gpu": steps * step / GiB,
            "peak_gib_per_gpu": (weights + work + steps * step) / GiB,
            "fits": free >= steps * step,
            "max_steps_at_tokens": max(0, int(free // step)),
            "max_tokens_at_steps": max(0, int(free // (steps * unit)) - 1),
        })
    total = steps * (tokens + 1) * c["num_layers"] * c["num_attention_heads"] * positions * 2
    return {"config": config, "from": measured.get("device"), "grid": list(grid), "positions": positions,
            "steps": steps, "tokens": tokens, "card_gib": card_gib, "capture_gib_total": total / GiB,
            "reserve_gib": RESERVE_GIB, "rows": rows}


def register(bench) -> None:
    p = bench.add_parser(
        "parallel-plan", help="project what N GPUs hold under context parallelism from one measured run",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Reads a single-GPU `paik bench capture --json` result and projects, for each GPU count, the "
                    "memory per GPU and the largest capture (steps x tokens) that fits at the size asked. "
                    "A projection; `paik generate --parallel N` on N GPUs measures it.")
    p.add_argument("measured", help="a `paik bench capture --json` file (e.g. bench/capture-14b-480p-h200.json)")
    p.add_argument("--gpus", default="1,2,4,8", help="GPU counts, comma-separated")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--card-gib", type=float, default=139.8, help="memory of one GPU (H200: 139.8 GiB)")
    p.add_argument("--json", default=None, help="also write the projection as JSON here")
    p.set_defaults(func=_main)


def _main(args) -> int:
    path = Path(args.measured)
    try:
        measured = json.loads(path.read_text())
        if isinstance(measured, dict) and measured.get("parallel", 1) != 1:
            raise PaikError(f"{path}: a `paik bench capture --parallel {measured['parallel']}` result; the "
                            "projection starts from one GPU (run paik bench capture without --parallel)")
        measured["best"]["none"]["peak_gib"], measured["grid"], measured["config"]  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PaikError(f"{path}: not a `paik bench capture --json` result ({type(e).__name__}: {e})") from None
    try:
        gpus = [int(x) for x in args.gpus.split(",") if x.strip()]
    except ValueError:
        raise PaikError(f"--gpus {args.gpus!r}: expected counts like 1,2,4,8") from None
    r = project(measured, gpus, args.frames, args.height, args.width, args.tokens, args.steps, args.card_gib)
    f, h, w = r["grid"]
    print(f"{r['config']} at {args.height}x{args.width}x{args.frames} ({f}x{h}x{w} = {r['positions']:,} positions), "
          f"{args.steps} steps x {args.tokens} tokens, every block and head: {r['capture_gib_total']:.1f} GiB of maps "
          f"(projected from {path.name}, measured on {r['from']}; {args.card_gib:g} GiB a GPU)")
    print(f"{'GPUs':>4} {'weights':>8} {'working':>8} {'maps/GPU':>9} {'peak/GPU':>9} {'fits':>5} "
          f"{'steps@' + str(args.tokens) + 'tok':>12} {'tokens@' + str(args.steps) + 'st':>12}")
    for row in r["rows"]:
        print(f"{row['gpus']:>4} {row['weights_gib']:>7.1f}G {row['working_gib']:>7.1f}G {row['capture_gib_per_gpu']:>8.1f}G "
              f"{row['peak_gib_per_gpu']:>8.1f}G {'yes' if row['fits'] else 'no':>5} {row['max_steps_at_tokens']:>12} "
              f"{row['max_tokens_at_steps']:>12}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0
