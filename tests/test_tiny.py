"""The built-in tiny Wan models: tokenizer, deterministic weights, cache folder, full pipeline runs."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import torch

from paik.capture import tiny
from paik.capture.tiny import TINY_KINDS, build_tokenizer, ensure_tiny, load_tokenizer, tiny_components

PROMPT = "a red circle moves left"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private PAIK_CACHE shared by this module's tests, so each kind is built once."""
    root = tmp_path_factory.mktemp("paik-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAIK_CACHE", str(root))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield root


@pytest.fixture(scope="module")
def pipes(cache):
    """Loaded pipelines by kind, through the real ``WanPipeline.from_pretrained`` path."""
    from diffusers import WanPipeline

    loaded = {}

    def get(kind):
        if kind not in loaded:
            loaded[kind] = WanPipeline.from_pretrained(ensure_tiny(kind))
            loaded[kind].set_progress_bar_config(disable=True)
        return loaded[kind]

    return get


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _pieces(tokenizer, text):
    return tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids)


def test_tokenizer_specials_and_pieces():
    tok = load_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    assert 300 <= len(tok) <= 600
    assert _pieces(tok, "a red circle and a kissing cat") == [
        "▁a", "▁red", "▁circle", "▁and", "▁a", "▁kiss", "ing", "▁cat", "</s>",
    ]
    assert _pieces(tok, "") == ["</s>"]


def test_tokenizer_pads_like_wan_pipeline():
    # The exact call WanPipeline._get_t5_prompt_embeds makes.
    enc = load_tokenizer()(
        [PROMPT], padding="max_length", max_length=16, truncation=True,
        add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
    )
    n_real = len(PROMPT.split()) + 1  # every word is in the vocabulary, plus </s>
    assert enc.input_ids.shape == (1, 16)
    assert enc.attention_mask[0].tolist() == [1] * n_real + [0] * (16 - n_real)
    assert enc.input_ids[0, n_real - 1] == 1 and (enc.input_ids[0, n_real:] == 0).all()


def test_unknown_words_split_into_pieces():
    tok = load_tokenizer()
    pieces = _pieces(tok, "zebra")[:-1]
    assert len(pieces) > 1 and pieces[0].startswith("▁") and "".join(pieces) == "▁zebra"
    assert _pieces(tok, "Soccer balls!") == ["▁S", "o", "c", "c", "er", "▁ball", "s", "!", "</s>"]
    assert tok.unk_token_id not in tok("Any ASCII text, 123 (ok)?").input_ids


def test_shipped_tokenizer_is_what_build_tokenizer_makes(tmp_path):
    built = build_tokenizer(tmp_path)
    assert built.get_vocab() == load_tokenizer().get_vocab()
    shipped = json.loads((tiny.TOKENIZER_DIR / "tokenizer.json").read_text())
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"] == shipped["model"]
    for name in ("tokenizer_config.json", "tokenizer.json"):
        assert (tmp_path / name).read_bytes() == (tiny.TOKENIZER_DIR / name).read_bytes(), name


def test_components_are_deterministic_and_sized():
    a, b = tiny_components("a14b", seed=0), tiny_components("a14b", seed=0)
    for name in ("transformer", "transformer_2", "vae", "text_encoder"):
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
        assert {v.dtype for v in sa.values()} == {torch.float32}
    w = lambda c, n: c[n].blocks[0].attn2.to_q.weight  # noqa: E731
    assert not torch.equal(w(a, "transformer"), w(a, "transformer_2"))
    assert not torch.equal(w(a, "transformer"), w(tiny_components("t2v", seed=1), "transformer"))
    tr = a["transformer"]
    assert len(tr.blocks) == 3 and tr.blocks[0].attn2.heads == 2
    assert tr.config.text_dim == a["text_encoder"].config.d_model
    assert a["text_encoder"].config.vocab_size == len(a["tokenizer"])
    assert a["boundary_ratio"] == 0.875
    with pytest.raises(ValueError):
        tiny_components("i2v")


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_cached_folder_reloads_offline(kind, cache, no_network):
    from diffusers import WanPipeline
    from transformers import AutoTokenizer

    folder = ensure_tiny(kind)
    assert folder == cache / "models" / f"tiny-{kind}-{tiny.TINY_VERSION}"
    assert ensure_tiny(kind) == folder  # second call finds it
    pipe = WanPipeline.from_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder / "tokenizer").get_vocab() == load_tokenizer().get_vocab()
    assert (pipe.transformer_2 is not None) == (kind == "a14b")
    assert pipe.config.boundary_ratio == (0.875 if kind == "a14b" else None)
    assert pipe.config.expand_timesteps == (kind == "ti2v")
    assert pipe.vae_scale_factor_spatial == (16 if kind == "ti2v" else 8)
    assert pipe.transformer.config.in_channels == pipe.vae.config.z_dim == (48 if kind == "ti2v" else 16)


def test_ensure_tiny_loses_a_race_gracefully(monkeypatch, tmp_path):
    """Another process finishing first makes our rename fail; we keep its folder and clean up."""
    monkeypatch.setenv("PAIK_CACHE", str(tmp_path))
    real = tiny.tiny_components

    def other_process_wins(kind, seed=0):
        monkeypatch.setattr(tiny, "tiny_components", real)
        ensure_tiny(kind)  # completes the final folder while we are still building
        return real(kind, seed)

    monkeypatch.setattr(tiny, "tiny_components", other_process_wins)
    folder = ensure_tiny("t2v")
    assert (folder / "model_index.json").is_file()
    assert os.listdir(folder.parent) == [folder.name]  # no temporary folders left behind


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_pipeline_call(kind, pipes):
    pipe = pipes(kind)
    calls = {"transformer": 0, "transformer_2": 0}
    hooks = [
        getattr(pipe, name).register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
        for name in calls
        if getattr(pipe, name) is not None
    ]
    try:
        start = time.perf_counter()
        frames = pipe(
            PROMPT, num_frames=9, height=64, width=64,  # 64 is a multiple of 32 for ti2v too
            num_inference_steps=3, guidance_scale=5.0, output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).frames
        elapsed = time.perf_counter() - start
    finally:
        for hook in hooks:
            hook.remove()
    assert frames.shape == (1, 9, 64, 64, 3)
    assert frames.min() >= 0.0 and frames.max() <= 1.0
    assert elapsed < 30, f"the tiny {kind} pipeline took {elapsed:.1f}s"  # ~0.3 s on 2 CPU cores
    # 3 steps x (cond + uncond); with boundary 0.875 and shift 3 the A14B steps run at
    # t ~ 999 (high-noise expert) then ~ 857 and ~ 600 (low-noise expert).
    if kind == "a14b":
        assert calls == {"transformer": 2, "transformer_2": 4}
    else:
        assert calls == {"transformer": 6, "transformer_2": 0}
