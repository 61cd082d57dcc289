"""Views: what a parameter setting shows, as a :class:`Plan` the renderer can draw.

A plan is (1) one :class:`~paik.instrument.render.reduce.Selection` (the volumes to compute and upload,
"tiles", when it changes) and (2) a grid of cells, each blending up to four tiles with weights
(the crossfade of a continuous step and block) over up to two background tiles. The cell table
is a few floats per cell, recomputed on the CPU when parameters or (for the sweep) time change;
the renderer blends the tiles at map resolution (pass 1) and then reads one field texel per
pixel whatever the view (shaders/README.md), which is what keeps the 30-block mean or the
300-cell heads x steps grid as cheap as a single map. Crossfade weights are the same in every
cell (the renderer relies on it).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from paik.instrument.control.params import Params
from paik.instrument.render.reduce import Selection


@dataclass(frozen=True)
class Dims:
    """What the bundle offers (counts of captured positions) and names for labels."""

    n_steps: int
    n_blocks: int
    n_heads: int
    step_names: tuple[int, ...]  # model step index of each captured position
    block_names: tuple[int, ...]
    aspect: float  # width / height of one cell (the video's)


@dataclass(frozen=True)
class Plan:
    selection: Selection
    rows: int
    cols: int
    labels: tuple[str, ...]  # one per cell
    title: str


def _pair(x: float, n: int) -> tuple[tuple[int, ...], float]:
    """Positions to blend for a continuous index: (i0,) or (i0, i0+1) and the weight of the second."""
    x = min(max(float(x), 0.0), n - 1)
    i0 = int(math.floor(x))
    f = x - i0
    if f < 1e-6 or i0 + 1 >= n:
        return (i0,), 0.0
    return (i0, i0 + 1), f


def grid_shape(n: int, aspect: float) -> tuple[int, int]:
    """(rows, cols) for n cells of width/height ``aspect``, as square as the picture allows."""
    cols = max(1, min(n, round(math.sqrt(n / max(aspect, 1e-3)))))
    return math.ceil(n / cols), cols


def fit(viewport: tuple[int, int, int, int], rows: int, cols: int, aspect: float,
        gap: float = 0.0) -> tuple[int, int, int, int]:
    """The picture's rectangle inside ``viewport`` (x, y, w, h in pixels): a grid of rows x cols
    cells of width/height ``aspect`` with ``gap`` pixels between them, as large as fits and
    centered, so the video's aspect is kept (letterbox or pillarbox bars) whatever the output's
    size. Within 1% (or a pixel) of filling an axis it fills it: sizes rounded to whole pixels,
    like the grids ``paik grid`` computes, must not gain a bar."""
    x, y, vw, vh = viewport
    gx, gy = gap * (cols - 1), gap * (rows - 1)
    cell_h = max(min((vw - gx) / (cols * aspect), (vh - gy) / rows), 1e-6)
    w, h = cols * aspect * cell_h + gx, rows * cell_h + gy
    w = vw if w >= vw - max(1.0, 0.01 * vw) else max(1, round(w))
    h = vh if h >= vh - max(1.0, 0.01 * vh) else max(1, round(h))
    return x + (vw - w) // 2, y + (vh - h) // 2, w, h


def sweep_step(t: float, n_steps: int) -> float:
    """The sweep's step position at video time t in 0..1: the first step at the first frame,
    the last at the last, crossfading in between."""
    return min(max(t, 0.0), 1.0) * (n_steps - 1)


def _name(pos: float, names: tuple[int, ...]) -> str:
    """A position as the model index users know: 'step 12', or '12.50' between two."""
    i = int(math.floor(pos))
    if pos - i < 1e-6 or i + 1 >= len(names):
        return str(names[min(i, len(names) - 1)])
    return f"{names[i] + (pos - i) * (names[i + 1] - names[i]):.2f}"


@functools.lru_cache(maxsize=16)
def _labels(view: str, d: Dims) -> tuple[str, ...]:
    """Cell labels of a grid view: they depend on the bundle alone, so a glide does not remake 300."""
    if view == "grid-blocks":
        return tuple(f"block {b}" for b in d.block_names)
    if view == "grid-steps":
        return tuple(f"step {s}" for s in d.step_names)
    return tuple(f"s{s} h{h}" for s in d.step_names for h in range(d.n_heads))


def plan(p: Params, d: Dims, tokens: tuple[int, ...], word: str) -> Plan:
    step_s, block_s = _name(p.step, d.step_names), _name(p.block, d.block_names)
    steps, _ = _pair(p.step, d.n_steps)
    blocks, _ = _pair(p.block, d.n_blocks)
    heads = None if p.head < 0 else (p.head,)
    all_s, all_b = tuple(range(d.n_steps)), tuple(range(d.n_blocks))
    hname = f"{p.reduce} of heads" if heads is None else f"head {p.head}"
    view = p.view
    if view in ("single", "heads"):
        if view == "heads":
            heads = None
            hname = f"{p.reduce} of heads"
        sel = Selection(tokens, steps, blocks, heads, ("step", "block"), p.reduce)
        return Plan(sel, 1, 1, ("",), f"'{word}'  step {step_s}  block {block_s}  {hname}")
    if view == "blocks":
        sel = Selection(tokens, steps, all_b, heads, ("step",), p.reduce)
        return Plan(sel, 1, 1, ("",), f"'{word}'  step {step_s}  {p.reduce} of blocks, {hname}")
    if view == "steps":
        sel = Selection(tokens, all_s, blocks, heads, ("block",), p.reduce)
        return Plan(sel, 1, 1, ("",), f"'{word}'  block {block_s}  {p.reduce} of steps, {hname}")
    if view == "grand":
        sel = Selection(tokens, all_s, all_b, heads, (), p.reduce)
        return Plan(sel, 1, 1, ("",), f"'{word}'  {p.reduce} of steps, blocks, {hname}")
    if view == "sweep":
        sel = Selection(tokens, all_s, blocks, heads, ("step", "block"), p.reduce)
        return Plan(sel, 1, 1, ("",), f"'{word}'  sweep of steps  block {block_s}  {hname}")
    if view == "grid-blocks":
        sel = Selection(tokens, steps, all_b, heads, ("step", "block"), p.reduce)
        rows, cols = grid_shape(d.n_blocks, d.aspect)
        labels = _labels(view, d)
        return Plan(sel, rows, cols, labels, f"'{word}'  step {step_s}  every block  {hname}")
    if view == "grid-steps":
        sel = Selection(tokens, all_s, blocks, heads, ("step", "block"), p.reduce)
        rows, cols = grid_shape(d.n_steps, d.aspect)
        labels = _labels(view, d)
        return Plan(sel, rows, cols, labels, f"'{word}'  block {block_s}  every step  {hname}")
    if view == "grid-heads-steps":
        sel = Selection(tokens, all_s, blocks, None, ("step", "block", "head"), p.reduce)
        labels = _labels(view, d)
        return Plan(sel, d.n_steps, d.n_heads, labels, f"'{word}'  block {block_s}  heads x steps")
    raise ValueError(view)


def cell_table(p: Params, d: Dims, pl: Plan, time: float) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: four (tile, weight) taps into the map tiles, and the step position (float)
    whose preview is the cell's background. Returns (taps [cells, 2, 4] float32, bg_step [cells])."""
    sel = pl.selection
    n_s, n_b = len(sel.steps), len(sel.blocks)
    keep = sel.keep
    _, fs = _pair(p.step, d.n_steps)
    _, fb = _pair(p.block, d.n_blocks)
    if p.view == "sweep":
        st = sweep_step(time, d.n_steps)
        s_pos, fs = _pair(st, d.n_steps)
        step_taps = [(s, w) for s, w in zip(s_pos, (1 - fs, fs))]
    else:
        step_taps = [(i, w) for i, w in zip(range(n_s), (1 - fs, fs))]
    block_taps = [(i, w) for i, w in zip(range(n_b), (1 - fb, fb))]

    def tile(si, bi, hi=0):
        idx, stride = 0, 1
        for ax, i, n in (("head", hi, None), ("block", bi, n_b), ("step", si, n_s)):
            if ax not in keep:
                continue
            size = n if n is not None else (d.n_heads if sel.heads is None else len(sel.heads))
            idx += i * stride
            stride *= size
        return idx

    cells = []  # list of (taps list, bg step float)
    if p.view == "grid-blocks":
        for b in range(n_b):
            cells.append(([(tile(s, b), w) for s, w in step_taps], p.step))
    elif p.view == "grid-steps":
        for s in range(n_s):
            cells.append(([(tile(s, b), w) for b, w in block_taps], float(s)))
    elif p.view == "grid-heads-steps":
        for s in range(n_s):
            for h in range(d.n_heads):
                cells.append(([(tile(s, b, h), w) for b, w in block_taps], float(s)))
    else:
        s_list = step_taps if "step" in keep else [(0, 1.0)]
        b_list = block_taps if "block" in keep else [(0, 1.0)]
        taps = [(tile(s, b), ws * wb) for s, ws in s_list for b, wb in b_list]
        if p.view == "sweep":
            bg = sweep_step(time, d.n_steps)
        elif "step" in keep:
            bg = p.step
        else:
            bg = float(d.n_steps - 1)  # steps reduced: the final estimate is the honest backdrop
        cells.append((taps, bg))
    out = np.zeros((len(cells), 2, 4), np.float32)
    bg = np.zeros(len(cells), np.float32)
    for i, (taps, b) in enumerate(cells):
        for k, (t, w) in enumerate(taps[:4]):
            out[i, 0, k], out[i, 1, k] = t, w
        bg[i] = b
    return out, bg
