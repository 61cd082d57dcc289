"""What to capture and whether it fits: parsing --capture-steps/--blocks/--heads, checking video sizes,
and the memory plan printed (and enforced) before anything is generated."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from paik.errors import PaikError
from paik.capture.layout import GiB, Layout, index_ranges


def parse_indices(text: str | None, n: int, name: str) -> list[int]:
    """``all``, ``every:N`` (0, N, 2N, ... and always the last), ``3``, ``0,5,9``, ``10-19``,
    ``-1`` for the last, or a mix (``0-3,12,-1``). Indices are 0-based, checked against ``n``."""
    text = (text or "all").strip().lower()
    if text == "all":
        return list(range(n))
    m = re.fullmatch(r"every:(\d+)", text)
    if m:
        k = int(m.group(1))
        if k < 1:
            raise PaikError(f"--{name} every:N needs N >= 1")
        out = list(range(0, n, k))
        if out[-1] != n - 1:
            out.append(n - 1)
        return out
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(-?\d+)(?:-(-?\d+))?", part)
        if not m:
            raise PaikError(f"--{name} {text!r}: expected all, every:N, a list like 0,5,9 or a range like 10-19")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        a, b = (a + n if a < 0 else a), (b + n if b < 0 else b)
        if not (0 <= a < n and 0 <= b < n) or b < a:
            raise PaikError(f"--{name} {part!r} is out of range: valid values are 0..{n - 1}")
        out.extend(range(a, b + 1))
    return sorted(set(out))


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

    @property
    def fits(self) -> bool:
        return self.budget_bytes is None or self.layout.bytes <= self.budget_bytes

    def describe(self) -> str:
        lay = self.layout
        f, h, w = lay.latent
        heads = f"1 (mean of {lay.n_heads})" if lay.head_mean else str(lay.heads)
        shape = f"[{len(lay.steps)} steps, {len(lay.blocks)} blocks, {heads} heads, {len(lay.tokens)} tokens, {f}x{h}x{w}]"
        extra = f" + unconditional pass ({len(lay.uncond_tokens)} tokens)" if lay.uncond_tokens else ""
        budget = "no limit" if self.budget_bytes is None else f"{self.budget_bytes / GiB:.2f} GiB available"
        return f"capture {shape}{extra} float16 = {lay.bytes / GiB:.2f} GiB on {self.where} ({budget})"

    def suggestions(self) -> list[str]:
        """Flag sets that would fit the budget, smallest change first; each is checked by
        building the reduced layout and asking its exact size."""
        if self.budget_bytes is None:
            return []
        lay, budget = self.layout, self.budget_bytes
        n_steps = max(lay.steps) + 1
        variants = [("", {})]
        if not lay.head_mean:
            variants.append(("--heads mean ", {"heads": 1, "head_mean": True}))
        out = []
        for prefix, heads in variants:
            if heads and replace(lay, **heads).bytes <= budget:
                out.append(prefix.strip())
                continue  # the mean of heads alone fits: no need to drop steps or blocks too
            for k in range(2, n_steps + 1):
                steps = parse_indices(f"every:{k}", n_steps, "capture-steps")
                if replace(lay, steps=steps, **heads).bytes <= budget:
                    out.append(f"{prefix}--capture-steps every:{k}")
                    break
            for n in range(len(lay.blocks) - 1, 0, -1):
                if replace(lay, blocks=lay.blocks[:n], **heads).bytes <= budget:
                    out.append(f"{prefix}--blocks {index_ranges(lay.blocks[:n])}")
                    break
        per_token = replace(lay, tokens=[0], uncond_tokens=[]).bytes - replace(lay, tokens=[], uncond_tokens=[]).bytes
        out.append(f"fewer --tokens (each costs {per_token / GiB:.2f} GiB), or a larger --max-capture-gb if memory allows")
        return list(dict.fromkeys(out))

    def check(self) -> None:
        if not self.fits:
            tips = "\n  ".join(self.suggestions())
            raise PaikError(f"{self.describe()}: does not fit.\nCapture less, for example:\n  {tips}")


def estimate_working_bytes(positions: int, dim: int, ffn_dim: int, height: int, width: int) -> int:
    """A rough reserve for what generation needs beside the store: transformer activations
    (a few [tokens x ffn] buffers in 16 bits), the capture's own fp32 temporaries, and the VAE
    decode at the end (about 6 float32 feature maps of 384 channels at full resolution)."""
    transformer = 6 * positions * max(ffn_dim, 4 * dim) * 2
    capture = positions * dim * 4 + 64 * positions * 4 * 2
    vae = 6 * height * width * 384 * 4 // 8  # decoded chunk by chunk; ~1/8 of it at once
    return transformer + capture + vae + GiB // 2
