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

import queue
import time
from typing import Callable

import torch

from paik.errors import PaikError
from paik.capture.layout import GiB, Layout


class CaptureStore:
    """Preallocated maps for one generation, on ``device`` (the GPU when there is one).

    ``buffers``: None keeps every captured step (what the live engine and the library's
    ``select`` read). A number K < the captured steps makes a ring of K step slots instead: a
    step takes a free slot when it begins (:meth:`acquire`, waiting while all K are taken) and
    gives it back only once the bundle writer has copied it off (:meth:`release`, from the
    writer thread), so a slot is never overwritten while its copy is pending. ``step_slot``
    then names only the steps that currently own a slot.

    ``rank``: with a sharded layout (context parallelism, paik.capture.parallel) the store holds
    only that rank's positions ``layout.shards[rank]``, flat: maps [step, block, head, token, n]."""

    def __init__(self, layout: Layout, device: torch.device | str, buffers: int | None = None,
                 rank: int | None = None):
        self.layout = layout
        self.device = torch.device(device)
        lay = layout
        n_steps = len(lay.steps)
        self.slots = n_steps if buffers is None else max(1, min(int(buffers), n_steps))
        self.ring = self.slots < n_steps
        s, b, h = self.slots, len(lay.blocks), lay.heads
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
        self.block_slot = {block: i for i, block in enumerate(lay.blocks)}
        self._captured = set(lay.steps)
        if self.ring:
            self.step_slot: dict[int, int] = {}
            self._free: queue.Queue[int] = queue.Queue()
            for i in range(self.slots):
                self._free.put(i)
            self._released: queue.Queue[int] = queue.Queue()  # steps given back by the writer thread
        else:
            self.step_slot = {step: i for i, step in enumerate(lay.steps)}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.maps, self.padding, self.maps_uncond,
                                                           self.padding_uncond) if t is not None)

    def acquire(self, step: int, check: Callable[[float], None] | None = None) -> None:
        """Give ``step`` a slot (ring only; a no-op for a step already placed or not captured).
        Waits for the writer to release one; ``check(since)`` is called while waiting, to raise
        when the writer has failed or stalled, so the wait is never endless."""
        if not self.ring or step not in self._captured or step in self.step_slot:
            return
        since = time.monotonic()
        while True:
            self._drop_released()
            try:
                slot = self._free.get(timeout=0.05)
                break
            except queue.Empty:
                if check is not None:
                    check(since)
        self._drop_released()
        self.step_slot[step] = slot

    def release(self, step: int) -> None:
        """The writer has its own copy of ``step``: its slot may be reused (any thread)."""
        if not self.ring:
            return
        slot = self.step_slot.get(step)
        if slot is None:
            return
        self._released.put(step)  # step_slot is edited on the generation thread only
        self._free.put(slot)

    def _drop_released(self) -> None:
        while True:
            try:
                self.step_slot.pop(self._released.get_nowait(), None)
            except queue.Empty:
                return


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
        self.wait_check: Callable[[float], None] | None = None  # raises if a ring slot never comes back

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
            self.store.acquire(step, self.wait_check)
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
