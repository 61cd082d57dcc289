"""A procedural world whose truth is known: short videos of simple coloured shapes, captions
that name them, and the mask of every object in every frame.

Everything comes from a seed; nothing is downloaded. A clip is described by a :class:`Scene`
(objects with kind, colour, size class, motion and trajectory; a plain or textured background)
sampled with numpy from ``(split, seed)``, and rendered in a batch with torch (on the CPU or a
GPU) by :func:`render`.

Splits (:func:`sample_scene`):

- ``train``: seeds as given; no object is one of the :data:`HELDOUT_PAIRS` (colour, shape).
- ``eval``: the same rules on seeds offset by :data:`EVAL_SEED_OFFSET` (held out by seed).
- ``heldout``: eval seeds, and at least one object is a held-out (colour, shape) pair that
  training never shows (held out by caption combination).

Captions name each object as ``a [small|big] <colour> <shape> [<motion>]`` and join them with
"and" ("a red circle moves left and a blue square bounces"); shapes and colours within a clip
are distinct, so every shape word names one object. Every word is a whole piece of the shipped
tokenizer (:func:`check_vocabulary`).

:func:`detect` finds a named (colour, shape) in RGB frames — by hue, then by matching shape
templates — to score generated videos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

COLOURS = {  # name -> RGB in [0, 1]
    "red": (0.90, 0.12, 0.12),
    "orange": (0.98, 0.55, 0.10),
    "yellow": (0.95, 0.88, 0.12),
    "green": (0.15, 0.78, 0.22),
    "blue": (0.15, 0.35, 0.95),
    "purple": (0.60, 0.20, 0.85),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
MOTIONS = ("moves left", "moves right", "rises", "falls", "bounces", "spins", "grows", "shrinks")
SIZES = {"small": (0.09, 0.115), "": (0.125, 0.16), "big": (0.17, 0.21)}  # radius / frame side
# (colour, shape) pairs never shown in training: the "heldout" split contains at least one.
HELDOUT_PAIRS = frozenset({("red", "star"), ("green", "triangle"), ("blue", "cross"), ("yellow", "circle"),
                           ("purple", "square")})
EVAL_SEED_OFFSET = 1_000_000_007
SPLITS = ("train", "eval", "heldout")
MOTION_WORD_P = 0.75  # probability that a caption names an object's motion
SHAPE_ONLY_SEED = 7_000_003  # offset of the random stream that picks shape-only phrases


@dataclass
class Obj:
    shape: str
    colour: str
    size: str  # "small", "" (medium) or "big"
    motion: str
    named_motion: bool
    rgb: tuple[float, float, float]
    cx: np.ndarray  # [T] centre x in [0, 1] (left to right)
    cy: np.ndarray  # [T] centre y in [0, 1] (top to bottom)
    r: np.ndarray  # [T] radius (fraction of the frame side)
    angle: np.ndarray  # [T] radians
    named_colour: bool = True  # False: the caption names the shape alone ("a circle")

    def phrase(self) -> str:
        words = ["a"] + ([self.size] if self.size else []) + ([self.colour] if self.named_colour else []) + [self.shape]
        if self.named_motion:
            words.append(self.motion)
        return " ".join(words)


@dataclass
class Scene:
    split: str
    seed: int
    frames: int
    objects: list[Obj]
    background: dict = field(default_factory=dict)

    @property
    def caption(self) -> str:
        return caption([o.phrase() for o in self.objects])


def caption(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _rng(split: str, seed: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    base = seed if split == "train" else EVAL_SEED_OFFSET + seed
    return np.random.default_rng([base, SPLITS.index(split) if split == "heldout" else 0])


def _pairs(rng, n: int, split: str) -> list[tuple[str, str]]:
    colours, shapes = list(COLOURS), list(SHAPES)
    for _ in range(1000):
        cs = rng.choice(len(colours), n, replace=False)
        ss = rng.choice(len(shapes), n, replace=False)
        pairs = [(colours[c], shapes[s]) for c, s in zip(cs, ss)]
        held = [p in HELDOUT_PAIRS for p in pairs]
        if split == "heldout" and any(held) or split != "heldout" and not any(held):
            return pairs
    raise RuntimeError("could not sample object pairs")  # pragma: no cover


def _trajectory(rng, motion: str, r0: float, t: np.ndarray):
    """Centre, radius and angle over normalized time t in [0, 1], kept inside the frame."""
    r = np.full_like(t, r0)
    angle = np.full_like(t, rng.uniform(0, 2 * math.pi))
    dx = dy = 0.0
    if motion == "grows":
        r = r0 * (1 + 0.5 * t)
    elif motion == "shrinks":
        r = r0 * (1 - 0.4 * t)
    elif motion == "spins":
        angle = angle + rng.choice([-1, 1]) * rng.uniform(0.5, 1.0) * math.pi * t
    rmax = float(r.max())
    lo, hi = rmax + 0.02, 0.98 - rmax
    d = rng.uniform(0.25, 0.4)
    if motion in ("moves left", "moves right"):
        d = min(d, hi - lo)
        x0 = rng.uniform(lo + d, hi) if motion == "moves left" else rng.uniform(lo, hi - d)
        cx = x0 + (-d if motion == "moves left" else d) * t
        cy = np.full_like(t, rng.uniform(lo, hi))
    elif motion in ("rises", "falls"):
        d = min(d, hi - lo)
        y0 = rng.uniform(lo + d, hi) if motion == "rises" else rng.uniform(lo, hi - d)
        cy = y0 + (-d if motion == "rises" else d) * t
        cx = np.full_like(t, rng.uniform(lo, hi))
    elif motion == "bounces":
        amp = min(rng.uniform(0.15, 0.3), hi - lo)
        floor = rng.uniform(lo + amp, hi)
        cy = floor - amp * np.abs(np.sin(math.pi * rng.choice([1, 2]) * t))
        cx = np.full_like(t, rng.uniform(lo, hi)) + rng.uniform(-0.05, 0.05) * t
    else:
        cx = np.full_like(t, rng.uniform(lo, hi)) + dx
        cy = np.full_like(t, rng.uniform(lo, hi)) + dy
    return cx, cy, r, angle


def sample_scene(split: str, seed: int, frames: int = 17, n_objects: int | None = None,
                 shape_only: float = 0.0, upright: bool = False) -> Scene:
    """The scene of clip ``seed`` of ``split`` (deterministic). With probability ``shape_only``
    an object's phrase leaves its colour out ("a small circle spins"): a caption that names the
    shape alone makes the shape word the only way to find that object, so a model trained on
    such captions must use it (the benchmarks always name both). The choice has its own random
    stream: the scene, and the other phrases, are the same for any ``shape_only``.

    ``upright`` is the upright world: every object starts in its canonical pose (a triangle's
    apex and a star's point up, a square and a cross on the axes) and a spinning one turns from
    there, as much as in the default world; all else is the same scene. Under random rotations
    the average of any shape is a disc, so the blurred guess a denoiser makes from heavy noise
    holds a colour but no shape; upright, the guess holds the shape too."""
    rng = _rng(split, seed)
    n = n_objects or int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    pairs = _pairs(rng, n, split)
    t = np.linspace(0.0, 1.0, frames)
    objects: list[Obj] = []
    for colour, shape in pairs:
        size = str(rng.choice(list(SIZES), p=[0.25, 0.5, 0.25]))
        motion = str(rng.choice(MOTIONS))
        named = bool(rng.random() < MOTION_WORD_P)
        best = None
        for _ in range(30):  # keep objects apart: the smallest gap over the clip is maximized
            r0 = rng.uniform(*SIZES[size])
            cx, cy, r, ang = _trajectory(rng, motion, r0, t)
            gap = min((float(np.min(np.hypot(cx - o.cx, cy - o.cy) - 0.85 * (r + o.r))) for o in objects),
                      default=1.0)
            if best is None or gap > best[0]:
                best = (gap, cx, cy, r, ang)
            if gap > 0:
                break
        _, cx, cy, r, ang = best
        if upright:
            ang = ang - ang[0]
        jitter = rng.uniform(-0.05, 0.05, 3)
        rgb = tuple(float(np.clip(c + j, 0, 1)) for c, j in zip(COLOURS[colour], jitter))
        objects.append(Obj(shape, colour, size, motion, named, rgb, cx, cy, r, ang))
    # dark-to-mid, low-saturation backgrounds, so every named colour stands out
    base = rng.uniform(0.05, 0.45)
    tint = rng.uniform(-0.06, 0.06, 3)
    bg = {"kind": str(rng.choice(["plain", "stripes", "checker", "noise"], p=[0.4, 0.2, 0.2, 0.2])),
          "rgb": [float(np.clip(base + x, 0, 1)) for x in tint], "contrast": float(rng.uniform(0.04, 0.12)),
          "period": float(rng.uniform(0.08, 0.25)), "angle": float(rng.uniform(0, math.pi)),
          "noise_seed": int(rng.integers(1 << 31))}
    if shape_only > 0:
        drop = _rng(split, seed + SHAPE_ONLY_SEED).random(len(objects)) < shape_only
        for obj, d in zip(objects, drop):
            obj.named_colour = not bool(d)
    return Scene(split, seed, frames, objects, bg)


def scenes(split: str, start: int, count: int, frames: int = 17, shape_only: float = 0.0,
           upright: bool = False) -> list[Scene]:
    return [sample_scene(split, s, frames, shape_only=shape_only, upright=upright) for s in range(start, start + count)]


# ---------------------------------------------------------------------------------------------
# Rendering (torch, batched)
# ---------------------------------------------------------------------------------------------

def shape_inside(kind: str, x, y, r):
    """Boolean inside-test of ``kind`` centred at 0 with radius ``r``, on rotated coordinates."""
    import torch

    if kind == "circle":
        return x * x + y * y <= r * r
    if kind == "square":
        return torch.maximum(x.abs(), y.abs()) <= 0.85 * r
    if kind == "triangle":  # equilateral, apex up (y grows downwards), circumradius 1.2 r
        R = 1.2 * r
        inside = y <= R / 2
        for a in (math.radians(-30), math.radians(210)):
            inside &= (x * math.cos(a) + y * math.sin(a)) <= R / 2
        return inside
    if kind == "star":  # five points; radius between 0.5 R and R, R = 1.15 r
        R = 1.15 * r
        phi = torch.atan2(x, -y)
        u = torch.remainder(phi * 5 / (2 * math.pi), 1.0)
        tri = (u - 0.5).abs() * 2  # 1 at the points, 0 between
        rho = R * (0.45 + 0.55 * tri)
        return x * x + y * y <= rho * rho
    if kind == "cross":
        a, w = 1.0 * r, 0.36 * r
        return ((x.abs() <= w) & (y.abs() <= a)) | ((y.abs() <= w) & (x.abs() <= a))
    raise ValueError(kind)


def _object_inside(obj: Obj, size: int, device, oversample: int = 1):
    """[T, H, W] bool mask of one object."""
    import torch

    n = size * oversample
    coords = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n
    cx = torch.as_tensor(obj.cx, dtype=torch.float32, device=device).view(-1, 1, 1)
    cy = torch.as_tensor(obj.cy, dtype=torch.float32, device=device).view(-1, 1, 1)
    r = torch.as_tensor(obj.r, dtype=torch.float32, device=device).view(-1, 1, 1)
    a = torch.as_tensor(obj.angle, dtype=torch.float32, device=device).view(-1, 1, 1)
    dx = coords.view(1, 1, -1) - cx
    dy = coords.view(1, -1, 1) - cy
    x = dx * torch.cos(a) + dy * torch.sin(a)
    y = -dx * torch.sin(a) + dy * torch.cos(a)
    return shape_inside(obj.shape, x, y, r)


def _background(scene: Scene, size: int, device):
    import torch

    bg = scene.background
    rgb = torch.tensor(bg["rgb"], device=device).view(3, 1, 1)
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    if bg["kind"] == "stripes":
        u = xx * math.cos(bg["angle"]) + yy * math.sin(bg["angle"])
        pattern = torch.sign(torch.sin(2 * math.pi * u / bg["period"]))
    elif bg["kind"] == "checker":
        k = bg["period"]
        pattern = ((torch.floor(xx / k) + torch.floor(yy / k)) % 2) * 2 - 1
    elif bg["kind"] == "noise":
        g = torch.Generator().manual_seed(bg["noise_seed"])
        coarse = torch.rand(1, 1, 8, 8, generator=g).to(device) * 2 - 1
        pattern = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
    else:
        pattern = torch.zeros_like(xx)
    return (rgb + bg["contrast"] * pattern).clamp(0, 1)  # [3, H, W]


def render(batch: list[Scene], size: int = 128, device="cpu", oversample: int = 2):
    """Render scenes: video [B, 3, T, H, W] in [-1, 1] (the VAE's range) and visible masks
    [B, 3, T, H, W] bool (object slot k of each scene; empty for missing slots). Later objects
    are drawn over earlier ones; masks are what is visible. Edges are anti-aliased by
    ``oversample``^2 supersampling; masks are the pixels at least half covered."""
    import torch

    frames = batch[0].frames
    video = torch.empty(len(batch), 3, frames, size, size, device=device)
    masks = torch.zeros(len(batch), 3, frames, size, size, dtype=torch.bool, device=device)
    for b, scene in enumerate(batch):
        canvas = _background(scene, size, device).unsqueeze(1).expand(3, frames, size, size).clone()
        cover = []
        for obj in scene.objects:
            inside = _object_inside(obj, size, device, oversample).float()
            if oversample > 1:
                inside = torch.nn.functional.avg_pool2d(inside, oversample)  # [T, H, W] coverage
            col = torch.tensor(obj.rgb, device=device).view(3, 1, 1, 1)
            canvas = canvas * (1 - inside) + col * inside
            cover.append(inside)
        for k, c in enumerate(cover):
            vis = c >= 0.5
            for later in cover[k + 1:]:
                vis &= later < 0.5
            masks[b, k] = vis
        video[b] = canvas * 2 - 1
    return video, masks


# ---------------------------------------------------------------------------------------------
# Detection in RGB frames
# ---------------------------------------------------------------------------------------------

def _hue_sat_val(rgb: np.ndarray):
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = mx - mn
    sat = np.where(mx > 1e-6, d / np.maximum(mx, 1e-6), 0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    dd = np.maximum(d, 1e-6)
    h = np.where(mx == r, ((g - b) / dd) % 6, np.where(mx == g, (b - r) / dd + 2, (r - g) / dd + 4)) * 60
    return h, sat, mx


_HUES = {name: _hue_sat_val(np.array(rgb))[0] for name, rgb in COLOURS.items()}


def colour_masks(frames: np.ndarray, min_sat: float = 0.45, min_val: float = 0.3) -> dict[str, np.ndarray]:
    """Per named colour, a [T, H, W] bool mask of pixels whose hue is nearest to it (saturated,
    bright pixels only: backgrounds are low-saturation by construction). ``frames``: [T, H, W, 3]
    uint8 or floats in [0, 1]."""
    f = frames.astype(np.float32) / 255.0 if frames.dtype == np.uint8 else frames.astype(np.float32)
    h, s, v = _hue_sat_val(f)
    names = list(_HUES)
    hues = np.array([_HUES[n] for n in names])
    dist = np.abs(((h[..., None] - hues) + 180) % 360 - 180)
    nearest = dist.argmin(-1)
    ok = (s >= min_sat) & (v >= min_val)
    return {n: ok & (nearest == i) for i, n in enumerate(names)}


_UNIT_AREA: dict[str, float] = {}


def _unit_area(kind: str) -> float:
    """Area of ``kind`` at radius 1, to size a template like a mask."""
    if kind not in _UNIT_AREA:
        import torch

        g = torch.linspace(-1.5, 1.5, 301)
        yy, xx = torch.meshgrid(g, g, indexing="ij")
        _UNIT_AREA[kind] = shape_inside(kind, xx, yy, 1.0).float().mean().item() * 9.0
    return _UNIT_AREA[kind]


def classify_shape(mask: np.ndarray, angles: int = 24) -> tuple[str | None, float]:
    """Best-matching shape kind of one binary [H, W] mask, by IoU with templates of the same
    area and centre at several rotations. Returns (kind, IoU), or (None, 0) for an empty mask."""
    import torch

    area = float(mask.sum())
    if area < 4:
        return None, 0.0
    size = mask.shape[0]
    ys, xs = np.nonzero(mask)
    cx, cy = (xs.mean() + 0.5) / size, (ys.mean() + 0.5) / size
    m = torch.from_numpy(mask.astype(bool))
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    dx, dy = coords.view(1, 1, -1) - cx, coords.view(1, -1, 1) - cy
    a = torch.linspace(0, 2 * math.pi, angles + 1)[:-1].view(-1, 1, 1)
    x = dx * torch.cos(a) + dy * torch.sin(a)
    y = -dx * torch.sin(a) + dy * torch.cos(a)
    best = (None, 0.0)
    for kind in SHAPES:
        unit = _unit_area(kind)
        r = math.sqrt(area / size / size / unit)
        t = shape_inside(kind, x, y, r)
        iou = ((t & m).sum((1, 2)).float() / (t | m).sum((1, 2)).clamp(min=1).float()).max().item()
        if iou > best[1]:
            best = (kind, iou)
    return best


def detect(frames: np.ndarray, colour: str, shape: str, min_area: float = 0.004) -> dict:
    """Is a ``colour`` ``shape`` in these frames? [T, H, W, 3] RGB.

    The object's pixels are those of its hue; it is present when they cover at least
    ``min_area`` of the frame in at least half the frames, and its kind is the majority of the
    per-frame template matches (every 4th frame). Returns present, kind, correct and the
    per-frame detected masks [T, H, W]."""
    masks = colour_masks(frames)[colour]
    T, H, W = masks.shape
    frac = masks.reshape(T, -1).mean(1)
    present = bool((frac >= min_area).mean() >= 0.5)
    votes: dict[str, int] = {}
    for t in range(0, T, 4):
        if frac[t] >= min_area:
            kind, _ = classify_shape(masks[t])
            if kind:
                votes[kind] = votes.get(kind, 0) + 1
    kind = max(votes, key=votes.get) if votes else None
    return {"present": present, "kind": kind, "correct": present and kind == shape, "masks": masks}


def check_vocabulary(tokenizer) -> list[str]:
    """Words of the captions that the tokenizer would split (should be none)."""
    words = {"a", "and", "small", "big", *COLOURS, *SHAPES, *" ".join(MOTIONS).split()}
    return sorted(w for w in words if len(tokenizer.tokenize(w)) != 1)
