"""``paik generate``: run a Wan pipeline with attention capture and write a bundle."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from paik.capture import __version__
from paik.errors import PaikError
from paik.capture.bend import bends_for_take
from paik.capture.layout import GiB, Layout
from paik.capture.models import load_pipeline, set_flow_shift
from paik.capture.plan import MemoryPlan, check_video_size, estimate_working_bytes, parse_heads, parse_indices
from paik.capture.processor import attach, detach
from paik.capture.store import CaptureStore, Recorder
from paik.capture.tokens import clean_prompt, resolve_tokens, token_table
from paik.video import write_mp4
from paik.capture.writer import BundleWriter


@dataclass
class GenerateOptions:
    prompt: str
    out: str
    model: str | None = None
    negative: str | None = None
    seed: int = 0
    steps: int | None = None  # default: 50 for real models, 4 for tiny ones
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    guidance: float = 5.0
    guidance_2: float | None = None
    flow_shift: float | None = None
    fps: float = 16.0
    tokens: list[str] = field(default_factory=list)
    capture_steps: str = "all"
    capture_blocks: str = "all"
    heads: str = "all"
    capture_uncond: bool = False
    max_capture_gb: float | None = None
    max_sequence_length: int = 512
    dtype: str = "auto"
    offload: str | None = None
    device: str | None = None
    preview: str = "latent"  # latent | decode | none
    overwrite: bool = False
    quiet: bool = False
    bends: list = field(default_factory=list)  # bend lines or BendSpecs (paik.capture.bend)
    bend_presets: list[str] = field(default_factory=list)  # --bends: preset names or .toml files
    replay_bends: dict | None = None  # a replayed take's {"steps": N, "log": manifest["bend_log"]}


# Sizes that make sense per model when the user gives none: (frames, height, width, steps)
DEFAULTS = {"tiny": (9, 64, 64, 4), "paik-shapes": (17, 128, 128, 20), "wan2.2-ti2v": (121, 704, 1280, 50), "other": (81, 480, 832, 50)}


def _paik_json(path) -> dict:
    """A ``paik-shapes`` folder's paik.json (how it was trained), or {} for any other model."""
    f = Path(path) / "paik.json" if path else None
    if f is None or not f.is_file():
        return {}
    try:
        info = json.loads(f.read_text())
    except ValueError as e:
        raise PaikError(f"{f}: not a valid paik.json ({e})") from e
    if not isinstance(info, dict):
        raise PaikError(f"{f}: not a valid paik.json (not an object)")
    return info


def trained_defaults(path) -> dict:
    """The generation defaults a ``paik-shapes`` folder records in its paik.json (frames, height,
    width, steps, guidance, flow_shift), or {} for any other model."""
    d = _paik_json(path).get("defaults", {})
    if not isinstance(d, dict):
        raise PaikError(f"{Path(path) / 'paik.json'}: not a valid paik.json (defaults is not an object)")
    return dict(d)


def trained_world(path) -> dict:
    """The shapes world a ``paik-shapes`` folder was trained on, as keyword arguments of
    :func:`paik.shapes.world.sample_scene` ({"upright": bool}); the default world for any other."""
    w = _paik_json(path).get("world", {})
    return {"upright": bool(w.get("upright", False)) if isinstance(w, dict) else False}


def _log(opts, msg):
    if not opts.quiet:
        print(msg, file=sys.stderr, flush=True)


def rgb_projection(pipe, device) -> torch.Tensor:
    """A [C+1, 3] linear map from normalized latents to RGB, fitted by least squares on colour
    fields encoded with the pipeline's own VAE: a cheap preview of any latent at latent size."""
    vae = pipe.vae
    g = torch.Generator().manual_seed(0)
    size = 8 * int(pipe.vae_scale_factor_spatial)
    imgs = torch.rand(12, 3, 1, 4, 4, generator=g).mul(2).sub(1)
    imgs = torch.nn.functional.interpolate(imgs[:, :, 0], size=(size, size), mode="bilinear")[:, :, None]
    with torch.no_grad():
        z = vae.encode(imgs.to(device, vae.dtype)).latent_dist.mean.float().cpu()
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    z = (z - mean) / std  # the pipeline's latent space
    target = torch.nn.functional.adaptive_avg_pool2d(imgs[:, :, 0], z.shape[-2:])  # [N, 3, h, w]
    x = z[:, :, 0].permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    x = torch.cat([x, torch.ones(len(x), 1)], 1)
    y = target.permute(0, 2, 3, 1).reshape(-1, 3).add(1).div(2)
    return torch.linalg.lstsq(x, y).solution  # [C+1, 3]


