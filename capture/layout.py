"""The layout of a capture: which steps, blocks, heads and tokens are stored, and the shape and
size that follow. Torch-free, so bundle readers stay light."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from paik import indices

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
    # context-parallel capture (paik.capture.parallel): [start, end) of the flat video positions
    # each rank's files hold, in rank order, covering 0..positions; empty for one process
    shards: list[list[int]] = field(default_factory=list)

    @property
    def positions(self) -> int:
        f, h, w = self.latent
        return f * h * w

    @property
    def rank_positions(self) -> int:
        """Positions one store holds: all of them, or one rank's equal share when sharded."""
        return self.positions // len(self.shards) if self.shards else self.positions

    def pass_bytes(self, n_tokens: int) -> int:
        # per rank when sharded: the memory plan is each GPU's
        per_step = len(self.blocks) * self.heads * (n_tokens + 1) * self.rank_positions * 2
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
        if not self.shards:
            del d["shards"]  # one process: the manifest is exactly what it was before sharding
        d["axes"] = ["step", "block", "head", "token", "frame", "height", "width"]
        d["padding_axes"] = ["step", "block", "head", "frame", "height", "width"]
        return d

    @classmethod
    def from_json(cls, d) -> "Layout":
        """A layout read from a manifest, checked field by field: anything from disk may be
        damaged, and a wrong type or an absurd size must be a clear error here, not a crash or a
        giant allocation in the renderer. Raises ValueError naming the field."""
        if not isinstance(d, dict):
            raise ValueError(f"layout must be an object, not {_kind(d)}")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ValueError(f"layout has no {', '.join(missing)}")
        seq_len = check_int(d["seq_len"], "layout.seq_len", 1, MAX_SEQ_LEN)
        n_heads = check_int(d["n_heads"], "layout.n_heads", 1, MAX_HEADS)
        head_mean = d["head_mean"]
        if not isinstance(head_mean, bool):
            raise ValueError(f"layout.head_mean must be true or false, not {_kind(head_mean)}")
        heads = check_int(d["heads"], "layout.heads", 1, 1 if head_mean else n_heads)
        latent = d["latent"]
        if not isinstance(latent, (list, tuple)) or len(latent) != 3:
            raise ValueError(f"layout.latent must be [F', H', W'], not {_short(latent)}")
        latent = tuple(check_int(v, f"layout.latent[{i}]", 1, MAX_LATENT_SIDE) for i, v in enumerate(latent))
        positions = latent[0] * latent[1] * latent[2]
        if positions > MAX_POSITIONS:
            raise ValueError(f"layout.latent {list(latent)} is {positions:,} positions (at most {MAX_POSITIONS:,})")
        steps = check_index_list(d["steps"], "layout.steps", MAX_STEPS)
        blocks = check_index_list(d["blocks"], "layout.blocks", MAX_BLOCKS, nonempty=True)
        if len(steps) * len(blocks) * positions > MAX_TABLE:
            raise ValueError(f"layout of {len(steps)} steps x {len(blocks)} blocks x {positions:,} positions is "
                             f"too large to play (at most {MAX_TABLE:,} values a token)")
        tokens = check_index_list(d["tokens"], "layout.tokens", seq_len, nonempty=True)
        uncond = check_index_list(d.get("uncond_tokens", []), "layout.uncond_tokens", seq_len)
        n_real = check_int(d["n_real"], "layout.n_real", 0, seq_len)
        n_real_uncond = check_int(d.get("n_real_uncond", 0), "layout.n_real_uncond", 0, seq_len)
        dtype = d.get("dtype", "float16")
        if dtype != "float16":
            raise ValueError(f"layout.dtype {_short(dtype)} is not supported (maps are float16)")
        shards = check_shards(d.get("shards", []), positions)
        return cls(steps=steps, blocks=blocks, heads=heads, head_mean=head_mean, n_heads=n_heads, tokens=tokens,
                   latent=latent, n_real=n_real, seq_len=seq_len, uncond_tokens=uncond, n_real_uncond=n_real_uncond,
                   dtype=dtype, shards=shards)


# Bounds on what a manifest may claim. Generous for every Wan model (Wan2.1-14B at 720p x 81
# frames is 40 blocks x 40 heads x 21x45x80 = 75,600 positions) yet small enough that nothing a
# damaged manifest claims can make the instrument allocate more than a few GiB.
MAX_STEPS = 10_000  # captured denoising steps (and the largest step index)
MAX_BLOCKS = 1024
MAX_HEADS = 1024
MAX_SEQ_LEN = 1 << 16
MAX_LATENT_SIDE = 2048  # GL 3D textures are at most 2048 a side on many drivers
MAX_POSITIONS = 1 << 20  # F'*H'*W'; a reduced volume a view holds per cell
MAX_TABLE = 1 << 29  # steps*blocks*positions: the per-token table reduce.py may build (2 GiB float32)

_REQUIRED = ("steps", "blocks", "heads", "head_mean", "n_heads", "tokens", "latent", "n_real", "seq_len")


MAX_SHARDS = 1024


def equal_shards(positions: int, n: int) -> list[list[int]]:
    """The ranges diffusers' context parallelism gives each of ``n`` ranks: it splits the
    sequence with ``tensor.chunk`` after asserting that ``n`` divides it (EquipartitionSharder)."""
    size = positions // n
    return [[r * size, (r + 1) * size] for r in range(n)]


def check_shards(v, positions: int) -> list[list[int]]:
    """Shard ranges from a manifest: contiguous [start, end) pairs, in order, covering every position."""
    if not isinstance(v, list):
        raise ValueError(f"layout.shards must be a list of [start, end], not {_kind(v)} {_short(v)}")
    if len(v) > MAX_SHARDS:
        raise ValueError(f"layout.shards has {len(v):,} entries (at most {MAX_SHARDS})")
    out, at = [], 0
    for i, r in enumerate(v):
        if not isinstance(r, list) or len(r) != 2:
            raise ValueError(f"layout.shards[{i}] must be [start, end], not {_short(r)}")
        a, b = (check_int(x, f"layout.shards[{i}]", 0, positions) for x in r)
        if a != at or b <= a:
            raise ValueError(f"layout.shards[{i}] {[a, b]} does not continue the previous shard (at {at})")
        out.append([a, b])
        at = b
    if out and at != positions:
        raise ValueError(f"layout.shards end at {at}, not at the {positions:,} positions")
    return out


def _kind(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def check_int(v, name: str, lo: int, hi: int) -> int:
    """``v`` as an int in [lo, hi] (JSON true/false and 2.0 are not integers)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name} must be an integer, not {_kind(v)} {_short(v)}")
    if not lo <= v <= hi:
        raise ValueError(f"{name} {v} is out of range ({lo}..{hi:,})")
    return v


def check_index_list(v, name: str, bound: int, nonempty: bool = False) -> list[int]:
    """Distinct integers in [0, bound), at most ``bound`` of them."""
    if not isinstance(v, list):
        raise ValueError(f"{name} must be a list of integers, not {_kind(v)} {_short(v)}")
    if nonempty and not v:
        raise ValueError(f"{name} is empty")
    if len(v) > bound:
        raise ValueError(f"{name} has {len(v):,} entries (at most {bound:,})")
    out = [check_int(x, f"{name}[{i}]", 0, bound - 1) for i, x in enumerate(v)]
    if len(set(out)) != len(out):
        raise ValueError(f"{name} repeats an index")
    return out


index_ranges = indices.format_ranges  # one definition: paik.indices
