"""The capture is exact: maps equal an independent full softmax over all keys, the padding mass
closes every position to 1, and token order and the [F', H', W'] reshape put attention where a
constructed case says it must be."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor

from paik.capture.bench import reference_probs
from paik.capture.bundle import open_bundle
from paik.capture.generate import GenerateOptions, generate
from paik.capture.layout import Layout
from paik.capture.models import load_pipeline
from paik.capture.api import capture_attention
from paik.capture.processor import CaptureProcessor
from paik.capture.store import CaptureStore, Recorder
from paik.capture.writer import BundleWriter

PROMPT = "a red circle and a kissing cat"
NEGATIVE = "blurry dog"


# ---------------------------------------------------------------------------------------------
# A constructed case: one region of one frame attends to one token.
# ---------------------------------------------------------------------------------------------

F, H, W = 3, 4, 5
REGION_A = (1, slice(0, 2), slice(0, 3))  # frame 1, rows 0-1, cols 0-2 -> token 0
REGION_B = (2, slice(2, 4), slice(3, 5))  # frame 2, rows 2-3, cols 3-4 -> token 2


def _constructed_attention():
    """attn2 with identity projections: a position's query is its hidden state, a token's key is
    its text embedding, so we choose who attends to whom."""
    torch.manual_seed(0)
    attn = WanAttention(dim=8, heads=2, dim_head=4, eps=1e-6, processor=WanAttnProcessor(), is_cross_attention=True)
    with torch.no_grad():
        for lin in (attn.to_q, attn.to_k, attn.to_v):
            lin.weight.copy_(torch.eye(8))
            lin.bias.zero_()
        attn.norm_q.weight.fill_(6.0)  # sharpen: logits of aligned q and k are 6*8/2 = 24
        attn.norm_k.weight.fill_(1.0)
    e = torch.eye(8)
    hidden = torch.zeros(F, H, W, 8)
    hidden[...] = e[5]  # elsewhere: a head-1 direction no key has -> uniform attention
    hidden[REGION_A] = e[0]
    hidden[REGION_B] = e[1]
    hidden = hidden.reshape(1, F * H * W, 8)  # frame-major, as Wan flattens the video
    text = torch.zeros(1, 16, 8)  # 4 real tokens, 12 padding rows (zeros, as WanPipeline pads)
    for t, axis in enumerate((0, 2, 1, 3)):  # token 0 -> e0, token 2 -> e1
        text[0, t] = e[axis]
    return attn, hidden, text


def _recorder(tokens, latent=(F, H, W), n_real=4, seq=16, heads=2):
    lay = Layout(steps=[0], blocks=[0], heads=heads, head_mean=False, n_heads=heads, tokens=tokens,
                 latent=latent, n_real=n_real, seq_len=seq)
    rec = Recorder(CaptureStore(lay, "cpu"))
    rec.begin_pass("cond", 0, 1.0, "transformer", None)
    return rec


def test_constructed_case_puts_each_token_in_its_region(tmp_path):
    attn, hidden, text = _constructed_attention()
    with torch.no_grad():
        expected_out = attn(hidden, encoder_hidden_states=text)
    rec = _recorder(tokens=[2, 0])  # captured in this order: token 2 first
    attn.set_processor(CaptureProcessor(rec, 0))
    with torch.no_grad():
        out = attn(hidden, encoder_hidden_states=text)
    # the model's output is untouched by the capture
    assert torch.equal(out, expected_out)

    maps = rec.store.maps[0, 0].float()  # [head, token, F, H, W]
    region_a = torch.zeros(F, H, W, dtype=torch.bool)
    region_a[REGION_A] = True
    region_b = torch.zeros(F, H, W, dtype=torch.bool)
    region_b[REGION_B] = True
    # head 0: token 0 (captured second) is attended exactly on region A, token 2 on region B
    assert torch.equal(maps[0, 1] > 0.5, region_a)
    assert torch.equal(maps[0, 0] > 0.5, region_b)
    assert maps[0, 1][region_a].min() > 0.99
    # elsewhere head 0 sees no aligned key: uniform over all 16 keys
    assert torch.allclose(maps[0, 1][~region_a & ~region_b], torch.tensor(1 / 16), atol=1e-3)
    # head 1 only ever sees orthogonal keys: uniform everywhere
    assert torch.allclose(maps[1], torch.tensor(1 / 16), atol=1e-3)
    # padding (12 keys) gets 12/16 where nothing is aligned, ~0 in the regions
    pad = rec.store.padding[0, 0, 0].float()
    assert pad[region_a].max() < 1e-3 and torch.allclose(pad[~region_a & ~region_b], torch.tensor(0.75), atol=1e-3)

    # the same through the bundle: written, reopened, selected by word position
    w = BundleWriter(tmp_path / "b", {
        "layout": rec.store.layout.to_json(),
        "tokens": [{"index": i, "id": i, "piece": f"▁t{i}", "word": f"t{i}", "word_index": i, "special": False}
                   for i in range(4)],
    })
    w.add_step({"index": 0, "timestep": 999.0, "sigma": 1.0, "expert": "transformer"},
               {"maps": rec.store.maps[0], "padding": rec.store.padding[0]})
    w.close()
    b = open_bundle(tmp_path / "b")
    assert np.array_equal(b.select("t0", step=0, block=0, head=0) > 0.5, region_a.numpy())
    assert np.array_equal(b.select("t2", step=0, block=0, head=0) > 0.5, region_b.numpy())


def test_processor_matches_full_softmax_with_random_qk():
    """real_token_probs (n+1 logits + logsumexp) == softmax over all L keys, bf16 q/k included."""
    from paik.capture.processor import real_token_probs

    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        q = (torch.randn(200, 3, 16, generator=g) * 3).to(dtype)
        k = torch.randn(64, 3, 16, generator=g).to(dtype)
        k[9:] = k[9]  # 9 real tokens, 55 identical padding keys
        probs, pad = real_token_probs(q, k, 9)
        ref = reference_probs(q.double(), k.double())
        assert (probs - ref[:, :9]).abs().max() < 1e-5
        assert (pad - ref[:, 9:].sum(1)).abs().max() < 1e-5
        assert ref[:, :9].max() > 0.5  # the case is not trivially uniform


# ---------------------------------------------------------------------------------------------
# Through the real pipeline: tiny Wan2.1, Wan2.2 A14B (two experts) and TI2V layouts.
# ---------------------------------------------------------------------------------------------

def _sharpen(pipe):
    """Random tiny weights attend almost uniformly; scale the key norm so maps are peaked and
    an error in indexing or normalization cannot hide in 1/512."""
    for name in ("transformer", "transformer_2"):
        t = getattr(pipe, name, None)
        if t is not None:
            for block in t.blocks:
                with torch.no_grad():
                    block.attn2.norm_k.weight.mul_(12.0)


def _record_qk(pipe):
    """Record (q, k) of every attn2 call with plain forward hooks, independent of the capture."""
    calls = []
    handles = []
    for name in ("transformer", "transformer_2"):
        t = getattr(pipe, name, None)
        if t is None:
            continue
        for b, block in enumerate(t.blocks):
            a = block.attn2
            cur = {}

            def hq(m, i, o, cur=cur):
                cur["q"] = o.detach().cpu()

            def hk(m, i, o, cur=cur, b=b, name=name, heads=a.heads):
                calls.append((name, b, cur["q"].unflatten(-1, (heads, -1))[0], o.detach().cpu().unflatten(
                    -1, (heads, -1))[0]))

            handles += [a.norm_q.register_forward_hook(hq), a.norm_k.register_forward_hook(hk)]
    return calls, handles


@pytest.fixture(scope="module", params=["tiny", "tiny-a14b", "tiny-ti2v"])
def captured(request, tmp_path_factory):
    model = request.param
    loaded = load_pipeline(model)
    pipe, info, _ = loaded
    _sharpen(pipe)
    calls, handles = _record_qk(pipe)
    out = tmp_path_factory.mktemp("bundle") / model
    size = 64
    try:
        generate(GenerateOptions(prompt=PROMPT, negative=NEGATIVE, out=str(out), steps=4, frames=9, height=size,
                                 width=size, capture_uncond=True, quiet=True), loaded=loaded)
    finally:
        for h in handles:
            h.remove()
    return model, info, open_bundle(out), calls


def test_maps_equal_fp32_reference_over_all_keys(captured):
    model, info, b, calls = captured
    lay = b.layout
    n_blocks = info.num_layers
    per_step = 2 * n_blocks  # cond then uncond, every block
    assert len(calls) == len(b.step_indices) * per_step
    worst = 0.0
    for si, step in enumerate(b.step_indices):
        arrays = b.step_arrays(step)
        for p, key, toks, n_real in (("cond", "maps", lay.tokens, lay.n_real),
                                     ("uncond", "maps_uncond", lay.uncond_tokens, lay.n_real_uncond)):
            for blk in range(n_blocks):
                expert, bi, q, k = calls[si * per_step + (0 if p == "cond" else n_blocks) + blk]
                assert bi == blk and expert == b.steps[si].expert
                ref = reference_probs(q.double(), k.double())  # [H, 512, S]
                assert ref.shape[1] == 512
                got = torch.from_numpy(np.asarray(arrays[key][blk], dtype=np.float32)).flatten(2)
                pad = torch.from_numpy(np.asarray(arrays[key.replace("maps", "padding")][blk], np.float32)).flatten(1)
                worst = max(worst, (got - ref[:, toks]).abs().max().item(), (pad - ref[:, n_real:].sum(1)).abs().max().item())
                assert ref[:, toks].max() > 0.2  # sharpened: a real test, not 1/512 everywhere
    assert worst <= 1e-3, worst


def test_real_tokens_and_padding_sum_to_one(captured):
    _, _, b, _ = captured
    for step in b.step_indices:
        a = b.step_arrays(step)
        for key in ("maps", "maps_uncond"):
            total = a[key].astype(np.float32).sum(2) + a[key.replace("maps", "padding")].astype(np.float32)
            assert np.abs(total - 1).max() < 3e-3


def test_token_table_and_layout_in_manifest(captured):
    model, info, b, _ = captured
    assert [t.piece for t in b.tokens] == ["▁a", "▁red", "▁circle", "▁and", "▁a", "▁kiss", "ing", "▁cat", "</s>"]
    assert [t.word for t in b.tokens][5:7] == ["kissing", "kissing"]
    assert b.layout.tokens == list(range(9)) and b.layout.n_real == 9
    assert [t.piece for t in b.uncond_tokens] == ["▁blurry", "▁dog", "</s>"] and b.layout.uncond_tokens == [0, 1, 2]
    assert b.layout.latent == info.latent_grid(9, 64, 64)
    assert len(b.step_indices) == 4 and b.status == "complete"
    s = b.step_arrays(0)
    assert s["preview"].dtype == np.uint8 and s["preview"].shape[-1] == 3
    # the phrase's map is the sum of its pieces
    m = b.select("kissing", step=1, block=0, head=1)
    parts = b.select(5, step=1, block=0, head=1) + b.select(6, step=1, block=0, head=1)
    assert np.allclose(m, parts, atol=1e-6)


def test_two_experts_recorded_per_step(captured):
    model, info, b, _ = captured
    experts = [s.expert for s in b.steps]
    if model != "tiny-a14b":
        assert set(experts) == {"transformer"}
        return
    boundary = info.boundary_ratio * 1000
    assert experts == ["transformer" if s.timestep >= boundary else "transformer_2" for s in b.steps]
    assert set(experts) == {"transformer", "transformer_2"}


def test_video_decodes(captured):
    import av

    _, _, b, _ = captured
    with av.open(str(b.video_path)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        assert float(s.average_rate) == 16.0
    assert len(frames) == 9 and frames[0].shape == (64, 64, 3)


def test_attention_backend_still_reaches_capture_processor():
    """set_attention_backend inside a capture reaches the capture processors (they subclass
    WanAttnProcessor), the maps are still captured, and detach keeps the user's choice."""
    pipe, info, _ = load_pipeline("tiny")
    originals = [b.attn2.processor for b in pipe.transformer.blocks]
    with capture_attention(pipe, blocks=[0, 1], num_steps=1) as cap, torch.inference_mode():
        pipe.transformer.set_attention_backend("native")
        for i in (0, 1):
            proc = pipe.transformer.blocks[i].attn2.processor
            assert isinstance(proc, CaptureProcessor) and proc._attention_backend is not None
        assert not isinstance(pipe.transformer.blocks[2].attn2.processor, CaptureProcessor)
        pipe(PROMPT, num_frames=5, height=32, width=32, num_inference_steps=1, guidance_scale=1.0,
             output_type="latent")
    assert cap.steps == [0] and float(cap.maps.float().sum()) > 0
    assert [b.attn2.processor for b in pipe.transformer.blocks] == originals
    assert all(p._attention_backend is not None for p in originals[:2])
    pipe.transformer.reset_attention_backend()


@pytest.mark.gpu
def test_gpu_bf16_maps_within_1e3_of_fp32_reference():
    """On CUDA with the bf16 model: logits in fp32 from bf16 q/k keep the maps within 1e-3."""
    from paik.capture.bench import build_transformer, check_against_reference

    dev = torch.device("cuda")
    model, text_dim = build_transformer("tiny", dev, torch.bfloat16)
    for block in model.blocks:
        with torch.no_grad():
            block.attn2.norm_k.weight.mul_(12.0)
    lay = Layout(steps=[0], blocks=list(range(len(model.blocks))), heads=2, head_mean=False, n_heads=2,
                 tokens=list(range(12)), latent=(5, 16, 16), n_real=12, seq_len=512)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 5, 32, 32, generator=g).to(dev, torch.bfloat16)
    ctx = torch.zeros(1, 512, text_dim)
    ctx[:, :12] = torch.randn(1, 12, text_dim, generator=g) * 4
    res = check_against_reference(model, lay, dev, latents, ctx.to(dev, torch.bfloat16), blocks=(0, 1, 2))
    assert res["max_abs_err"] <= 1e-3, res
    assert res["max_sum_err"] <= 2e-3, res