def generate(opts: GenerateOptions, loaded=None) -> Path:
    """Generate one video with capture and write its bundle to ``opts.out``.

    ``loaded``: the ``(pipe, info, device)`` of :func:`paik.capture.models.load_pipeline`, to reuse a
    loaded model across runs; by default ``opts.model`` is loaded. Returns the bundle path."""
    t_start = time.perf_counter()
    out = Path(opts.out)
    if opts.preview not in ("latent", "decode", "none"):
        raise PaikError(f"--preview {opts.preview!r}: expected latent, decode or none")
    if not opts.prompt.strip():
        raise PaikError("the prompt is empty")
    if loaded is None:
        _log(opts, f"paik: loading {opts.model or 'tiny'} ...")
        loaded = load_pipeline(opts.model, opts.dtype, opts.device, opts.offload)
    pipe, info, device = loaded
    key = info.id if info.id in DEFAULTS else "tiny" if info.id.startswith("tiny") else info.family
    d_frames, d_h, d_w, d_steps = DEFAULTS.get(key, DEFAULTS["other"])
    trained = trained_defaults(info.path)  # a paik-shapes folder of one's own trains at its own size
    if trained:
        d_frames, d_h, d_w, d_steps = (trained.get(k, v) for k, v in
                                       zip(("frames", "height", "width", "steps"), (d_frames, d_h, d_w, d_steps)))
    # None means the model's default; 0 is a mistake that the checks below report
    frames = d_frames if opts.frames is None else opts.frames
    height = d_h if opts.height is None else opts.height
    width = d_w if opts.width is None else opts.width
    steps = d_steps if opts.steps is None else opts.steps
    check_video_size(height, width, frames, info.spatial_multiple, info.temporal)
    if steps < 1:
        raise PaikError("--steps must be at least 1")
    if opts.guidance_2 is not None and info.boundary_ratio is None:
        raise PaikError("--guidance-2 is for Wan2.2 A14B (two experts); this model has one transformer")
    if opts.flow_shift is not None:
        set_flow_shift(pipe, opts.flow_shift)
        info.flow_shift = opts.flow_shift
    cfg = opts.guidance > 1.0

    # tokens: exactly what the pipeline will feed the cross-attention
    prompt = clean_prompt(opts.prompt)
    table = token_table(pipe.tokenizer, prompt, opts.max_sequence_length)
    groups = resolve_tokens(table, opts.tokens) if opts.tokens else []
    captured = sorted({i for g in groups for i in g.tokens}) if groups else [t.index for t in table]
    negative = clean_prompt(opts.negative or "")
    neg_table = token_table(pipe.tokenizer, negative, opts.max_sequence_length) if cfg else []
    if opts.capture_uncond and not cfg:
        raise PaikError("--capture-uncond needs classifier-free guidance (--guidance above 1)")

    bends = bends_for_take(opts.bends, opts.bend_presets, opts.replay_bends, table, neg_table if cfg else None,
                           info.num_layers, info.num_heads, steps, info.latent_grid(frames, height, width))

    layout = Layout(
        steps=parse_indices(opts.capture_steps, steps, "capture-steps"),
        blocks=parse_indices(opts.capture_blocks, info.num_layers, "blocks"),
        heads=1 if parse_heads(opts.heads) else info.num_heads,
        head_mean=parse_heads(opts.heads), n_heads=info.num_heads,
        tokens=captured, latent=info.latent_grid(frames, height, width),
        n_real=len(table), seq_len=opts.max_sequence_length,
        uncond_tokens=[t.index for t in neg_table] if opts.capture_uncond else [],
        n_real_uncond=len(neg_table) if opts.capture_uncond else 0,
    )
    store_device = torch.device(device)
    if opts.max_capture_gb is not None:
        budget = int(opts.max_capture_gb * GiB)
    elif store_device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(store_device)
        budget = max(0, free - estimate_working_bytes(layout.positions, info.dim, info.ffn_dim, height, width))
    else:
        import os

        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") // 2
    plan = MemoryPlan(layout, budget, str(store_device))
    _log(opts, "paik: " + plan.describe())
    plan.check()

    store = CaptureStore(layout, store_device)
    recorder = Recorder(store, capture_uncond=opts.capture_uncond)
    recorder.bends = bends
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "prompt": opts.prompt, "prompt_clean": prompt,
        "negative_prompt": opts.negative or "", "seed": opts.seed,
        "model": info.to_json(pipe),
        "settings": {
            "steps": steps, "frames": frames, "height": height, "width": width, "guidance": opts.guidance,
            "guidance_2": opts.guidance_2, "flow_shift": info.flow_shift, "fps": opts.fps,
            "max_sequence_length": opts.max_sequence_length, "dtype": str(pipe.transformer.dtype if
            pipe.transformer is not None else pipe.transformer_2.dtype).replace("torch.", ""),
            "offload": opts.offload, "device": str(device), "capture_uncond": opts.capture_uncond,
            "capture_steps": opts.capture_steps, "capture_blocks": opts.capture_blocks, "heads": opts.heads,
            "tokens": opts.tokens, "preview": opts.preview,
        },
        "tokens": [t.to_json() for t in table],
        "negative_tokens": [t.to_json() for t in neg_table],
        "groups": [g.to_json() for g in groups],
        "layout": layout.to_json(),
        "planned_steps": layout.steps,
        **({"bends": [b.line() for b in bends.specs()], "bend_log": []} if bends else {}),
        "versions": _versions(device),
        "paik_command": sys.argv if sys.argv and "paik" in Path(sys.argv[0]).name else None,
    }
    writer = BundleWriter(out, manifest, overwrite=opts.overwrite)
    _log(opts, f"paik: writing {out}")

    proj = rgb_projection(pipe, device) if opts.preview != "none" else None
    if opts.preview == "decode":
        (out / "previews").mkdir(exist_ok=True)
    guidance = {"transformer": opts.guidance, "transformer_2": opts.guidance_2 if opts.guidance_2 is not None
                else opts.guidance}
    step_times: list[float] = []
    t_step = [time.perf_counter()]
    progress = _progress(steps, opts.quiet)

    bend_log: list[dict] = []

    def on_step_end(pipeline, i, t, kwargs):
        if bends:  # every bend active at this step, captured or not: what a replay plays back
            bend_log.append({"step": i, "bends": bends.lines_at(i)})
            writer.update(bend_log=list(bend_log))
        if i in store.step_slot:
            slot = store.step_slot[i]
            tensors = {"maps": store.maps[slot], "padding": store.padding[slot]}
            if store.maps_uncond is not None:
                tensors["maps_uncond"] = store.maps_uncond[slot]
                tensors["padding_uncond"] = store.padding_uncond[slot]
            x0 = denoised_estimate(recorder, guidance)
            if x0 is not None and proj is not None:
                tensors["x0"] = x0[0].to(torch.float16)
                tensors["preview"] = project_rgb(x0[0], proj)
                if opts.preview == "decode":
                    _decode_preview(pipeline, x0, out / "previews" / f"step_{i:04d}.mp4", opts.fps)
            expert = recorder.experts.get(i, "transformer")
            writer.add_step({"index": i, "timestep": float(t), "sigma": recorder.sigma, "expert": expert,
                             **({"bends": bend_log[-1]["bends"]} if bends else {})}, tensors)
        recorder.end_step()
        now = time.perf_counter()
        step_times.append(round(now - t_step[0], 4))
        t_step[0] = now
        progress.update(1)
        return {}

    savers = {name: attach(getattr(pipe, name), recorder, name, layout.blocks) for name in info.experts}
    status, error = "failed", None
    try:
        with torch.inference_mode():
            result = pipe(
                prompt=opts.prompt, negative_prompt=opts.negative, height=height, width=width,
                num_frames=frames, num_inference_steps=steps, guidance_scale=opts.guidance,
                guidance_scale_2=opts.guidance_2 if info.boundary_ratio is not None else None,
                generator=torch.Generator("cpu").manual_seed(opts.seed), output_type="np",
                max_sequence_length=opts.max_sequence_length,
                callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"],
            )
        progress.close()
        video = result.frames[0]
        write_mp4(out / "video.mp4", video, opts.fps)
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except torch.OutOfMemoryError:
        error = "out of GPU memory during generation"
        raise PaikError(f"{error}; the bundle keeps the finished steps. Try --offload model, fewer frames, "
                        "or capture less (--heads mean, --steps every:N)") from None
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        progress.close()
        for name, saved in savers.items():
            detach(getattr(pipe, name), saved)
        fields = {"timings": {**writer.manifest.get("timings", {}), "step_s": step_times,
                              "total_s": round(time.perf_counter() - t_start, 3)}}
        if status == "complete":
            fields["video"] = {"file": "video.mp4", "fps": opts.fps, "frames": frames, "width": width,
                               "height": height, "codec": "h264"}
        if error:
            fields["error"] = error
        writer.close(status, **fields)
        _log(opts, f"paik: bundle {status}: {out} ({len(writer.manifest['steps'])} steps of maps)")
    return out


