"""Select and reduce maps into the few small volumes a view shows, once per selection change.

A bundle holds [step, block, head, token, F', H', W']; a view needs a handful of [F', H', W']
volumes (one map, a crossfade pair, a grid of 30 or 300 cells). They are computed here, never
per frame, so the renderer's per-frame cost does not grow with the capture:

- small selections (a few step x block slices) are read straight from the memory-mapped step
  files: the first frame of a 13 GiB bundle touches about 1 MiB;
- large ones (mean over all blocks, all steps, the grand average) use a per-token table reduced
  over heads, built once per (token, reduce) and kept: with CUDA (torch) the token's whole
  [step, block, head, F', H', W'] lives on the GPU and the reductions run there; otherwise the
  table is a numpy aggregate [step, block, F', H', W'] computed once at first use.

The source is anything with the Bundle's reading API (``layout``, ``step_indices``,
``step_arrays(step)["maps"]``); positions here are positions in the capture (0..n-1), not model
indices.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

AXES = ("step", "block", "head")


@dataclass(frozen=True)
class Selection:
    """Which slices to take and which axes to keep as cells (in AXES order, row-major).

    ``heads`` None means every stored head. Axes not in ``keep`` are reduced with ``reduce``."""

    tokens: tuple[int, ...]  # positions on the captured token axis, summed (a word's pieces)
    steps: tuple[int, ...]
    blocks: tuple[int, ...]
    heads: tuple[int, ...] | None
    keep: tuple[str, ...]
    reduce: str = "mean"

    def shape(self, n_heads: int) -> tuple[int, ...]:
        sizes = {"step": len(self.steps), "block": len(self.blocks),
                 "head": n_heads if self.heads is None else len(self.heads)}
        return tuple(sizes[a] for a in AXES if a in self.keep)


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


class Reducer:
    """Computes :class:`Selection` volumes from a bundle; caches results and per-token tables."""

    def __init__(self, source, device: str = "auto", cache: int = 32):
        self.src = source
        lay = source.layout
        self.latent = tuple(lay.latent)
        self.n_heads = lay.heads
        self.n_steps = len(source.step_indices)
        self.n_blocks = len(lay.blocks)
        torch = _torch_cuda() if device in ("auto", "cuda") else None
        if device == "cuda" and torch is None:
            from paik.errors import PaikError

            raise PaikError("--device cuda: torch with CUDA is not available here; use --device cpu")
        self.torch = torch
        self.device = "cuda" if torch is not None else "cpu"
        self._results: OrderedDict[Selection, np.ndarray] = OrderedDict()
        self._tables: OrderedDict[tuple, object] = OrderedDict()
        self._cache = cache

    # -- public ---------------------------------------------------------------------------------
    def volumes(self, sel: Selection) -> np.ndarray:
        """[cells, F', H', W'] float32 (cells = product of the kept axes' sizes).

        Raises :class:`paik.errors.BundleError` when a step file it needs was truncated, removed
        or replaced since the bundle was opened (the caller shows it; nothing is cached for it)."""
        hit = self._results.get(sel)
        if hit is not None:
            self._results.move_to_end(sel)
            return hit
        heads_reduced = sel.heads is None and "head" not in sel.keep
        slices = len(sel.steps) * len(sel.blocks)
        # the table costs a read of the token's whole capture once; a selection touching more
        # than a quarter of it (mean over everything) pays for it, smaller ones read directly
        built = (sel.tokens, "full" if self.torch is not None else sel.reduce) in self._tables
        if heads_reduced and (built or slices > self.n_steps * self.n_blocks / 4):
            out = self._from_table(sel)
        else:
            out = self._from_raw(sel)
        out = np.ascontiguousarray(out.reshape(-1, *self.latent), dtype=np.float32)
        self._results[sel] = out
        while len(self._results) > self._cache:
            self._results.popitem(last=False)
        return out

    # -- paths ----------------------------------------------------------------------------------
    def _raw_step(self, step_pos: int, sel: Selection) -> np.ndarray:
        """[blocks, heads, F', H', W'] float32 for one step, summed over the token's pieces."""
        maps = self.src.step_arrays(self.src.step_indices[step_pos])["maps"]
        heads = list(range(self.n_heads)) if sel.heads is None else list(sel.heads)
        a = maps[np.ix_(list(sel.blocks), heads, list(sel.tokens))]
        return a.astype(np.float32).sum(2)

    def _from_raw(self, sel: Selection) -> np.ndarray:
        arr = np.stack([self._raw_step(s, sel) for s in sel.steps])  # [S, B, H, F', H', W']
        axes = tuple(i for i, a in enumerate(AXES) if a not in sel.keep)
        return _reduce_np(arr, axes, sel.reduce)

    def _from_table(self, sel: Selection) -> np.ndarray:
        if self.torch is not None:
            full = self._table(sel.tokens, "full")  # cuda [S_all, B_all, H, F', H', W'] f16
            t = self.torch
            # made on the host, copied by Tensor.to (the interpreter lock let go, unlike
            # torch.tensor(..., device=cuda), which copies holding it)
            idx_s = t.tensor(sel.steps, dtype=t.long).to(full.device, non_blocking=True)
            idx_b = t.tensor(sel.blocks, dtype=t.long).to(full.device, non_blocking=True)
            a = full.index_select(0, idx_s).index_select(1, idx_b).float()
            dims = tuple(i for i, ax in enumerate(AXES) if ax not in sel.keep)
            a = a.mean(dim=dims) if sel.reduce == "mean" else a.amax(dim=dims)
            return a.cpu().numpy()
        table = self._table(sel.tokens, sel.reduce)  # [S_all, B_all, F', H', W'] (heads reduced)
        a = table[np.ix_(list(sel.steps), list(sel.blocks))]
        axes = tuple(i for i, ax in enumerate(AXES[:2]) if ax not in sel.keep)
        return _reduce_np(a, axes, sel.reduce)

    def _table(self, tokens: tuple[int, ...], kind: str):
        key = (tokens, kind)
        hit = self._tables.get(key)
        if hit is not None:
            self._tables.move_to_end(key)
            return hit
        everything = Selection(tokens, tuple(range(self.n_steps)), tuple(range(self.n_blocks)), None,
                               keep=AXES, reduce="mean")
        log.info("building the per-token table for tokens %s (%s)", tokens, kind)
        if kind == "full":
            t = self.torch
            full = t.empty((self.n_steps, self.n_blocks, self.n_heads, *self.latent), dtype=t.float16, device="cuda")
            for s in range(self.n_steps):  # one step at a time: host memory stays at one step's slice
                full[s] = t.from_numpy(self._raw_step(s, everything).astype(np.float16)).to("cuda", non_blocking=True)
            table = full
        else:
            table = np.stack([_reduce_np(self._raw_step(s, everything), (1,), kind) for s in range(self.n_steps)])
        self._tables[key] = table
        while len(self._tables) > 2:  # a token's table can be hundreds of MiB: keep two tokens
            self._tables.popitem(last=False)
        return table


def _reduce_np(a: np.ndarray, axes: tuple[int, ...], mode: str) -> np.ndarray:
    if not axes:
        return a
    return a.mean(axis=axes) if mode == "mean" else a.max(axis=axes)
