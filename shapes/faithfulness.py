"""Does cross-attention land on the objects its words name? Benchmarks on the shapes world.

Two sources of (map, mask) pairs, both for held-out clips of :mod:`paik.shapes.world`:

- ``known``: a rendered clip (true masks) is encoded with the model's VAE, noised to each step's
  sigma of the scheduler (``x_t = (1-s) x0 + s noise``) and denoised once per step with capture
  attached (``attach`` / ``Recorder`` / ``CaptureStore``, exactly the maps ``paik generate``
  records).
- ``generated``: ``paik generate``'s own path (``generate(..., loaded=...)``) writes a bundle
  for the clip's caption; the object's mask is detected by colour in the generated video.

Each object is named by words (:data:`WORDS`): ``object``, its colour and shape words together
("red circle", the phrase ``--tokens "red circle"`` selects in Paik), and each alone,
``colour`` ("red") and ``shape`` ("circle"). For each, its map (summed over its pieces, mean over
heads) per step x block, plus aggregates (mean over blocks per step, over steps per block, over
both, over the middle or late half of the steps), every latent frame's map is upsampled
(bilinear) to the frame size and compared with the union of the object's masks over the frames
that latent frame covers (Wan's causal VAE: latent frame 0 is frame 0, latent frame k is frames
4k-3..4k):

- pointing game: the map's maximum falls inside the object;
- IoU: the map thresholded at ``threshold`` x its maximum vs the mask.

:func:`shape_rate` measures whether generated videos show the named shapes in the named colours.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from paik.shapes import world as shapes

# How an object is named: its colour and shape words together, or either alone.
WORDS = ("object", "shape", "colour")


def _torch():
    import torch

    return torch


def latent_frame_groups(frames: int, temporal: int = 4) -> list[list[int]]:
    """Pixel frames covered by each latent frame of Wan's causal VAE."""
    n = (frames - 1) // temporal + 1
    return [[0]] + [list(range(temporal * k - temporal + 1, temporal * k + 1)) for k in range(1, n)]


