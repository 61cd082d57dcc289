"""``paik bench capture``: what capture costs, on a full-size architecture with random weights.

A denoising step is what WanPipeline does per step: a conditional and an unconditional forward
of the transformer, each inside ``cache_context`` (so the capture hook sees the real pass
names). Variants alternate (none, capture, none, capture, ...) so slow drift of clocks or
temperature hits both; each variant's figure is its best repeat. Peak memory is measured per
variant from a clean allocator state; the capture store is allocated inside its variant, so
its peak includes the maps.

``--parallel N`` runs the same measurement on N ranks of one context-parallel transformer
(diffusers' ``enable_parallelism``; :func:`paik.capture.parallel.run_ranks` spawns them): the clock
starts after a barrier, a step's time is the slowest rank's, and each rank's peak is its own GPU's.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time

import torch

from paik.capture.api import capture_attention
from paik.capture.layout import GiB, Layout
from paik.errors import PaikError

CONFIGS = {
    "wan2.1-1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    "wan2.1-14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
    "tiny": dict(num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=3),
}


def build_transformer(name: str, device, dtype):
    from diffusers import WanTransformer3DModel

    c = CONFIGS[name]
    text_dim = 32 if name == "tiny" else 4096
    with torch.device(device):
        model = WanTransformer3DModel(  # the Wan2.1 configs of Wan-AI/Wan2.1-T2V-*-Diffusers
            patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=text_dim, freq_dim=256,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024, **c,
        )
    model = model.to(dtype).eval()
    # as from_pretrained does: these stay float32 in the real model, so they cost what they cost there
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, param in model.named_parameters():
        if keep.intersection(name.split(".")):
            param.data = param.data.float()
    return model, text_dim


def synthetic_inputs(model, text_dim: int, frames: int, height: int, width: int, n_real: int, dev, dtype,
                     seq: int = 512):
    """Latents of a video of that size and cond/uncond text embeddings (``n_real`` real tokens, 40
    for the negative prompt, zero padding to ``seq``), seeded: (latents, ctx, nctx, grid)."""
    lf, lh, lw = (frames - 1) // 4 + 1, height // 8, width // 8
    grid = (lf, lh // 2, lw // 2)
    gen = torch.Generator(device="cpu").manual_seed(0)
    latents = torch.randn(1, 16, lf, lh, lw, generator=gen).to(dev, dtype)
    ctx = torch.zeros(1, seq, text_dim)
    ctx[:, :n_real] = torch.randn(1, n_real, text_dim, generator=gen)
    nctx = torch.zeros(1, seq, text_dim)
    nctx[:, :40] = torch.randn(1, 40, text_dim, generator=gen)
    return latents, ctx.to(dev, dtype), nctx.to(dev, dtype), grid


def denoise(model, latents, ctx, nctx, n_steps: int, dev) -> None:
    """What WanPipeline does per step: a cond and an uncond forward, each in its cache_context."""
    for i in range(n_steps):
        t = torch.tensor([1000.0 * (1 - i / max(n_steps, 1))], device=dev)
        kw = dict(step_index=i, sigma=float(t) / 1000, num_inference_steps=n_steps)
        with model.cache_context("cond", **kw):
            model(latents, t, ctx, return_dict=False)
        with model.cache_context("uncond", **kw):
            model(latents, t, nctx, return_dict=False)


def setup(args):
    """The full-size transformer (random weights, bf16 on CUDA) and its seeded inputs at the size
    ``args`` names: (device, cuda, dtype, model, latents, ctx, nctx, grid)."""
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    model, text_dim = build_transformer(args.config, dev, dtype)
    latents, ctx, nctx, grid = synthetic_inputs(model, text_dim, args.frames, args.height, args.width, args.tokens,
                                                dev, dtype)
    return dev, cuda, dtype, model, latents, ctx, nctx, grid


def measurer(args, model, latents, ctx, nctx, grid, dev, shard=None):
    """``measure(variant)`` -> {variant, ms_per_step, peak_gib}: one timed run of ``args.steps``
    denoising steps without capture ("none"), with it ("capture"), or with it and every step written
    to a bundle in ``args.write`` ("capture+write"). ``shard=(rank, world)``: this is one rank of a
    context-parallel model (torch.distributed initialized); every rank must measure the same variants
    in the same order, and the clock starts after a barrier, on every rank together."""
    cuda = dev.type == "cuda"
    n_real, seq = args.tokens, 512

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)
        if shard is not None:
            import torch.distributed as dist

            dist.barrier()

    def run(n_steps: int):
        denoise(model, latents, ctx, nctx, n_steps, dev)

    def capture(n_steps: int, out=None):
        return capture_attention(model, n_tokens=n_real, num_steps=n_steps, grid=grid, device=dev,
                                 max_sequence_length=seq, max_gb=float("inf"), out=out, overwrite=True, shard=shard)

    def bundle_dir():
        if shard is None:
            return tempfile.mkdtemp(prefix="paik-bench-", dir=args.write)
        import torch.distributed as dist

        # one bundle for all ranks: rank 0 names it, every rank writes its own part into it
        name = [tempfile.mkdtemp(prefix="paik-bench-", dir=args.write) if shard[0] == 0 else None]
        dist.broadcast_object_list(name, src=0)
        return name[0]

    def measure(variant: str) -> dict:
        import gc

        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        cap = tmp = None
        with torch.inference_mode():
            if variant == "none":
                run(1)  # warm-up outside the timed region
            else:
                with capture(1):  # one step through the capture path, not timed (kernels, allocator)
                    run(1)
                if variant == "capture+write":
                    tmp = bundle_dir()
                gc.collect()  # the warm-up's one-step store (a capture holds reference cycles) is gone
                if cuda:  # before the peak of the measured run starts counting
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(dev)
                cap = capture(args.steps, tmp)  # store allocated (and bundle opened) before the clock starts
            sync()
            t0 = time.perf_counter()
            if cap is None:
                run(args.steps)
            else:
                with cap:  # leaving it writes the last step and closes the bundle: timed, as a run pays it
                    run(args.steps)
            if cuda:
                torch.cuda.synchronize(dev)
            seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(dev) / GiB if cuda else float("nan")
        result = {"variant": variant, "ms_per_step": 1e3 * seconds / args.steps, "peak_gib": peak}
        if tmp:
            import shutil

            if shard is not None:
                sync()  # every rank has closed its part
            if shard is None or shard[0] == 0:
                shutil.rmtree(tmp, ignore_errors=True)
        del cap
        return result

    return measure


def run_bench(args) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise PaikError("paik bench capture needs a CUDA GPU (use --device cpu with --config tiny to try it here)")
    if getattr(args, "parallel", 1) != 1:
        return run_bench_parallel(args)
    dev, cuda, dtype, model, latents, ctx, nctx, grid = setup(args)
    c = model.config
    n_real, seq = args.tokens, 512
    positions = grid[0] * grid[1] * grid[2]
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    print(f"paik bench capture: {name}, {args.config} ({c.num_layers} blocks x {c.num_attention_heads} heads), "
          f"{args.height}x{args.width}x{args.frames} -> {grid[0]}x{grid[1]}x{grid[2]} = {positions} video tokens, "
          f"{n_real} real tokens, {args.steps} steps (cond+uncond), {dtype}".replace("torch.", ""), flush=True)

    layout = Layout(steps=list(range(args.steps)), blocks=list(range(c.num_layers)), heads=c.num_attention_heads,
                    head_mean=False, n_heads=c.num_attention_heads, tokens=list(range(n_real)), latent=grid,
                    n_real=n_real, seq_len=seq)
    measure = measurer(args, model, latents, ctx, nctx, grid, dev)

    variants = ["none", "capture"] + (["capture+write"] if args.write else [])
    runs = []
    for r in range(args.repeats):
        for v in variants:
            res = measure(v)
            print(f"  repeat {r}: {v:14s} {res['ms_per_step']:9.1f} ms/step  peak {res['peak_gib']:.2f} GiB"
                  if cuda else f"  repeat {r}: {v:14s} {res['ms_per_step']:9.1f} ms/step",
                  flush=True)
            runs.append(res)
    best = {v: min((x for x in runs if x["variant"] == v), key=lambda x: x["ms_per_step"]) for v in variants}
    base = best["none"]
    map_gib = layout.bytes / GiB
    print(f"\n{'variant':16s}{'ms/step':>10s}{'ratio':>8s}{'peak GiB':>10s}")
    for v in variants:
        b = best[v]
        print(f"{v:16s}{b['ms_per_step']:10.1f}{b['ms_per_step'] / base['ms_per_step']:8.3f}{b['peak_gib']:10.2f}")
    cap = best["capture"]
    budget = base["peak_gib"] + map_gib + 0.5
    print(f"\nmaps + padding stored: {map_gib:.2f} GiB ({args.steps} steps x {c.num_layers} blocks x "
          f"{c.num_attention_heads} heads x {n_real} tokens x {positions} positions, float16)")
    memory = (f"peak {cap['peak_gib']:.2f} GiB vs none + maps + 0.5 = {budget:.2f} GiB "
              f"({'within' if cap['peak_gib'] <= budget else 'OVER'})" if math.isfinite(budget)
              else "peak memory is measured on CUDA only")  # not 'nan GiB (OVER)' on --device cpu
    print(f"time ratio capture/none = {cap['ms_per_step'] / base['ms_per_step']:.3f} (goal <= 1.02); {memory}")
    out = {"device": name, "config": args.config, "grid": grid, "tokens": n_real, "steps": args.steps,
           "map_gib": map_gib, "best": best, "runs": runs,
           "ratio": cap["ms_per_step"] / base["ms_per_step"], "peak_budget_gib": budget}
    if args.check:
        out["check"] = check_against_reference(model, layout, dev, latents, ctx)
        print(f"max |capture - fp32 softmax over all {seq} keys| = {out['check']['max_abs_err']:.2e} "
              f"(goal <= 1e-3), max |sum - 1| = {out['check']['max_sum_err']:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def reference_probs(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """softmax(QK^T/sqrt(d)) over ALL keys in float32, independent of the real+1 shortcut:
    query [S, H, D], key [L, H, D] -> [H, L, S]."""
    logits = torch.einsum("shd,lhd->hls", query.float(), key.float()) / math.sqrt(query.shape[-1])
    return torch.softmax(logits, dim=1)


def check_against_reference(model, layout: Layout, dev, latents, ctx, blocks=(0, 15, 29), shard=None) -> dict:
    """Capture one cond forward and compare blocks against :func:`reference_probs` computed from
    q and k recorded by forward hooks on ``attn2.norm_q`` / ``attn2.norm_k``. ``shard=(rank,
    world)``: one rank of a context-parallel model: its own positions' q against its own store."""
    blocks = [b for b in blocks if b < len(model.blocks)]
    qk, handles = {}, []
    for b in blocks:
        a = model.blocks[b].attn2
        handles.append(a.norm_q.register_forward_hook(lambda m, i, o, b=b: qk.__setitem__((b, "q"), o)))
        handles.append(a.norm_k.register_forward_hook(lambda m, i, o, b=b: qk.__setitem__((b, "k"), o)))
    try:
        with capture_attention(model, n_tokens=layout.n_real, num_steps=1, grid=layout.latent, device=dev,
                               blocks=layout.blocks, max_sequence_length=layout.seq_len,
                               max_gb=float("inf"), shard=shard) as cap, torch.inference_mode():
            model(latents, torch.tensor([900.0], device=dev), ctx, return_dict=False)
    finally:
        for h in handles:
            h.remove()
    store = cap.store
    heads, n = layout.n_heads, layout.n_real
    err = sum_err = 0.0
    for b in blocks:
        q = qk[(b, "q")][0].unflatten(-1, (heads, -1))
        k = qk[(b, "k")][0].unflatten(-1, (heads, -1))
        ref = reference_probs(q, k)  # [H, L, S]
        got = store.maps[0, layout.blocks.index(b)].float().flatten(2)  # [H, T, S]
        pad = store.padding[0, layout.blocks.index(b)].float().flatten(1)
        err = max(err, (got - ref[:, layout.tokens]).abs().max().item(),
                  (pad - ref[:, n:].sum(1)).abs().max().item())
        sum_err = max(sum_err, (got.sum(1) + pad - 1).abs().max().item())
        del ref
    return {"blocks": blocks, "max_abs_err": err, "max_sum_err": sum_err}


