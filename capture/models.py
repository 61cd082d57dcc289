"""Loading Wan pipelines: a hub id, a local diffusers folder, or a built-in tiny model.

Supported: Wan2.1 T2V 1.3B and 14B, Wan2.2 T2V A14B (two experts: ``transformer`` for high
noise, ``transformer_2`` after ``boundary_ratio``) and Wan2.2 TI2V-5B (VAE 16x, expanded
timesteps), all through ``diffusers.WanPipeline``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from paik.errors import PaikError
from paik import resources

ALIASES = {
    "wan2.1-1.3b": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    "wan2.1-14b": "Wan-AI/Wan2.1-T2V-14B-Diffusers",
    "wan2.2-a14b": "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
    "wan2.2-5b": "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
}
TINY = {"tiny": "t2v", "tiny-t2v": "t2v", "tiny-a14b": "a14b", "tiny-ti2v": "ti2v"}
# Models shipped in capture/assets/ (trained with `paik train`); the default once present.
BUILTIN = {"paik-shapes": resources.assets("paik-shapes")}
DEFAULT_MODEL = "paik-shapes" if (BUILTIN["paik-shapes"] / "model_index.json").is_file() else "tiny"

# Video sizes and steps that make sense per model family when the user gives none. A model
# folder's own paik.json ("defaults") comes first: a model trained at its own size says so there.
FAMILY_DEFAULTS = {
    "wan2.1-t2v": {"frames": 81, "height": 480, "width": 832, "steps": 50},
    "wan2.2-a14b": {"frames": 81, "height": 480, "width": 832, "steps": 50},
    "wan2.2-ti2v": {"frames": 121, "height": 704, "width": 1280, "steps": 50},
}
TINY_DEFAULTS = {"frames": 9, "height": 64, "width": 64, "steps": 4}  # random weights: small and quick


@dataclass
class ModelInfo:
    id: str  # what the user asked for (alias resolved)
    path: str  # what from_pretrained was given
    family: str  # wan2.1-t2v | wan2.2-a14b | wan2.2-ti2v
    experts: list[str]  # transformer attribute names present
    spatial: int  # VAE spatial factor
    temporal: int  # VAE temporal factor
    patch: tuple[int, int, int]
    num_layers: int
    num_heads: int
    head_dim: int
    dim: int
    ffn_dim: int
    boundary_ratio: float | None
    flow_shift: float | None

    @property
    def spatial_multiple(self) -> int:
        return self.spatial * self.patch[1]

    def latent_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """F', H', W': the transformer's token grid (video positions are frame-major)."""
        return ((frames - 1) // self.temporal + 1) // self.patch[0], height // self.spatial // self.patch[1], \
            width // self.spatial // self.patch[2]

    def to_json(self, pipe) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["transformer_config"] = dict(pipe.transformer.config) if pipe.transformer is not None else None
        t2 = getattr(pipe, "transformer_2", None)
        d["transformer_2_config"] = dict(t2.config) if t2 is not None else None
        d["scheduler"] = {"class": type(pipe.scheduler).__name__, **dict(pipe.scheduler.config)}
        return _jsonable(d)


def read_paik_json(path) -> dict:
    """A model folder's paik.json (what Paik knows about it: defaults, how it was made), or {}."""
    f = Path(path) / "paik.json" if path else None
    if f is None or not f.is_file():
        return {}
    import json

    try:
        info = json.loads(f.read_text())
    except ValueError as e:
        raise PaikError(f"{f}: not a valid paik.json ({e})") from e
    if not isinstance(info, dict):
        raise PaikError(f"{f}: not a valid paik.json (not an object)")
    return info


def folder_defaults(path) -> dict:
    """The generation defaults a model folder records in its paik.json ("defaults": frames,
    height, width, steps, guidance, flow_shift), or {}."""
    d = read_paik_json(path).get("defaults", {})
    if not isinstance(d, dict):
        raise PaikError(f"{Path(path) / 'paik.json'}: not a valid paik.json (defaults is not an object)")
    return dict(d)


def generation_defaults(info: "ModelInfo") -> dict:
    """frames, height, width, steps (and whatever else the folder's paik.json sets) for a model."""
    base = TINY_DEFAULTS if info.id in TINY else FAMILY_DEFAULTS.get(info.family, FAMILY_DEFAULTS["wan2.1-t2v"])
    return {**base, **folder_defaults(info.path)}


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def resolve_model(spec: str | None) -> tuple[str, str]:
    """(id, path) for a model spec: a tiny alias, a known alias, a local folder or a hub id."""
    spec = (spec or DEFAULT_MODEL).strip()
    if spec.lower() in TINY:
        from paik.capture.tiny import ensure_tiny

        return spec.lower(), str(ensure_tiny(TINY[spec.lower()]))
    if spec.lower() in BUILTIN:
        if not (BUILTIN[spec.lower()] / "model_index.json").is_file():
            raise PaikError(f"--model {spec}: not shipped in this copy ({BUILTIN[spec.lower()]} is missing); "
                            "train it with 'paik train' (see README) or use --model tiny")
        return spec.lower(), str(BUILTIN[spec.lower()])
    spec = ALIASES.get(spec.lower(), spec)
    p = Path(spec).expanduser()
    if p.exists():
        if not (p / "model_index.json").is_file():
            raise PaikError(f"--model {spec}: folder has no model_index.json; expected a diffusers Wan pipeline folder")
        return spec, str(p)
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        known = ", ".join(list(TINY) + list(BUILTIN) + list(ALIASES))
        raise PaikError(f"--model {spec!r}: no such folder, and not a hub id (owner/name) or a known name ({known})")
    return spec, spec