def score_maps(maps: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """maps [N, F', h, w] (N candidate maps), mask [T, H, W] bool. Returns pointing [N, F'], IoU
    [N, F'] (float) and valid [F'] (frames where the object is visible)."""
    torch = _torch()
    groups = latent_frame_groups(mask.shape[0])
    union = np.stack([mask[g].any(0) for g in groups])  # [F', H, W]
    m = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    up = torch.nn.functional.interpolate(m, size=mask.shape[1:], mode="bilinear", align_corners=False)  # [N,F',H,W]
    u = torch.from_numpy(union)
    flat = up.flatten(2)
    arg = flat.argmax(-1)  # [N, F']
    pointing = torch.gather(u.flatten(1).unsqueeze(0).expand(len(up), -1, -1), 2, arg.unsqueeze(-1))[..., 0]
    peak = flat.amax(-1, keepdim=True)
    binary = flat >= threshold * peak
    uf = u.flatten(1).unsqueeze(0)
    inter = (binary & uf).sum(-1).float()
    uni = (binary | uf).sum(-1).float().clamp(min=1)
    return pointing.float().numpy(), (inter / uni).numpy(), union.reshape(len(union), -1).any(1)


@dataclass
class Tally:
    """Pointing and IoU per candidate map (named), accumulated over objects and frames."""

    names: list[str] = field(default_factory=list)
    point: list[list[float]] = field(default_factory=list)
    iou: list[list[float]] = field(default_factory=list)

    def add(self, names, pointing, iou, valid):
        if not self.names:
            self.names = list(names)
            self.point = [[] for _ in names]
            self.iou = [[] for _ in names]
        for i in range(len(names)):
            self.point[i] += pointing[i][valid].tolist()
            self.iou[i] += iou[i][valid].tolist()

    def summary(self) -> dict[str, dict]:
        return {n: {"pointing": float(np.mean(p)) if p else float("nan"), "iou": float(np.mean(q)) if q else float("nan"),
                    "n": len(p)} for n, p, q in zip(self.names, self.point, self.iou)}


def candidates(maps: np.ndarray, tokens: list[int]) -> tuple[list[str], np.ndarray]:
    """maps [S, B, Hd, T, F', h, w] for one prompt -> every named candidate map of a word whose
    pieces are ``tokens`` (positions on the token axis): per (step, block), per step (mean of
    blocks), per block (mean of steps), and the grand mean. Heads are averaged."""
    word = maps[:, :, :, tokens].sum(3).mean(2)  # [S, B, F', h, w]
    S, B = word.shape[:2]
    names, out = [], []
    for s in range(S):
        for b in range(B):
            names.append(f"step {s} block {b}")
            out.append(word[s, b])
    for s in range(S):
        names.append(f"step {s} mean blocks")
        out.append(word[s].mean(0))
    for b in range(B):
        names.append(f"block {b} mean steps")
        out.append(word[:, b].mean(0))
    names.append("mean all")
    out.append(word.mean((0, 1)))
    names.append("mean blocks, middle half of steps")
    out.append(word[S // 4:S - S // 4].mean((0, 1)))
    names.append("mean blocks, late half of steps")
    out.append(word[S // 2:].mean((0, 1)))
    return names, np.stack(out)


def _word_tokens(table, word: str) -> list[int]:
    from paik.capture.tokens import resolve_tokens

    return list(resolve_tokens(table, [word])[0].tokens)


def object_tokens(table, obj: shapes.Obj) -> dict[str, list[int]]:
    """Token positions of each of :data:`WORDS` for ``obj``, resolved as Paik's ``--tokens``
    resolves them (the phrase "red circle": both words' pieces)."""
    return {"object": _word_tokens(table, f"{obj.colour} {obj.shape}"), "shape": _word_tokens(table, obj.shape),
            "colour": _word_tokens(table, obj.colour)}


# ---------------------------------------------------------------------------------------------
# known clips, noised and denoised with capture
# ---------------------------------------------------------------------------------------------

def encode_clip(loaded, scene: shapes.Scene, size: int):
    """Render ``scene`` and encode it with the model's VAE: (video [1, 3, T, H, W] in [-1, 1],
    masks [1, 3, T, H, W] bool, latent z [1, C, F', h, w] on the model's device, unnormalized)."""
    torch = _torch()
    pipe, _, device = loaded
    video, masks = shapes.render([scene], size, "cpu")
    with torch.no_grad():
        z = pipe.vae.encode(video.to(device, pipe.vae.dtype)).latent_dist.mode()
    return video, masks, z


def known_clip_maps(loaded, scene: shapes.Scene, steps: int, size: int, seed: int = 0):
    """Capture maps for a rendered clip noised to each of ``steps`` scheduler sigmas.

    Returns (maps [steps, blocks, heads, tokens, F', H', W'] float32, token table, masks
    [objects, T, H, W] bool)."""
    torch = _torch()
    from paik.capture.api import capture_attention

    pipe, info, device = loaded
    _, masks, z = encode_clip(loaded, scene, size)
    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    x0 = (z.float().cpu() - mean) / std
    t = pipe.transformer
    with torch.no_grad():
        emb = pipe._get_t5_prompt_embeds(prompt=[scene.caption], max_sequence_length=512, device=device, dtype=t.dtype)
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sched.set_timesteps(steps, device="cpu")
    sigmas = sched.sigmas[:steps].float()
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g)
    # a bare transformer called once per step, outside cache_context: each forward is the next step
    with capture_attention(t, prompt=scene.caption, tokenizer=pipe.tokenizer, num_steps=steps,
                           grid=(x0.shape[2], x0.shape[3] // info.patch[1], x0.shape[4] // info.patch[2]),
                           device=device, max_gb=float("inf")) as cap, torch.inference_mode():
        for k in range(steps):
            s = float(sigmas[k])
            xt = ((1 - s) * x0 + s * noise).to(device, t.dtype)
            ts = sched.timesteps[k].expand(1).to(device)
            t(hidden_states=xt, timestep=ts, encoder_hidden_states=emb, return_dict=False)
    store, table = cap.store, cap.tokens
    n = len(scene.objects)
    return store.maps.float().cpu().numpy(), table, masks[0, :n].numpy()


# ---------------------------------------------------------------------------------------------
# generated clips
# ---------------------------------------------------------------------------------------------

def read_video(path) -> np.ndarray:
    """[T, H, W, 3] uint8 of every frame (paik.video.decode)."""
    from paik.video import decode

    return decode(path)


def generate_clip(loaded, scene: shapes.Scene, steps: int, size: int, guidance: float, out: Path, capture=True):
    """Generate ``scene.caption`` with capture (paik generate's path). Returns (bundle or None,
    frames [T, H, W, 3] uint8)."""
    from paik.capture.bundle import open_bundle
    from paik.capture.generate import GenerateOptions, generate

    if capture:
        opts = GenerateOptions(prompt=scene.caption, out=str(out), seed=scene.seed, steps=steps, frames=scene.frames,
                               height=size, width=size, guidance=guidance, preview="none", overwrite=True, quiet=True)
        generate(opts, loaded=loaded)
        b = open_bundle(out)
        return b, read_video(b.video_path)
    torch = _torch()
    pipe = loaded[0]
    with torch.inference_mode():
        r = pipe(prompt=scene.caption, height=size, width=size, num_frames=scene.frames, num_inference_steps=steps,
                 guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(scene.seed), output_type="np")
    return None, (np.clip(r.frames[0], 0, 1) * 255 + 0.5).astype(np.uint8)


def vae_reconstruction(loaded, scene: shapes.Scene, size: int) -> np.ndarray:
    """The rendered clip encoded and decoded by the model's VAE: [T, H, W, 3] uint8."""
    torch = _torch()
    _, _, z = encode_clip(loaded, scene, size)
    with torch.no_grad():
        rec = loaded[0].vae.decode(z).sample.float().clamp(-1, 1)[0].cpu()
    return ((rec + 1) / 2 * 255).round().byte().permute(1, 2, 3, 0).numpy()


def bundle_maps(bundle) -> np.ndarray:
    return np.stack([np.asarray(bundle.step_arrays(s)["maps"], dtype=np.float32) for s in bundle.step_indices])


# ---------------------------------------------------------------------------------------------
# benchmarks
# ---------------------------------------------------------------------------------------------

def device_name(device) -> str:
    """The card (or the CPU and its torch threads) a benchmark ran on, for its report."""
    torch = _torch()
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} torch threads)"


def model_world(loaded) -> dict:
    """The shapes world the loaded model was trained on (``sample_scene`` keyword arguments)."""
    from paik.shapes.train import trained_world

    return trained_world(loaded[1].path)


def world_name(world: dict) -> str:
    return "upright" if world["upright"] else "default"


def world_note(name: str) -> str:
    """How a report names a non-default world after its split ("heldout (upright world)")."""
    return "" if name == "default" else f" ({name} world)"


def model_defaults(loaded) -> dict:
    from paik.capture.models import folder_defaults
    from paik.shapes.train import GEN_DEFAULTS

    return {**GEN_DEFAULTS, **folder_defaults(loaded[1].path)}


def faithfulness(loaded, split: str = "heldout", clips: int = 8, steps: int | None = None, mode: str = "known",
                 threshold: float = 0.5, guidance: float | None = None, start: int = 0, log=None,
                 on_clip=None) -> dict:
    """Run the benchmark; returns {"known": {word: Tally.summary()} for each of :data:`WORDS`,
    "generated": ..., "detected": ..., "settings": ...}. ``on_clip(scene, maps, table, masks)``, if
    given, sees each known clip's maps as they are scored (a second score of the same maps, such
    as a control, costs no second generation)."""
    d = model_defaults(loaded)
    steps = steps or d["steps"]
    guidance = d["guidance"] if guidance is None else guidance
    size, frames = d["height"], d["frames"]
    world = model_world(loaded)
    tallies = {m: {w: Tally() for w in WORDS} for m in (["known", "generated"] if mode == "both" else [mode])}
    detected = {"objects": 0, "present": 0, "correct": 0}
    tmp = Path(tempfile.mkdtemp(prefix="paik-faith-"))
    for i in range(clips):
        scene = shapes.sample_scene(split, start + i, frames, **world)
        t0 = time.time()
        if "known" in tallies:
            maps, table, masks = known_clip_maps(loaded, scene, steps, size, seed=scene.seed)
            if on_clip is not None:
                on_clip(scene, maps, table, masks)
            for k, obj in enumerate(scene.objects):
                for w, toks in object_tokens(table, obj).items():
                    names, cands = candidates(maps, toks)
                    tallies["known"][w].add(names, *score_maps(cands, masks[k], threshold))
        if "generated" in tallies:
            b, frames_rgb = generate_clip(loaded, scene, steps, size, guidance, tmp / f"clip{i}")
            maps = bundle_maps(b)
            for obj in scene.objects:
                det = shapes.detect(frames_rgb, obj.colour, obj.shape)
                detected["objects"] += 1
                detected["present"] += det["present"]
                detected["correct"] += det["correct"]
                if not det["present"]:
                    continue
                for w, toks in object_tokens(b.tokens, obj).items():
                    names, cands = candidates(maps, toks)
                    tallies["generated"][w].add(names, *score_maps(cands, det["masks"], threshold))
        if log:
            log(f"clip {i + 1}/{clips} ({time.time() - t0:.1f}s): {scene.caption}")
    out = {m: {w: t.summary() for w, t in ts.items()} for m, ts in tallies.items()}
    if "generated" in tallies:
        out["detected"] = detected
    out["settings"] = {"device": device_name(loaded[2]), "split": split, "clips": clips, "steps": steps,
                       "threshold": threshold, "guidance": guidance,
                       "size": size, "frames": frames, "start": start,
                       "world": world_name(world)}
    return out


def best(summary: dict, aggregates_only: bool = True) -> tuple[str, dict]:
    items = [(k, v) for k, v in summary.items() if not aggregates_only or not k.startswith("step") or "mean" in k]
    return max(items, key=lambda kv: (kv[1]["pointing"], kv[1]["iou"]))


def _table(s: dict) -> list[str]:
    steps = sorted({int(k.split()[1]) for k in s if k.startswith("step ")})
    blocks = sorted({int(k.split()[1]) for k in s if k.startswith("block ")})
    lines = ["  pointing / IoU per step (rows) x block (columns); last column: mean over blocks",
             "  step " + "".join(f"   block {b:<3d}  " for b in blocks) + "  mean blocks"]
    for st_ in steps:
        cells = [s[f"step {st_} block {b}"] for b in blocks] + [s[f"step {st_} mean blocks"]]
        lines.append(f"  {st_:4d} " + "".join(f"  {c['pointing']:.2f} / {c['iou']:.2f} " for c in cells))
    cells = [s[f"block {b} mean steps"] for b in blocks]
    lines.append("  mean " + "".join(f"  {c['pointing']:.2f} / {c['iou']:.2f} " for c in cells))
    return lines


def format_report(result: dict, tables: tuple[str, ...] = ("object",)) -> str:
    """The best aggregate and the usual aggregates for each of :data:`WORDS`, and the step x block
    table for the words in ``tables``."""
    lines = []
    st = result["settings"]
    world = world_note(st.get("world", "default"))
    lines.append(f"split {st['split']}{world}, {st['clips']} clips, {st['steps']} steps, IoU threshold {st['threshold']}, "
                 f"on {st.get('device', '?')}")
    example = {"object": "red circle", "shape": "circle", "colour": "red"}
    for mode in ("known", "generated"):
        if mode not in result:
            continue
        for w, s in result[mode].items():
            if not s:
                lines.append(f"\n[{mode}, {w} words] no objects scored")
                continue
            name, v = best(s)
            lines.append(f"\n[{mode}, {w} words, e.g. \"{example.get(w, w)}\"] best aggregate: {name}: "
                         f"pointing {v['pointing']:.3f}, IoU {v['iou']:.3f} (n={v['n']})")
            for k in ("mean all", "mean blocks, middle half of steps", "mean blocks, late half of steps"):
                lines.append(f"  {k:34s} pointing {s[k]['pointing']:.3f}  IoU {s[k]['iou']:.3f}")
            if w in tables:
                lines += _table(s)
    if "detected" in result:
        d = result["detected"]
        lines.append(f"\nobjects detected in generated videos: {d['present']}/{d['objects']} by colour, "
                     f"{d['correct']}/{d['objects']} with the named shape")
    return "\n".join(lines)


def shape_rate(loaded, split: str = "heldout", clips: int = 16, steps: int | None = None,
               guidance: float | None = None, start: int = 0, log=None, objects: int | None = None,
               reconstruct: bool = True) -> dict:
    """Generate each held-out caption and detect its objects: rates of named colours present,
    named (colour, shape) correct, and clips with every object correct, overall and per shape,
    per size and per number of objects in the clip (``objects``: only clips with that many; by
    default the split's mix of one to three). For scale, the same detection on the model's VAE
    reconstruction of each rendered clip (what a transformer that made the true latents would
    score): ``reconstructed_colour_and_shape`` (None with ``reconstruct=False``, which skips it)."""
    d = model_defaults(loaded)
    steps = steps or d["steps"]
    guidance = d["guidance"] if guidance is None else guidance
    world = model_world(loaded)
    n_obj = present = correct = clip_ok = rec_ok = 0
    per: dict[str, dict[str, list[int]]] = {"shape": {}, "size": {}, "objects": {}}
    for i in range(clips):
        scene = shapes.sample_scene(split, start + i, d["frames"], n_objects=objects, **world)
        _, frames = generate_clip(loaded, scene, steps, d["height"], guidance, Path("."), capture=False)
        rec = vae_reconstruction(loaded, scene, d["height"]) if reconstruct else None
        ok_all = True
        kinds = []
        for obj in scene.objects:
            det = shapes.detect(frames, obj.colour, obj.shape)
            kinds.append(f"{obj.colour} {obj.shape}: {det['kind'] if det['present'] else 'absent'}")
            n_obj += 1
            present += det["present"]
            correct += det["correct"]
            ok_all &= det["correct"]
            for key, value in (("shape", obj.shape), ("size", obj.size or "medium"),
                               ("objects", str(len(scene.objects)))):
                tally = per[key].setdefault(value, [0, 0])
                tally[0] += det["correct"]
                tally[1] += 1
            if rec is not None:
                rec_ok += shapes.detect(rec, obj.colour, obj.shape)["correct"]
        clip_ok += ok_all
        if log:
            log(f"clip {i + 1}/{clips}: {scene.caption} -> " + ", ".join(kinds))
    return {"device": device_name(loaded[2]), "split": split, "clips": clips, "steps": steps, "guidance": guidance,
            "world": world_name(world), "objects": n_obj,
            "colour_present": present / max(n_obj, 1), "colour_and_shape": correct / max(n_obj, 1),
            "clips_all_correct": clip_ok / max(clips, 1), "reconstructed_colour_and_shape": rec_ok / max(n_obj, 1) if reconstruct else None,
            **{f"per_{key}": {k: v[0] / v[1] for k, v in sorted(t.items())} for key, t in per.items()},
            "per_count": {key: {k: v[1] for k, v in sorted(t.items())} for key, t in per.items()}}


def _log(msg):
    print(f"paik: {msg}", file=sys.stderr, flush=True)
