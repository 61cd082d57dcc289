"""Attention bending: play a prompt word's cross-attention while the model denoises, exactly and
almost for free.

A bend is one line of a small grammar that reads as written::

    mute cat
    gain kiss 2 blocks 10-20 steps 0-12
    swap cat dog
    shift cat 0.2 0
    blur cat 2 strength 0.5 pass both heads 0-3
    mask "soccer ball" circle
    inject kiss takes/unbent

``OP WORD ARGS... [strength S] [blocks R] [heads R] [steps R] [pass cond|uncond|both]``. WORD is a
prompt word, ``eos``, ``#N`` or a quoted phrase; a bend acts on all its pieces. Ranges are the
index lists of ``--blocks`` (``3``, ``0,5,9``, ``10-19``, ``-1``); every block, head and step by
default, the conditional pass by default. Operations (:data:`OPS`):

========  =============  ==================================================================
gain      X              multiply the word's probabilities by X (X >= 0)
mute                     set them to zero
swap      OTHER          the two words exchange their maps (a phrase's pieces share the other's
                         map equally)
shift     DX DY          move the map by fractions of the frame (+DX right, +DY down)
rotate    DEG            rotate it about the centre, counter-clockwise on screen
flip      h|v            mirror it left-right (h) or top-bottom (v)
zoom      X              magnify it about the centre (X > 1) or shrink it (X < 1)
blur      SIGMA          Gaussian blur over each frame, SIGMA in latent cells (16 pixels)
sharpen   X              unsharp mask: P + X * (P - blur(P, 1))
mask      SHAPE|IMAGE    keep the word's attention inside a region, zero outside: circle,
                         left, right, top, bottom, center, a grayscale image (white keeps),
                         or a video (.mp4 .mov .m4v .mkv .webm .avi .gif), one mask per latent
                         frame (video_mask: resampled to F' x H' x W' in time and space)
inject    BUNDLE         take the same word's maps from another take of the same layout
========  =============  ==================================================================

``strength S`` (0..1) mixes the bent map with the original: P + S * (bend(P) - P).

The arithmetic. With P a position's probabilities over all keys (real tokens and the padding,
which the capture computes anyway), V the values and O = sum_k P_k V_k the fused kernel's output,
replacing the columns J of a few real tokens by P'_j and renormalizing gives

    O' = (O + sum_{j in J} (P'_j - P_j) V_j) / (1 + sum_{j in J} (P'_j - P_j))

per head and per position, on the attention output before ``attn.to_out``: a few rank-one terms
on top of the fused kernel. Every probability of the position, padding included, is divided by
the same denominator, so each position still sums to 1 and the captured maps are exactly the ones
the model used. Where a bend removes most of a position's mass (the denominator falls below 0.5),
1 + sum dP and O - P_j V_j both cancel and the kernel's rounding would be divided by a small
number: there the denominator is summed from the bent probabilities and the output is the exact
sum over the n real keys plus the padding (all padding keys share one value row): n + 1 terms,
never 512.
Bent probabilities are clamped to [0, 1] before renormalizing; a denominator that would vanish
(every key of a position muted) is held at the smallest float32, so no bend can produce NaN.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch

from paik.errors import PaikError

if TYPE_CHECKING:
    from paik.capture.tokens import Token

# op -> its arguments, each (name, kind); kinds: float, axis, word, shape, bundle
OPS: dict[str, tuple[tuple[str, str], ...]] = {
    "gain": (("factor", "float"),),
    "mute": (),
    "swap": (("other", "word"),),
    "shift": (("dx", "float"), ("dy", "float")),
    "rotate": (("deg", "float"),),
    "flip": (("axis", "axis"),),
    "zoom": (("factor", "float"),),
    "blur": (("sigma", "float"),),
    "sharpen": (("amount", "float"),),
    "mask": (("shape", "shape"),),
    "inject": (("bundle", "bundle"),),
}
SHAPES = ("circle", "left", "right", "top", "bottom", "center")
PASSES = ("cond", "uncond", "both")
_OPTIONS = {"strength": "strength", "blocks": "blocks", "block": "blocks", "heads": "heads", "head": "heads",
            "steps": "steps", "step": "steps", "pass": "pass"}
_LIMITS = {  # what each numeric argument accepts, and why not otherwise
    ("gain", "factor"): (0.0, None), ("zoom", "factor"): (1e-3, None),
    ("blur", "sigma"): (0.0, None), ("sharpen", "amount"): (0.0, None),
}
_RANGE_RE = re.compile(r"all|-?\d+(?:--?\d+)?(?:,-?\d+(?:--?\d+)?)*")
_EPS = torch.finfo(torch.float32).tiny  # a position whose every key was muted stays finite (and zero)
_WEAK = 0.5  # below this renormalization factor the rank-one update is replaced by the exact sum
_HELP = "write it like: gain kiss 2 blocks 10-20 steps 0-12 (see 'paik generate --help')"


@dataclass(frozen=True)
class BendSpec:
    """One bend as written: what to do to which word, how strongly, where and when.

    ``blocks``, ``heads`` and ``steps`` keep the user's index text (``"10-20"``; ``None`` for
    all), checked against the model when the bend is resolved (:func:`resolve_bends`)."""

    op: str
    word: str
    args: tuple = ()  # the op's arguments, in the order of OPS[op]
    strength: float = 1.0
    blocks: str | None = None
    heads: str | None = None
    steps: str | None = None
    pass_: str = "cond"

    def arg(self, name: str):
        return self.args[[n for n, _ in OPS[self.op]].index(name)]

    def line(self) -> str:
        """The canonical text of this bend; ``parse_bend(spec.line()) == spec``."""
        parts = [self.op, shlex.quote(self.word)]
        for (name, kind), v in zip(OPS[self.op], self.args):
            parts.append(_num(v) if kind == "float" else shlex.quote(str(v)))
        if self.strength != 1.0:
            parts += ["strength", _num(self.strength)]
        for k in ("blocks", "heads", "steps"):
            if getattr(self, k) is not None:
                parts += [k, getattr(self, k)]
        if self.pass_ != "cond":
            parts += ["pass", self.pass_]
        return " ".join(parts)

    def to_json(self) -> dict:
        d = {"op": self.op, "word": self.word, **{n: v for (n, _), v in zip(OPS[self.op], self.args)}}
        if self.strength != 1.0:
            d["strength"] = self.strength
        for k in ("blocks", "heads", "steps"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.pass_ != "cond":
            d["pass"] = self.pass_
        return d


def _num(v: float) -> str:
    return repr(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


# -- parsing ------------------------------------------------------------------------------------

def parse_bend(text: str) -> BendSpec:
    """One bend line -> :class:`BendSpec`. A mistake is a one-line :class:`PaikError`."""
    src = str(text).strip()
    try:
        words = shlex.split(src)
    except ValueError as e:
        raise PaikError(f"bend {src!r}: {e} (close the quote around a phrase)") from None
    if not words:
        raise PaikError(f"a bend is empty; {_HELP}")
    op = words[0].lower()
    if op not in OPS:
        raise PaikError(f"bend {src!r}: unknown operation {words[0]!r}; operations: {', '.join(OPS)}")
    want = OPS[op]
    if len(words) < 2 + len(want):
        usage = " ".join([op, "WORD", *(n.upper() for n, _ in want)])
        raise PaikError(f"bend {src!r}: {op} needs {usage}")
    word = words[1]
    if want and want[0][1] == "float" and not _is_number(words[2]):
        raise PaikError(f"bend {src!r}: {op}'s {want[0][0]} must be a number, not {words[2]!r}"
                        f" (a phrase goes in quotes: {op} \"{word} {words[2]}\" ...)")
    args = tuple(_arg(src, op, name, kind, raw) for (name, kind), raw in zip(want, words[2: 2 + len(want)]))
    opts: dict = {}
    rest = words[2 + len(want):]
    i = 0
    while i < len(rest):
        key = _OPTIONS.get(rest[i].lower())
        if key is None:
            hint = (f"; quote a phrase: {op} \"{word} {rest[i]}\"" if i == 0 and not want else "")
            raise PaikError(f"bend {src!r}: unexpected {rest[i]!r} (after the arguments come strength, blocks, "
                            f"heads, steps or pass){hint}")
        if i + 1 >= len(rest):
            raise PaikError(f"bend {src!r}: {rest[i]} needs a value")
        if key in opts:
            raise PaikError(f"bend {src!r}: {key} is given twice")
        opts[key] = _option(src, key, rest[i + 1])
        i += 2
    spec = BendSpec(op, word, args, opts.get("strength", 1.0), opts.get("blocks"), opts.get("heads"),
                    opts.get("steps"), opts.get("pass", "cond"))
    if op == "inject" and spec.pass_ != "cond":
        raise PaikError(f"bend {src!r}: inject takes the other take's conditional maps; use pass cond")
    return spec


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _arg(src: str, op: str, name: str, kind: str, raw: str):
    if kind == "float":
        try:
            v = float(raw)
        except ValueError:
            raise PaikError(f"bend {src!r}: {op}'s {name} must be a number, not {raw!r}") from None
        if not math.isfinite(v):
            raise PaikError(f"bend {src!r}: {op}'s {name} must be a finite number")
        lo, hi = _LIMITS.get((op, name), (None, None))
        if lo is not None and v < lo:
            raise PaikError(f"bend {src!r}: {op}'s {name} must be at least {_num(lo)}")
        return v
    if kind == "axis":
        axis = {"h": "h", "horizontal": "h", "x": "h", "v": "v", "vertical": "v", "y": "v"}.get(raw.lower())
        if axis is None:
            raise PaikError(f"bend {src!r}: flip takes h (left-right) or v (top-bottom), not {raw!r}")
        return axis
    if kind == "shape":
        return raw.lower() if raw.lower() in SHAPES else raw
    return raw


def _option(src: str, key: str, raw: str):
    if key == "strength":
        try:
            v = float(raw)
        except ValueError:
            v = float("nan")
        if not 0.0 <= v <= 1.0:
            raise PaikError(f"bend {src!r}: strength must be a number from 0 to 1, not {raw!r}")
        return v
    if key == "pass":
        if raw.lower() not in PASSES:
            raise PaikError(f"bend {src!r}: pass must be cond, uncond or both, not {raw!r}")
        return raw.lower()
    text = raw.strip().lower()
    if not _RANGE_RE.fullmatch(text):
        raise PaikError(f"bend {src!r}: {key} {raw!r} is not a range; write all, 3, 0,5,9 or 10-20")
    return None if text == "all" else text


def bend_from_table(d: dict, where: str = "") -> BendSpec:
    """A bend written as a TOML table: ``{op = "gain", word = "kiss", factor = 2, blocks = "10-20"}``
    (argument names as in :data:`OPS`; ranges may also be integers)."""
    at = f"{where}: " if where else ""
    if not isinstance(d, dict) or "op" not in d or "word" not in d:
        raise PaikError(f"{at}a bend table needs op and word, e.g. {{op = \"mute\", word = \"cat\"}}")
    op = str(d["op"]).lower()
    if op not in OPS:
        raise PaikError(f"{at}unknown bend operation {d['op']!r}; operations: {', '.join(OPS)}")
    known = {"op", "word", "strength", "blocks", "heads", "steps", "pass"} | {n for n, _ in OPS[op]}
    extra = sorted(set(d) - known)
    if extra:
        raise PaikError(f"{at}bend {op}: unknown key {extra[0]!r}; {op} takes "
                        f"{', '.join(['word', *(n for n, _ in OPS[op])])} and strength, blocks, heads, steps, pass")
    parts = [op, shlex.quote(str(d["word"]))]
    for name, _ in OPS[op]:
        if name not in d:
            raise PaikError(f"{at}bend {op} needs {name}")
        parts.append(shlex.quote(str(d[name])))
    for k in ("strength", "blocks", "heads", "steps", "pass"):
        if k in d:
            parts += [k, shlex.quote(str(d[k]))]
    try:
        return parse_bend(" ".join(parts))
    except PaikError as e:
        raise PaikError(f"{at}{e}") from None


# -- presets ------------------------------------------------------------------------------------

def user_dir() -> Path:
    return Path(os.environ.get("PAIK_BENDS") or Path.home() / ".config" / "paik" / "bends")


def preset_dirs() -> list[Path]:
    from paik import resources

    return [user_dir(), resources.presets("bends")]


def available_presets() -> list[str]:
    names: dict[str, None] = {}
    for d in preset_dirs():
        for f in sorted(d.glob("*.toml")) if d.is_dir() else ():
            names.setdefault(f.stem)
    return sorted(names)


def load_preset(name_or_path: str) -> list[BendSpec]:
    """Bends from a TOML preset: a file path, or a name in ``~/.config/paik/bends`` (or
    ``$PAIK_BENDS``), then the shipped ``presets/bends``. The file holds ``bends = [...]``, a list
    of bend lines or tables, and/or ``[[bend]]`` tables. Relative mask images and inject
    bundles are taken relative to the preset's folder."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    p = Path(name_or_path).expanduser()
    if not (p.suffix == ".toml" and p.is_file()):
        p = next((d / f"{name_or_path}.toml" for d in preset_dirs() if (d / f"{name_or_path}.toml").is_file()), None)
        if p is None:
            raise PaikError(f"no bend preset {name_or_path!r}; presets: {', '.join(available_presets()) or 'none'} "
                            "(or give a .toml file)")
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise PaikError(f"cannot read the bend preset {p}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise PaikError(f"the bend preset {p} is not valid TOML: {e}") from None
    items = list(data.get("bends", [])) if isinstance(data.get("bends", []), list) else None
    tables = data.get("bend", [])
    if items is None or not isinstance(tables, list):
        raise PaikError(f"{p}: bends must be a list of bend lines or tables ([[bend]] for tables)")
    specs = []
    for n, item in enumerate(items + tables):
        where = f"{p} bend {n + 1}"
        if isinstance(item, str):
            try:
                spec = parse_bend(item)
            except PaikError as e:
                raise PaikError(f"{where}: {e}") from None
        else:
            spec = bend_from_table(item, where)
        specs.append(_relative_to(spec, p.parent))
    if not specs:
        raise PaikError(f"{p}: the preset lists no bends (bends = [\"mute cat\", ...])")
    return specs


def _relative_to(spec: BendSpec, folder: Path) -> BendSpec:
    if spec.op not in ("mask", "inject"):
        return spec
    v = str(spec.args[0])
    if (spec.op == "mask" and v in SHAPES) or Path(v).expanduser().is_absolute():
        return spec
    candidate = folder / v
    return replace(spec, args=(str(candidate),)) if candidate.exists() else spec


def parse_bends(lines: Iterable = (), presets: Iterable[str] = ()) -> list[BendSpec]:
    """Presets' bends first, then the lines (``--bends`` then ``--bend``); items may already be
    :class:`BendSpec`."""
    out: list[BendSpec] = []
    for p in presets:
        out.extend(load_preset(p))
    for line in lines:
        out.append(line if isinstance(line, BendSpec) else parse_bend(line))
    return out


# -- resolving against a model and a prompt -----------------------------------------------------

@dataclass
class _Bend:
    """A bend checked against the model and the prompt, ready to apply."""

    spec: BendSpec
    passes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # pass -> (word's keys, swap partner's)
    blocks: frozenset[int]
    steps: frozenset[int]
    heads: torch.Tensor  # [n_heads] float32: the strength for heads in range, 0 elsewhere
    mask: torch.Tensor | None = None  # [H', W'] in [0, 1]
    source: "_InjectSource | None" = None


class _InjectSource:
    """The same word's maps in another take, read step by step from its bundle (memory-mapped)."""

    def __init__(self, bundle, positions: list[int]):
        self.bundle = bundle
        self.positions = positions  # on the source's captured token axis
        self._block_pos = {b: i for i, b in enumerate(bundle.layout.blocks)}

    def maps(self, step: int, block: int) -> torch.Tensor:
        """[heads_stored, pieces, positions] float32"""
        import numpy as np

        a = self.bundle.step_arrays(step)["maps"][self._block_pos[block]]
        a = np.asarray(a[:, self.positions], dtype=np.float32)
        return torch.from_numpy(a).flatten(2)


def resolve_bends(specs: Iterable[BendSpec], table: list["Token"], negative_table: list["Token"] | None,
                  n_blocks: int, n_heads: int, n_steps: int, latent: tuple[int, int, int],
                  schedule: dict[int, list[int]] | None = None) -> "BendSet":
    """Check every bend against the model (blocks, heads, steps), the prompt's words (the negative
    prompt's for ``pass uncond``/``both``; ``negative_table`` is None when there is no
    unconditional pass), and load masks and inject sources. ``schedule`` (step -> indices into
    ``specs``), when given, says which bends are active at each step instead of their ``steps``
    ranges: that is how a recorded performance is replayed."""
    from paik import indices as grammar
    from paik.capture.tokens import resolve_tokens

    specs = list(specs)
    bends = []
    for spec in specs:
        src = spec.line()

        def indices(text, n, name, default=None):
            if text is None and default is not None:
                return default
            try:
                return grammar.parse(text or "all", n, f"--{name}")
            except PaikError as e:
                raise PaikError(f"bend {src!r}: {e}") from None

        def keys(tbl, word, where):
            try:
                return tuple(resolve_tokens(tbl, [word])[0].tokens)
            except PaikError as e:
                raise PaikError(f"bend {src!r}: {e}{where}") from None

        wanted = ("cond", "uncond") if spec.pass_ == "both" else (spec.pass_,)
        passes = {}
        for p in wanted:
            if p == "uncond" and negative_table is None:
                if spec.pass_ == "uncond":
                    raise PaikError(f"bend {src!r}: there is no unconditional pass without guidance "
                                    "(--guidance above 1)")
                continue
            tbl, where = (table, "") if p == "cond" else (negative_table, " (pass uncond bends the negative prompt)")
            other = keys(tbl, spec.arg("other"), where) if spec.op == "swap" else ()
            mine = keys(tbl, spec.word, where)
            if set(mine) & set(other):
                raise PaikError(f"bend {src!r}: a word cannot swap with itself")
            passes[p] = (mine, other)
        source, mask = None, None
        if spec.op == "inject":
            source = _inject_source(spec, src, n_blocks, n_heads, latent)
        src_lay = source.bundle.layout if source is not None else None
        blocks = indices(spec.blocks, n_blocks, "blocks", src_lay.blocks if src_lay else None)
        if schedule is not None:  # a replayed recording says when; the written range was already applied
            steps = list(range(n_steps))
        else:
            steps = indices(spec.steps, n_steps, "steps", source.bundle.step_indices if source else None)
        if source is not None:
            src_steps = set(source.bundle.step_indices) if schedule is None else set(steps)
            missing = sorted(set(blocks) - set(src_lay.blocks)) or sorted(set(steps) - src_steps)
            if missing:
                what = "block" if set(blocks) - set(src_lay.blocks) else "step"
                raise PaikError(f"bend {src!r}: the inject source has no {what} {missing[0]}; "
                                f"limit the bend to the {what}s it captured")
        heads = torch.zeros(n_heads)
        heads[indices(spec.heads, n_heads, "heads")] = spec.strength
        if spec.op == "mask":
            mask = _mask(spec.arg("shape"), tuple(latent), src)
        bends.append(_Bend(spec, passes, frozenset(blocks), frozenset(steps), heads, mask, source))
    n_real = {"cond": len(table), "uncond": len(negative_table) if negative_table is not None else 0}
    return BendSet(bends, latent, n_real, schedule)


def _inject_source(spec: BendSpec, src: str, n_blocks: int, n_heads: int, latent) -> _InjectSource:
    from paik.capture.bundle import open_bundle

    try:
        b = open_bundle(spec.arg("bundle"))
    except PaikError as e:
        raise PaikError(f"bend {src!r}: the inject source cannot be opened: {e}") from None
    lay = b.layout
    if tuple(lay.latent) != tuple(latent) or lay.n_heads != n_heads or max(lay.blocks, default=-1) >= n_blocks:
        raise PaikError(
            f"bend {src!r}: the inject source has another layout (latent {'x'.join(map(str, lay.latent))}, "
            f"{lay.n_heads} heads) than this take ({'x'.join(map(str, latent))}, {n_heads} heads); "
            "inject from a take of the same model, frames, height and width")
    if not b.step_indices:
        raise PaikError(f"bend {src!r}: the inject source has no finished steps")
    try:
        positions = b.resolve(spec.word)
    except PaikError as e:
        raise PaikError(f"bend {src!r}: in the inject source: {e}") from None
    return _InjectSource(b, positions)


MASK_VIDEOS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".gif")
VIDEO_MASK_LIMITS = (2049, 1024)  # frames and pixels a side read from a mask video (memory stays bounded)


