"""``paik bench bend``: what a bend costs on top of capture, on a full-size architecture with
random weights (the same cost as the real weights).

Every variant captures every block, head and token (as ``paik bench capture`` does) through
``capture_attention``; a bent variant also has one bend active on every block and step of the
conditional pass (the default), on one word of two pieces. Variants alternate per repeat, so
drift hits all of them; each variant's figure is its best repeat. ``inactive`` carries a bend
whose steps lie beyond the run: it must cost what capture costs (nothing extra runs).
"""

from __future__ import annotations

import json
import time

import torch

from paik.capture.api import capture_attention
from paik.capture.bench import denoise, setup
from paik.capture.bend import parse_bend, resolve_bends
from paik.capture.tokens import Token
from paik.errors import PaikError

# one line per operation (inject needs a second take of the same layout: it is the cost of mix,
# which "gain" bounds from above, and is left out here)
OPS = {
    "gain": "gain w 2", "mute": "mute w", "swap": "swap w v", "shift": "shift w 0.2 0.1", "rotate": "rotate w 30",
    "flip": "flip w h", "zoom": "zoom w 1.5", "blur": "blur w 1.5", "sharpen": "sharpen w 1", "mask": "mask w circle",
}


def run(args) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise PaikError("paik bench bend needs a CUDA GPU (use --device cpu with --config tiny to try it here)")
    ops = list(OPS) if not args.ops else [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad:
        raise PaikError(f"--ops: unknown {', '.join(bad)}; operations: {', '.join(OPS)}")
    if args.steps < 1 or args.repeats < 1 or args.tokens < 4:
        raise PaikError("--steps and --repeats must be at least 1, --tokens at least 4")
    dev, cuda, dtype, model, latents, ctx, nctx, grid = setup(args)
    c = model.config
    n_real, seq = args.tokens, 512
    # a prompt of n_real pieces; word "w" has two pieces (1, 2), word "v" one (3)
    words = ["a", "w", "w", "v"] + [f"x{i}" for i in range(n_real - 4)]
    wi = {"a": 0, "w": 1, "v": 2}
    table = [Token(i, i, w, w, wi.get(w, i - 1), False) for i, w in enumerate(words)]
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    print(f"paik bench bend: {name}, {args.config} ({c.num_layers} blocks x {c.num_attention_heads} heads), "
          f"{args.height}x{args.width}x{args.frames} -> {grid[0]}x{grid[1]}x{grid[2]} video tokens, {n_real} real "
          f"tokens, {args.steps} steps (cond+uncond), every block, head and token captured", flush=True)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def run(n_steps: int):
        denoise(model, latents, ctx, nctx, n_steps, dev)

    def bends(line: str | None, n_steps: int):
        if line is None:
            return None
        return resolve_bends([parse_bend(line)], table, None, c.num_layers, c.num_attention_heads, n_steps, grid)

    def measure(variant: str) -> float:
        line = None if variant == "capture" else (f"gain w 2 steps {args.steps + 5}" if variant == "inactive"
                                                  else OPS[variant])
        n_total = args.steps + 10 if variant == "inactive" else args.steps
        with torch.inference_mode():
            warm = capture_attention(model, n_tokens=n_real, num_steps=1, grid=grid, device=dev,
                                     max_sequence_length=seq, max_gb=float("inf"))
            with warm:  # kernels and allocator outside the clock
                warm.recorder.bends = bends(line if variant != "inactive" else None, 1)
                run(1)
            del warm
            cap = capture_attention(model, n_tokens=n_real, num_steps=n_total, grid=grid, device=dev,
                                    max_sequence_length=seq, max_gb=float("inf"))
            cap.recorder.bends = bends(line, n_total)
            sync()
            t0 = time.perf_counter()
            with cap:
                run(args.steps)
            sync()
            seconds = time.perf_counter() - t0
        del cap
        if cuda:
            torch.cuda.empty_cache()
        return 1e3 * seconds / args.steps

    variants = ["capture", "inactive", *ops]
    best: dict[str, float] = {}
    for r in range(args.repeats):
        for v in variants:
            ms = measure(v)
            best[v] = min(best.get(v, float("inf")), ms)
            print(f"  repeat {r}: {v:10s} {ms:9.1f} ms/step", flush=True)
    base = best["capture"]
    print(f"\n{'variant':12s}{'ms/step':>10s}{'vs capture':>12s}")
    for v in variants:
        print(f"{v:12s}{best[v]:10.1f}{best[v] / base:12.3f}")
    worst = max(best[v] / base for v in ops) if ops else 1.0
    print(f"\nworst bend / capture-only = {worst:.3f} (goal <= 1.10); inactive / capture = "
          f"{best['inactive'] / base:.3f} (goal: 1, nothing extra runs)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "config": args.config, "grid": grid, "tokens": n_real, "steps": args.steps,
                       "ms_per_step": best, "ratio": {v: best[v] / base for v in variants}}, f, indent=1)
    return 0


def register(bench) -> None:
    import argparse

    b = bench.add_parser(
        "bend", help="cost of one bend on every block and step, per operation, vs capture alone",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Builds the Wan2.1-1.3B transformer from its config with random weights on the GPU and times "
                    "denoising steps with capture of every block, head and token, alone and with one bend "
                    "active on every block and step (the conditional pass), for each operation.")
    b.add_argument("--steps", type=int, default=5, help="denoising steps per measurement")
    b.add_argument("--frames", type=int, default=61)
    b.add_argument("--height", type=int, default=480)
    b.add_argument("--width", type=int, default=832)
    b.add_argument("--tokens", type=int, default=32, help="real prompt tokens")
    b.add_argument("--repeats", type=int, default=2)
    b.add_argument("--ops", default=None, help=f"comma-separated subset of: {', '.join(OPS)}")
    b.add_argument("--config", default="wan2.1-1.3b", choices=["wan2.1-1.3b", "wan2.1-14b", "tiny"])
    b.add_argument("--json", default=None, help="write the results as JSON here")
    b.add_argument("--device", default="cuda")
    b.set_defaults(func=run)
