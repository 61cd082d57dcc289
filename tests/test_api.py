"""The library API, paik.capture_attention, on the tiny pipelines: the same maps as the CLI, an
exact capture on a bare transformer, and a model left exactly as it was however the block ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import paik
from paik.capture import compat
from paik.capture.bench import reference_probs
from paik.capture.bundle import open_bundle
from paik.capture.models import load_pipeline
from paik.capture.processor import HOOK_NAME, CaptureProcessor, attached
from paik.capture.tokens import token_table
from paik.cli import main as paik_cli
from paik.errors import PaikError

PROMPT = "a red circle and a kissing cat"
CALL = dict(num_frames=9, height=64, width=64, num_inference_steps=4, guidance_scale=5.0, max_sequence_length=512)


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline("tiny")


def _seed(n=3):
    return torch.Generator("cpu").manual_seed(n)


def _processors(pipe):
    return [(b.attn1.processor, b.attn2.processor) for b in pipe.transformer.blocks]


def _latents(pipe, **kw):
    with torch.inference_mode():
        return pipe(PROMPT, generator=_seed(), output_type="latent", **{**CALL, **kw}).frames


def test_maps_equal_the_cli_bundle_for_the_same_seed(tiny, tmp_path):
    pipe = tiny[0]
    assert paik_cli(["generate", PROMPT, "--out", str(tmp_path / "cli"), "--model", "tiny", "--seed", "3",
                     "--tokens", "kissing,cat", "--capture-steps", "1-3", "--quiet"]) == 0
    cli = open_bundle(tmp_path / "cli")
    # the user's own call: prompt, steps and grid are learned from it
    with paik.capture_attention(pipe, tokens=["kissing", "cat"], steps="1-3", out=tmp_path / "api") as cap:
        with torch.inference_mode():
            video = pipe(PROMPT, generator=_seed(), output_type="np", **CALL).frames[0]
        cap.save_video(video)
    assert cap.status == "complete" and cap.steps == [1, 2, 3] == cli.step_indices
    assert cap.layout == cli.layout and [t.piece for t in cap.tokens] == [t.piece for t in cli.tokens]
    assert float(cap.maps.float().max()) > 2 / 512  # not zeros, not the uniform 1/512
    api = cap.open_bundle()
    assert api.status == "complete" and api.step_indices == [1, 2, 3]
    assert api.video_path is not None and api.manifest["video"] == cli.manifest["video"]
    assert "9 frames 64x64 @ 16.0 fps" in api.summary()
    for s in cli.step_indices:
        slot = cap.store.step_slot[s]
        want = np.asarray(cli.step_arrays(s)["maps"])
        assert np.array_equal(cap.maps[slot].numpy(), want)  # bit-identical: the same path
        assert np.array_equal(np.asarray(api.step_arrays(s)["maps"]), want)
        assert np.array_equal(cap.padding[slot].numpy(), np.asarray(cli.step_arrays(s)["padding"]))
        for word, kw in (("kissing", {}), ("cat", {"block": 2, "head": 1}), ("padding", {"reduce": "max"})):
            assert np.allclose(cap.select(word, step=s, **kw), cli.select(word, step=s, **kw), atol=1e-6)
    assert np.allclose(cap.select("cat", step=-1, block=-1), cli.select("cat", step=3, block=2), atol=1e-6)
    assert [s["expert"] for s in api.manifest["steps"]] == ["transformer"] * 3
    assert api.manifest["prompt"] == PROMPT and api.manifest["settings"]["steps"] == 4


def test_detach_restores_the_model_exactly(tiny):
    pipe = tiny[0]
    before, forward = _processors(pipe), pipe.transformer.forward
    plain = _latents(pipe)
    with paik.capture_attention(pipe) as cap:
        assert all(isinstance(b.attn2.processor, CaptureProcessor) for b in pipe.transformer.blocks)
        assert "encode_prompt" in pipe.__dict__ and attached(pipe.transformer)
        captured = _latents(pipe)
    assert torch.equal(plain, captured)  # capturing leaves the model's output bit-identical
    after = _processors(pipe)
    assert all(a[0] is b[0] and a[1] is b[1] for a, b in zip(before, after))
    assert pipe.transformer._diffusers_hook.get_hook(HOOK_NAME) is None and not attached(pipe.transformer)
    assert "encode_prompt" not in pipe.__dict__ and pipe.transformer.forward == forward
    assert torch.equal(_latents(pipe), plain) and cap.steps == [0, 1, 2, 3]


def test_a_second_attach_is_a_clear_error(tiny):
    pipe = tiny[0]
    with paik.capture_attention(pipe):
        with pytest.raises(PaikError, match="already attached .* captures do not nest"):
            paik.capture_attention(pipe)
        with pytest.raises(PaikError, match="already attached to this transformer"):
            paik.capture_attention(pipe.transformer, n_tokens=4)
    # one pipeline call per block: a second call would overwrite the first one's steps
    with pytest.raises(PaikError, match="one pipeline call per capture"):
        with paik.capture_attention(pipe, steps="0"):
            _latents(pipe, num_inference_steps=1)
            _latents(pipe, num_inference_steps=1)
    assert not attached(pipe.transformer) and "encode_prompt" not in pipe.__dict__
    cap = paik.capture_attention(pipe, steps="0")
    with cap:
        _latents(pipe, num_inference_steps=1)
    with pytest.raises(PaikError, match="already used"):
        cap.__enter__()


def test_an_exception_inside_the_block_detaches_and_keeps_finished_steps(tiny, tmp_path):
    pipe = tiny[0]
    before = _processors(pipe)

    def boom(pipeline, i, t, kwargs):
        if i == 1:
            raise RuntimeError("user code broke")
        return {}

    with pytest.raises(RuntimeError, match="user code broke"):
        with paik.capture_attention(pipe, tokens="cat", out=tmp_path / "b") as cap:
            with torch.inference_mode():
                pipe(PROMPT, generator=_seed(), output_type="latent", callback_on_step_end=boom, **CALL)
    assert all(a[1] is b[1] for a, b in zip(before, _processors(pipe))) and not attached(pipe.transformer)
    b = open_bundle(tmp_path / "b")
    assert cap.status == "failed" and b.status == "failed" and "user code broke" in b.manifest["error"]
    assert b.step_indices == [0, 1]  # both had run their passes when the callback raised


def test_the_memory_plan_refuses_before_the_first_block_runs(tiny, tmp_path):
    pipe = tiny[0]
    with pytest.raises(PaikError, match=r"does not fit.\nCapture less, for example:\n(.|\n)*  --heads mean\n"):
        with paik.capture_attention(pipe, max_gb=15000 / 1024**3, out=tmp_path / "b"):  # 23 kB asked
            _latents(pipe)
    assert not (tmp_path / "b").exists() and not attached(pipe.transformer)
    with pytest.raises(PaikError, match="'dog' is not in the prompt"):
        with paik.capture_attention(pipe, tokens=["dog"]):
            _latents(pipe)
    with pytest.raises(PaikError, match="out of range: valid values are 0..2"):
        paik.capture_attention(pipe, blocks="0-9")
    with pytest.raises(PaikError, match="heads='median'"):
        paik.capture_attention(pipe, heads="median")


def test_a_bare_transformer_forward_is_captured_exactly(tiny):
    """Steps without cache_context (one forward each), the token count learned from the zero
    padding of the embeddings, the grid from the first forward; maps against an fp64 softmax
    over all 512 keys from q and k recorded by independent hooks."""
    pipe = tiny[0]
    t = pipe.transformer
    with torch.no_grad():
        emb, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, device="cpu")
        for blk in t.blocks:
            blk.attn2.norm_k.weight.mul_(12.0)  # peaked maps: an indexing error cannot hide in 1/512
    qk = []
    handles = [t.blocks[1].attn2.norm_q.register_forward_hook(lambda m, i, o: qk.append(["q", o])),
               t.blocks[1].attn2.norm_k.register_forward_hook(lambda m, i, o: qk[-1].append(o))]
    g = torch.Generator().manual_seed(0)
    latents = [torch.randn(1, 16, 3, 8, 10, generator=g) for _ in range(2)]
    try:
        with paik.capture_attention(t, num_steps=2) as cap, torch.inference_mode():
            for i, x in enumerate(latents):
                t(hidden_states=x, timestep=torch.tensor([900.0 - 400 * i]), encoder_hidden_states=emb,
                  return_dict=False)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for blk in t.blocks:
                blk.attn2.norm_k.weight.div_(12.0)
    n = len(token_table(pipe.tokenizer, PROMPT))
    assert cap.layout.n_real == n and [x.piece for x in cap.tokens] == [f"#{i}" for i in range(n)]
    assert cap.layout.latent == (3, 4, 5) and cap.steps == [0, 1]
    assert [s["timestep"] for s in cap.step_info] == [900.0, 500.0]
    worst = 0.0
    for step, (_, q, k) in enumerate(qk):
        ref = reference_probs(q[0].unflatten(-1, (2, -1)).double(), k[0].unflatten(-1, (2, -1)).double())
        got = cap.maps[step, 1].float().flatten(2)
        worst = max(worst, (got - ref[:, :n]).abs().max().item(),
                    (cap.padding[step, 1].float().flatten(1) - ref[:, n:].sum(1)).abs().max().item())
        assert ref[:, :n].max() > 0.2
    assert worst <= 1e-3, worst
    # with a tokenizer and the prompt, words can be chosen on a bare transformer too
    with paik.capture_attention(t, tokens=["kissing"], prompt=PROMPT, tokenizer=pipe.tokenizer, num_steps=1,
                                grid=(3, 4, 5)) as cap2, torch.inference_mode():
        t(hidden_states=latents[0], timestep=torch.tensor([900.0]), encoder_hidden_states=emb, return_dict=False)
    assert cap2.layout.tokens == [5, 6] and cap2.select("kissing").shape == (3, 4, 5)
    with pytest.raises(PaikError, match="words can only be chosen when the prompt is known"):
        with paik.capture_attention(t, tokens=["cat"], num_steps=1), torch.inference_mode():
            t(hidden_states=latents[0], timestep=torch.tensor([900.0]), encoder_hidden_states=emb,
              return_dict=False)
    with pytest.raises(PaikError, match="grid is"):
        with paik.capture_attention(t, n_tokens=n, num_steps=1, grid=(3, 8, 10)), torch.inference_mode():
            t(hidden_states=latents[0], timestep=torch.tensor([900.0]), encoder_hidden_states=emb,
              return_dict=False)
    assert not attached(t)


def test_two_experts_and_the_unconditional_pass():
    pipe = load_pipeline("tiny-a14b")[0]
    with paik.capture_attention(pipe, tokens="cat", uncond=True, heads="mean") as cap, torch.inference_mode():
        pipe(PROMPT, negative_prompt="blurry dog", generator=_seed(), output_type="latent", **CALL)
    assert {s["expert"] for s in cap.step_info} == {"transformer", "transformer_2"}
    assert [t.piece for t in cap.uncond_tokens] == ["▁blurry", "▁dog", "</s>"]
    total = cap.store.maps_uncond.float().sum(3) + cap.store.padding_uncond.float()
    assert (total - 1).abs().max() < 3e-3 and cap.select("dog", uncond=True).shape == cap.layout.latent
    assert not attached(pipe.transformer) and not attached(pipe.transformer_2)


def test_model_cpu_offload_keeps_working(tmp_path):
    pipe = load_pipeline("tiny")[0]
    with paik.capture_attention(pipe, tokens="cat") as plain, torch.inference_mode():
        want = pipe(PROMPT, generator=_seed(), output_type="latent", **CALL).frames
    pipe.enable_model_cpu_offload(device="cpu")  # accelerate's hooks, as on a 24 GB card
    with paik.capture_attention(pipe, tokens="cat") as cap, torch.inference_mode():
        got = pipe(PROMPT, generator=_seed(), output_type="latent", **CALL).frames
    # offload may change the float rounding a little (another execution device), nothing more
    assert (got - want).abs().max() < 1e-3, (got - want).abs().max()
    assert (cap.maps.float() - plain.maps.float()).abs().max() < 1e-3 and cap.steps == [0, 1, 2, 3]
    assert hasattr(pipe.transformer, "_hf_hook") and not attached(pipe.transformer)


def test_block_hooks_see_the_captured_probabilities_and_may_replace_the_output(tiny):
    pipe = tiny[0]
    seen = []

    def watch(call, out):
        if call.block == 0 and call.pass_name == "cond":
            seen.append((call.step, call.probs()[0].clone()))

    plain = _latents(pipe, num_inference_steps=2)
    cap = paik.capture_attention(pipe)
    cap.hooks.append(watch)
    with cap:
        assert torch.equal(_latents(pipe, num_inference_steps=2), plain)  # a hook returning None changes nothing
    assert [s for s, _ in seen] == [0, 1]
    for step, probs in seen:
        assert torch.allclose(cap.maps[step, 0].float().flatten(2), probs, atol=1e-3)
    cap = paik.capture_attention(pipe, steps="0")
    cap.hooks.append(lambda call, out: torch.zeros_like(out))
    with cap:
        assert not torch.equal(_latents(pipe, num_inference_steps=2), plain)


def test_missing_diffusers_internals_name_the_supported_versions(tiny, monkeypatch):
    monkeypatch.setattr(compat, "_missing", ["transformer_wan._get_qkv_projections"])
    with pytest.raises(PaikError, match=r"lacks transformer_wan._get_qkv_projections.*diffusers>=0.42,<0.43"):
        paik.capture_attention(tiny[0])
    from pathlib import Path

    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert f'"diffusers{compat.SUPPORTED}"' in pyproject  # the message and the pin say the same
