"""Everything the capture takes from diffusers' private internals, in one place.

The capture mirrors ``WanAttnProcessor.__call__`` and listens to the pipeline's
``cache_context``; for that it needs names diffusers does not promise to keep. They are imported
here and nowhere else, and :func:`check` (called when a capture attaches) says plainly which one
is missing and which diffusers versions are supported, instead of an ``AttributeError`` deep in a
forward pass. Supporting a new diffusers release means reading its ``transformer_wan.py`` and
``hooks/hooks.py`` against this file, and widening :data:`SUPPORTED` (and pyproject's pin).
"""

from __future__ import annotations

SUPPORTED = ">=0.42,<0.43"  # pyproject.toml pins the same range

_missing: list[str] = []

try:
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor
except ImportError:  # a class to subclass must exist even when the check below will refuse
    WanAttnProcessor = object
    _missing.append("diffusers.models.transformers.transformer_wan.WanAttnProcessor")
try:
    from diffusers.models.transformers.transformer_wan import _get_added_kv_projections, _get_qkv_projections
except ImportError:
    _get_qkv_projections = _get_added_kv_projections = None
    _missing.append("transformer_wan._get_qkv_projections / _get_added_kv_projections")
try:
    from diffusers.models.attention_dispatch import dispatch_attention_fn
except ImportError:
    dispatch_attention_fn = None
    _missing.append("diffusers.models.attention_dispatch.dispatch_attention_fn")
try:
    from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager
except ImportError:
    BaseState = ModelHook = object
    HookRegistry = StateManager = None
    _missing.append("diffusers.hooks.hooks (HookRegistry, ModelHook, StateManager)")


def check() -> None:
    """Raise a :class:`PaikError` naming what this diffusers lacks, if anything."""
    missing = list(_missing)
    if not missing:
        import inspect

        if not hasattr(WanAttnProcessor, "_attention_backend"):
            missing.append("WanAttnProcessor._attention_backend")
        if not hasattr(WanAttnProcessor, "_parallel_config"):
            missing.append("WanAttnProcessor._parallel_config")
        if "parallel_config" not in inspect.signature(dispatch_attention_fn).parameters:
            missing.append("dispatch_attention_fn(parallel_config=...)")
        if not hasattr(StateManager(_NoState), "_context"):
            missing.append("StateManager._context")
        for name in ("register_hook", "remove_hook", "get_hook", "check_if_exists_or_initialize"):
            if not hasattr(HookRegistry, name):
                missing.append(f"HookRegistry.{name}")
    if missing:
        from paik.errors import PaikError

        try:
            from diffusers import __version__ as version
        except ImportError:
            version = "not installed"
        raise PaikError(
            f"attention capture cannot attach: diffusers {version} lacks {', '.join(missing)}. "
            f"Paik supports diffusers{SUPPORTED}: pip install 'diffusers{SUPPORTED}'"
        )


class _NoState(BaseState):
    def reset(self, *args, **kwargs):
        pass


def new_state_manager() -> "StateManager":
    """A StateManager that the pipeline's ``cache_context`` fills (a stateful hook's attribute)."""
    return StateManager(_NoState)


def current_context(state_manager):
    """The ``CacheContext`` of the forward in progress (name, step_index, num_inference_steps,
    sigma), or None outside ``cache_context``. ``StateManager.context`` raises when unset, so the
    private field is read directly."""
    return state_manager._context


def registry(module) -> "HookRegistry":
    return HookRegistry.check_if_exists_or_initialize(module)


def qkv_projections(attn, hidden_states, encoder_hidden_states):
    return _get_qkv_projections(attn, hidden_states, encoder_hidden_states)


def added_kv_projections(attn, encoder_hidden_states_img):
    return _get_added_kv_projections(attn, encoder_hidden_states_img)


def attention(query, key, value, attn_mask, backend, parallel_config):
    """The fused attention kernel diffusers would run (whatever ``set_attention_backend`` chose)."""
    return dispatch_attention_fn(query, key, value, attn_mask=attn_mask, dropout_p=0.0, is_causal=False,
                                 backend=backend, parallel_config=parallel_config)


def enable_context_parallel(transformer, degree: int, kind: str = "ulysses") -> None:
    """``transformer.enable_parallelism(ContextParallelConfig(...))``: diffusers' own context
    parallelism, ``kind`` "ulysses" (all-to-all over heads) or "ring" (needs flash or cuDNN
    attention: the native backend cannot return the logsumexp ring attention merges with).

    diffusers 0.42 places each rank on ``rank % torch.accelerator.device_count()``, which is a
    ZeroDivisionError on a CPU-only PyTorch (it counts no accelerator). Only there, and only while
    ``enable_parallelism`` runs, the count reads 1, so that gloo processes on the CPU (the tests)
    get the very code path the GPUs run; CUDA machines are not touched."""
    import contextlib

    import torch
    from diffusers import ContextParallelConfig

    config = ContextParallelConfig(ulysses_degree=degree) if kind == "ulysses" else ContextParallelConfig(
        ring_degree=degree)
    patch = contextlib.nullcontext()
    acc = getattr(torch, "accelerator", None)
    if acc is not None and torch._C._get_accelerator().type == "cpu" and acc.device_count() == 0:
        from unittest import mock

        patch = mock.patch.object(acc, "device_count", lambda: 1)
    with patch:
        transformer.enable_parallelism(config=config)
