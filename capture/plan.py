"""What to capture and whether it fits: parsing --capture-steps/--blocks/--heads, checking video sizes,
and the memory plan printed (and enforced) before anything is generated."""

from __future__ import annotations

from dataclasses import dataclass, replace

from paik import indices
from paik.errors import PaikError
from paik.capture.layout import GiB, Layout, index_ranges


def parse_heads(text: str | None) -> bool:
    """True when heads are averaged at capture time."""
    text = (text or "all").strip().lower()
    if text not in ("all", "mean"):
        raise PaikError(f"--heads {text!r}: expected 'all' or 'mean'")
    return text == "mean"


def check_video_size(height: int, width: int, frames: int, spatial_multiple: int, temporal: int) -> None:
    problems = []
    for name, v in (("height", height), ("width", width)):
        if v <= 0 or v % spatial_multiple:
            lo = max(spatial_multiple, v // spatial_multiple * spatial_multiple)
            problems.append(f"--{name} {v} must be a positive multiple of {spatial_multiple} "
                            f"(try {lo} or {lo + spatial_multiple})")
    if frames < 1 or (frames - 1) % temporal:
        k = max(0, (frames - 1) // temporal)
        problems.append(f"--frames {frames} must be {temporal}k+1 (try {temporal * k + 1} or {temporal * (k + 1) + 1})")
    if problems:
        raise PaikError("; ".join(problems))


@dataclass
class MemoryPlan:
    layout: Layout
    budget_bytes: int | None  # None: no limit known
    where: str
    buffers: int | None = None  # step slots on the device (a ring); None: every captured step

    @property
    def slots(self) -> int:
        n = len(self.layout.steps)
        return n if self.buffers is None else max(1, min(int(self.buffers), n))

    @property
    def device_bytes(self) -> int:
        """What the store takes on the device: the whole capture, or its ring of step slots."""
        return _slots_bytes(self.layout, self.slots)

    @property
    def fits(self) -> bool:
        return self.budget_bytes is None or self.device_bytes <= self.budget_bytes

    def describe(self) -> str:
        lay = self.layout
        f, h, w = lay.latent
        heads = f"1 (mean of {lay.n_heads})" if lay.head_mean else str(lay.heads)
        shape = f"[{len(lay.steps)} steps, {len(lay.blocks)} blocks, {heads} heads, {len(lay.tokens)} tokens, {f}x{h}x{w}]"
        extra = f" + unconditional pass ({len(lay.uncond_tokens)} tokens)" if lay.uncond_tokens else ""
        budget = "no limit" if self.budget_bytes is None else f"{self.budget_bytes / GiB:.2f} GiB available"
        if self.slots < len(lay.steps):  # the rest goes to the bundle as each step finishes
            held = (f"; {self.slots} step buffers = {self.device_bytes / GiB:.2f} GiB on {self.where}, "
                    f"each step copied to the bundle and its buffer reused ({budget}; --keep-on-device keeps all)")
            return f"capture {shape}{extra} float16 = {lay.bytes / GiB:.2f} GiB{held}"
        return f"capture {shape}{extra} float16 = {lay.bytes / GiB:.2f} GiB on {self.where} ({budget})"

    def suggestions(self) -> list[str]:
        """Flag sets that would fit the budget, smallest change first; each is checked by
        building the reduced layout and asking its exact size."""
        if self.budget_bytes is None:
            return []
        lay, budget = self.layout, self.budget_bytes
        n_steps = max(lay.steps) + 1
        size = lambda la: _slots_bytes(la, min(self.slots, len(la.steps)))  # noqa: E731
        variants = [("", {})]
        if self.slots > 1:
            for k in range(self.slots - 1, 0, -1):
                if _slots_bytes(lay, k) <= budget:
                    return [f"--step-buffers {k}"] + [t for t in self._reductions(budget, size, n_steps, variants)]
        return self._reductions(budget, size, n_steps, variants)

    def _reductions(self, budget, size, n_steps, variants) -> list[str]:
        lay = self.layout
        if not lay.head_mean:
            variants.append(("--heads mean ", {"heads": 1, "head_mean": True}))
        out = []
        for prefix, heads in variants:
            if heads and size(replace(lay, **heads)) <= budget:
                out.append(prefix.strip())
                continue  # the mean of heads alone fits: no need to drop steps or blocks too
            for k in range(2, n_steps + 1):
                steps = indices.parse(f"every:{k}", n_steps, "--capture-steps")
                if size(replace(lay, steps=steps, **heads)) <= budget:
                    out.append(f"{prefix}--capture-steps every:{k}")
                    break
            for n in range(len(lay.blocks) - 1, 0, -1):
                if size(replace(lay, blocks=lay.blocks[:n], **heads)) <= budget:
                    out.append(f"{prefix}--blocks {index_ranges(lay.blocks[:n])}")
                    break
        per_token = replace(lay, tokens=[0], uncond_tokens=[]).bytes - replace(lay, tokens=[], uncond_tokens=[]).bytes
        out.append(f"fewer --tokens (each costs {per_token / GiB:.2f} GiB), or a larger --max-capture-gb if memory allows")
        return list(dict.fromkeys(out))

    def check(self) -> None:
        if not self.fits:
            tips = "\n  ".join(self.suggestions())
            raise PaikError(f"{self.describe()}: does not fit.\nCapture less, for example:\n  {tips}")


def _slots_bytes(layout: Layout, slots: int) -> int:
    """Bytes of ``slots`` step slots of ``layout`` (every step is the same size)."""
    n = len(layout.steps)
    return layout.bytes if slots >= n else layout.bytes // n * slots


def estimate_working_bytes(positions: int, dim: int, ffn_dim: int, height: int, width: int) -> int:
    """A rough reserve for what generation needs beside the store: transformer activations
    (a few [tokens x ffn] buffers in 16 bits), the capture's own fp32 temporaries, and the VAE
    decode at the end (about 6 float32 feature maps of 384 channels at full resolution)."""
    transformer = 6 * positions * max(ffn_dim, 4 * dim) * 2
    capture = positions * dim * 4 + 64 * positions * 4 * 2
    vae = 6 * height * width * 384 * 4 // 8  # decoded chunk by chunk; ~1/8 of it at once
    return transformer + capture + vae + GiB // 2


def plan_layout(table, queries, *, steps, blocks, heads, n_steps: int, n_layers: int, n_heads: int,
                latent: tuple[int, int, int], seq_len: int, neg_table=None, uncond: bool = False):
    """The layout of one capture from the user's choices (the CLI's flags and the library's
    arguments alike): ``queries`` words/phrases (empty: every real token), ``steps``/``blocks``
    index specs (the grammar of :mod:`paik.indices`), ``heads`` "all" or "mean". Returns (Layout, the
    token groups the queries resolved to)."""
    from paik.capture.tokens import resolve_tokens

    if n_steps < 1:
        raise PaikError("--steps must be at least 1")
    groups = resolve_tokens(table, list(queries)) if queries else []
    captured = sorted({i for g in groups for i in g.tokens}) if groups else [t.index for t in table]
    head_mean = parse_heads(heads)
    neg_table = neg_table or []
    if uncond and not neg_table:
        raise PaikError("capturing the unconditional pass needs classifier-free guidance (--guidance above 1)")
    layout = Layout(
        steps=indices.parse(steps, n_steps, "--capture-steps"),
        blocks=indices.parse(blocks, n_layers, "--blocks"),
        heads=1 if head_mean else n_heads, head_mean=head_mean, n_heads=n_heads,
        tokens=captured, latent=tuple(latent), n_real=len(table), seq_len=seq_len,
        uncond_tokens=[t.index for t in neg_table] if uncond else [],
        n_real_uncond=len(neg_table) if uncond else 0,
    )
    return layout, groups


def memory_budget(device, max_gb: float | None, working_bytes: int = 0) -> int | None:
    """Bytes the capture store may take on ``device``: ``max_gb`` when given (infinity: no
    limit, None); on CUDA what is free beside ``working_bytes`` (what generation itself still
    needs); on the CPU half of the memory available now."""
    import math
    import os

    import torch

    if max_gb is not None:
        return None if math.isinf(max_gb) else int(max_gb * GiB)
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(0, free - working_bytes)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") // 2
