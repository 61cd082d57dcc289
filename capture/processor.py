"""The capture processor for Wan's cross-attention (``block.attn2``), and the hook that tells the
capture which denoising step, pass (cond/uncond) and expert a forward belongs to.

The model's output keeps using the fused attention kernel (``dispatch_attention_fn``, whatever
backend ``transformer.set_attention_backend`` chose), because fused kernels never return the
weights. Beside it, from the same normed query and key, the exact probabilities
softmax(QK^T / sqrt(d)) over all keys are computed for the real prompt tokens only:

WanPipeline cuts the prompt to its ``n`` real tokens and zero-pads it to ``max_sequence_length``
(512) with no mask, so padding takes part in the softmax. All padding rows are identical, hence
so are their keys and logits, and the softmax denominator over 512 keys equals a logsumexp over
the ``n`` real logits plus one padding logit shifted by ``log(n_pad)``. Computing ``n + 1``
logits instead of 512 gives the exact maps at a fraction of the cost, and the padding mass
(the probability that went to all padding keys together) makes every position sum to 1.

Extension point: every processor has a list of *block hooks* (empty by default, so nothing
extra runs). A hook is called as ``hook(call, out)`` after the fused attention, with the
:class:`AttnCall` (q, k, v, where the pipeline is, and the exact probabilities on demand) and
the attention output ``out`` [B, S, heads, head_dim] before ``to_out``; it returns None or a
replacement output. Attention bending plugs in here (O' from O and a few rank-one terms).

Everything taken from diffusers' private internals goes through :mod:`paik.capture.compat`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch

from paik.capture import compat
from paik.capture.bend import bend_for

if TYPE_CHECKING:
    from paik.capture.store import Recorder

HOOK_NAME = "paik_capture"


def real_token_probs(query: torch.Tensor, key: torch.Tensor, n_real: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention probabilities of every position to the real tokens, and to all padding.

    query: [S, H, D] (normed, one video), key: [L, H, D] with keys ``n_real..L-1`` identical
    (the zero padding). Returns ``probs`` [H, n_real, S] and ``pad`` [H, S], float32, with
    ``probs.sum(1) + pad == 1``. Logits are accumulated and kept in float32 from the model's own
    q and k: bf16 logits would be off by up to ~0.4% of their size, which moves probabilities by
    more than 1e-3.
    """
    length = key.shape[0]
    n_pad = length - n_real
    kk = key[: n_real + (1 if n_pad else 0)].transpose(0, 1)  # [H, n+1, D]
    q = query.permute(1, 2, 0)  # [H, D, S], a view: q is never copied
    logits = _bmm_fp32(kk, q).mul_(1.0 / math.sqrt(query.shape[-1]))  # [H, n+1, S]
    if n_pad:
        logits[:, n_real].add_(math.log(n_pad))  # one logit stands for n_pad identical ones
    probs = torch.softmax(logits, dim=1)
    if n_pad:
        return probs[:, :n_real], probs[:, n_real]
    return probs, torch.zeros_like(probs[:, 0])


_FP32_OUT_BMM: bool | None = None


def _bmm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with float32 accumulation and output. For 16-bit CUDA inputs, cuBLAS does this
    directly (``out_dtype``), sparing a float32 copy of the query; products of 16-bit values are
    exact in float32 either way."""
    global _FP32_OUT_BMM
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16) and _FP32_OUT_BMM is not False:
        try:
            out = torch.bmm(a, b, out_dtype=torch.float32)
            _FP32_OUT_BMM = True
            return out
        except (TypeError, RuntimeError, NotImplementedError):  # older torch: no out_dtype
            _FP32_OUT_BMM = False
    return torch.bmm(a.float(), b.float())


class AttnCall:
    """One cross-attention call, as a block hook sees it. ``query`` [B, S, H, D] (normed),
    ``key``/``value`` [B, L, H, D] of the text; ``pass_name`` "cond"/"uncond", ``step`` and
    ``expert`` as the recorder knows them."""

    __slots__ = ("block", "pass_name", "step", "expert", "query", "key", "value", "n_real", "_probs")

    def __init__(self, block, pass_name, step, expert, query, key, value, n_real):
        self.block, self.pass_name, self.step, self.expert = block, pass_name, step, expert
        self.query, self.key, self.value, self.n_real = query, key, value, n_real
        self._probs = None

    def probs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs [H, n_real, S], pad [H, S]) of the first video, float32; computed once, shared
        by the capture and every hook."""
        if self._probs is None:
            self._probs = real_token_probs(self.query[0], self.key[0], self.n_real)
        return self._probs


BlockHook = Callable[[AttnCall, torch.Tensor], "torch.Tensor | None"]