def _mask(shape: str, latent: tuple[int, int, int], src: str) -> torch.Tensor:
    """[1, H', W'] in [0, 1]: a built-in region or a grayscale image resized to the latent grid;
    or [F', H', W'] from a video (:func:`video_mask`)."""
    _, hh, ww = latent
    if shape in SHAPES:
        y = (torch.arange(hh) + 0.5) / hh * 2 - 1  # cell centres in [-1, 1]
        x = (torch.arange(ww) + 0.5) / ww * 2 - 1
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        short = min(hh, ww)
        region = {
            "circle": (xx * ww / short) ** 2 + (yy * hh / short) ** 2 <= 1.0,  # the largest centred disc
            "left": xx < 0, "right": xx > 0, "top": yy < 0, "bottom": yy > 0,
            "center": (xx.abs() <= 0.5) & (yy.abs() <= 0.5),
        }[shape]
        return region.float()[None]
    path = Path(shape).expanduser()
    if path.suffix.lower() in MASK_VIDEOS:
        return video_mask(path, latent, src)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L").resize((ww, hh), Image.Resampling.BOX)
            import numpy as np

            return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)[None]
    except (OSError, UnidentifiedImageError, ValueError) as e:
        why = "no such file" if not path.exists() else (getattr(e, "strerror", None) or "not an image")
        raise PaikError(f"bend {src!r}: the mask {shape!r} is neither a shape ({', '.join(SHAPES)}) nor a readable "
                        f"image ({why})") from None


