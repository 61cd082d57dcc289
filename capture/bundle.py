"""Reading capture bundles: the seam between capture and instrument (numpy only, no torch).

A bundle is a directory that other tools can read without Paik::

    manifest.json               everything needed to interpret and reproduce the capture
    maps/step_0007.safetensors  one file per captured step, written whole then renamed into place:
        maps            f16 [block, head, token, F', H', W']
        padding         f16 [block, head, F', H', W']
        maps_uncond     f16 [block, head, uncond_token, F', H', W']   (with --capture-uncond)
        padding_uncond  f16 [block, head, F', H', W']                 (with --capture-uncond)
        x0              f16 [channel, F', h, w]   denoised estimate, latent space (h, w = 2H', 2W')
        preview         u8  [F', h, w, 3]         x0 projected to RGB
    previews/step_0007.mp4      full VAE decode of x0 (only with --preview decode)
    video.mp4                   the generated video, H.264

``manifest["steps"]`` lists only steps whose file is complete, so a run interrupted at step k
opens with its k finished steps. Opening reads the manifest only; maps are memory-mapped and
pages are read when a selection touches them.

Typical use::

    b = open_bundle("out/kiss")
    m = b.select("kiss", step=12, block=None, head=None, reduce="mean")   # [F', H', W'] float32
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from paik.errors import BundleError, PaikError
from paik.capture.layout import Layout, index_ranges
from paik.capture.tokens import Token, TokenGroup, prompt_words, resolve_tokens

FORMAT = "paik-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STEP_FILE = "maps/step_{:04d}.safetensors"

_DTYPES = {"F16": np.float16, "BF16": None, "F32": np.float32, "F64": np.float64, "U8": np.uint8,
           "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "BOOL": np.bool_}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file (read-only; nothing is read until used).

    Checks the header and that the file is long enough for every tensor, so a truncated or
    corrupt file is a :class:`BundleError` here rather than a crash later."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100_000_000):
                raise ValueError("header length is out of range")
            header = json.loads(f.read(n))
        start = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = _DTYPES.get(info["dtype"])
            if dtype is None:
                raise ValueError(f"unsupported dtype {info['dtype']}")
            begin, end = info["data_offsets"]
            shape = tuple(info["shape"])
            if end - begin != int(np.prod(shape)) * np.dtype(dtype).itemsize or start + end > size:
                raise ValueError(f"tensor {name!r} is truncated")
            if end == begin:
                out[name] = np.zeros(shape, dtype)
            else:
                out[name] = np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)
        return out
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not a readable safetensors file ({e})") from None


@dataclass(frozen=True)
class StepInfo:
    index: int  # denoising step (0-based)
    timestep: float
    sigma: float | None
    expert: str  # "transformer" or "transformer_2" (Wan2.2's low-noise expert)
    file: str


class Bundle:
    """A capture opened for reading. Cheap to open; maps are read lazily."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not self.path.exists():
            raise BundleError(f"{self.path}: no such bundle directory")
        if not self.path.is_dir():
            raise BundleError(f"{self.path}: a bundle is a directory (made by 'paik generate --out DIR')")
        if not mpath.is_file():
            raise BundleError(f"{self.path}: not a Paik bundle (no {MANIFEST})")
        try:
            self.manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BundleError(f"{mpath}: corrupt manifest ({e})") from None
        m = self.manifest
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise BundleError(f"{self.path}: not a Paik bundle ({MANIFEST} has no format {FORMAT!r})")
        if m.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"{self.path}: bundle format version {m.get('format_version')} is not supported "
                f"(this Paik reads version {FORMAT_VERSION})"
            )
        try:
            self.layout = Layout.from_json(m["layout"])
            self.tokens = [Token(**t) for t in m["tokens"]]
            self.uncond_tokens = [Token(**t) for t in m.get("negative_tokens", [])]
            self.steps = [StepInfo(**{k: s[k] for k in StepInfo.__dataclass_fields__}) for s in m["steps"]]
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{mpath}: manifest is missing or has malformed fields ({e})") from None
        self._files: dict[int, dict[str, np.ndarray]] = {}
        self._step_pos = {s.index: i for i, s in enumerate(self.steps)}
        self._token_pos = {t: i for i, t in enumerate(self.layout.tokens)}

    # -- facts ---------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return self.manifest.get("status", "unknown")

    @property
    def step_indices(self) -> list[int]:
        """Denoising steps whose maps are complete, in order."""
        return [s.index for s in self.steps]

    @property
    def words(self) -> list[str]:
        return prompt_words(self.tokens)

    @property
    def video_path(self) -> Path | None:
        v = self.manifest.get("video")
        p = self.path / v["file"] if v else None
        return p if p is not None and p.is_file() else None

    # -- raw arrays ----------------------------------------------------------------------------
    def step_arrays(self, step: int) -> dict[str, np.ndarray]:
        """Every array of one step, memory-mapped (see the module docstring for names/shapes)."""
        if step not in self._step_pos:
            raise PaikError(f"step {step} is not in this bundle; captured steps: {index_ranges(self.step_indices)}")
        if step not in self._files:
            info = self.steps[self._step_pos[step]]
            arrays = read_safetensors(self.path / info.file)
            lay = self.layout
            want = (len(lay.blocks), lay.heads, len(lay.tokens), *lay.latent)
            if arrays.get("maps") is None or arrays["maps"].shape != want:
                raise BundleError(f"{self.path / info.file}: maps have shape "
                                  f"{getattr(arrays.get('maps'), 'shape', None)}, the manifest says {want}")
            self._files[step] = arrays
        return self._files[step]

    def preview(self, step: int) -> np.ndarray | None:
        """[F', h, w, 3] uint8 RGB of the denoised estimate at ``step``, or None."""
        return self.step_arrays(step).get("preview")

    # -- selection -----------------------------------------------------------------------------
    def resolve(self, token, uncond: bool = False) -> list[int]:
        """Positions on the captured token axis for a word, phrase, ``#piece`` or prompt index."""
        table = self.uncond_tokens if uncond else self.tokens
        captured = self.layout.uncond_tokens if uncond else self.layout.tokens
        pos = {t: i for i, t in enumerate(captured)}
        if isinstance(token, (int, np.integer)):
            idxs = [int(token)]
            if not 0 <= idxs[0] < len(table):
                raise PaikError(f"token index {token} is out of range: the prompt has {len(table)} tokens")
        elif isinstance(token, TokenGroup):
            idxs = list(token.tokens)
        else:
            idxs = list(resolve_tokens(table, [str(token)])[0].tokens)
        missing = [i for i in idxs if i not in pos]
        if missing:
            names = ", ".join(f"{table[i].piece!r}" for i in missing)
            have = " ".join(dict.fromkeys(table[i].word for i in captured))
            raise PaikError(f"token {token!r} ({names}) was not captured; captured words: {have}")
        return [pos[i] for i in idxs]

    def select(self, token, step=None, block=None, head=None, reduce: str = "mean",
               uncond: bool = False) -> np.ndarray:
        """One map, [F', H', W'] float32.

        ``token``: a word or phrase (pieces summed: the attention the phrase gets), ``#N`` for
        piece N, an int prompt-token index, or ``"padding"`` for the padding mass.
        ``step``, ``block``, ``head``: an index, a list of indices, or None for all; every axis
        given as a list or None is reduced with ``reduce`` ("mean" or "max"). Indices are the
        model's (block 29 is the last block of Wan2.1-1.3B), not positions in the capture.
        """
        if reduce not in ("mean", "max"):
            raise PaikError(f"reduce must be 'mean' or 'max', not {reduce!r}")
        lay = self.layout
        steps = self._pick("step", step, self.step_indices)
        blocks = [lay.blocks.index(b) for b in self._pick("block", block, lay.blocks)]
        if lay.head_mean:
            if head not in (None, "mean"):
                raise PaikError("this bundle stores the mean over heads (captured with --heads mean); use head=None")
            heads = [0]
        else:
            heads = self._pick("head", head, list(range(lay.heads)))
        pad = isinstance(token, str) and token.strip().lower() in ("padding", "<pad>")
        toks = None if pad else self.resolve(token, uncond)
        key = ("padding" if pad else "maps") + ("_uncond" if uncond else "")
        acc = None
        for s in steps:
            arrays = self.step_arrays(s)
            if key not in arrays:
                raise PaikError("this bundle has no unconditional maps (generate with --capture-uncond)")
            if pad:
                a = arrays[key][np.ix_(blocks, heads)].astype(np.float32)
            else:  # sum the phrase's pieces in float32: fp16 sums would round
                a = arrays[key][np.ix_(blocks, heads, toks)].astype(np.float32).sum(2)
            a = a.reshape(-1, *lay.latent)  # [blocks*heads, F', H', W']
            part = a.max(0) if reduce == "max" else a.sum(0)
            acc = part if acc is None else (np.maximum(acc, part) if reduce == "max" else acc + part)
        if reduce == "mean":
            acc /= len(steps) * len(blocks) * len(heads)
        return acc

    def _pick(self, name: str, value, available: list[int]) -> list[int]:
        if value is None:
            if not available:
                raise PaikError(f"this bundle has no complete {name}s yet")
            return list(available)
        values = [value] if isinstance(value, (int, np.integer)) else list(value)
        bad = [v for v in values if v not in available]
        if bad or not values:
            raise PaikError(f"{name} {bad[0] if bad else value!r} is not in this bundle; "
                            f"available {name}s: {index_ranges(available)}")
        return [int(v) for v in values]

    # -- summary -------------------------------------------------------------------------------
    def summary(self) -> str:
        m, lay = self.manifest, self.layout
        s = m.get("settings", {})
        f, h, w = lay.latent
        heads = f"mean of {lay.n_heads}" if lay.head_mean else str(lay.heads)
        planned = m.get("planned_steps", lay.steps)
        size = sum(p.stat().st_size for p in (self.path / "maps").glob("*.safetensors"))
        status = {"running": "running, or stopped without closing"}.get(self.status, self.status)
        lines = [
            f"bundle   {self.path}  ({status}, {size / 1024**3:.2f} GiB of maps)",
            f"prompt   {m.get('prompt', '')!r}",
            f"negative {m.get('negative_prompt', '')!r}" if m.get("negative_prompt") else None,
            f"model    {m.get('model', {}).get('id', '?')}  ({m.get('model', {}).get('family', '?')})",
            f"video    {s.get('frames')} frames {s.get('width')}x{s.get('height')} @ {s.get('fps')} fps, "
            f"{s.get('steps')} steps, guidance {s.get('guidance')}, seed {m.get('seed')}",
            f"maps     [step {len(self.steps)}/{len(planned)}, block {len(lay.blocks)}, head {heads}, "
            f"token {len(lay.tokens)}, F' {f}, H' {h}, W' {w}] {lay.dtype}",
            f"steps    {index_ranges(self.step_indices) or 'none complete'}"
            + (f"  (experts: {_experts(self.steps)})" if len({x.expert for x in self.steps}) > 1 else ""),
            f"blocks   {index_ranges(lay.blocks)}",
            "tokens   " + "  ".join(
                f"{t.index}:{t.piece}{'*' if t.index in self._token_pos else ''}" for t in self.tokens),
            "         (* captured)",
        ]
        groups = m.get("groups") or []
        if groups:
            lines.append("words    " + ", ".join(f"{g['query']!r} -> {g['tokens']}" for g in groups))
        video = self.video_path
        lines.append(f"file     {video}" if video else "file     no video (the run did not finish)")
        return "\n".join(x for x in lines if x is not None)


def _experts(steps: Iterable[StepInfo]) -> str:
    out: dict[str, list[int]] = {}
    for s in steps:
        out.setdefault(s.expert, []).append(s.index)
    return "; ".join(f"{k} {index_ranges(v)}" for k, v in out.items())


def open_bundle(path: str | os.PathLike) -> Bundle:
    """Open a bundle directory lazily. Raises :class:`BundleError` with a clear message for a
    missing, truncated, corrupt or foreign bundle."""
    return Bundle(path)
