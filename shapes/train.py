"""Train ``paik-shapes``: a small Wan (the real diffusers classes) on the procedural shapes world
of :mod:`paik.shapes.world`, saved as a diffusers folder that ``WanPipeline.from_pretrained`` loads
offline.

Stage 1 trains the VAE (``AutoencoderKLWan``, z_dim 16 and 4x temporal as Wan2.1, but 4x
rather than 8x spatial, so a 128 x 128 clip has 16 x 16 patches a frame and its maps are fine
enough to outline a shape) on shape videos (L1 + MSE, objects weighted up, a small KL), then
writes per-channel ``latents_mean``/``latents_std`` into its config. Stage 2 freezes it and a randomly initialised
umT5 encoder (fixed seed; the shipped tokenizer) and trains ``WanTransformer3DModel`` with flow
matching exactly as ``WanPipeline`` samples: ``x_t = (1-s) x0 + s noise``, target
``noise - x0``, timestep ``1000 s``, prompt embeddings from the pipeline's own
``_get_t5_prompt_embeds`` (real tokens then zeros up to 512), 10% empty captions for CFG.

Training clips are rendered on the device; the transformer draws batches from a pool of encoded
clips (latents and prompt embeddings), part of which is replaced by new clips every few steps.

Runs resume from ``--resume DIR`` (a previous ``--out``); each run stops cleanly before
``--time-budget`` seconds, saving checkpoints (each file < 16 MB) and the packed model; with
``--dit-time`` one learning-rate schedule spans several runs::

    OUT/ckpt/state.json, vae.safetensors, vae_optim.pt, dit.safetensors, dit_ema.safetensors, dit_optim.pt
    OUT/paik-shapes.tar      the diffusers folder ``paik-shapes/`` (what the repository ships)

``python -m paik.shapes.train --help`` (or ``paik train``) lists the flags.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

from paik.shapes import world as shapes

MODEL_NAME = "paik-shapes"
# Sizes the model is trained and generated at: (frames, height, width, steps, guidance, flow_shift)
GEN_DEFAULTS = {"frames": 17, "height": 128, "width": 128, "steps": 20, "guidance": 5.0, "flow_shift": 3.0}
MAX_SEQ = 512  # WanPipeline's max_sequence_length: padding length matters to the softmax
EMB_LEN = 48  # prompt positions kept per training clip (captions have at most ~25 tokens)

CONFIGS = {
    # what ships: ~3.5M transformer, ~1.9M VAE, ~0.4M text encoder
    "default": {"vae_base": 16, "vae_mult": [1, 2, 4], "vae_down": [True, True],
                "text_dim": 128, "text_layers": 2, "text_heads": 4,
                "heads": 4, "head_dim": 48, "layers": 6, "ffn": 576},
    # the same VAE and text encoder, a ~2.5x transformer (8 layers of 256): ~22 MB exported in
    # float16; train it with --vae-from to reuse a trained default VAE
    "large": {"vae_base": 16, "vae_mult": [1, 2, 4], "vae_down": [True, True],
              "text_dim": 128, "text_layers": 2, "text_heads": 4,
              "heads": 4, "head_dim": 64, "layers": 8, "ffn": 1024},
    # for CPU smoke tests only
    "smoke": {"vae_base": 4, "vae_mult": [1, 1, 1], "vae_down": [True, True],
              "text_dim": 32, "text_layers": 1, "text_heads": 2,
              "heads": 2, "head_dim": 12, "layers": 2, "ffn": 32},
}


def log(msg: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_components(config: str = "default", seed: int = 0) -> dict:
    """``WanPipeline(**...)`` keyword arguments with fresh weights (float32, CPU)."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from paik.capture.tiny import load_tokenizer

    c = CONFIGS[config]
    tokenizer = load_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        down = c["vae_down"]
        vae = AutoencoderKLWan(base_dim=c["vae_base"], z_dim=16, dim_mult=c["vae_mult"], num_res_blocks=1,
                               temperal_downsample=down, scale_factor_spatial=2 ** len(down),
                               scale_factor_temporal=2 ** sum(down))
        torch.manual_seed(seed + 1)
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=c["text_dim"], d_kv=c["text_dim"] // c["text_heads"],
            d_ff=2 * c["text_dim"], num_layers=c["text_layers"], num_heads=c["text_heads"],
            relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
            dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        ))
        torch.manual_seed(seed + 2)
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=c["heads"], attention_head_dim=c["head_dim"], in_channels=16,
            out_channels=16, text_dim=c["text_dim"], freq_dim=256, ffn_dim=c["ffn"], num_layers=c["layers"],
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
        )
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=GEN_DEFAULTS["flow_shift"])
    return {"transformer": transformer, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": scheduler}


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------

def _save_optim(opt, path: Path) -> None:
    import torch

    sd = opt.state_dict()
    for st in sd["state"].values():
        for k, v in st.items():
            if torch.is_tensor(v) and v.is_floating_point() and v.numel() > 1:
                st[k] = v.to(torch.bfloat16).cpu()  # keeps each file under 16 MB
    torch.save(sd, path)


def _load_optim(opt, path: Path) -> None:
    import torch

    if path.is_file():
        sd = torch.load(path, map_location="cpu", weights_only=True)
        for st in sd["state"].values():
            for k, v in st.items():
                if torch.is_tensor(v) and v.dtype == torch.bfloat16:
                    st[k] = v.float()
        opt.load_state_dict(sd)


def _save_weights(model, path: Path) -> None:
    from safetensors.torch import save_file

    # a copy of each: a tied pair (the text encoder's shared embedding) cannot be saved as one tensor
    save_file({k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}, str(path))


def _load_weights(model, path: Path) -> bool:
    from safetensors.torch import load_file

    if not path.is_file():
        return False
    model.load_state_dict(load_file(str(path)))
    return True


TEXT_FROZEN, TEXT_TRAINED = "random, frozen", "trained with the transformer (EMA weights)"
SHARED_KEYS = ("vae_base", "vae_mult", "vae_down", "text_dim", "text_layers", "text_heads")


def init_checkpoint(folder: Path, ckpt: Path, config: str, transformer: bool = True) -> None:
    """Start a checkpoint from an exported ``paik-shapes`` folder (e.g. the shipped one): its VAE
    (frozen, with its latent statistics), its text encoder (trained or not), its transformer as
    both the trained and the EMA weights, and its step counts; the optimizer starts afresh, so
    the LR warms up again. ``transformer=False`` takes the VAE and text encoder (stage 1 done)
    for a fresh transformer of ``config``, which must share the folder's VAE and text encoder
    settings."""
    from safetensors.torch import load_file, save_file

    info = json.loads((folder / "paik.json").read_text())
    theirs = info.get("config")
    if transformer and theirs != config:
        raise ValueError(f"it is config {theirs!r}, not {config!r}")
    if theirs not in CONFIGS or any(CONFIGS[theirs][k] != CONFIGS[config][k] for k in SHARED_KEYS):
        raise ValueError(f"its config {theirs!r} has another VAE or text encoder than {config!r}")
    vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
    parts = (("vae", "vae"), ("dit", "transformer"), ("dit_ema", "transformer")) if transformer else (("vae", "vae"),)
    for name, sub in parts:
        weights = load_file(str(folder / sub / "diffusion_pytorch_model.safetensors"))
        save_file({k: v.float().contiguous() for k, v in weights.items()}, str(ckpt / f"{name}.safetensors"))
    from transformers import UMT5EncoderModel

    text = UMT5EncoderModel.from_pretrained(folder / "text_encoder").float()
    for name in ("text", "text_ema"):  # what the folder's transformer was trained with
        _save_weights(text, ckpt / f"{name}.safetensors")
    dit_step = info["dit_steps"] if transformer else 0
    state = {"config": config, "seed": info["seed"], "vae_step": info["vae_steps"], "dit_step": dit_step,
             "clips_seen": info["clips_seen"], "latents_mean": vae_cfg["latents_mean"],
             "latents_std": vae_cfg["latents_std"], "runs": info.get("runs", []) if transformer else [],
             "optim_step0": dit_step, "decoder_step": info.get("decoder_steps", 0),
             "text_encoder": info.get("text_encoder", TEXT_FROZEN),
             "init_from" if transformer else "vae_from": str(folder)}
    (ckpt / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    what = f"dit step {dit_step} (fresh optimizer)" if transformer else f"a fresh {config!r} transformer"
    log(f"starting from {folder}: vae step {state['vae_step']}, {what}")


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

class ClipSource:
    """Training clips rendered on the device, numbered from ``start`` so resumed runs see new
    clips (seed = ``start`` + count)."""

    def __init__(self, start: int, frames: int, size: int, device, shape_only: float = 0.0, upright: bool = False):
        self.next = start
        self.frames, self.size, self.device, self.shape_only, self.upright = frames, size, device, shape_only, upright

    def take(self, n: int):
        batch = shapes.scenes("train", self.next, n, self.frames, self.shape_only, self.upright)
        self.next += n
        video, masks = shapes.render(batch, self.size, self.device)
        return video, masks, [s.caption for s in batch]


def _lr(base: float, frac: float, step: int, warmup: int) -> float:
    """Linear warmup over the first ``warmup`` steps (counted over all runs), then a cosine from
    ``base`` to ``base / 10`` as ``frac`` goes from 0 to 1."""
    w = min(1.0, (step + 1) / warmup)
    return base * w * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


# ---------------------------------------------------------------------------------------------
# stage 1: VAE
# ---------------------------------------------------------------------------------------------

def train_vae(vae, args, state, deadline: float, ckpt: Path, device, decoder_only: bool = False):
    """Stage 1: the VAE. ``decoder_only`` trains the decoder alone on the frozen encoder's latents
    (its mode, as the transformer is trained on), so a trained transformer stays valid."""
    import torch

    vae.train().requires_grad_(True)
    if decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.vae_lr, weight_decay=0.0, betas=(0.9, 0.99))
    if not decoder_only:
        _load_optim(opt, ckpt / "vae_optim.pt")
    src = ClipSource(state["clips_seen"], args.vae_frames or args.frames, args.size, device, upright=args.upright)
    pool_v, pool_m = [], []
    for i in range(0, args.vae_pool, 64):
        v, m, _ = src.take(min(64, args.vae_pool - i))
        pool_v.append(v)
        pool_m.append(m)
    pool_v, pool_m = torch.cat(pool_v), torch.cat(pool_m)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16 and device.type == "cuda")
    key = "decoder_step" if decoder_only else "vae_step"
    limit = args.decoder_steps if decoder_only else args.vae_steps
    state.setdefault(key, 0)
    t_start, step0 = time.time(), state[key]
    span = max(1.0, deadline - t_start)
    smooth = None
    g = torch.Generator(device="cpu").manual_seed(args.seed + step0)
    while state[key] < limit and time.time() < deadline:
        step = state[key]
        # refresh part of the pool with new clips
        if args.vae_refresh:
            v, m, _ = src.take(args.vae_refresh)
            idx = torch.randint(len(pool_v), (args.vae_refresh,), generator=g)
            pool_v[idx], pool_m[idx] = v, m
        idx = torch.randint(len(pool_v), (args.vae_batch,), generator=g)
        x, m = pool_v[idx], pool_m[idx].any(1, keepdim=True)
        if args.vae_crop and args.vae_crop < args.size:
            oy, ox = torch.randint(0, args.size - args.vae_crop + 1, (2,), generator=g).tolist()
            x = x[..., oy:oy + args.vae_crop, ox:ox + args.vae_crop]
            m = m[..., oy:oy + args.vae_crop, ox:ox + args.vae_crop]
        for group in opt.param_groups:
            group["lr"] = _lr(args.vae_lr, (time.time() - t_start) / span, step, 100)
        with autocast:
            with torch.set_grad_enabled(not decoder_only):
                post = vae.encode(x).latent_dist
            z = post.mode() if decoder_only else post.sample()
            rec = vae.decode(z).sample
        rec = rec.float()
        w = 1.0 + args.object_weight * m.float()
        err = rec - x
        recon = (w * (err.abs() + err.square())).mean() / w.mean()
        kl = 0.5 * (post.mean.float().square() + post.logvar.float().exp() - 1 - post.logvar.float()).mean()
        loss = recon + (0.0 if decoder_only else args.kl_weight) * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state[key] += 1
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        if state[key] % args.log_every == 0 or state[key] == 1:
            el = time.time() - t_start
            log(f"{'decoder' if decoder_only else 'vae'} step {state[key]} loss {smooth:.4f} (recon {recon.item():.4f} kl {kl.item():.2f}) "
                f"{(state[key] - step0) / max(el, 1e-6):.1f} it/s, {deadline - time.time():.0f}s left")
    state["clips_seen"] = src.next
    vae.eval().requires_grad_(False)
    _save_weights(vae, ckpt / "vae.safetensors")
    if not decoder_only:
        _save_optim(opt, ckpt / "vae_optim.pt")