def load_pipeline(spec: str | None, dtype: str = "auto", device: str | None = None, offload: str | None = None):
    """Load a WanPipeline. Returns (pipe, ModelInfo, device).

    ``dtype``: auto (bfloat16 on CUDA, float32 on CPU), bfloat16, float16, float32 — for the
    transformer(s) and text encoder; the VAE stays float32 as Wan's authors recommend.
    ``offload``: None, "model" or "sequential" (diffusers' CPU offload, for 24 GB cards)."""
    import torch
    import transformers
    from diffusers import AutoencoderKLWan, WanPipeline
    from diffusers.utils import logging as dlogging

    dlogging.disable_progress_bar()  # our own progress bar is the one that matters
    transformers.utils.logging.disable_progress_bar()

    model_id, path = resolve_model(spec)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise PaikError(f"--device {device!r}: expected cuda, cuda:N or cpu") from None
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise PaikError(f"--device {device}: this PyTorch sees {torch.cuda.device_count()} CUDA devices "
                        "(a CPU-only build sees none): use --device cpu, or install PyTorch's CUDA build")
    if offload and not device.startswith("cuda"):
        raise PaikError("--offload needs a CUDA device (it moves weights between CPU and GPU)")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    try:
        torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    except KeyError:
        raise PaikError(f"--dtype {dtype!r}: expected auto, bfloat16, float16 or float32") from None
    try:
        vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", dtype=torch.float32)
        pipe = WanPipeline.from_pretrained(path, vae=vae, dtype=torch_dtype)
    except OSError as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        hint = ("HF_HUB_OFFLINE is set, so nothing is downloaded: download it once with network, or pass a local folder"
                if offline else "check the id, your network, and that you accepted the model's license on the hub")
        raise PaikError(f"--model {model_id}: could not load it ({str(e).splitlines()[0]}); {hint}") from None
    if getattr(pipe, "transformer", None) is None and getattr(pipe, "transformer_2", None) is None:
        raise PaikError(f"--model {model_id}: not a Wan text-to-video pipeline")

    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload:
        raise PaikError(f"--offload {offload!r}: expected model or sequential")
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, describe(pipe, model_id, path), device


def describe(pipe, model_id: str, path: str) -> ModelInfo:
    experts = [n for n in ("transformer", "transformer_2") if getattr(pipe, n, None) is not None]
    return _info(model_id, path, experts, getattr(pipe, experts[0]).config, dict(pipe.config),
                 pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal, pipe.scheduler.config)


def _info(model_id, path, experts, c, pipe_config, spatial, temporal, scheduler) -> ModelInfo:
    two = len(experts) == 2
    expand = bool(pipe_config.get("expand_timesteps", False))
    family = "wan2.2-a14b" if two else ("wan2.2-ti2v" if expand else "wan2.1-t2v")
    return ModelInfo(
        id=model_id, path=path, family=family, experts=experts, spatial=int(spatial), temporal=int(temporal),
        patch=tuple(c["patch_size"]), num_layers=int(c["num_layers"]), num_heads=int(c["num_attention_heads"]),
        head_dim=int(c["attention_head_dim"]), dim=int(c["num_attention_heads"] * c["attention_head_dim"]),
        ffn_dim=int(c["ffn_dim"]), boundary_ratio=pipe_config.get("boundary_ratio"),
        flow_shift=scheduler.get("flow_shift", scheduler.get("shift")),
    )


def peek_model(spec: str | None) -> ModelInfo | None:
    """What :func:`load_pipeline` would report, read from the configs of a local (or already
    cached) pipeline folder without loading any weights, so flags and sizes are checked before
    the model loads. None when the configs are not at hand (a hub id not downloaded yet)."""
    import json

    model_id, path = resolve_model(spec)

    def read(rel: str) -> dict | None:
        f = Path(path) / rel
        if not f.is_file():
            try:
                from huggingface_hub import try_to_load_from_cache

                hit = try_to_load_from_cache(path, rel)
            except Exception:  # not a hub id, no cache: the checks wait for the load
                return None
            if not isinstance(hit, str):
                return None
            f = Path(hit)
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError):
            return None

    index = read("model_index.json")
    if index is None:
        return None
    experts = [n for n in ("transformer", "transformer_2") if (index.get(n) or [None])[0] is not None]
    config = read(f"{experts[0]}/config.json") if experts else None
    vae = read("vae/config.json") or {}
    if config is None:
        return None
    return _info(model_id, path, experts, config, index, vae.get("scale_factor_spatial", 8),
                 vae.get("scale_factor_temporal", 4), read("scheduler/scheduler_config.json") or {})


def set_flow_shift(pipe, shift: float) -> None:
    """Rebuild the scheduler with another flow shift (Wan: 3.0 for 480p, 5.0 for 720p)."""
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, flow_shift=shift, shift=shift)
