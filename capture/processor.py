"""The capture processor for Wan's cross-attention (``block.attn2``), and the hook that tells it
which denoising step, pass (cond/uncond) and expert it is in.

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
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import (
    WanAttnProcessor,
    _get_added_kv_projections,
    _get_qkv_projections,
)

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


class CaptureProcessor(WanAttnProcessor):
    """``WanAttnProcessor`` that also writes attention maps into the recorder's store.

    It subclasses diffusers' processor so ``set_attention_backend`` still reaches it; its
    ``__call__`` mirrors ``WanAttnProcessor.__call__`` (diffusers 0.42) and adds the capture
    between the projections and the fused attention.
    """

    def __init__(self, recorder: "Recorder", block: int):
        super().__init__()
        self.recorder = recorder
        self.block = block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        encoder_hidden_states_img = None
        if attn.add_k_proj is not None:
            # I2V: 257 CLIP image tokens precede the text and get their own softmax
            image_context_length = encoder_hidden_states.shape[1] - 512
            encoder_hidden_states_img = encoder_hidden_states[:, :image_context_length]
            encoder_hidden_states = encoder_hidden_states[:, image_context_length:]

        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:  # never for attn2 in Wan; kept so the processor is general
            raise ValueError("CaptureProcessor belongs on cross-attention (attn2), which has no rotary embedding")

        target = self.recorder.target(self.block)
        bend = bend_for(self.recorder, self.block)  # None unless a bend is active here: nothing extra runs
        if bend is not None and target is None:
            probs, pad = real_token_probs(query[0], key[0], bend.n_real)
            bend.apply(probs, pad)
        if target is not None:
            maps_out, pad_out, token_index, n_real, head_mean = target
            probs, pad = real_token_probs(query[0], key[0], n_real)
            if bend is not None:  # the maps stored are the bent ones the model uses
                bend.apply(probs, pad)
            sel = probs if token_index is None else probs.index_select(1, token_index)  # [H, T, S]
            if head_mean:
                sel, pad = sel.mean(0, keepdim=True), pad.mean(0, keepdim=True)
            maps_out.copy_(sel)
            pad_out.copy_(pad)

        hidden_states_img = None
        if encoder_hidden_states_img is not None:
            key_img, value_img = _get_added_kv_projections(attn, encoder_hidden_states_img)
            key_img = attn.norm_added_k(key_img).unflatten(2, (attn.heads, -1))
            value_img = value_img.unflatten(2, (attn.heads, -1))
            hidden_states_img = dispatch_attention_fn(
                query, key_img, value_img, attn_mask=None, dropout_p=0.0, is_causal=False,
                backend=self._attention_backend, parallel_config=None,
            ).flatten(2, 3).type_as(query)

        hidden_states = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
            backend=self._attention_backend, parallel_config=None,
        )
        if bend is not None:  # rank-one corrections to the fused output, before to_out (paik.capture.bend)
            hidden_states = bend.correct(hidden_states, value)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        if hidden_states_img is not None:
            hidden_states = hidden_states + hidden_states_img
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


class _PassState(BaseState):
    def reset(self, *args, **kwargs):
        pass


class PassHook(ModelHook):
    """A stateful diffusers hook on a transformer: the pipeline's ``cache_context("cond"|"uncond",
    step_index=..., sigma=...)`` reaches its StateManager, so the recorder learns which pass,
    step and expert every forward belongs to without counting calls."""

    _is_stateful = True

    def __init__(self, recorder: "Recorder", expert: str):
        super().__init__()
        self.recorder = recorder
        self.expert = expert
        self.state_manager = StateManager(_PassState)

    def pre_forward(self, module, *args, **kwargs):
        ctx = self.state_manager._context
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        self.recorder.begin_pass(
            name=ctx.name if ctx is not None else None,
            step=ctx.step_index if ctx is not None else None,
            sigma=ctx.sigma if ctx is not None else None,
            expert=self.expert,
            sample=hidden,
        )
        return args, kwargs

    def post_forward(self, module, output):
        self.recorder.end_pass(output[0] if isinstance(output, (tuple, list)) else output.sample)
        return output

    def reset_state(self, module):
        self.state_manager.reset()
        return module


def attach(transformer, recorder: "Recorder", expert: str, blocks) -> dict:
    """Install capture processors on ``transformer.blocks[i].attn2`` for ``i in blocks`` and the
    pass hook on the transformer. Returns what :func:`detach` needs to restore the model."""
    saved = {}
    for i in blocks:
        attn2 = transformer.blocks[i].attn2
        saved[i] = attn2.processor
        proc = CaptureProcessor(recorder, i)
        # keep the backend the user chose with set_attention_backend
        proc._attention_backend = getattr(saved[i], "_attention_backend", None)
        attn2.set_processor(proc)
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(PassHook(recorder, expert), HOOK_NAME)
    return saved


def detach(transformer, saved: dict) -> None:
    """Undo :func:`attach`: the model is left exactly as it was."""
    for i, proc in saved.items():
        transformer.blocks[i].attn2.set_processor(proc)
    HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(HOOK_NAME, recurse=False)