class CaptureProcessor(compat.WanAttnProcessor):
    """``WanAttnProcessor`` that also writes attention maps into the recorder's store.

    It subclasses diffusers' processor so ``set_attention_backend`` and ``enable_parallelism``
    still reach it; its ``__call__`` mirrors ``WanAttnProcessor.__call__`` (diffusers 0.42),
    passing ``parallel_config`` exactly where that one does, and adds the capture between the
    projections and the fused attention, and the block hooks after it.
    """

    def __init__(self, recorder: "Recorder", block: int, hooks: list[BlockHook] | None = None):
        super().__init__()
        self.recorder = recorder
        self.block = block
        self.hooks: list[BlockHook] = [] if hooks is None else hooks

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        encoder_hidden_states_img = None
        if attn.add_k_proj is not None:
            # I2V: 257 CLIP image tokens precede the text and get their own softmax
            image_context_length = encoder_hidden_states.shape[1] - 512
            encoder_hidden_states_img = encoder_hidden_states[:, :image_context_length]
            encoder_hidden_states = encoder_hidden_states[:, image_context_length:]

        query, key, value = compat.qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:  # never for attn2 in Wan; kept so the processor is general
            raise ValueError("CaptureProcessor belongs on cross-attention (attn2), which has no rotary embedding")

        rec = self.recorder
        call = None
        target = rec.target(self.block)
        bend = bend_for(rec, self.block)  # None unless a bend is active here: nothing extra runs
        if target is not None or self.hooks or bend is not None:
            call = AttnCall(self.block, rec.pass_name, rec.step, rec.expert, query, key, value, rec.n_real_now())
        if bend is not None:  # bent in place: the maps stored and the hooks see what the model uses
            bend.apply(*call.probs())
        if target is not None:
            maps_out, pad_out, token_index, head_mean = target
            probs, pad = call.probs()
            sel = probs if token_index is None else probs.index_select(1, token_index)  # [H, T, S]
            if head_mean:
                sel, pad = sel.mean(0, keepdim=True), pad.mean(0, keepdim=True)
            maps_out.copy_(sel)
            pad_out.copy_(pad)

        hidden_states_img = None
        if encoder_hidden_states_img is not None:
            key_img, value_img = compat.added_kv_projections(attn, encoder_hidden_states_img)
            key_img = attn.norm_added_k(key_img).unflatten(2, (attn.heads, -1))
            value_img = value_img.unflatten(2, (attn.heads, -1))
            hidden_states_img = compat.attention(query, key_img, value_img, None, self._attention_backend,
                                                 None).flatten(2, 3).type_as(query)

        out = compat.attention(query, key, value, attention_mask, self._attention_backend,
                               self._parallel_config if encoder_hidden_states is None else None)
        if bend is not None:  # rank-one corrections to the fused output, before to_out (paik.capture.bend)
            out = bend.correct(out, value)
        for hook in self.hooks:
            replaced = hook(call, out)
            if replaced is not None:
                out = replaced
        hidden_states = out.flatten(2, 3).type_as(query)
        if hidden_states_img is not None:
            hidden_states = hidden_states + hidden_states_img
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


class PassHook(compat.ModelHook):
    """A stateful diffusers hook on a transformer: the pipeline's ``cache_context("cond"|"uncond",
    step_index=..., sigma=..., num_inference_steps=...)`` reaches its StateManager, so the
    capture learns which pass, step and expert every forward belongs to without counting calls.

    ``session`` gets ``before_forward(module, expert, context, args, kwargs)`` and
    ``after_forward(output)``."""

    _is_stateful = True

    def __init__(self, session, expert: str):
        super().__init__()
        self.session = session
        self.expert = expert
        self.state_manager = compat.new_state_manager()

    def pre_forward(self, module, *args, **kwargs):
        self.session.before_forward(module, self.expert, compat.current_context(self.state_manager), args, kwargs)
        return args, kwargs

    def post_forward(self, module, output):
        self.session.after_forward(output[0] if isinstance(output, (tuple, list)) else output.sample)
        return output

    def reset_state(self, module):
        self.state_manager.reset()
        return module


def attached(transformer) -> bool:
    """Whether a capture is attached to ``transformer`` now."""
    return compat.registry(transformer).get_hook(HOOK_NAME) is not None or any(
        isinstance(b.attn2.processor, CaptureProcessor) for b in transformer.blocks)


def attach(transformer, recorder: "Recorder", session, expert: str, blocks, hooks: list[BlockHook] | None = None
           ) -> dict:
    """Install capture processors on ``transformer.blocks[i].attn2`` for ``i in blocks`` and the
    pass hook on the transformer, all or nothing. Returns what :func:`detach` needs. Use
    :func:`paik.capture_attention` rather than this: it pairs attach and detach."""
    compat.check()
    saved: dict = {}
    try:
        for i in blocks:
            attn2 = transformer.blocks[i].attn2
            old = attn2.processor
            proc = CaptureProcessor(recorder, i, hooks)
            # keep what set_attention_backend / enable_parallelism chose for this block
            proc._attention_backend = getattr(old, "_attention_backend", None)
            proc._parallel_config = getattr(old, "_parallel_config", None)
            saved[i] = (old, proc._attention_backend, proc._parallel_config)
            attn2.set_processor(proc)
        compat.registry(transformer).register_hook(PassHook(session, expert), HOOK_NAME)
    except BaseException:
        detach(transformer, saved)
        raise
    return saved


def detach(transformer, saved: dict) -> None:
    """Undo :func:`attach`: every ``attn2`` gets its own processor object back. A backend or
    parallel config set while the capture was attached (it reached the capture processor) is
    carried over to the restored processor, so the user's latest choice holds."""
    for i, (old, backend, parallel) in saved.items():
        attn2 = transformer.blocks[i].attn2
        cur = attn2.processor
        if old is not None and isinstance(cur, CaptureProcessor):
            if cur._attention_backend != backend and hasattr(old, "_attention_backend"):
                old._attention_backend = cur._attention_backend
            if cur._parallel_config is not parallel and hasattr(old, "_parallel_config"):
                old._parallel_config = cur._parallel_config
        attn2.set_processor(old)
    reg = compat.registry(transformer)
    if reg.get_hook(HOOK_NAME) is not None:
        reg.remove_hook(HOOK_NAME, recurse=False)