def latent_stats(vae, args, device, n: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the VAE's posterior means over ``n`` training clips."""
    import torch

    src = ClipSource(10_000_000 + args.seed, args.frames, args.size, device)
    zs = []
    with torch.no_grad():
        for _ in range(max(1, n // 16)):
            v, _, _ = src.take(min(16, n))
            zs.append(vae.encode(v).latent_dist.mode().float())
    z = torch.cat(zs).transpose(0, 1).reshape(16, -1)
    return z.mean(1).tolist(), z.std(1).clamp(min=1e-3).tolist()


# ---------------------------------------------------------------------------------------------
# stage 2: transformer
# ---------------------------------------------------------------------------------------------

def encode_latents(vae, video, mean, std):
    """x0 in the pipeline's normalized latent space."""
    z = vae.encode(video).latent_dist.mode().float()
    return (z - mean) / std


def tokenize(tokenizer, caps: list[str], device):
    """Token ids and attention mask, [N, EMB_LEN] each, as the pipeline tokenizes (its padding
    cut to EMB_LEN positions: the encoder's masked attention never reads them)."""
    t = tokenizer(caps, padding="max_length", max_length=MAX_SEQ, truncation=True, add_special_tokens=True,
                  return_attention_mask=True, return_tensors="pt")
    if t.attention_mask[:, EMB_LEN:].any():
        raise RuntimeError(f"a caption has more than {EMB_LEN} tokens")
    return t.input_ids[:, :EMB_LEN].to(device), t.attention_mask[:, :EMB_LEN].to(device)


def encode_text(text_encoder, ids, mask):
    """The prompt embeddings ``_get_t5_prompt_embeds`` makes, from :func:`tokenize`'s output:
    [N, EMB_LEN, D], exactly zero after each caption's last token. Differentiable, so the text
    encoder can learn (``--text-lr``)."""
    e = text_encoder(ids, mask).last_hidden_state.float()
    return e * mask.unsqueeze(-1).to(e.dtype)


def object_coverage(masks, vae):
    """Object coverage of each latent position, [B, 1, F', H', W'] in [0, 1]: latent frame 0
    is frame 0, latent frame k frames 4k-3..4k (any object there; 4 = the VAE's temporal
    factor), then the share of each latent pixel's area."""
    import torch

    spatial, temporal = vae.config.scale_factor_spatial, vae.config.scale_factor_temporal
    m = masks.any(1, keepdim=True).float()
    m = torch.cat([m[:, :, :1], m[:, :, 1:].unflatten(2, (-1, temporal)).amax(3)], 2)
    return torch.nn.functional.avg_pool3d(m, (1, spatial, spatial)).half()


PROBE_SIGMAS = (0.7, 0.9)  # noise levels where a clip's shape is still being decided
PROBE_WORDS = ("shape", "colour", "caption")  # one-object clips
BINDING = "binding"  # two-object clips, their colour words swapped: which colour goes with which shape


def _swap_word(caption: str, word: str, other: str) -> str:
    return " ".join(other if w == word else w for w in caption.split(" "))


def probe_captions(scene: shapes.Scene, i: int) -> dict[str, str]:
    """The probe's captions for a one-object ``scene``: the true one, its shape word swapped for
    another shape, its colour word for another colour, and the empty caption. For a two-object
    scene (two colours, two shapes): the true one, and its two colour words swapped ("a red
    circle and a blue square" -> "a blue circle and a red square"), the same words, bound wrong."""
    if len(scene.objects) == 2:
        a, b = (o.colour for o in scene.objects)
        swapped = " ".join({a: b, b: a}.get(w, w) for w in scene.caption.split(" "))
        return {"true": scene.caption, BINDING: swapped}
    o = scene.objects[0]
    other_shape = shapes.SHAPES[(shapes.SHAPES.index(o.shape) + 1 + i % (len(shapes.SHAPES) - 1)) % len(shapes.SHAPES)]
    colours = list(shapes.COLOURS)
    other_colour = colours[(colours.index(o.colour) + 1 + i % (len(colours) - 1)) % len(colours)]
    return {"true": scene.caption, "shape": _swap_word(scene.caption, o.shape, other_shape),
            "colour": _swap_word(scene.caption, o.colour, other_colour), "caption": ""}


def word_reliance(model, x0, noise, weight, embs: dict, autocast=None, batch: int = 16, bar=None) -> dict:
    """How much the transformer's prediction rests on each word: the object-weighted flow-matching
    error with the true caption, and how much it grows (mean over clips) when the shape word,
    the colour word or the whole caption is replaced, or two colours swapped (``embs``: name ->
    [N, MAX_SEQ, D]; names as :func:`probe_captions`). At each of ``PROBE_SIGMAS``. A model that
    draws the named shape must lose more than nothing when told another one. ``bar`` (a tqdm)
    advances by one per forward pass: :func:`probe_forwards` of them."""
    import contextlib

    import torch

    autocast = autocast or contextlib.nullcontext()
    dtype = model.dtype  # as WanPipeline casts: a half-precision model of `paik bench words` on a GPU
    words = [k for k in embs if k != "true"]
    out = {"sigma": list(PROBE_SIGMAS), "loss": []} | {k: [] for k in words}
    with torch.no_grad():
        for s in PROBE_SIGMAS:
            xt = (1 - s) * x0 + s * noise
            err = {}
            for name, e in embs.items():
                per = []
                for i in range(0, len(x0), batch):
                    sl = slice(i, i + batch)
                    ts = torch.full((len(xt[sl]),), s * 1000.0, device=x0.device)
                    with autocast:
                        pred = model(hidden_states=xt[sl].to(dtype), timestep=ts, encoder_hidden_states=e[sl].to(dtype),
                                     return_dict=False)[0]
                    w = weight[sl]
                    per.append(((pred.float() - (noise[sl] - x0[sl])).square() * w).flatten(1).mean(1)
                               / w.flatten(1).mean(1))
                    if bar is not None:
                        bar.update()
                err[name] = torch.cat(per)
            out["loss"].append(round(err["true"].mean().item(), 5))
            for k in words:
                out[k].append(round((err[k] - err["true"]).mean().item(), 5))
    return out


def probe_forwards(n: int, captions: int, batch: int = 16) -> int:
    """Forward passes :func:`word_reliance` makes for ``n`` clips and ``captions`` embeddings."""
    return len(PROBE_SIGMAS) * captions * -(-n // batch)


def build_probe(pipe, n: int, frames: int, size: int, device, autocast=None, upright: bool = False,
                objects: int = 1, bar=None):
    """The word-reliance probe's inputs: ``n`` fixed eval clips of one object (or two:
    :func:`probe_scenes`) encoded with the pipeline's VAE (normalized latents), fixed noise,
    object weights (as ``--object-weight-dit 3``) and the embeddings of :func:`probe_captions`,
    padded as the pipeline pads. ``bar`` advances by one per batch of 16 clips encoded."""
    import contextlib

    import torch

    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)
    scenes = probe_scenes(n, frames, upright, objects)
    xs, ws = [], []
    for i in range(0, n, 16):
        video, masks = shapes.render(scenes[i:i + 16], size, device)
        with torch.no_grad(), autocast or contextlib.nullcontext():
            xs.append(encode_latents(vae, video.to(vae.dtype), mean, std))
        ws.append(1.0 + 3.0 * object_coverage(masks, vae).float())
        if bar is not None:
            bar.update()
    x0 = torch.cat(xs)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(12345)).to(device)
    return x0, noise, torch.cat(ws), probe_embeddings(pipe.tokenizer, pipe.text_encoder, scenes, device)


def build_probes(pipe, n: int, frames: int, size: int, device, autocast=None, upright: bool = False,
                 bar=None) -> dict:
    """Both probes' inputs, by objects per clip: 1 (the words) and 2 (binding)."""
    return {k: build_probe(pipe, n, frames, size, device, autocast, upright, k, bar) for k in (1, 2)}


def probe_words(model, probes: dict, autocast=None, bar=None) -> dict:
    """:func:`word_reliance` on the one-object probe, and the binding row from the two-object one."""
    r = word_reliance(model, *probes[1], autocast, bar=bar)
    r[BINDING] = word_reliance(model, *probes[2], autocast, bar=bar)[BINDING]
    return r


def probe_scenes(n: int, frames: int, upright: bool = False, objects: int = 1) -> list:
    """The probe's fixed eval scenes: seeds 0.. of one object; or, for the binding probe, the
    first ``n`` two-object scenes from seed 10000 whose objects differ in named colour and shape."""
    if objects == 1:
        return [shapes.sample_scene("eval", i, frames, n_objects=1, upright=upright) for i in range(n)]
    out, seed = [], 10000
    while len(out) < n:
        sc = shapes.sample_scene("eval", seed, frames, n_objects=2, upright=upright)
        a, b = sc.objects
        if a.named_colour and b.named_colour and a.colour != b.colour and a.shape != b.shape:
            out.append(sc)
        seed += 1
    return out


def probe_embeddings(tokenizer, text_encoder, scenes: list, device) -> dict:
    """The embeddings of :func:`probe_captions` for each scene, padded to MAX_SEQ positions as the
    pipeline pads: name -> [N, MAX_SEQ, D]."""
    import torch

    caps = [probe_captions(sc, i) for i, sc in enumerate(scenes)]
    embs = {}
    with torch.no_grad():
        for k in caps[0]:
            e = encode_text(text_encoder, *tokenize(tokenizer, [c[k] for c in caps], device))
            embs[k] = torch.zeros(len(scenes), MAX_SEQ, e.shape[-1], device=device)
            embs[k][:, :EMB_LEN] = e
    return embs


def _param_groups(model, scale: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": 0.01, "scale": scale},
            {"params": no_decay, "weight_decay": 0.0, "scale": scale}]


def train_dit(pipe, ema, text_ema, args, state, deadline: float, ckpt: Path, device):
    """Stage 2: the transformer, and with ``--text-lr`` the text encoder with it (``text_ema``
    its EMA weights, which export and the probe use)."""
    import torch

    transformer, vae, text = pipe.transformer, pipe.vae, pipe.text_encoder
    train_text = args.text_lr > 0
    mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)
    transformer.train().requires_grad_(True)
    groups = _param_groups(transformer, 1.0)
    if train_text:  # the encoder learns which words belong together ("red" with "circle")
        text.train().requires_grad_(True)
        groups += _param_groups(text, args.text_lr / args.lr)
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.99))
    _load_optim(opt, ckpt / "dit_optim.pt")
    for group, mine in zip(opt.param_groups, groups):  # this run's --text-lr; older files have no scale
        group["scale"] = mine["scale"]
    src = ClipSource(state["clips_seen"], args.frames, args.size, device, args.shape_only, args.upright)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16 and device.type == "cuda")
    ema_params, train_params = list(ema.parameters()), [p.detach() for p in transformer.parameters()]
    if train_text:
        ema_params += list(text_ema.parameters())
        train_params += [p.detach() for p in text.parameters()]
    clip_params = [p for g in groups for p in g["params"]]

    def fresh(n):
        v, m, caps = src.take(n)
        with torch.no_grad(), autocast:
            return (encode_latents(vae, v, mean, std), tokenize(pipe.tokenizer, caps, device),
                    object_coverage(m, vae) if args.object_weight_dit else None)

    t0 = time.time()
    pool_x, pool_ids, pool_mask, pool_w = [], [], [], []
    for i in range(0, args.pool, 64):
        x, (ids, m), w = fresh(min(64, args.pool - i))
        pool_x.append(x)
        pool_ids.append(ids)
        pool_mask.append(m)
        pool_w.append(w)
    pool_x, pool_ids, pool_mask = torch.cat(pool_x), torch.cat(pool_ids), torch.cat(pool_mask)
    pool_w = torch.cat(pool_w) if args.object_weight_dit else None
    empty_ids, empty_mask = tokenize(pipe.tokenizer, [""], device)
    probes = (build_probes(pipe, args.probe_clips, args.frames, args.size, device, autocast, args.upright)
              if args.probe_clips else {})
    probe_sets = {k: probe_scenes(args.probe_clips, args.frames, args.upright, k) for k in probes}

    def run_probe():
        if train_text:  # the captions as the EMA encoder now reads them
            for k, probe in probes.items():
                probe[3].update(probe_embeddings(pipe.tokenizer, text_ema, probe_sets[k], device))
        r = probe_words(ema, probes, autocast)
        state.setdefault("probes", []).append({"dit_step": state["dit_step"], **r})
        log(f"probe at dit step {state['dit_step']} (EMA, {args.probe_clips} one-object and {args.probe_clips} "
            f"two-object eval clips, sigma "
            f"{'/'.join(map(str, r['sigma']))}): loss {'/'.join(f'{x:.4f}' for x in r['loss'])}; a wrong word adds: "
            + ", ".join(f"{k} {'/'.join(f'{x:+.4f}' for x in r[k])}" for k in PROBE_WORDS + (BINDING,)))
        return r

    def probed_now() -> bool:
        return bool(state.get("probes")) and state["probes"][-1]["dit_step"] == state["dit_step"]

    if probes and not probed_now():  # where this run starts from; its time is kept for the last one
        t_probe = time.time()
        run_probe()
        deadline -= time.time() - t_probe
    log(f"dit: latent pool of {len(pool_x)} clips {tuple(pool_x.shape[1:])} in {time.time() - t0:.1f}s "
        f"(std {pool_x.std().item():.3f})")
    g = torch.Generator(device="cpu").manual_seed(args.seed + 17 + state["dit_step"])
    # noise is drawn where it is used: drawing 10M normals a step on the CPU (~80 ms) and copying
    # them over was most of the "data" time, ~45% of each step, of runs 1-3 of the shipped model
    g_dev = torch.Generator(device=device).manual_seed(args.seed + 23 + state["dit_step"])

    def loss_and_grad(model, xt, s, target, w, ids, mask):
        with autocast, torch.set_grad_enabled(train_text):
            emb = encode_text(text, ids, mask)  # zeros after each caption, and after EMB_LEN, as the pipeline pads
        emb = torch.nn.functional.pad(emb, (0, 0, 0, MAX_SEQ - EMB_LEN))
        with autocast:
            pred = model(hidden_states=xt, timestep=s * 1000.0, encoder_hidden_states=emb, return_dict=False)[0]
        err = (pred.float() - target).square()
        # object positions weighted up (--object-weight-dit): shapes, not background textures
        loss = err.mean() if w is None else (w * err).mean() / w.mean()
        loss.backward()
        return loss

    forward = transformer
    if args.compile:  # the same weights through inductor's fused kernels; the first step compiles
        forward = torch.compile(transformer)
        log("dit: torch.compile; the first step compiles (a minute or so)")
    t_start, step0 = time.time(), state["dit_step"]
    seconds0 = state.get("dit_seconds", 0.0)
    span = max(1.0, deadline - t_start)
    smooth = None
    shift = GEN_DEFAULTS["flow_shift"]
    t_data = t_model = 0.0

    def progress() -> float:  # 0 -> 1 over the LR schedule: this run, or --dit-time over all runs
        if args.dit_time:
            return (seconds0 + time.time() - t_start) / args.dit_time
        return (time.time() - t_start) / span

    while state["dit_step"] < args.steps and time.time() < deadline:
        step = state["dit_step"]
        t_a = time.time()
        if args.refresh and step % args.refresh_every == 0:
            x, (ids, m), w = fresh(args.refresh)
            idx = torch.randint(len(pool_x), (args.refresh,), generator=g).to(device)
            pool_x[idx], pool_ids[idx], pool_mask[idx] = x, ids, m
            if pool_w is not None:
                pool_w[idx] = w
        idx = torch.randint(len(pool_x), (args.batch,), generator=g).to(device)
        x0 = pool_x[idx]
        drop = (torch.rand(args.batch, generator=g) < args.caption_dropout).to(device).view(-1, 1)
        ids, mask = torch.where(drop, empty_ids, pool_ids[idx]), torch.where(drop, empty_mask, pool_mask[idx])
        u = torch.rand(args.batch, generator=g).to(device)
        shifted = shift * u / (1 + (shift - 1) * u)
        use_shift = (torch.rand(args.batch, generator=g) < 0.5).to(device)
        s = torch.where(use_shift, shifted, u).clamp(1e-3, 1.0)
        noise = torch.randn(x0.shape, generator=g_dev, device=device)
        sv = s.view(-1, 1, 1, 1, 1)
        xt = (1 - sv) * x0 + sv * noise
        target = noise - x0
        for group in opt.param_groups:
            group["lr"] = group["scale"] * _lr(args.lr, progress(), step - state.get("optim_step0", 0), args.warmup)
        t_b = time.time()
        w = 1.0 + args.object_weight_dit * pool_w[idx].float() if pool_w is not None else None
        opt.zero_grad(set_to_none=True)
        try:
            loss = loss_and_grad(forward, xt, s, target, w, ids, mask)
        except Exception as e:  # noqa: BLE001 - a compiler failure of any kind: carry on eagerly
            if forward is transformer:
                raise
            log(f"torch.compile failed at the first step ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                "training eagerly")
            forward = transformer
            opt.zero_grad(set_to_none=True)
            loss = loss_and_grad(forward, xt, s, target, w, ids, mask)
        torch.nn.utils.clip_grad_norm_(clip_params, 1.0)
        opt.step()
        with torch.no_grad():
            d = min(args.ema, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, train_params, 1 - d)
        state["dit_step"] += 1
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        t_c = time.time()
        t_data += t_b - t_a
        t_model += t_c - t_b
        if probes and args.probe_every and state["dit_step"] % args.probe_every == 0:
            run_probe()
        if state["dit_step"] % args.log_every == 0 or state["dit_step"] == 1:
            el = time.time() - t_start
            log(f"dit step {state['dit_step']} loss {smooth:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{(state['dit_step'] - step0) / max(el, 1e-6):.1f} it/s (data {t_data:.0f}s, model {t_model:.0f}s), "
                f"{deadline - time.time():.0f}s left")
    state["clips_seen"] = src.next
    state["dit_seconds"] = seconds0 + time.time() - t_start
    if probes and not probed_now():
        run_probe()
    transformer.eval().requires_grad_(False)
    text.eval().requires_grad_(False)
    _save_weights(transformer, ckpt / "dit.safetensors")
    _save_weights(ema, ckpt / "dit_ema.safetensors")
    if train_text:
        _save_weights(text, ckpt / "text.safetensors")
        _save_weights(text_ema, ckpt / "text_ema.safetensors")
    _save_optim(opt, ckpt / "dit_optim.pt")


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------

def export(components: dict, folder: Path, info: dict, dtype: str = "float16") -> Path:
    """Save a WanPipeline folder: every model in ``dtype`` (Paik loads the VAE back as float32),
    the shipped tokenizer files verbatim, and ``paik.json`` (how it was made, its defaults)."""
    import copy

    import torch
    from diffusers import WanPipeline

    from paik.capture.tiny import TOKENIZER_DIR

    td = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    comps = dict(components)
    comps["transformer"] = copy.deepcopy(components["transformer"]).to("cpu", td)
    comps["text_encoder"] = copy.deepcopy(components["text_encoder"]).to("cpu", td)
    comps["vae"] = copy.deepcopy(components["vae"]).to("cpu", td)  # loaded back as float32
    if folder.exists():
        shutil.rmtree(folder)
    WanPipeline(**comps).save_pretrained(folder)
    tok = folder / "tokenizer"
    shutil.rmtree(tok)
    shutil.copytree(TOKENIZER_DIR, tok)
    (folder / "paik.json").write_text(json.dumps({"name": MODEL_NAME, "defaults": GEN_DEFAULTS, **info}, indent=1)
                                      + "\n", encoding="utf-8")
    return folder


def trained_world(path) -> dict:
    """The shapes world a model folder was trained on (its paik.json "world"), as keyword
    arguments of :func:`paik.shapes.world.sample_scene` ({"upright": bool}); the default world
    for a folder that says nothing."""
    from paik.capture.models import read_paik_json

    w = read_paik_json(path).get("world", {})
    return {"upright": bool(w.get("upright", False)) if isinstance(w, dict) else False}


def pack(folder: Path, tar_path: Path) -> Path:
    with tarfile.open(tar_path, "w") as tf:
        tf.add(folder, arcname=folder.name)
    return tar_path


def unpack(tar_path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract ``paik-shapes.tar`` into ``dest`` (e.g. capture/assets/); returns the folder."""
    dest = Path(dest)
    with tarfile.open(tar_path) as tf:
        names = {n.split("/")[0] for n in tf.getnames()}
        tf.extractall(dest, filter="data")
    return dest / sorted(names)[0]


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder for ckpt/ and paik-shapes.tar")
    p.add_argument("--resume", default=None, help="a previous --out (its ckpt/ folder) to continue from")
    p.add_argument("--init-from", default=None,
                   help="an exported paik-shapes folder (e.g. capture/assets/paik-shapes) to continue training from, "
                        "without its optimizer state")
    p.add_argument("--vae-from", default=None,
                   help="an exported paik-shapes folder whose trained VAE (and latent statistics) and text encoder a "
                        "fresh transformer of --config trains on: skips stage 1")
    p.add_argument("--config", default="default", choices=list(CONFIGS))
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, default=420.0,
                   help="seconds for the whole run; checkpoints and the packed model are saved before it ends")
    p.add_argument("--reserve", type=float, default=25.0, help="seconds kept for saving and exporting")
    p.add_argument("--frames", type=int, default=GEN_DEFAULTS["frames"])
    p.add_argument("--size", type=int, default=GEN_DEFAULTS["height"])
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--stats-clips", type=int, default=256, help="clips for the VAE's latents_mean/std")
    g = p.add_argument_group("stage 1: VAE")
    g.add_argument("--vae-steps", type=int, default=100000, help="total VAE steps (stage 1 ends there)")
    g.add_argument("--vae-time", type=float, default=0.45, help="fraction of the budget for stage 1 in this run")
    g.add_argument("--vae-batch", type=int, default=32)
    g.add_argument("--vae-frames", type=int, default=0,
                   help="frames of VAE training clips (1 + 4k; 0: --frames). Train at the length it will decode: the "
                        "shipped VAE, trained on 9 frames, reconstructs frames 9-16 of a 17-frame clip 4-10x worse "
                        "than frames 0-8")
    g.add_argument("--tune-decoder", action="store_true",
                   help="spend the run on the VAE's decoder alone (the encoder, its latents and the transformer stay), "
                        "on --vae-frames clips: with --init-from, mends a decoder trained on shorter clips")
    g.add_argument("--decoder-steps", type=int, default=100000, help="total --tune-decoder steps")
    g.add_argument("--vae-only", action="store_true",
                   help="spend the whole run on the VAE and leave stage 1 open for a later run")
    g.add_argument("--vae-crop", type=int, default=64, help="train on random crops this size (0: whole frames)")
    g.add_argument("--vae-pool", type=int, default=512, help="clips kept rendered")
    g.add_argument("--vae-refresh", type=int, default=4, help="new clips per step")
    g.add_argument("--vae-lr", type=float, default=1e-3)
    g.add_argument("--kl-weight", type=float, default=1e-4)
    g.add_argument("--object-weight", type=float, default=3.0, help="extra loss weight on object pixels")
    g = p.add_argument_group("stage 2: transformer")
    g.add_argument("--steps", type=int, default=100000, help="total transformer steps")
    g.add_argument("--batch", type=int, default=128)
    g.add_argument("--lr", type=float, default=8e-4)
    g.add_argument("--warmup", type=int, default=200)
    g.add_argument("--dit-time", type=float, default=None,
                   help="seconds of transformer training planned over all runs: one LR schedule across resumed "
                        "runs (default: each run has its own)")
    g.add_argument("--ema", type=float, default=0.999)
    g.add_argument("--pool", type=int, default=4096, help="clips kept encoded as latents")
    g.add_argument("--refresh", type=int, default=16, help="new clips every --refresh-every steps")
    g.add_argument("--refresh-every", type=int, default=4)
    g.add_argument("--upright", action="store_true",
                   help="train in the upright world (shapes start in their canonical pose; see shapes.sample_scene); "
                        "a checkpoint keeps its world")
    g.add_argument("--caption-dropout", type=float, default=0.1)
    g.add_argument("--text-lr", type=float, default=0.0,
                   help="train the text encoder with the transformer at this peak learning rate (same schedule); "
                        "0 keeps it frozen. A frozen random encoder reads 'a red circle and a blue square' as a "
                        "bag of words: it cannot tell which colour goes with which shape")
    g.add_argument("--object-weight-dit", type=float, default=0.0,
                   help="extra loss weight on latent positions covered by objects (0: plain flow matching, as "
                        "the shipped weights were trained)")
    g.add_argument("--shape-only", type=float, default=0.0,
                   help="probability that a training caption names an object's shape without its colour "
                        "(0: every phrase names both, as the shipped weights were trained)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer for training (falls back to eager if compiling fails)")
    g.add_argument("--probe-clips", type=int, default=32,
                   help="one-object eval clips for the word-reliance probe (0: no probe)")
    g.add_argument("--probe-every", type=int, default=1000,
                   help="probe every this many steps (and at the start and end of each run; 0: there only)")
    g.add_argument("--export-dtype", default="float16", choices=["float16", "bfloat16", "float32"])


def run(args) -> int:
    import copy

    import torch
    from diffusers import WanPipeline
    from diffusers.utils import logging as dlogging

    t_begin = time.time()
    if args.object_weight_dit < 0:
        log(f"error: --object-weight-dit must be 0 or more, not {args.object_weight_dit}")
        return 2
    if args.vae_frames < 0 or args.vae_frames % 4 != 1 and args.vae_frames != 0:
        log(f"error: --vae-frames must be 1 + 4k (or 0 for --frames), not {args.vae_frames}")
        return 2
    if not 0.0 <= args.shape_only <= 1.0:
        log(f"error: --shape-only is a probability, from 0 to 1, not {args.shape_only}")
        return 2
    if args.probe_clips < 0 or args.probe_every < 0:
        log("error: --probe-clips and --probe-every must be 0 or more")
        return 2
    if args.dit_time is not None and args.dit_time <= 0:
        log(f"error: --dit-time must be positive, not {args.dit_time}")
        return 2
    dlogging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":  # fixed shapes: let cuDNN pick its fastest 3D convolutions
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    ckpt = out / "ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)
    if args.resume and Path(args.resume).resolve() != out.resolve():
        src = Path(args.resume) / "ckpt"
        if not (src / "state.json").is_file():
            log(f"error: {src}/state.json not found")
            return 2
        for f in src.iterdir():
            shutil.copy2(f, ckpt / f.name)
    if args.init_from and args.vae_from:
        log("error: give --init-from or --vae-from, not both")
        return 2
    for flag, folder in (("--init-from", args.init_from), ("--vae-from", args.vae_from)):
        if not folder:
            continue
        if args.resume or (ckpt / "state.json").is_file():
            log(f"error: {flag} starts a new checkpoint; give a fresh --out and no --resume")
            return 2
        try:
            init_checkpoint(Path(folder), ckpt, args.config, transformer=flag == "--init-from")
        except (OSError, ValueError, KeyError) as e:
            log(f"error: {flag} {folder}: {e}")
            return 2
    state = {"config": args.config, "seed": args.seed, "vae_step": 0, "dit_step": 0, "clips_seen": 0,
             "latents_mean": None, "latents_std": None, "runs": [], "optim_step0": 0}
    if (ckpt / "state.json").is_file():
        state.update(json.loads((ckpt / "state.json").read_text()))
        if state["config"] != args.config:
            log(f"error: checkpoint is config {state['config']!r}, not {args.config!r}")
            return 2
        log(f"resuming: vae step {state['vae_step']}, dit step {state['dit_step']}")
    if "upright" in state and state["upright"] != args.upright:
        log(f"error: this checkpoint trains in the {'upright' if state['upright'] else 'default'} world: "
            f"{'give' if state['upright'] else 'leave out'} --upright")
        return 2
    state["upright"] = args.upright
    if args.text_lr < 0:
        log(f"error: --text-lr must be 0 (a frozen text encoder) or more, not {args.text_lr}")
        return 2
    trains_text = state.get("optim_text", False)  # whether dit_optim.pt holds the text encoder's moments
    if (ckpt / "dit_optim.pt").is_file() and trains_text != (args.text_lr > 0):
        log("error: this checkpoint's optimizer " + ("trains the text encoder: give --text-lr" if trains_text else
            "has no text encoder in it: to train one, start a new checkpoint with --init-from an exported folder"))
        return 2
    state["optim_text"] = args.text_lr > 0
    if args.text_lr > 0:
        state["text_encoder"] = TEXT_TRAINED
    if args.tune_decoder and args.text_lr > 0:
        log("error: --tune-decoder trains the decoder alone; --text-lr trains the text encoder with the transformer")
        return 2
    if args.tune_decoder and state["dit_step"] == 0:
        log("error: --tune-decoder mends the decoder of a trained model: give --init-from FOLDER or --resume")
        return 2
    probes0 = len(state.get("probes", []))
    comps = build_components(args.config, state["seed"])
    vae, transformer = comps["vae"], comps["transformer"]
    _load_weights(vae, ckpt / "vae.safetensors")
    _load_weights(transformer, ckpt / "dit.safetensors")
    ema = copy.deepcopy(transformer)
    _load_weights(ema, ckpt / "dit_ema.safetensors")
    _load_weights(comps["text_encoder"], ckpt / "text.safetensors")  # else the seed's (or --init-from's)
    text_ema = copy.deepcopy(comps["text_encoder"])
    _load_weights(text_ema, ckpt / "text_ema.safetensors")
    for m in (vae, transformer, comps["text_encoder"], ema, text_ema):
        m.to(device)
    for m in (comps["text_encoder"], ema, text_ema):
        m.eval().requires_grad_(False)
    n_params = {k: sum(p.numel() for p in comps[k].parameters()) for k in ("vae", "text_encoder", "transformer")}
    log(f"device {device}{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, "
        f"params {n_params}, budget {args.time_budget:.0f}s")
    end = t_begin + args.time_budget - args.reserve

    def save_state():
        (ckpt / "state.json").write_text(json.dumps(state, indent=1) + "\n")

    if state["latents_mean"] is None:  # stage 1, then the VAE is frozen for good
        deadline = end if args.vae_only else min(end, time.time() + args.vae_time * args.time_budget)
        train_vae(vae, args, state, deadline, ckpt, device)
        if args.vae_only and state["vae_step"] < args.vae_steps:
            save_state()
            log(f"vae step {state['vae_step']}: stage 1 left open (--vae-only); total {time.time() - t_begin:.0f}s")
            return 0
        state["latents_mean"], state["latents_std"] = latent_stats(vae, args, device, args.stats_clips)
        log(f"vae done at step {state['vae_step']}; latents mean {np.round(state['latents_mean'], 2).tolist()} "
            f"std {np.round(state['latents_std'], 2).tolist()}")
        save_state()
    vae.register_to_config(latents_mean=state["latents_mean"], latents_std=state["latents_std"])
    if args.tune_decoder:  # this run's whole budget on the decoder; the encoder and transformer stay
        train_vae(vae, args, state, end, ckpt, device, decoder_only=True)
    vae.eval().requires_grad_(False)
    pipe = WanPipeline(**comps)
    if time.time() < end and not args.tune_decoder:
        train_dit(pipe, ema, text_ema, args, state, end, ckpt, device)
    state["runs"].append({"seconds": round(time.time() - t_begin, 1), "vae_step": state["vae_step"],
                          "dit_step": state["dit_step"], "device": str(device),
                          "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                          "decoder_step": state.get("decoder_step", 0), "lr": args.lr,
                          "object_weight_dit": args.object_weight_dit, "shape_only": args.shape_only,
                          "upright": args.upright, "text_lr": args.text_lr,
                          "probe": state["probes"][-1] if len(state.get("probes", [])) > probes0 else None})
    save_state()
    final = dict(comps, transformer=ema, text_encoder=text_ema)
    info = {"defaults": {**GEN_DEFAULTS, "frames": args.frames, "height": args.size, "width": args.size},
            "config": args.config, "seed": state["seed"], "vae_steps": state["vae_step"], "dit_steps": state["dit_step"],
            "decoder_steps": state.get("decoder_step", 0),
            "clips_seen": state["clips_seen"], "runs": state["runs"], "transformer_weights": "EMA",
            "world": {"upright": args.upright},
            "text_encoder": state.get("text_encoder", TEXT_FROZEN),
            "heldout_pairs": sorted(map(list, shapes.HELDOUT_PAIRS))}
    work = out / "export"
    folder = export(final, work / MODEL_NAME, info, args.export_dtype)
    tar = pack(folder, out / f"{MODEL_NAME}.tar")
    shutil.rmtree(work)
    log(f"wrote {tar} ({tar.stat().st_size / 1e6:.1f} MB) and {ckpt}; total {time.time() - t_begin:.0f}s")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m paik.shapes.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
