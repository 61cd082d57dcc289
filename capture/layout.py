"""The layout of a capture: which steps, blocks, heads and tokens are stored, and the shape and
size that follow. Torch-free, so bundle readers stay light."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable

GiB = 1024**3


@dataclass
class Layout:
    """What is captured, and so the shape of the store."""

    steps: list[int]  # denoising step indices captured (global, 0-based)
    blocks: list[int]  # transformer block indices captured
    heads: int  # heads stored per block (1 when head_mean)
    head_mean: bool  # heads averaged at capture time
    n_heads: int  # the model's heads per block
    tokens: list[int]  # prompt token indices captured (positions of the keys)
    latent: tuple[int, int, int]  # F', H', W' (the transformer's token grid)
    n_real: int  # real prompt tokens (EOS included)
    seq_len: int  # keys per cross-attention (max_sequence_length)
    uncond_tokens: list[int] = field(default_factory=list)  # negative-prompt tokens, when uncond is captured
    n_real_uncond: int = 0
    dtype: str = "float16"

    @property
    def positions(self) -> int:
        f, h, w = self.latent
        return f * h * w

    def pass_bytes(self, n_tokens: int) -> int:
        per_step = len(self.blocks) * self.heads * (n_tokens + 1) * self.positions * 2
        return per_step * len(self.steps)

    @property
    def bytes(self) -> int:
        total = self.pass_bytes(len(self.tokens))
        if self.uncond_tokens:
            total += self.pass_bytes(len(self.uncond_tokens))
        return total

    def to_json(self) -> dict:
        d = asdict(self)
        d["latent"] = list(self.latent)
        d["axes"] = ["step", "block", "head", "token", "frame", "height", "width"]
        d["padding_axes"] = ["step", "block", "head", "frame", "height", "width"]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Layout":
        keys = cls.__dataclass_fields__.keys()
        d = {k: v for k, v in d.items() if k in keys}
        d["latent"] = tuple(d["latent"])
        return cls(**d)


def index_ranges(values: Iterable[int]) -> str:
    """Indices as a user types them: [0, 1, 2, 3, 7, 9, 10] -> '0-3,7,9-10'."""
    values = sorted(values)
    out, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(out)
