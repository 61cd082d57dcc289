"""The library API: capture the exact cross-attention maps of your own diffusers Wan pipeline.

::

    import paik
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", torch_dtype=torch.bfloat16).to("cuda")
    with paik.capture_attention(pipe, tokens=["kiss"], steps="every:5", heads="mean", out="kiss.paik") as cap:
        video = pipe("a couple kissing in the rain", num_frames=33).frames[0]
    m = cap.select("kiss", step=-1)          # [F', H', W'] float32, mean over blocks and heads
    cap.maps                                 # [step, block, head, token, F', H', W'] float16, on the GPU

The choices are those of ``paik generate`` (``tokens`` words or phrases, ``steps``/``blocks``
index specs like ``all``, ``every:5``, ``0-9,29``, ``-1``; ``heads`` ``all`` or ``mean``;
``uncond`` the negative-prompt pass too) and so is the memory plan: a capture that does not fit
is refused with the choices that would make it fit, before anything is written to it.

How the capture learns what it needs:

- **the prompt**: from the pipeline call itself (``pipe.encode_prompt`` is wrapped while the
  block is open and tokenized with ``pipe.tokenizer``, exactly as WanPipeline does); or pass
  ``prompt=`` (it must then equal what the pipeline gets). With ``prompt_embeds`` and no
  prompt, tokens are counted from the embeddings (their zero padding) and named ``#0``, ``#1``...
- **steps and the token grid**: from the pipeline's ``cache_context`` (``num_inference_steps``)
  and the first forward's latent shape; or pass ``num_steps=`` and ``grid=(F', H', W')``. When
  everything is known up front the store is allocated (and the plan checked) as the capture is
  created; otherwise at the first forward, on the device that forward runs on (so
  ``enable_model_cpu_offload()`` works).
- **a bare** ``WanTransformer3DModel``: the same, with ``tokenizer=`` and ``prompt=`` (or
  ``n_tokens=``) for the token table. Each forward outside ``cache_context`` is the
  conditional pass of the next step; for classifier-free guidance wrap the calls in
  ``transformer.cache_context("cond"|"uncond", step_index=i, num_inference_steps=n)`` as
  WanPipeline does.

A capture attaches in one step on entering the ``with`` block and always detaches on leaving it,
leaving each ``attn2`` with its own processor object (a backend chosen inside the block with
``set_attention_backend`` is kept). Attaching a second capture to the same pipeline or
transformer is a :class:`~paik.errors.PaikError`; so is a second pipeline call inside one block.
With ``out=DIR`` a bundle (the format ``paik play`` reads) is written step by step as each step
finishes; the manifest records ``complete``, ``interrupted`` or ``failed`` when the block ends.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from paik.capture import compat
from paik.capture.layout import Layout
from paik import indices
from paik.capture.plan import MemoryPlan, estimate_working_bytes, memory_budget, plan_layout
from paik.capture.processor import BlockHook, attach, attached, detach
from paik.capture.store import CaptureStore, Recorder
from paik.capture.tokens import Token, TokenGroup, clean_prompt, split_token_list, token_table
from paik.errors import PaikError

Spec = "str | int | Sequence[int]"
_UNSET = object()


def capture_attention(model, tokens: str | Sequence[str] | None = None, *, steps: Spec = "all",
                      blocks: Spec = "all", heads: str = "all", uncond: bool = False,
                      out: str | Path | None = None, max_gb: float | None = None, overwrite: bool = False,
                      prompt: str | None = None, negative_prompt: str | None = None, tokenizer=None,
                      n_tokens: int | None = None, num_steps: int | None = None,
                      grid: tuple[int, int, int] | None = None, device=None, max_sequence_length: int = 512,
                      manifest: dict | None = None,
                      step_extras: Callable[["Capture", int], dict] | None = None,
                      buffers: int | None = None, shard: tuple[int, int] | None = None) -> "Capture":
    """Capture cross-attention maps while the ``with`` block runs the pipeline (see the module
    docstring). ``model``: a Wan pipeline (both experts of Wan2.2 A14B are captured) or a bare
    ``WanTransformer3DModel``. ``tokens``: words/phrases (``["kiss", "soccer ball", "eos"]`` or
    ``'kiss,"soccer ball"'``); None for every real token. ``max_gb``: refuse larger captures
    (default: what fits beside the model). ``manifest``: extra top-level manifest fields for the
    bundle; ``step_extras(cap, step)``: extra tensors written with each captured step.
    ``buffers``: with ``out``, keep only this many steps on the device (a ring reused once each
    step is copied to the bundle; read the maps back with ``open_bundle``); None keeps them all.

    ``shard=(rank, world)``: under diffusers' context parallelism (``transformer.enable_parallelism``,
    torch.distributed initialized; see :mod:`paik.capture.parallel`) each rank's cross-attention sees
    only its own positions: the capture stores just those, and with ``out`` every rank writes its
    own step files into the one bundle, which readers open as one capture. Every rank must open the
    capture (rank 0 prepares the folder; the others wait for it), and :meth:`Capture.select` is
    then collective: every rank calls it and gets the whole map."""
    return Capture(model, tokens, steps=steps, blocks=blocks, heads=heads, uncond=uncond, out=out, max_gb=max_gb,
                   overwrite=overwrite, prompt=prompt, negative_prompt=negative_prompt, tokenizer=tokenizer,
                   n_tokens=n_tokens, num_steps=num_steps, grid=grid, device=device,
                   max_sequence_length=max_sequence_length, manifest=manifest, step_extras=step_extras,
                   buffers=buffers, shard=shard)


def _spec(value, name: str) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, str):
        return value
    try:
        return ",".join(str(int(v)) for v in value)
    except (TypeError, ValueError):
        raise PaikError(f"{name}={value!r}: expected 'all', 'every:N', '0-9', an index or a list of indices") from None


def _experts(model) -> tuple[object | None, list[tuple[str, object]]]:
    """(pipeline or None, [(name, transformer), ...])."""
    names = [n for n in ("transformer", "transformer_2") if getattr(model, n, None) is not None]
    if names and not hasattr(model, "blocks"):
        return model, [(n, getattr(model, n)) for n in names]
    blocks = getattr(model, "blocks", None)
    if blocks is not None and len(blocks) and all(hasattr(b, "attn2") for b in blocks):
        return None, [("transformer", model)]
    raise PaikError(f"capture_attention: {type(model).__name__} is neither a Wan pipeline nor a "
                    "WanTransformer3DModel (no transformer with blocks[i].attn2)")


class Cancelled(Exception):
    """Raised inside a capture block to stop a run on purpose (the live engine's cancel): the
    bundle is closed as "interrupted" with its finished steps, like Ctrl-C."""


class Capture:
    """A capture in progress or finished: what :func:`capture_attention` returns.

    ``store`` (:class:`CaptureStore`: ``maps`` [step, block, head, token, F', H', W'] float16
    and ``padding``), ``layout``, ``tokens`` (the prompt's token table), ``groups`` (the words
    asked for), ``steps`` (finished captured steps), ``path`` (the bundle, with ``out``) and
    :meth:`select`. ``hooks``: block hooks given to every capture processor (see
    :mod:`paik.capture.processor`)."""

    def __init__(self, model, tokens=None, *, steps="all", blocks="all", heads="all", uncond=False, out=None,
                 max_gb=None, overwrite=False, prompt=None, negative_prompt=None, tokenizer=None, n_tokens=None,
                 num_steps=None, grid=None, device=None, max_sequence_length=512, manifest=None, step_extras=None,
                 buffers=None, shard=None):
        compat.check()
        self.shard = None if shard is None else (int(shard[0]), int(shard[1]))
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise PaikError(f"shard={shard!r}: expected (rank, world) with 0 <= rank < world")
        self.pipe, self._experts = _experts(model)
        self._check_free()
        if isinstance(tokens, str):
            tokens = split_token_list(tokens)
        self.queries: list[str] = [str(t) for t in (tokens or [])]
        self._steps_spec, self._blocks_spec = _spec(steps, "steps"), _spec(blocks, "blocks")
        heads = str(heads).strip().lower()
        if heads not in ("all", "mean"):
            raise PaikError(f"heads={heads!r}: expected 'all' or 'mean'")
        self._heads = heads
        self.uncond = bool(uncond)
        self.path = Path(out) if out is not None else None
        self._max_gb, self._overwrite = max_gb, overwrite
        self._tokenizer = tokenizer if tokenizer is not None else getattr(self.pipe, "tokenizer", None)
        self._prompt, self._negative = prompt, negative_prompt
        self._n_tokens = n_tokens
        self._num_steps, self._grid = num_steps, (tuple(int(x) for x in grid) if grid is not None else None)
        self._device = device
        self._msl = int(max_sequence_length)
        self._extra_manifest = dict(manifest or {})
        self._step_extras = step_extras
        if buffers is not None and (int(buffers) < 1 or out is None):
            raise PaikError("buffers=N needs N >= 1 and out=DIR: the steps that leave the device go to the bundle")
        self._buffers = None if buffers is None else int(buffers)
        self.hooks: list[BlockHook] = []

        config = self._experts[0][1].config
        self._n_layers, self._n_heads = int(config.num_layers), int(config.num_attention_heads)
        self._block_list = indices.parse(self._blocks_spec, self._n_layers, "--blocks")
        if self._num_steps is not None and self._num_steps < 1:
            raise PaikError("num_steps must be at least 1")
        if self._num_steps is not None:
            indices.parse(self._steps_spec, self._num_steps, "--capture-steps")

        self.store: CaptureStore | None = None
        self.recorder: Recorder | None = None
        self.plan: MemoryPlan | None = None
        self.layout: Layout | None = None
        self.tokens: list[Token] = []
        self.uncond_tokens: list[Token] = []
        self.groups: list[TokenGroup] = []
        self.manifest: dict | None = None
        self.writer = None
        self.steps: list[int] = []  # finished captured steps, in order
        self.step_info: list[dict] = []
        self.status = "open"
        self._saved: dict = {}
        self._encode_saved = _UNSET
        self._entered = self._calls = 0
        self._first_forward = True
        self._passes: dict[int, int] = {}
        self._timestep: dict[int, torch.Tensor] = {}
        self._pending: int | None = None
        self._pass_open = False
        self._cfg: bool | None = None
        self._final: dict = {}
        if self._known():
            self._prepare(self._num_steps, self._grid, self._device or self._default_device())

    # -- the with block ------------------------------------------------------------------------
    def __enter__(self) -> "Capture":
        if self._entered:
            raise PaikError("this capture was already used; call capture_attention again for another run")
        self._check_free()
        self._entered = 1
        try:
            for name, t in self._experts:
                self._saved[name] = attach(t, self.recorder, self, name, self._block_list, self.hooks)
            if self.pipe is not None:
                self._wrap_encode_prompt()
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None and self._pending is not None and not self._pass_open:
                self._flush(self._pending)
        finally:
            self._detach()
            if exc_type is None:
                self.status = "complete"
            elif issubclass(exc_type, (KeyboardInterrupt, Cancelled)):
                self.status = "interrupted"
            else:
                self.status = "failed"
                self._final.setdefault("error", f"{exc_type.__name__}: {exc}")
            if self.writer is not None:
                try:
                    self.writer.close(self.status, **self._final)
                except PaikError:
                    if exc_type is None:
                        raise  # the run itself went well: the write failure is the news
        return False

    def _detach(self):
        for name, t in self._experts:
            if name in self._saved:
                detach(t, self._saved.pop(name))
        if self._encode_saved is not _UNSET:
            if self._encode_saved is None:
                self.pipe.__dict__.pop("encode_prompt", None)
            else:
                self.pipe.encode_prompt = self._encode_saved
            self._encode_saved = _UNSET

    def _check_free(self):
        for name, t in self._experts:
            if attached(t):
                raise PaikError(f"a capture is already attached to this {'pipeline' if self.pipe else 'transformer'} "
                                f"({name}); captures do not nest: close the open capture_attention block first")

    # -- the manifest's extra fields -----------------------------------------------------------
    def set_result(self, **fields) -> None:
        """Top-level manifest fields recorded when the block ends (e.g. the video written)."""
        self._final.update(fields)

    def save_video(self, frames, fps: float = 16.0) -> Path:
        """Write the pipeline's video into the bundle as ``video.mp4`` (``paik play`` shows the
        maps over it). ``frames``: what ``pipe(..., output_type="np").frames[0]`` returns,
        [F, H, W, 3] in [0, 1] (or uint8). Call it inside the ``with`` block."""
        if self.writer is None:
            raise PaikError("save_video writes into the bundle: pass out=DIR to capture_attention")
        if self.status != "open":
            raise PaikError("save_video must be called inside the capture_attention block (the bundle is closed)")
        from paik.video import write_mp4

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise PaikError(f"save_video: expected frames [F, H, W, 3], got shape {frames.shape}")
        write_mp4(self.path / "video.mp4", frames, fps)
        f, h, w, _ = frames.shape
        self._final["video"] = {"file": "video.mp4", "fps": fps, "frames": f, "width": w, "height": h, "codec": "h264"}
        self._final["settings"] = {**self.manifest["settings"], "frames": f, "height": h, "width": w, "fps": fps}
        return self.path / "video.mp4"

    # -- what is known when --------------------------------------------------------------------
    def _known(self) -> bool:
        prompt_known = (self._prompt is not None and self._tokenizer is not None) or self._n_tokens is not None
        neg_known = not self.uncond or (self._negative is not None and self._tokenizer is not None)
        return prompt_known and neg_known and self._num_steps is not None and self._grid is not None

    def _default_device(self):
        if self.pipe is not None:
            return self.pipe._execution_device
        return next(self._experts[0][1].parameters()).device

    def _tables(self, encoder_hidden_states=None):
        if self._prompt is not None:
            if self._tokenizer is None:
                raise PaikError("capture_attention on a bare transformer: pass tokenizer= with prompt= "
                                "(or n_tokens= to name tokens #0, #1, ...)")
            if not str(self._prompt).strip():
                raise PaikError("the prompt is empty")
            table = token_table(self._tokenizer, clean_prompt(self._prompt), self._msl)
        else:
            n = self._n_tokens
            if n is None:
                if encoder_hidden_states is None:
                    raise PaikError("capture_attention: the prompt is unknown; pass prompt= (or n_tokens=)")
                rows = encoder_hidden_states[0].abs().sum(-1).ne(0).nonzero()
                n = int(rows.max()) + 1 if len(rows) else 0
            if self.queries and any(not q.strip().startswith("#") for q in self.queries):
                raise PaikError("capture_attention: words can only be chosen when the prompt is known; "
                                "pass prompt= (and tokenizer= for a bare transformer), or choose pieces as #N")
            table = [Token(i, -1, f"#{i}", f"#{i}", i, False) for i in range(n)]
        neg = []
        if self.uncond:
            if self._negative is None or self._tokenizer is None:
                raise PaikError("capture_attention(uncond=True) on a bare transformer needs negative_prompt= and "
                                "tokenizer=")
            neg = token_table(self._tokenizer, clean_prompt(self._negative or ""), self._msl)
        return table, neg

    def _prepare(self, n_steps: int, grid, device, encoder_hidden_states=None) -> None:
        """Plan the layout, check it fits, allocate the store and open the bundle."""
        table, neg = self._tables(encoder_hidden_states)
        if n_steps is None:
            raise PaikError("capture_attention: the number of denoising steps is unknown (the transformer was called "
                            "outside cache_context); pass num_steps=")
        layout, groups = plan_layout(table, self.queries, steps=self._steps_spec, blocks=self._blocks_spec,
                                     heads=self._heads, n_steps=n_steps, n_layers=self._n_layers,
                                     n_heads=self._n_heads, latent=grid, seq_len=self._msl, neg_table=neg,
                                     uncond=self.uncond)
        if self.shard is not None:
            from paik.capture.layout import equal_shards

            world = self.shard[1]
            if layout.positions % world:
                raise PaikError(f"context parallelism splits the {layout.positions:,} video positions "
                                f"({' x '.join(map(str, grid))}) evenly: {world} processes do not divide them; "
                                "choose another --parallel or video size")
            layout.shards = equal_shards(layout.positions, world)
        device = torch.device(device)
        working = 0
        if device.type == "cuda" and self._max_gb is None:
            c = self._experts[0][1].config
            spatial = int(getattr(self.pipe, "vae_scale_factor_spatial", 8))
            h, w = grid[1] * c.patch_size[1] * spatial, grid[2] * c.patch_size[2] * spatial
            working = estimate_working_bytes(layout.positions, c.num_attention_heads * c.attention_head_dim,
                                             c.ffn_dim, h, w)
        self.plan = MemoryPlan(layout, memory_budget(device, self._max_gb, working), str(device), self._buffers)
        self.plan.check()
        store = CaptureStore(layout, device, self._buffers, None if self.shard is None else self.shard[0])
        self.layout, self.tokens, self.uncond_tokens, self.groups = layout, table, neg, groups
        self.store, self.recorder = store, Recorder(store, capture_uncond=self.uncond, n_real_uncond=len(neg) or None)
        for name, t in self._experts:
            for i in self._block_list:
                proc = t.blocks[i].attn2.processor
                if hasattr(proc, "recorder"):
                    proc.recorder = self.recorder
        self.manifest = self._manifest(n_steps, device)
        if self.path is not None and self.shard is not None:
            from paik.capture.parallel import open_rank_writer

            self.writer = open_rank_writer(self.path, self.manifest, self.shard, self._overwrite)
        elif self.path is not None:
            from paik.capture.writer import BundleWriter

            self.writer = BundleWriter(self.path, self.manifest, overwrite=self._overwrite)
            self.recorder.wait_check = self.writer.check_waiting

    def _manifest(self, n_steps: int, device) -> dict:
        extra = dict(self._extra_manifest)
        settings = {"steps": n_steps, "capture_steps": self._steps_spec, "capture_blocks": self._blocks_spec,
                    "heads": self._heads, "tokens": self.queries, "capture_uncond": self.uncond,
                    "max_sequence_length": self._msl, **extra.pop("settings", {})}
        if self.pipe is not None:
            from paik.capture.models import describe

            name = str(getattr(self.pipe, "name_or_path", None) or type(self.pipe).__name__)
            model = describe(self.pipe, name, name).to_json(self.pipe)
        else:
            t = self._experts[0][1]
            model = {"class": type(t).__name__, "transformer_config": _jsonable(dict(t.config))}
        prompt = self._prompt if self._prompt is not None else ""
        return {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "prompt": prompt, "prompt_clean": clean_prompt(prompt) if prompt else "",
            "negative_prompt": self._negative or "", "model": model, "settings": settings,
            "tokens": [t.to_json() for t in self.tokens],
            "negative_tokens": [t.to_json() for t in self.uncond_tokens],
            "groups": [g.to_json() for g in self.groups],
            "layout": self.layout.to_json(), "planned_steps": self.layout.steps,
            "versions": versions(device), **extra,
        }

    # -- the pipeline call ---------------------------------------------------------------------
    def _wrap_encode_prompt(self):
        pipe = self.pipe
        self._encode_saved = pipe.__dict__.get("encode_prompt")
        original = pipe.encode_prompt

        def encode_prompt(*args, **kwargs):
            self._seen_call(kwargs.get("prompt", args[0] if args else None),
                            kwargs.get("negative_prompt", args[1] if len(args) > 1 else None),
                            kwargs.get("do_classifier_free_guidance", args[2] if len(args) > 2 else True),
                            kwargs.get("max_sequence_length", self._msl))
            return original(*args, **kwargs)

        pipe.encode_prompt = encode_prompt  # an instance attribute: shadows the method until detach

    def _seen_call(self, prompt, negative, cfg, msl):
        self._calls += 1
        if self._calls > 1:
            raise PaikError("one pipeline call per capture: open a new capture_attention block for each call")
        prompt = prompt[0] if isinstance(prompt, (list, tuple)) and prompt else prompt
        negative = negative[0] if isinstance(negative, (list, tuple)) and negative else negative
        self._cfg = bool(cfg)
        if self.uncond and not self._cfg:
            raise PaikError("capturing the unconditional pass needs classifier-free guidance (guidance_scale above 1)")
        if self.store is not None:  # planned up front: the call must be the one planned for
            if prompt is not None and self._prompt is not None and clean_prompt(prompt) != clean_prompt(self._prompt):
                raise PaikError(f"capture_attention(prompt={self._prompt!r}) differs from the prompt passed to the "
                                f"pipeline ({prompt!r}); leave prompt= out to take the pipeline's")
            if self.uncond and self._negative is not None and clean_prompt(negative or "") != clean_prompt(
                    self._negative):
                raise PaikError(f"capture_attention(negative_prompt={self._negative!r}) differs from the pipeline's "
                                f"negative prompt ({negative!r})")
            if int(msl) != self._msl:
                raise PaikError(f"max_sequence_length {msl} differs from capture_attention's {self._msl}")
            return
        if prompt is not None:
            self._prompt = prompt
        if self._cfg:
            self._negative = negative or ""
        self._msl = int(msl)

    def before_forward(self, module, expert, ctx, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if self.store is None:
            enc = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
            n_steps = self._num_steps or (ctx.num_inference_steps if ctx is not None else None)
            if n_steps is None and self.pipe is not None:
                n_steps = len(self.pipe.scheduler.timesteps)
            self._prepare(n_steps, self._grid or _grid(module, hidden), self._device or hidden.device, enc)
        elif self._first_forward and self._grid is not None and _grid(module, hidden) != self._grid:
            raise PaikError(f"the video's token grid is {_grid(module, hidden)}, but the capture was planned for "
                            f"{self._grid} (F', H', W'); pass the grid the pipeline will use, or none")
        self._first_forward = False
        rec = self.recorder
        name = ctx.name if ctx is not None else None
        step = ctx.step_index if ctx is not None else None
        if self._pending is not None and (step != self._pending if step is not None else (name or "cond") == "cond"):
            # a later step begins (without a step index, every cond pass does): the pending one is
            # finished. Flushed before begin_pass, while the recorder still holds its outputs.
            self._flush(self._pending)
        rec.begin_pass(name, step, ctx.sigma if ctx is not None else None, expert, hidden)
        if rec.step not in self._passes:
            self._passes[rec.step] = 0
            self._timestep[rec.step] = timestep
        self._pending, self._pass_open = rec.step, True
        self._no_context = ctx is None

    def after_forward(self, output):
        rec = self.recorder
        step = rec.step
        rec.end_pass(output)
        self._pass_open = False
        self._passes[step] += 1
        expected = 1 if self._no_context else (1 + bool(self._cfg)) if self._cfg is not None else None
        if expected is not None and self._passes[step] >= expected:
            self._flush(step)

    def _flush(self, step: int) -> None:
        """A step is finished: record it and hand it to the bundle writer."""
        self._pending = None
        st = self.store
        if step not in st.step_slot or step in self.steps:
            return
        t = self._timestep.pop(step, None)
        if isinstance(t, torch.Tensor) and t.is_cuda and self.writer is not None:
            # float() here would synchronize, draining the GPU queue every step: the writer reads
            # this pinned copy once the step's event has passed (paik.capture.writer)
            host = torch.empty((), dtype=t.dtype, pin_memory=True)
            host.copy_(t.reshape(-1)[0], non_blocking=True)
            t = host
        elif isinstance(t, torch.Tensor):
            t = float(t.reshape(-1)[0])
        info = {"index": step, "timestep": t if isinstance(t, torch.Tensor) else
                (float(t) if t is not None else None), "sigma": self.recorder.sigma,
                "expert": self.recorder.experts.get(step, "transformer")}
        bends = getattr(self.recorder, "bends", None)
        if bends:  # the bends the model used at this step (paik.capture.bend)
            info["bends"] = bends.lines_at(step)
        self.steps.append(step)
        self.step_info.append(info)
        if self.writer is not None:
            slot = st.step_slot[step]
            tensors = {"maps": st.maps[slot], "padding": st.padding[slot]}
            if st.maps_uncond is not None:
                tensors["maps_uncond"] = st.maps_uncond[slot]
                tensors["padding_uncond"] = st.padding_uncond[slot]
            if self._step_extras is not None:
                tensors.update(self._step_extras(self, step) or {})
            self.writer.add_step(info, tensors, (lambda: st.release(step)) if st.ring else None)

    # -- reading -------------------------------------------------------------------------------
    @property
    def maps(self) -> torch.Tensor:
        """[step, block, head, token, F', H', W'] float16 on the capture's device."""
        self._need_store()
        return self.store.maps

    @property
    def padding(self) -> torch.Tensor:
        self._need_store()
        return self.store.padding

    def _need_store(self):
        if self.store is None:
            raise PaikError("nothing captured yet: run the pipeline inside the capture_attention block")

    def open_bundle(self):
        """The written bundle (with ``out``), opened for reading."""
        if self.path is None:
            raise PaikError("this capture was not written: pass out=DIR to capture_attention")
        from paik.capture.bundle import open_bundle

        return open_bundle(self.path)

    def resolve(self, token, uncond: bool = False) -> list[int]:
        """Positions on the captured token axis for a word, phrase, ``#piece`` or prompt index."""
        from paik.capture.bundle import Bundle

        self._need_store()
        return Bundle.resolve(self, token, uncond)  # the bundle's rules, on this capture's tables

    def select(self, token, step=None, block=None, head=None, reduce: str = "mean", uncond: bool = False
               ) -> np.ndarray:
        """One map, [F', H', W'] float32, exactly as :meth:`paik.capture.bundle.Bundle.select`:
        ``token`` a word or phrase (pieces summed), ``#N``, an index or ``"padding"``; ``step``,
        ``block``, ``head`` an index (model indices; -1 for the last), a list, or None for all
        finished ones, reduced with ``reduce`` ("mean" or "max")."""
        self._need_store()
        if self.store.ring:
            raise PaikError(f"this capture keeps only {self.store.slots} step buffers on the device; read its maps "
                            "with open_bundle().select(...), or capture with buffers=None")
        if reduce not in ("mean", "max"):
            raise PaikError(f"reduce must be 'mean' or 'max', not {reduce!r}")
        lay, st = self.layout, self.store
        steps = _pick("step", step, sorted(self.steps), self.manifest["settings"]["steps"])
        blocks = [lay.blocks.index(b) for b in _pick("block", block, lay.blocks, self._n_layers)]
        if lay.head_mean:
            if head not in (None, "mean"):
                raise PaikError("this capture stores the mean over heads (heads='mean'); use head=None")
            heads = [0]
        else:
            heads = _pick("head", head, list(range(lay.heads)), lay.heads)
        pad = isinstance(token, str) and token.strip().lower() in ("padding", "<pad>")
        src = (st.padding_uncond if pad else st.maps_uncond) if uncond else (st.padding if pad else st.maps)
        if src is None:
            raise PaikError("this capture has no unconditional maps (capture with uncond=True)")
        ix = lambda v: torch.tensor(v, device=st.device)  # noqa: E731
        a = src.index_select(0, ix([st.step_slot[s] for s in steps])).index_select(1, ix(blocks))
        a = a.index_select(2, ix(heads))
        if not pad:  # sum the phrase's pieces in float32, as the bundle does
            a = a.index_select(3, ix(self.resolve(token, uncond))).float().sum(3)
        a = a.float().reshape(-1, st.positions)
        a = a.amax(0) if reduce == "max" else a.mean(0)
        if st.shard is not None:  # mean and max are per position: reduce here, gather the positions
            from paik.capture.parallel import gather_positions

            a = gather_positions(a, self.shard[1])
        return a.reshape(lay.latent).cpu().numpy()


def _pick(name: str, value, available: list[int], total: int) -> list[int]:
    """Indices asked for, checked against what is available; negative ones count from the
    model's end (step -1 is the last denoising step, block -1 the last block)."""
    return indices.pick(value, available, name, total=total, where="this capture")


def _grid(module, hidden) -> tuple[int, int, int]:
    """F', H', W' of the transformer's token grid for latents [B, C, F, H, W]."""
    p = module.config.patch_size
    f, h, w = hidden.shape[-3:]
    return f // p[0], h // p[1], w // p[2]


def _jsonable(x):
    from paik.capture.models import _jsonable as j

    return j(x)


def versions(device) -> dict:
    """Versions of everything that shaped a capture, for its manifest."""
    import diffusers
    import transformers

    from paik import __version__

    v = {"paik": __version__, "python": platform.python_version(), "torch": torch.__version__,
         "diffusers": diffusers.__version__, "transformers": transformers.__version__, "numpy": np.__version__}
    if str(device).startswith("cuda"):
        v["cuda"] = torch.version.cuda
        v["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return v


__all__ = ["Capture", "capture_attention", "versions"]
