"""Paik's built-in ``tiny`` Wan models.

The real diffusers/transformers classes (``WanTransformer3DModel``, ``AutoencoderKLWan``,
``UMT5EncoderModel``, ``UniPCMultistepScheduler``) at toy sizes, with weights drawn from a fixed
seed and a small umT5-like tokenizer shipped in ``capture/assets/tiny-tokenizer``. They exercise
exactly the code paths of the real checkpoints (``WanPipeline.from_pretrained`` on a folder,
``attn2`` cross-attention, CFG, the A14B two-expert switch, the TI2V 16x VAE) offline on a
small CPU, so they serve the tests and are the default model until a trained one exists.
Their videos are noise-like: the weights are random.

Kinds (:data:`TINY_KINDS`):

- ``t2v``:  Wan2.1-T2V layout: VAE 8x spatial / 4x temporal, z_dim 16, one transformer.
- ``a14b``: Wan2.2-T2V-A14B layout: as t2v plus ``transformer_2`` (low-noise expert) and
  ``boundary_ratio=0.875``.
- ``ti2v``: Wan2.2-TI2V-5B layout: residual VAE with z_dim 48, pixel patchify 2 and 16x spatial
  compression, ``expand_timesteps=True``; height/width must be multiples of 32.

Regenerate the shipped tokenizer with ``python -m paik.capture.tiny`` (only needed when the
vocabulary below changes; then bump :data:`TINY_VERSION` so cached pipelines are rebuilt).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from paik import resources

TINY_KINDS = ("t2v", "a14b", "ti2v")
# Part of the cache folder name: bump it whenever configs, seeds or the vocabulary change, so a
# stale cached pipeline is never picked up.
TINY_VERSION = "v1"
TOKENIZER_DIR = resources.assets("tiny-tokenizer")
TEXT_DIM = 32  # d_model of the tiny umT5 = text_dim of the tiny transformers

# Whole words, roughly most common first (earlier words get slightly higher scores).
_WORDS = """
a an the and or of in on at to with from by for into onto over under through near behind
above below around between across along toward away is are was be it its this that these
those his her their he she they we you i one two three four five six seven eight nine ten
many some all each other very more most no not only just then while as like so
slowly quickly fast slow gently suddenly together alone
red blue green yellow orange purple pink black white gray grey brown gold silver violet
cyan magenta colorful dark light bright pale neon
circle square triangle star line lines dot dots ball cube sphere box heart ring spiral
wave waves grid shape shapes point points cross rectangle oval cone pyramid
moves move moving bounces bounce spins spin rotates rotate turns turn falls fall rises rise
flies fly runs run walks walk jumps jump dances dance swims swim rolls roll floats float
grows grow shrinks shrink flows flow glows glow drifts drift slides slide shakes shake
explodes melts opens closes left right up down forward backward back across
person people man woman men women girl boy child children baby face faces hand hands eye
eyes head hair body lips mouth smile friends couple family crowd dancer player players
cat cats dog dogs bird birds fish horse cow monkey bear lion tiger rabbit duck mouse
kiss hug play game soccer football basketball field stadium goal team match
beach city night day sun moon sky sea ocean water river lake forest tree trees flower
flowers grass mountain mountains hill snow rain fire smoke cloud clouds wind storm
street road car cars train boat ship plane house home room window door wall floor table
chair bed kitchen garden park bridge tower building buildings lamp
shadow shadows sunset sunrise morning evening space planet earth stars galaxy
music song video film movie scene shot camera view close wide portrait background
big small large tiny little tall short long old young new happy sad beautiful soft hard
hot cold wet dry empty full round flat smooth rough clear blurry sharp deep high low
time world life love art color colors pattern texture noise glass metal stone wood paper
""".split()
# Word-internal pieces (no "▁"): let unknown words split like umT5 does ("kissing" ->
# "▁kiss" "ing"). Single letters are added separately.
_SUFFIXES = "ing ed es er ers est ly ness ful y en ion tion ment able al ic ous".split()
_PUNCT = list(".,!?;:'\"-()/&%+*=#@[]")


def _vocab() -> list[tuple[str, float]]:
    """(piece, log-prob score) in id order: <pad>=0, </s>=1, <unk>=2 as in umT5.

    A split has one word-initial piece (<= -4) plus word-internal ones (<= -8), so it always
    scores below any single piece (>= -9.9): a whole word in the vocabulary is never split,
    and known words and suffixes beat spelling out letters."""
    vocab: dict[str, float] = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, "▁": -4.0}
    for rank, word in enumerate(_WORDS):
        vocab.setdefault("▁" + word, -5.0 - 2.0 * rank / len(_WORDS))  # -5 .. -7
    for piece in _SUFFIXES:
        vocab.setdefault(piece, -8.0)
    # Letters, digits and punctuation, word-initial and word-internal, so nothing typed in
    # ASCII turns into <unk>; uppercase is rarer, as in a cased sentencepiece model.
    for chars, score in (
        ("abcdefghijklmnopqrstuvwxyz", -9.0),
        ("0123456789", -9.5),
        ("ABCDEFGHIJKLMNOPQRSTUVWXYZ", -9.8),
        (_PUNCT, -9.9),
    ):
        for c in chars:
            vocab.setdefault("▁" + c, score)
            vocab.setdefault(c, score)
    return list(vocab.items())


def build_tokenizer(save_dir: str | os.PathLike | None = None):
    """Build the tiny umT5-like tokenizer (a tokenizers-backed Unigram ``T5Tokenizer``).

    Like umT5: word-initial pieces carry "▁", ``</s>`` (id 1) is appended, ``<pad>`` is id 0
    and ``<unk>`` id 2; unlike umT5 there are no ``<extra_id_*>`` sentinels (Wan never uses
    them) and no normalizer (transformers rebuilds T5Tokenizer from the vocabulary on load and
    would drop any normalizer that is not sentencepiece's precompiled charsmap). Saved with
    ``save_pretrained`` into ``save_dir`` when given."""
    from transformers import T5Tokenizer

    # model_max_length 512 = Wan's max_sequence_length; the default is effectively infinite.
    tokenizer = T5Tokenizer(vocab=_vocab(), extra_ids=0, model_max_length=512)
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
        # transformers 4.x expects a dict here and fails on the empty list 5.x writes.
        config_path = Path(save_dir) / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("extra_special_tokens") == []:
            del config["extra_special_tokens"]
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return tokenizer


def load_tokenizer():
    """The shipped tokenizer, through the same AutoTokenizer path a real Wan folder takes."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def _check_kind(kind: str) -> None:
    if kind not in TINY_KINDS:
        raise ValueError(f"unknown tiny kind {kind!r}; expected one of {TINY_KINDS}")


def _transformer(z_dim: int, heads: int = 2):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=12,
        in_channels=z_dim,
        out_channels=z_dim,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=3,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        # The real value: RoPE tables are not saved, and with diffusers' test value (32) any
        # latent grid over 32 patches per axis (e.g. 480x832) fails to reshape.
        rope_max_seq_len=1024,
    )