# -- paik bench capture --parallel N ---------------------------------------------------------------
_ARG_FIELDS = ("config", "steps", "frames", "height", "width", "tokens", "repeats", "check", "write", "json",
               "device", "parallel", "cp")


def run_bench_parallel(args) -> int:
    """``paik bench capture --parallel N``: N ranks (NCCL, one GPU each, on CUDA; gloo on the CPU)
    each hold the whole transformer made context-parallel with diffusers' own
    ``enable_parallelism``, and time the same alternating variants as one GPU does; rank 0 reports
    the slowest rank's step time, every rank's peak memory and the largest capture a rank holds."""
    from types import SimpleNamespace

    from paik.capture.parallel import check_model, check_parallel, run_ranks

    n, cp = args.parallel, getattr(args, "cp", "ulysses")
    if args.device == "cpu":
        cuda = False
    elif args.device == "cuda":
        cuda = True
    else:
        raise PaikError(f"--device {args.device} with --parallel: rank r takes cuda:r; give --device cuda or cpu")
    check_parallel(n, cp, cuda)
    c = CONFIGS[args.config]
    grid = ((args.frames - 1) // 4 + 1, args.height // 16, args.width // 16)
    check_model(SimpleNamespace(num_heads=c["num_attention_heads"]), n, cp, grid)
    plain = SimpleNamespace(**{k: getattr(args, k, None) for k in _ARG_FIELDS})
    run_ranks(n, _bench_rank, plain, use_cuda=cuda, what="paik bench capture --parallel")
    return 0


def _bench_rank(rank, world, device, args):
    import dataclasses
    from types import SimpleNamespace

    import torch.distributed as dist

    from paik.capture import compat
    from paik.capture.layout import equal_shards

    shard = (rank, world)
    lead = rank == 0
    mine = SimpleNamespace(**{**vars(args), "device": device})
    torch.manual_seed(0)  # the same random weights on every rank, as a real checkpoint would be
    dev, cuda, dtype, model, latents, ctx, nctx, grid = setup(mine)
    compat.enable_context_parallel(model, world, args.cp)
    c = model.config
    positions = grid[0] * grid[1] * grid[2]
    local = positions // world
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    card = torch.cuda.get_device_properties(dev).total_memory if cuda else None
    if lead:
        print(f"paik bench capture: {world} x {name} ({'NCCL' if cuda else 'gloo'}), {args.config} "
              f"({c.num_layers} blocks x {c.num_attention_heads} heads), {args.height}x{args.width}x{args.frames} -> "
              f"{grid[0]}x{grid[1]}x{grid[2]} = {positions} video tokens, {args.cp} context parallelism: {local} a "
              f"rank, {args.tokens} real tokens, {args.steps} steps (cond+uncond), {dtype}".replace("torch.", ""),
              flush=True)
    layout = Layout(steps=list(range(args.steps)), blocks=list(range(c.num_layers)), heads=c.num_attention_heads,
                    head_mean=False, n_heads=c.num_attention_heads, tokens=list(range(args.tokens)), latent=grid,
                    n_real=args.tokens, seq_len=512, shards=equal_shards(positions, world))
    measure = measurer(mine, model, latents, ctx, nctx, grid, dev, shard=shard)
    variants = ["none", "capture"] + (["capture+write"] if args.write else [])
    runs = []  # per repeat and variant: every rank's result
    for r in range(args.repeats):
        for v in variants:
            res = measure(v)
            every = [None] * world
            dist.all_gather_object(every, res)
            runs.append({"variant": v, "repeat": r, "ms_per_step": max(x["ms_per_step"] for x in every),
                         "ms_per_step_per_rank": [x["ms_per_step"] for x in every],
                         "peak_gib_per_rank": [x["peak_gib"] if cuda else None for x in every]})
            if lead:
                peaks = ("  peak/rank " + " ".join(f"{x:.2f}" for x in runs[-1]["peak_gib_per_rank"]) + " GiB"
                         if cuda else "")
                print(f"  repeat {r}: {v:14s} {runs[-1]['ms_per_step']:9.1f} ms/step (slowest rank){peaks}", flush=True)
    check = None
    if args.check:
        mine_check = check_against_reference(model, dataclasses.replace(layout, steps=[0]), dev, latents, ctx,
                                             shard=shard)
        every = [None] * world
        dist.all_gather_object(every, mine_check)
        check = {"blocks": mine_check["blocks"], "max_abs_err": max(x["max_abs_err"] for x in every),
                 "max_sum_err": max(x["max_sum_err"] for x in every)}
    cards = [None] * world
    dist.all_gather_object(cards, card)
    if lead:
        report_parallel(args, name, grid, layout, runs, variants, cards, check, cuda)


def fit_per_rank(layout: Layout, base_gib: float, capture_gib: float, card_bytes: int, steps: int) -> dict:
    """The largest capture one rank holds, from what it measured: its card, its peak without
    capture, and what capture added beyond its maps (the working memory of the capture path);
    the maps of one step are the layout's own per-rank size."""
    from paik.capture.bench_project import RESERVE_GIB

    import dataclasses

    step = dataclasses.replace(layout, steps=[0]).bytes
    unit = step // (len(layout.tokens) + 1)  # one map slot ([blocks x heads x positions a rank]) of one step
    maps = layout.bytes / GiB
    extra = max(0.0, capture_gib - base_gib - maps)
    free = card_bytes - (base_gib + extra + RESERVE_GIB) * GiB
    return {"card_gib": card_bytes / GiB, "capture_overhead_gib": extra,
            "max_steps_at_tokens": max(0, int(free // step)),
            "max_tokens_at_steps": max(0, int(free // (steps * unit)) - 1)}


def report_parallel(args, name, grid, layout, runs, variants, cards, check, cuda) -> dict:
    from paik.capture.bench_project import RESERVE_GIB

    world = len(cards)
    best = {v: min((x for x in runs if x["variant"] == v), key=lambda x: x["ms_per_step"]) for v in variants}
    base, cap = best["none"], best["capture"]
    map_gib = layout.bytes / GiB
    ratio = cap["ms_per_step"] / base["ms_per_step"]
    print(f"\n{'variant':16s}{'ms/step':>10s}{'ratio':>8s}  peak GiB per rank")
    for v in variants:
        b = best[v]
        peaks = " ".join(f"{x:.2f}" for x in b["peak_gib_per_rank"]) if cuda else "n/a (measured on CUDA only)"
        print(f"{v:16s}{b['ms_per_step']:10.1f}{b['ms_per_step'] / base['ms_per_step']:8.3f}  {peaks}")
    print(f"\nmaps + padding stored per rank: {map_gib:.3g} GiB ({args.steps} steps x {len(layout.blocks)} blocks x "
          f"{layout.heads} heads x {args.tokens} tokens x {layout.rank_positions} of {layout.positions} positions, "
          "float16)")
    print(f"time ratio capture/none = {ratio:.3f} (goal <= 1.02); step time {cap['ms_per_step']:.1f} ms with "
          f"capture, {base['ms_per_step']:.1f} ms without (the slowest of {world} ranks)")
    fits = None
    if cuda:
        fits = [fit_per_rank(layout, base["peak_gib_per_rank"][r], cap["peak_gib_per_rank"][r], cards[r],
                             args.steps) for r in range(world)]
        steps_fit = min(f["max_steps_at_tokens"] for f in fits)
        tokens_fit = min(f["max_tokens_at_steps"] for f in fits)
        print(f"largest capture per rank (every block and head; what a {cards[0] / GiB:.1f} GiB GPU keeps beside "
              f"the peak without capture, the capture path's own {max(f['capture_overhead_gib'] for f in fits):.2f} "
              f"GiB and a {RESERVE_GIB:g} GiB reserve): {steps_fit} steps x {args.tokens} tokens, or "
              f"{args.steps} steps x {tokens_fit} tokens")
    else:
        print("largest capture per rank: GPU memory is measured on CUDA only")
    if check is not None:
        print(f"max |capture - fp32 softmax over all 512 keys| = {check['max_abs_err']:.2e} (goal <= 1e-3), "
              f"max |sum - 1| = {check['max_sum_err']:.2e} (every rank's own positions)")
    out = {"device": name, "config": args.config, "parallel": world, "cp": args.cp, "grid": list(grid),
           "positions_per_rank": layout.rank_positions, "tokens": args.tokens, "steps": args.steps,
           "map_gib_per_rank": map_gib, "best": best, "runs": runs, "ratio": ratio,
           "step_ms": {"none": base["ms_per_step"], "capture": cap["ms_per_step"]},
           "peak_gib_per_rank": {v: best[v]["peak_gib_per_rank"] if cuda else None for v in variants},
           "fits_per_rank": fits, "check": check}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: paik bench capture")