def denoised_estimate(recorder: Recorder, guidance: dict) -> torch.Tensor | None:
    """x0 = x_t - sigma * v for flow matching, with v the guided velocity of this step."""
    cond = recorder.outputs.get("cond")
    if cond is None or recorder.sample is None or recorder.sigma is None:
        return None
    v = cond.float()
    uncond = recorder.outputs.get("uncond")
    if uncond is not None:
        g = guidance.get(recorder.expert, 1.0)
        v = uncond.float() + g * (v - uncond.float())
    return recorder.sample.float() - recorder.sigma * v


def project_rgb(latent: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """[C, F, h, w] normalized latent -> [F, h, w, 3] uint8 through the fitted projection."""
    p = proj.to(latent.device)
    rgb = torch.einsum("cfhw,ck->fhwk", latent.float(), p[:-1]) + p[-1]
    return rgb.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def _decode_preview(pipe, x0: torch.Tensor, path: Path, fps: float) -> None:
    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(x0.device)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(x0.device)
    z = (x0 * std + mean).to(vae.dtype)
    video = vae.decode(z, return_dict=False)[0]
    frames = pipe.video_processor.postprocess_video(video, output_type="np")[0]
    write_mp4(path, frames, fps)


def _progress(total: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="paik: denoising", unit="step", disable=quiet, file=sys.stderr)


def _versions(device) -> dict:
    import diffusers
    import transformers

    v = {"paik": __version__, "python": platform.python_version(), "torch": torch.__version__,
         "diffusers": diffusers.__version__, "transformers": transformers.__version__, "numpy": np.__version__}
    if str(device).startswith("cuda"):
        v["cuda"] = torch.version.cuda
        v["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return v