def video_mask(path: Path, latent: tuple[int, int, int], src: str = "") -> torch.Tensor:
    """[F', H', W'] in [0, 1] from a grayscale (or any) video, read with PyAV (paik.video).

    Time: the video is resampled (nearest frame) to the take's 4(F'-1)+1 frames and grouped as
    Wan's VAE groups them: latent frame 0 is the first frame, latent frame k the mean of frames
    4k-3 .. 4k. Space: each frame is converted to luma and box-filtered to H' x W', as an image
    mask is. White keeps the word's attention, black removes it."""
    import numpy as np
    from PIL import Image

    from paik.video import decode

    f, hh, ww = latent
    if not path.is_file():
        raise PaikError(f"bend {src!r}: the mask video {str(path)!r} does not exist")
    try:
        frames = decode(path, "rgb24", max_size=VIDEO_MASK_LIMITS[1], max_frames=VIDEO_MASK_LIMITS[0])
    except PaikError as e:
        why = str(e).removeprefix(f"{path}: ")  # the bend line names the file already
        raise PaikError(f"bend {src!r}: the mask video cannot be read: {why}") from None
    small = np.stack([np.asarray(Image.fromarray(fr).convert("L").resize((ww, hh), Image.Resampling.BOX),
                                 dtype=np.float32) / 255.0 for fr in frames])  # [N, H', W']
    total = 4 * (f - 1) + 1
    pick = np.minimum((np.arange(total) * len(small)) // total, len(small) - 1)  # nearest in time
    timeline = small[pick]
    groups = [timeline[:1]] + [timeline[4 * k - 3: 4 * k + 1] for k in range(1, f)]
    return torch.from_numpy(np.stack([g.mean(0) for g in groups]).astype(np.float32))


class BendSet:
    """Every bend of a take, resolved; the capture processors ask it what is active."""

    def __init__(self, bends: list[_Bend], latent: tuple[int, int, int], n_real: dict[str, int],
                 schedule: dict[int, list[int]] | None = None):
        self.bends = bends
        self.latent = tuple(latent)
        self.n_real = n_real  # real prompt tokens of each pass's prompt
        self.schedule = schedule
        self._blocks = {(p, b) for x in bends for p in x.passes for b in x.blocks}

    def __bool__(self) -> bool:
        return bool(self.bends)

    def specs(self) -> list[BendSpec]:
        return [b.spec for b in self.bends]

    def _active_at(self, step: int) -> list[_Bend]:
        if self.schedule is not None:
            return [self.bends[i] for i in self.schedule.get(step, ())]
        return [b for b in self.bends if step in b.steps]

    def lines_at(self, step: int) -> list[str]:
        """The bends active at ``step`` (in any block or pass), as canonical lines: the manifest's
        per-step record."""
        return [b.spec.line() for b in self._active_at(step)]

    def active(self, step: int | None, pass_name: str | None, block: int) -> "BlockBends | None":
        """The bends to apply in this block of this pass, or None: then nothing extra runs."""
        if step is None or (pass_name, block) not in self._blocks:
            return None
        here = [b for b in self._active_at(step) if pass_name in b.passes and block in b.blocks]
        return BlockBends(here, pass_name, step, block, self.latent, self.n_real[pass_name]) if here else None


def bend_for(recorder, block: int) -> "BlockBends | None":
    """What the capture processor calls: the recorder's bends active in ``block`` now, if any."""
    bends = getattr(recorder, "bends", None)
    return bends.active(recorder.step, recorder.pass_name, block) if bends else None


class BlockBends:
    """The bends active in one block of one pass of one step: bends the probabilities, then
    corrects the fused attention output with the matching rank-one terms."""

    def __init__(self, bends: list[_Bend], pass_name: str, step: int, block: int, latent, n_real: int):
        self.bends, self.pass_name, self.step, self.block, self.latent = bends, pass_name, step, block, latent
        self.n_real = n_real  # keys before the padding in this pass
        touched = sorted({k for b in bends for group in b.passes[pass_name] for k in group})
        self.keys = touched  # the real-token keys whose probabilities change
        self._delta = self._denom = None

    def apply(self, probs: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """probs [H, n_real, S], pad [H, S] (float32, exact) -> the bent, renormalized probabilities,
        in place. Keeps what :meth:`correct` needs."""
        heads, _, s = probs.shape
        pos = {k: i for i, k in enumerate(self.keys)}
        idx = torch.tensor(self.keys, dtype=torch.long, device=probs.device)
        old = probs.index_select(1, idx)  # [H, T, S]
        work = old.clone()
        for b in self.bends:
            mine, other = b.passes[self.pass_name]
            group = list(mine) + list(other)
            cur = work[:, [pos[k] for k in group]]
            new = bend_maps(b, cur, len(mine), self.latent, self.step, self.block).clamp_(0.0, 1.0)
            w = b.heads.to(probs.device).view(-1, 1, 1)
            if w.shape[0] != heads:  # the store's heads are the model's; a mismatch is a bug
                raise ValueError(f"bend has {w.shape[0]} heads, attention has {heads}")
            work[:, [pos[k] for k in group]] = cur + w * (new - cur)
        probs.index_copy_(1, idx, work)
        delta = work.sub_(old)
        denom = delta.sum(1).add_(1.0)  # [H, S]; exactly 1 where nothing changed (strength 0)
        # where a bend removed most of a position's mass, 1 + sum(dP) cancels: sum the bent
        # probabilities themselves there
        denom = torch.where(denom < _WEAK, probs.sum(1).add_(pad), denom).clamp_min_(_EPS)
        probs.div_(denom.unsqueeze(1))
        pad.div_(denom)
        self._delta, self._denom, self._probs, self._pad = delta, denom, probs, pad
        return probs, pad

    def correct(self, out: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """out [1, S, H, D]: the fused kernel's output with the unbent probabilities; value
        [1, L, H, D]. Returns O' = (O + sum_j dP_j V_j) / (1 + sum_j dP_j), per head and position."""
        if out.shape[0] != 1:
            raise ValueError("bending supports one video per forward (WanPipeline's CFG runs passes separately)")
        v = value[0, self.keys].float()  # [T, H, D]
        o = out[0].float()  # [S, H, D]
        o.add_(torch.einsum("hts,thd->shd", self._delta, v)).div_(self._denom.t().unsqueeze(-1))
        # Where a bend took most of a position's mass away, O - P_j V_j cancels and the kernel's
        # rounding is divided by a small number. There the output is recomputed over all keys from
        # the bent probabilities: n real keys plus the padding, whose values are all one row.
        # (The check costs one device sync per bent block.)
        weak = self._denom < _WEAK
        if bool(weak.any()):
            n = self.n_real
            vals = value[0, :n].float()  # [n, H, D]
            exact = torch.einsum("hks,khd->shd", self._probs, vals)
            if value.shape[1] > n:
                exact.add_(self._pad.t().unsqueeze(-1) * value[0, n].float().unsqueeze(0))
            o = torch.where(weak.t().unsqueeze(-1), exact, o)
        return o.to(out.dtype).unsqueeze(0)


# -- the operations -----------------------------------------------------------------------------

def bend_maps(b: _Bend, maps: torch.Tensor, n_mine: int, latent, step: int, block: int) -> torch.Tensor:
    """One bend on its word's maps: maps [H, T, S] (the word's pieces, then a swap partner's) ->
    the bent maps, same shape, before clamping and the strength mix."""
    spec = b.spec
    op = spec.op
    if op == "gain":
        return maps * spec.arg("factor")
    if op == "mute":
        return torch.zeros_like(maps)
    if op == "swap":
        mine, other = maps[:, :n_mine], maps[:, n_mine:]
        return torch.cat([_share(other.sum(1, keepdim=True), n_mine),
                          _share(mine.sum(1, keepdim=True), maps.shape[1] - n_mine)], 1)
    if op == "inject":
        src = b.source.maps(step, block).to(maps.device)  # [Hs, Ts, S]
        if src.shape[0] != maps.shape[0]:  # a --heads mean source: its mean stands for every head
            src = src.expand(maps.shape[0], -1, -1)
        return src if src.shape[1] == n_mine else _share(src.sum(1, keepdim=True), n_mine)
    return spatial(op, spec, maps, latent, b.mask)


def _share(total: torch.Tensor, n: int) -> torch.Tensor:
    """A word's map [H, 1, S] given to n pieces in equal parts, so the pieces sum to it."""
    return total.div(n).expand(-1, n, -1)


def spatial(op: str, spec: BendSpec, maps: torch.Tensor, latent, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Spatial operations on [H, T, F'*H'*W'] maps (frame-major positions), per frame."""
    f, hh, ww = latent
    x = maps.reshape(-1, 1, hh, ww)  # every (head, piece, frame) an image
    if op == "flip":
        y = x.flip(-1 if spec.arg("axis") == "h" else -2)
    elif op in ("shift", "rotate", "zoom"):
        y = _affine(x, op, spec)
    elif op == "blur":
        y = gaussian_blur(x, spec.arg("sigma"))
    elif op == "sharpen":
        y = x + spec.arg("amount") * (x - gaussian_blur(x, 1.0))
    elif op == "mask":
        if mask is None:  # resolved bends carry theirs; built here for a spec used on its own
            mask = _mask(spec.arg("shape"), (f, hh, ww), spec.line())
        m = mask.to(x.device, x.dtype).reshape(-1, hh, ww)  # [1 or F', H', W']: one mask, or one per frame
        y = (x.reshape(-1, m.shape[0] if m.shape[0] == f else 1, hh, ww) * m).reshape(x.shape)
    else:
        raise ValueError(f"not a spatial bend: {op}")
    return y.reshape(maps.shape)


def _affine(x: torch.Tensor, op: str, spec: BendSpec) -> torch.Tensor:
    """Resample each image through an affine map of the output's normalized coordinates to the
    input's (``grid_sample``'s convention); zeros come in from outside the frame."""
    n, _, hh, ww = x.shape
    if op == "shift":
        theta = [[1.0, 0.0, -2.0 * spec.arg("dx")], [0.0, 1.0, -2.0 * spec.arg("dy")]]
    elif op == "zoom":
        z = 1.0 / spec.arg("factor")
        theta = [[z, 0.0, 0.0], [0.0, z, 0.0]]
    else:
        # counter-clockwise on screen (y points down), in pixel units so a non-square frame is
        # rotated, not sheared: theta = S^-1 R^-1 S with S = diag(W/2, H/2)
        a = math.radians(spec.arg("deg"))
        c, s = math.cos(a), math.sin(a)
        theta = [[c, -s * hh / ww, 0.0], [s * ww / hh, c, 0.0]]
    t = torch.tensor(theta, dtype=x.dtype, device=x.device).expand(n, 2, 3)
    grid = torch.nn.functional.affine_grid(t, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian over the last two axes of [N, 1, H, W]; edges replicate, so attention
    at the border is not pulled towards zero."""
    if sigma <= 0:
        return x
    out = x
    for axis, size in ((-1, x.shape[-1]), (-2, x.shape[-2])):
        r = min(int(math.ceil(3 * sigma)), size - 1)
        if r < 1:
            continue
        t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        if axis == -1:
            out = torch.nn.functional.conv2d(torch.nn.functional.pad(out, (r, r, 0, 0), mode="replicate"),
                                             k.view(1, 1, 1, -1))
        else:
            out = torch.nn.functional.conv2d(torch.nn.functional.pad(out, (0, 0, r, r), mode="replicate"),
                                             k.view(1, 1, -1, 1))
    return out


# -- the manifest's record ----------------------------------------------------------------------

def schedule_from_log(log: list[dict], specs_lines: list[str], n_steps: int, recorded_steps: int) -> tuple[
        list[BendSpec], dict[int, list[int]]]:
    """A recorded per-step bend log (``manifest["bend_log"]``: ``[{"step": i, "bends": [line,
    ...]}]``) -> the distinct bends and which are active at each step of a run of ``n_steps``.
    A run with another step count follows the recording proportionally (step i plays recorded
    step floor(i * recorded / n))."""
    lines: list[str] = list(dict.fromkeys([*specs_lines, *(x for e in log for x in e.get("bends", []))]))
    index = {line: i for i, line in enumerate(lines)}
    by_step = {int(e["step"]): [index[x] for x in e.get("bends", [])] for e in log}
    schedule = {}
    for i in range(n_steps):
        src = i if n_steps == recorded_steps else min(recorded_steps - 1, i * recorded_steps // n_steps)
        schedule[i] = by_step.get(src, [])
    return [parse_bend(x) for x in lines], schedule


def bends_for_take(lines: Iterable, presets: Iterable[str], replay: dict | None, table, negative_table,
                   n_blocks: int, n_heads: int, n_steps: int, latent) -> "BendSet | LiveTakeBends | None":
    """What ``paik generate`` calls: the take's bends from ``--bends`` presets and ``--bend`` lines,
    or, for a replay, from the recorded take's per-step log (``{"steps": N, "log": [...]}``),
    resolved; None when there are none, so nothing extra runs. ``lines`` may be a
    :class:`LiveBends` (``paik live``): then the take follows its slots step by step."""
    if isinstance(lines, LiveBends):
        return lines.bind(table, negative_table, n_blocks, n_heads, n_steps, latent)
    if replay is not None:
        specs, schedule = schedule_from_log(replay["log"], [], n_steps, max(1, int(replay["steps"])))
        if not specs:
            return None
        return resolve_bends(specs, table, negative_table, n_blocks, n_heads, n_steps, latent, schedule)
    specs = parse_bends(lines, presets)
    if not specs:
        return None
    return resolve_bends(specs, table, negative_table, n_blocks, n_heads, n_steps, latent)


# -- live: bend slots played while a take denoises ------------------------------------------------

# an op's argument when a slot leaves it empty, so a button cycling the operation always plays
# something (swap and inject need a word or a take: they have none)
DEFAULT_ARGS = {"gain": "2", "mute": "", "shift": "0.25 0", "rotate": "90", "flip": "h", "zoom": "2",
                "blur": "2", "sharpen": "1", "mask": "circle"}


def slot_spec(op: str, word: str, arg: str = "", amount: float = 1.0, blocks: str = "",
              steps: str = "", heads: str = "", pass_: str = "cond") -> BendSpec | None:
    """A live bend slot's fields -> its bend, or None when the slot is off (op ``off`` or no word).
    ``arg`` holds the op's arguments as text; words beyond what the op takes are ignored (a slot
    keeps its argument while a button cycles the operation). A mistake is a one-line PaikError."""
    op, word = str(op).strip().lower(), str(word).strip()
    if op in ("", "off") or not word:
        return None
    if op not in OPS:
        raise PaikError(f"bend: unknown operation {op!r}; operations: off, {', '.join(OPS)}")
    try:
        given = shlex.split(str(arg))
    except ValueError as e:
        raise PaikError(f"bend {op} {word}: argument {arg!r}: {e}") from None
    need = len(OPS[op])
    if len(given) < need:
        default = shlex.split(DEFAULT_ARGS.get(op, ""))
        if len(default) < need:
            usage = " ".join(n.upper() for n, _ in OPS[op])
            raise PaikError(f"bend {op} {word}: {op} needs {usage} (the slot's arg)")
        given = default
    parts = [op, shlex.quote(word), *(shlex.quote(a) for a in given[:need])]
    parts += ["strength", _num(min(1.0, max(0.0, float(amount))))]
    for key, text in (("blocks", blocks), ("steps", steps), ("heads", heads)):
        if str(text).strip():
            parts += [key, shlex.quote(str(text).strip())]
    if str(pass_).strip() not in ("", "cond"):
        parts += ["pass", shlex.quote(str(pass_).strip())]
    return parse_bend(" ".join(parts))


class LiveBends:
    """The bend slots of ``paik live``, shared by the instrument (which sets them, from its render
    thread) and the engine's worker (which reads them at every step start).

    :meth:`set` replaces the slots; a take bound with :meth:`bind` re-resolves them at once
    against its prompt and model, so a bad word is refused where it was played, and the running
    take picks the new set up at its next step start. Bends that cannot be resolved for a take
    are left out of it and reported (``set``'s return value, or ``on_error`` for a new take)."""

    def __init__(self, on_error=None):
        self._lock = threading.Lock()
        self._specs: tuple[BendSpec, ...] = ()
        self._take: LiveTakeBends | None = None
        self.on_error = on_error  # (message) for bends a new take cannot use

    def specs(self) -> tuple[BendSpec, ...]:
        with self._lock:
            return self._specs

    def set(self, specs: Iterable[BendSpec]) -> list[str]:
        """Any thread. The slots' bends (None entries are off); returns one line per bend the
        running take cannot use."""
        specs = tuple(s for s in specs if s is not None)
        with self._lock:
            self._specs = specs
            take = self._take
        return take.update(specs) if take is not None else []

    def unbind(self) -> None:
        """The worker, at a take's end: changes wait for the next take."""
        with self._lock:
            self._take = None

    def bind(self, table, negative_table, n_blocks: int, n_heads: int, n_steps: int, latent) -> "LiveTakeBends":
        """The worker, at a take's start: the take's view of the slots."""
        take = LiveTakeBends((table, negative_table, n_blocks, n_heads, n_steps, tuple(latent)))
        with self._lock:
            self._take = take
            specs = self._specs
        for message in take.update(specs):
            if self.on_error is not None:
                self.on_error(message)
        return take


class LiveTakeBends:
    """One take's bends under live control: the interface of :class:`BendSet`, with the set
    pinned at each step's start (the first block that asks), so every block and pass of a step
    uses the same bends and ``lines_at`` records exactly what the step used."""

    def __init__(self, context: tuple):
        self.context = context  # (table, negative_table, n_blocks, n_heads, n_steps, latent)
        self._lock = threading.Lock()
        self._current = BendSet([], context[5], {"cond": 0, "uncond": 0})
        self._step: int | None = None
        self._pinned = self._current
        self._used: dict[int, list[str]] = {}  # step -> lines; bounded by the take's steps
        self._resolved: dict[BendSpec, _Bend] = {}

    def update(self, specs: Iterable[BendSpec]) -> list[str]:
        table, negative_table, n_blocks, n_heads, n_steps, latent = self.context
        good, errors = [], []
        for spec in specs:
            bend = self._resolved.get(spec)  # a fader moving one slot re-resolves nothing else
            if bend is None:
                try:
                    bend = resolve_bends([spec], table, negative_table, n_blocks, n_heads, n_steps, latent).bends[0]
                except PaikError as e:
                    errors.append(str(e))
                    continue
                if len(self._resolved) >= 256:  # a fader sweeping amounts: bounded
                    self._resolved.clear()
                self._resolved[spec] = bend
            good.append(bend)
        n_real = {"cond": len(table), "uncond": len(negative_table) if negative_table is not None else 0}
        with self._lock:
            self._current = BendSet(good, latent, n_real)
        return errors

    def __bool__(self) -> bool:  # always: every step's record is kept, empty or not
        return True

    def specs(self) -> list[BendSpec]:
        with self._lock:
            return self._current.specs()

    def _at(self, step: int) -> BendSet:
        if step != self._step:  # a new step starts: it plays the slots as they are now
            with self._lock:
                self._pinned = self._current
            self._step = step
            self._used[step] = self._pinned.lines_at(step)
        return self._pinned

    def lines_at(self, step: int) -> list[str]:
        return list(self._used.get(step, ()))  # nothing: no block asked, so nothing was bent

    def active(self, step: int | None, pass_name: str | None, block: int) -> "BlockBends | None":
        if step is None:
            return None
        return self._at(step).active(step, pass_name, block)
