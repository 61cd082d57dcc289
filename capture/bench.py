"""``paik bench capture``: what capture costs, on a full-size architecture with random weights.

A denoising step is what WanPipeline does per step: a conditional and an unconditional forward
of the transformer, each inside ``cache_context`` (so the capture hook sees the real pass
names). Variants alternate (none, capture, none, capture, ...) so slow drift of clocks or
temperature hits both; each variant's figure is its best repeat. Peak memory is measured per
variant from a clean allocator state; the capture store is allocated inside its variant, so
its peak includes the maps.
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


def run_bench(args) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise PaikError("paik bench capture needs a CUDA GPU (use --device cpu with --config tiny to try it here)")
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

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def run(n_steps: int):
        denoise(model, latents, ctx, nctx, n_steps, dev)

    def capture(n_steps: int, out=None):
        return capture_attention(model, n_tokens=n_real, num_steps=n_steps, grid=grid, device=dev,
                                 max_sequence_length=seq, max_gb=float("inf"), out=out, overwrite=True)

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
                    tmp = tempfile.mkdtemp(prefix="paik-bench-", dir=args.write)
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
            sync()
            seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(dev) / GiB if cuda else float("nan")
        result = {"variant": variant, "ms_per_step": 1e3 * seconds / args.steps, "peak_gib": peak}
        if tmp:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        del cap
        return result

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


def check_against_reference(model, layout: Layout, dev, latents, ctx, blocks=(0, 15, 29)) -> dict:
    """Capture one cond forward and compare blocks against :func:`reference_probs` computed from
    q and k recorded by forward hooks on ``attn2.norm_q`` / ``attn2.norm_k``."""
    blocks = [b for b in blocks if b < len(model.blocks)]
    qk, handles = {}, []
    for b in blocks:
        a = model.blocks[b].attn2
        handles.append(a.norm_q.register_forward_hook(lambda m, i, o, b=b: qk.__setitem__((b, "q"), o)))
        handles.append(a.norm_k.register_forward_hook(lambda m, i, o, b=b: qk.__setitem__((b, "k"), o)))
    try:
        with capture_attention(model, n_tokens=layout.n_real, num_steps=1, grid=layout.latent, device=dev,
                               blocks=layout.blocks, max_sequence_length=layout.seq_len,
                               max_gb=float("inf")) as cap, torch.inference_mode():
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: paik bench capture")
