"""``paik generate``: run a Wan pipeline with attention capture (:func:`paik.capture_attention`)
and write a bundle. Generation knows nothing of any particular model: defaults come from the
model folder's paik.json or its family (:func:`paik.capture.models.generation_defaults`)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from paik.capture.api import Cancelled, capture_attention
from paik.capture.bend import bends_for_take
from paik.capture.models import ModelInfo, generation_defaults, load_pipeline, peek_model, set_flow_shift
from paik import indices
from paik.capture.plan import check_video_size, parse_heads
from paik.capture.store import Recorder
from paik.capture.tokens import clean_prompt, token_table
from paik.capture.writer import describe_write_error
from paik.errors import PaikError
from paik.video import write_mp4


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
    step_buffers: int | None = None  # device step slots (a ring, paik generate's default 3); None: keep every step
    parallel: int = 1  # processes of context parallelism (paik.capture.parallel)
    cp: str = "ulysses"  # ulysses | ring


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


def check_options(opts: GenerateOptions) -> None:
    """What can be checked from the options alone, before anything is loaded."""
    if opts.preview not in ("latent", "decode", "none"):
        raise PaikError(f"--preview {opts.preview!r}: expected latent, decode or none")
    if not opts.prompt.strip():
        raise PaikError("the prompt is empty")
    if opts.steps is not None and opts.steps < 1:
        raise PaikError("--steps must be at least 1")
    if opts.capture_uncond and opts.guidance <= 1.0:
        raise PaikError("--capture-uncond needs classifier-free guidance (--guidance above 1)")
    parse_heads(opts.heads)
    if opts.max_sequence_length < 1:
        raise PaikError("--max-sequence-length must be at least 1")


@dataclass
class Sizes:
    frames: int
    height: int
    width: int
    steps: int
    latent: tuple[int, int, int]


def resolve_sizes(opts: GenerateOptions, info: ModelInfo) -> Sizes:
    """The video size and steps for this model (the options, else the model's defaults), checked
    against what the model's config allows; needs its config, not its weights."""
    d = generation_defaults(info)
    # None means the model's default; 0 is a mistake that the checks below report
    frames = d["frames"] if opts.frames is None else opts.frames
    height = d["height"] if opts.height is None else opts.height
    width = d["width"] if opts.width is None else opts.width
    steps = d["steps"] if opts.steps is None else opts.steps
    check_video_size(height, width, frames, info.spatial_multiple, info.temporal)
    if steps < 1:
        raise PaikError("--steps must be at least 1")
    if opts.guidance_2 is not None and info.boundary_ratio is None:
        raise PaikError("--guidance-2 is for Wan2.2 A14B (two experts); this model has one transformer")
    indices.parse(opts.capture_blocks, info.num_layers, "--blocks")
    indices.parse(opts.capture_steps, steps, "--capture-steps")
    return Sizes(frames, height, width, steps, info.latent_grid(frames, height, width))


def _check_tokens(opts: GenerateOptions, info: ModelInfo) -> None:
    """``--tokens`` against the prompt, with the model folder's tokenizer alone (no weights)."""
    if not opts.tokens or not (Path(info.path) / "tokenizer").is_dir():
        return
    from transformers import AutoTokenizer

    from paik.capture.tokens import clean_prompt, resolve_tokens, token_table

    tokenizer = AutoTokenizer.from_pretrained(info.path, subfolder="tokenizer")
    resolve_tokens(token_table(tokenizer, clean_prompt(opts.prompt), opts.max_sequence_length), opts.tokens)


def generate(opts: GenerateOptions, loaded=None, on_start=None, on_step=None, stop=None, shard=None,
             cp: str | None = None, behind=None, on_decoded=None, on_progress=None) -> Path:
    """Generate one video with capture and write its bundle to ``opts.out``.

    ``loaded``: the ``(pipe, info, device)`` of :func:`paik.capture.models.load_pipeline`, to reuse a
    loaded model across runs; by default ``opts.model`` is loaded, after every flag and size that
    its config can check has been checked. Returns the bundle path.

    For the live engine (capture/engine.py): ``on_start(store, manifest)`` once the store exists,
    ``on_step(index, done, total, tensors)`` after each denoising step (``tensors``: what was queued
    for writing, empty for a step not captured), and ``stop`` (a threading.Event) raises
    :class:`Cancelled` at the next step end, the bundle keeping its finished steps ("interrupted").
    ``behind(writer)`` once the bundle writer exists: a caller that calls ``writer.write_behind(...)``
    there gets the bundle written behind the generation (the MP4 too), and this returns once the
    video is decoded, the writer still finishing; ``on_decoded(frames, bent)`` gets the pipeline's frames
    ([F, H, W, 3] float in [0, 1]) as soon as it returns them.
    ``on_progress(done, total)`` after each step only reports progress (``paik sweep``): unlike
    ``on_step`` it hands out no tensors, so the device keeps its ring of step buffers.

    ``opts.parallel`` above 1 runs the generation on that many processes (paik.capture.parallel);
    each of them calls this with ``shard=(rank, world)`` and a pipeline already made parallel."""
    if opts.parallel > 1 and shard is None:
        from paik.capture.parallel import generate_parallel

        return generate_parallel(opts, opts.parallel, opts.cp)
    lead = shard is None or shard[0] == 0  # the rank that writes the video and the previews
    t_start = time.perf_counter()
    out = Path(opts.out)
    check_options(opts)
    if loaded is None:
        peeked = peek_model(opts.model)
        if peeked is not None:
            resolve_sizes(opts, peeked)
            _check_tokens(opts, peeked)
        _log(opts, f"paik: loading {opts.model or 'tiny'} ...")
        loaded = load_pipeline(opts.model, opts.dtype, opts.device, opts.offload)
    pipe, info, device = loaded
    size = resolve_sizes(opts, info)
    if opts.flow_shift is not None:
        set_flow_shift(pipe, opts.flow_shift)
        info.flow_shift = opts.flow_shift

    settings = {
        "steps": size.steps, "frames": size.frames, "height": size.height, "width": size.width,
        "guidance": opts.guidance, "guidance_2": opts.guidance_2, "flow_shift": info.flow_shift, "fps": opts.fps,
        "max_sequence_length": opts.max_sequence_length, "dtype": str(pipe.transformer.dtype if
        pipe.transformer is not None else pipe.transformer_2.dtype).replace("torch.", ""),
        "offload": opts.offload, "device": str(device), "capture_uncond": opts.capture_uncond,
        "capture_steps": opts.capture_steps, "capture_blocks": opts.capture_blocks, "heads": opts.heads,
        "tokens": opts.tokens, "preview": opts.preview,
    }
    if shard is not None:
        settings.update(parallel=shard[1], cp=cp or opts.cp)
    manifest = {"seed": opts.seed, "model": info.to_json(pipe), "settings": settings,
                "paik_command": sys.argv if sys.argv and "paik" in Path(sys.argv[0]).name else None}
    # bends are resolved against the same token tables the capture plans with (paik.capture.tokens)
    cfg = opts.guidance > 1.0
    table = token_table(pipe.tokenizer, clean_prompt(opts.prompt), opts.max_sequence_length)
    neg_table = token_table(pipe.tokenizer, clean_prompt(opts.negative or ""), opts.max_sequence_length) if cfg else None
    bends = bends_for_take(opts.bends, opts.bend_presets, opts.replay_bends, table, neg_table, info.num_layers,
                           info.num_heads, size.steps, size.latent)
    if bends:
        manifest.update(bends=[b.line() for b in bends.specs()], bend_log=[])
    guidance = {"transformer": opts.guidance, "transformer_2": opts.guidance_2 if opts.guidance_2 is not None
                else opts.guidance}
    # on the device once: a host tensor moved there at every step would synchronize every step
    proj = rgb_projection(pipe, device).to(device) if opts.preview != "none" and lead else None

    written: dict[int, dict] = {}  # step -> the tensors queued for it (for on_step)

    def previews(cap, step):
        x0 = denoised_estimate(cap.recorder, guidance) if lead else None
        extra = {}
        if x0 is not None and proj is not None:
            if opts.preview == "decode":
                (out / "previews").mkdir(exist_ok=True)
                _decode_preview(pipe, x0, out / "previews" / f"step_{step:04d}.mp4", opts.fps)
            extra = {"x0": x0[0].to(torch.float16), "preview": project_rgb(x0[0], proj)}
        if on_step is not None:
            slot = cap.store.step_slot[step]
            written[step] = {"maps": cap.store.maps[slot], "padding": cap.store.padding[slot], **extra}
        return extra

    cap = capture_attention(
        pipe, opts.tokens, steps=opts.capture_steps, blocks=opts.capture_blocks, heads=opts.heads,
        uncond=opts.capture_uncond, out=out, max_gb=opts.max_capture_gb, overwrite=opts.overwrite,
        prompt=opts.prompt, negative_prompt=opts.negative or "", num_steps=size.steps, grid=size.latent,
        device=device, max_sequence_length=opts.max_sequence_length, manifest=manifest, step_extras=previews,
        # a caller handed the store or its steps (the live engine: the renderer reads them) needs every step kept
        buffers=opts.step_buffers if on_start is None and on_step is None else None,
        shard=shard,
    )
    cap.recorder.bends = bends  # read by the processors (paik.capture.bend.bend_for); None: nothing runs
    _log(opts, "paik: " + cap.plan.describe())
    _log(opts, f"paik: writing {out}")
    if behind is not None:
        behind(cap.writer)
    behind_writer = getattr(cap.writer, "_behind", False)
    if on_start is not None:
        on_start(cap.store, cap.writer.manifest)
    step_times: list[float] = []
    t_decoded = None  # the call -> the video decoded (the bundle may still be writing behind)
    t_step = [time.perf_counter()]
    progress = _progress(size.steps, opts.quiet)

    bend_log: list[dict] = []

    def on_step_end(pipeline, i, t, kwargs):
        if bends:  # every bend active at this step, captured or not: what a replay plays back
            bend_log.append({"step": i, "bends": bends.lines_at(i)})
            cap.writer.update(bend_log=list(bend_log))
        now = time.perf_counter()
        step_times.append(round(now - t_step[0], 4))
        t_step[0] = now
        progress.update(1)
        if on_progress is not None:
            on_progress(i + 1, size.steps)
        if on_step is not None:
            on_step(i, i + 1, size.steps, written.pop(i, {}))
        if stop is not None and stop.is_set():
            raise Cancelled(f"cancelled after step {i + 1} of {size.steps}")
        return {}

    try:
        with cap, torch.inference_mode():
            try:
                result = pipe(
                    prompt=opts.prompt, negative_prompt=opts.negative, height=size.height, width=size.width,
                    num_frames=size.frames, num_inference_steps=size.steps, guidance_scale=opts.guidance,
                    guidance_scale_2=opts.guidance_2 if info.boundary_ratio is not None else None,
                    generator=torch.Generator("cpu").manual_seed(opts.seed), output_type="pt",
                    max_sequence_length=opts.max_sequence_length,
                    callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"],
                )
                frames = rgba_frames(result.frames[0])
                progress.close()
                t_decoded = round(time.perf_counter() - t_start, 3)
                if on_decoded is not None:  # with whether any bend played (the bend log, in memory)
                    on_decoded(frames, any(e["bends"] for e in bend_log))
                if lead and behind_writer:  # in order after the steps; a failure is the writer's
                    cap.writer.call(lambda: write_mp4(out / "video.mp4", frames, opts.fps))
                elif lead:  # every rank decodes the same gathered latents; one writes them
                    write_mp4(out / "video.mp4", frames, opts.fps)
                cap.set_result(video={"file": "video.mp4", "fps": opts.fps, "frames": size.frames,
                                      "width": size.width, "height": size.height, "codec": "h264"})
            finally:
                progress.close()
                cap.set_result(timings={**cap.writer.manifest.get("timings", {}), "step_s": step_times,
                                        "total_s": round(time.perf_counter() - t_start, 3),
                                        **({"generate_s": t_decoded} if t_decoded is not None else {})})
    except torch.OutOfMemoryError:
        raise PaikError("out of GPU memory during generation; the bundle keeps the finished steps. Try --offload "
                        "model, fewer frames, or capture less (--heads mean, --steps every:N)") from None
    except OSError as e:  # the video or a preview could not be written (disk full, permission, ...)
        raise PaikError(f"writing the bundle {out} failed: {describe_write_error(e)}; it keeps its finished "
                        "steps") from None
    finally:
        _log(opts, f"paik: bundle {cap.status}: {out} ({len(cap.writer.manifest['steps'])} steps of maps)")
    return out


TWIN_DIR = "twin"  # the unbent twin of OUT is OUT/twin: inside the folder the user named


def generate_twin(opts: GenerateOptions) -> tuple[Path, Path]:
    """``paik generate --bend ... --twin``: the bent take at ``opts.out``, then its unbent twin
    (same prompt, seed, sizes and capture; no bends) at ``opts.out/twin``, with the model loaded
    once; each manifest names the other under ``"twin"`` (a path relative to the bundle and a
    role, "bent" or "unbent"), which is how ``paik play/render/grid`` find it."""
    from dataclasses import replace

    from paik.capture.writer import write_json_atomic

    if not (opts.bends or opts.bend_presets or opts.replay_bends):
        raise PaikError("--twin makes the unbent twin of a bent take: give --bend or --bends (or --replay a bent "
                        "take); without bends the take is its own twin")
    twin_opts = replace(opts, out=str(Path(opts.out) / TWIN_DIR), bends=[], bend_presets=[], replay_bends=None,
                        overwrite=False)
    loaded = None
    if opts.parallel <= 1:
        check_options(opts)
        peeked = peek_model(opts.model)
        if peeked is not None:
            resolve_sizes(opts, peeked)
            _check_tokens(opts, peeked)
        _log(opts, f"paik: loading {opts.model or 'tiny'} ...")
        loaded = load_pipeline(opts.model, opts.dtype, opts.device, opts.offload)
    bent = generate(opts, loaded)
    _log(opts, "paik: the unbent twin (same seed, no bends) ...")
    twin = generate(twin_opts, loaded)
    for path, other, role in ((bent, TWIN_DIR, "bent"), (twin, "..", "unbent")):
        m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        m["twin"] = {"path": other, "role": role}
        write_json_atomic(path / "manifest.json", m)
    return bent, twin


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


def rgba_frames(video) -> np.ndarray:
    """The pipeline's decoded video (``output_type="pt"``: [F, 3, H, W] floats in [0, 1] on its
    device) -> [F, H, W, 4] uint8 RGBA on the host, converted where the video is (on a GPU: a few
    milliseconds, against a quarter of a second for the same arithmetic on float32 host frames).
    The values are :func:`paik.video.to_uint8`'s: clip, times 255, plus a half, truncated."""
    u8 = video.clamp(0.0, 1.0).mul(255.0).add(0.5).to(torch.uint8).permute(0, 2, 3, 1)
    alpha = torch.full((*u8.shape[:-1], 1), 255, dtype=torch.uint8, device=u8.device)
    return torch.cat([u8, alpha], -1).cpu().numpy()


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