def tiny_components(kind: str = "t2v", seed: int = 0, heads: int = 2) -> dict:
    """Keyword arguments for ``diffusers.WanPipeline(**...)``, float32, on the CPU.

    ``heads``: attention heads of the transformer(s) (head size stays 12); the built-in models have
    2; tests of context parallelism over 3 processes build a folder with 3 (Ulysses splits heads).

    Each model is initialised right after ``torch.manual_seed`` (``transformer_2`` with
    ``seed + 1`` so the two experts differ) inside a forked RNG, so the weights depend on
    ``seed`` only and the caller's global RNG state is left untouched."""
    _check_kind(kind)
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = load_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "ti2v":
            # Wan2.2 VAE: pixels are patchified 2x2 (3 -> 12 channels), the residual encoder
            # downsamples 8x more, hence scale_factor_spatial=16, which WanPipeline reads to
            # size latents and to require height/width multiples of 16*2.
            z_dim = 48
            vae = AutoencoderKLWan(
                base_dim=3, z_dim=z_dim, in_channels=12, out_channels=12, is_residual=True,
                patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
                # The defaults hold 16 values; WanPipeline reshapes them to z_dim.
                latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim,
            )
        else:
            z_dim = 16
            vae = AutoencoderKLWan(
                base_dim=3, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                temperal_downsample=[False, True, True],
            )

        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2,
                num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", dropout_rate=0.0,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        )

        torch.manual_seed(seed)
        transformer = _transformer(z_dim, heads)
        components = {}
        if kind == "a14b":
            torch.manual_seed(seed + 1)
            components = {"transformer_2": _transformer(z_dim, heads), "boundary_ratio": 0.875}
        elif kind == "ti2v":
            components = {"expand_timesteps": True}

    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    for model in (vae, text_encoder, transformer, components.get("transformer_2")):
        if model is not None:
            model.eval()
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        **components,
    }


def cache_dir() -> Path:
    """Paik's cache root: ``$PAIK_CACHE`` if set, else ``~/.cache/paik``."""
    env = os.environ.get("PAIK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "paik"


def tiny_path(kind: str = "t2v") -> Path:
    """Where :func:`ensure_tiny` keeps a kind: ``<cache>/models/tiny-{kind}-{TINY_VERSION}``."""
    _check_kind(kind)
    return cache_dir() / "models" / f"tiny-{kind}-{TINY_VERSION}"


def ensure_tiny(kind: str = "t2v") -> Path:
    """Save ``WanPipeline(**tiny_components(kind))`` into the cache unless present; return its
    folder, to be loaded with the ordinary ``WanPipeline.from_pretrained(folder)``.

    The pipeline is written to a temporary sibling folder and renamed into place, so the final
    folder is either absent or complete; when two processes race, the loser's rename fails on
    the now non-empty target and it keeps the winner's identical copy."""
    final = tiny_path(kind)
    if (final / "model_index.json").is_file():
        return final
    from diffusers import WanPipeline

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the renamed folder should not be
        WanPipeline(**tiny_components(kind)).save_pretrained(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


if __name__ == "__main__":
    build_tokenizer(TOKENIZER_DIR)
    print(f"wrote {TOKENIZER_DIR}")
