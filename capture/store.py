"""The capture store: preallocated device tensors that hold every captured map, and the recorder
that the processors write through.

Layout (float16, probabilities in [0, 1]; fp16 keeps 3 decimal digits there, bf16 only 2)::

    maps     [step, block, head, token, F', H', W']   attention of each video position to a token
    padding  [step, block, head, F', H', W']          attention to all padding keys together

``head`` has length 1 when heads are averaged at capture time (``heads="mean"``). Steps, blocks
and tokens are the captured subsets, listed in :class:`Layout`. Video positions are frame-major
(index = f*H'*W' + h*W' + w), which is why a plain reshape gives [F', H', W'].
"""

from __future__ import annotations

import torch

from paik.errors import PaikError
from paik.capture.layout import GiB, Layout


class CaptureStore:
    """Preallocated maps for one generation, on ``device`` (the GPU when there is one).

    ``rank``: with a sharded layout (context parallelism, paik.capture.parallel) the store holds
    only that rank's positions ``layout.shards[rank]``, flat: maps [step, block, head, token, n]."""

    def __init__(self, layout: Layout, device: torch.device | str, rank: int | None = None):
        self.layout = layout
        self.device = torch.device(device)
        lay = layout
        s, b, h = len(lay.steps), len(lay.blocks), lay.heads
        self.shard = None
        if lay.shards:
            if rank is None or not 0 <= rank < len(lay.shards):
                raise ValueError(f"a sharded layout needs the rank (0..{len(lay.shards) - 1}), not {rank!r}")
            self.shard = tuple(lay.shards[rank])
        self.positions = lay.positions if self.shard is None else self.shard[1] - self.shard[0]
        grid = tuple(lay.latent) if self.shard is None else (self.positions,)
        try:
            self.maps = torch.zeros(s, b, h, len(lay.tokens), *grid, dtype=torch.float16, device=self.device)
            self.padding = torch.zeros(s, b, h, *grid, dtype=torch.float16, device=self.device)
            self.maps_uncond = self.padding_uncond = None
            if lay.uncond_tokens:
                self.maps_uncond = torch.zeros(
                    s, b, h, len(lay.uncond_tokens), *grid, dtype=torch.float16, device=self.device
                )
                self.padding_uncond = torch.zeros_like(self.padding)
        except torch.OutOfMemoryError:
            raise PaikError(
                f"the capture store ({lay.bytes / GiB:.2f} GiB) does not fit on {self.device}; "
                "capture less: --heads mean, --steps every:N, --blocks A-B, or fewer --tokens"
            ) from None
        self.step_slot = {step: i for i, step in enumerate(lay.steps)}
        self.block_slot = {block: i for i, block in enumerate(lay.blocks)}


class Recorder:
    """Tracks where the pipeline is (step, pass, expert) and hands processors the slice of the
    store to write. All bookkeeping is host-side Python: the hot path never synchronizes.

    Step and pass come from the pipeline's ``cache_context``. Without one (a bare transformer
    called in a loop), every forward is the conditional pass of the next step; a forward named
    "uncond" without a step index belongs to the step of the last "cond"."""

    def __init__(self, store: CaptureStore, capture_uncond: bool = False, n_real_uncond: int | None = None):
        self.store = store
        lay = store.layout
        dev = store.device
        # None when every real token is captured in order: a slice, no gather
        self.token_index = _index(lay.tokens, lay.n_real, dev)
        self.uncond_index = _index(lay.uncond_tokens, lay.n_real_uncond, dev)
        self.capture_uncond = capture_uncond and bool(lay.uncond_tokens)
        # the negative prompt's real tokens, known even when its pass is not captured (block hooks need it)
        self.n_real_uncond = n_real_uncond if n_real_uncond is not None else lay.n_real_uncond
        self.step: int | None = None
        self.pass_name: str | None = None
        self.expert: str | None = None
        self.sigma: float | None = None
        self._counted_step = 0  # used only when a forward comes without a step index
        self.outputs: dict[str, torch.Tensor] = {}  # this step's noise predictions by pass
        self.sample: torch.Tensor | None = None  # the latent the step started from
        self.experts: dict[int, str] = {}  # step -> expert that made it

    # -- called by the capture's pass hook ---------------------------------------------------
    def begin_pass(self, name, step, sigma, expert, sample):
        name = name or "cond"
        if step is None:
            if name == "cond":
                step = self._counted_step
                self._counted_step += 1
            else:
                step = max(self._counted_step - 1, 0)
        if step != self.step:
            self.outputs = {}
        self.pass_name, self.step, self.sigma, self.expert = name, step, sigma, expert
        self.experts[step] = expert
        if name == "cond":
            self.sample = sample

    def end_pass(self, output):
        self.outputs[self.pass_name] = output
        self.pass_name = None

    # -- called by CaptureProcessor ----------------------------------------------------------
    def n_real_now(self) -> int:
        """Real tokens of the prompt of the pass in progress (the negative one for uncond)."""
        if self.pass_name == "uncond" and self.n_real_uncond:
            return self.n_real_uncond
        return self.store.layout.n_real

    def target(self, block: int):
        """Where this block's maps go in the current pass, or None if this pass is not captured:
        (maps [H, T, S], padding [H, S], token index or None, head_mean)."""
        st = self.store
        slot = st.step_slot.get(self.step)
        b = st.block_slot.get(block)
        if slot is None or b is None:
            return None
        lay = st.layout
        n = st.positions  # this rank's positions under context parallelism: what attn2 sees
        if self.pass_name == "cond":
            maps, pad, index = st.maps, st.padding, self.token_index
        elif self.pass_name == "uncond" and self.capture_uncond:
            maps, pad, index = st.maps_uncond, st.padding_uncond, self.uncond_index
        else:
            return None
        return maps[slot, b].view(lay.heads, -1, n), pad[slot, b].view(lay.heads, n), index, lay.head_mean


def _index(tokens: list[int], n_real: int, device) -> torch.Tensor | None:
    if tokens == list(range(n_real)):
        return None
    return torch.tensor(tokens, dtype=torch.long, device=device)
