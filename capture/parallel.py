"""Context-parallel capture: one generation split across N processes by video position, with
diffusers' own context parallelism (``transformer.enable_parallelism(ContextParallelConfig(...))``).

diffusers' ``_cp_plan`` for Wan splits the hidden states into N equal, contiguous runs of
positions before block 0 and gathers them at ``proj_out``; in between, Wan's cross-attention runs
on each rank's own positions. So each rank's capture processor sees ``[1, S/N, D]`` and captures
exactly the positions it owns, into its own store, with no extra communication.

On disk (one bundle)::

    manifest.json                       rank 0's: the whole capture; layout.shards = [[0, S/N], ...]
                                        and "shards" naming each rank's listing and files
    manifest.rank1.json                 rank r's own list of finished steps (rank 0's is manifest.json)
    maps/step_0007.rank1.safetensors    rank r's positions of step 7: maps [block, head, token, S/N]

A step is in the capture when every rank lists it, so an interrupted run keeps the steps that all
ranks finished. :class:`paik.capture.bundle.Bundle` joins the shards on the position axis.

Processes: ``paik generate --parallel N`` spawns N processes on this host (NCCL, one GPU each,
with CUDA; gloo on the CPU), or runs as one rank of ``torchrun --nproc_per_node N -m paik
generate ... --parallel N``. :func:`run_ranks` does the spawning and the rendezvous for any
per-rank work (``paik bench capture --parallel N`` uses it too).
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from dataclasses import replace
from pathlib import Path

from paik.errors import PaikError

CP_KINDS = ("ulysses", "ring")
RANK_MANIFEST = "manifest.rank{}.json"
RANK_STEP_FILE = "maps/step_{{:04d}}.rank{}.safetensors"


def shard_files(world: int) -> dict:
    """The manifest's description of where each rank's part lives."""
    return {"count": world, "manifests": ["manifest.json"] + [RANK_MANIFEST.format(r) for r in range(1, world)],
            "step_files": [RANK_STEP_FILE.format(r) for r in range(world)]}


def open_rank_writer(path, manifest: dict, shard: tuple[int, int], overwrite: bool):
    """This rank's bundle writer. Rank 0 prepares the folder and writes manifest.json; the others
    wait for it (a barrier), then write their own listing beside it."""
    from paik.capture.writer import BundleWriter

    rank, world = shard
    lay = manifest["layout"]
    writer = None
    if rank == 0:
        try:
            writer = BundleWriter(path, {**manifest, "shards": shard_files(world)}, overwrite=overwrite,
                                  step_file=RANK_STEP_FILE.format(0))
        finally:
            _barrier(world)  # even when it failed: the other ranks must not wait forever
        return writer
    _barrier(world)
    if not (Path(path) / "manifest.json").is_file():
        raise PaikError(f"--out {path}: rank 0 could not prepare the bundle (see its message)")
    own = {"rank": rank, "positions": lay["shards"][rank], "planned_steps": manifest.get("planned_steps")}
    return BundleWriter(path, own, prepare=False, manifest_name=RANK_MANIFEST.format(rank),
                        step_file=RANK_STEP_FILE.format(rank))


def _barrier(world: int) -> None:
    import torch.distributed as dist

    if world > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_positions(local, world: int):
    """[n_local] on every rank -> [n_local * world] in rank order (a collective)."""
    import torch
    import torch.distributed as dist

    local = local.contiguous()
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local)
    return torch.cat(parts)


# -- processes ------------------------------------------------------------------------------------
def check_parallel(n: int, cp: str, cuda: bool | None = None) -> None:
    """``cuda``: whether the ranks will run on GPUs (default: whether this machine has CUDA)."""
    if n < 1:
        raise PaikError("--parallel must be at least 1")
    if cp not in CP_KINDS:
        raise PaikError(f"--cp {cp!r}: expected ulysses or ring")
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda and n > torch.cuda.device_count():
        raise PaikError(f"--parallel {n}: this machine has {torch.cuda.device_count()} GPUs; one process per GPU")
    # Ring attention merges each ring step's partial result with the log-sum-exp of its softmax
    # (diffusers' TemplatedRingAttention calls the backend's forward op with return_lse=True). On
    # the CPU no diffusers 0.42 backend returns one: the native backend's op raises "Native attention
    # does not support return_lse=True", _native_flash calls aten::_scaled_dot_product_flash_attention,
    # which has no CPU kernel (and wants bf16/fp16), and cuDNN is CUDA. So ring stays CUDA only.
    if not cuda and cp == "ring":
        raise PaikError("--cp ring needs CUDA (flash or cuDNN attention); on the CPU use --cp ulysses")


def check_model(info, n: int, cp: str, latent) -> None:
    """What diffusers' context parallelism needs of the model and the video, said before loading.
    ``info``: anything with ``num_heads`` (a :class:`paik.capture.models.ModelInfo`)."""
    positions = latent[0] * latent[1] * latent[2]
    if positions % n:
        raise PaikError(f"--parallel {n} does not divide the {positions:,} video positions ({latent[0]}x{latent[1]}"
                        f"x{latent[2]}); context parallelism splits them evenly: choose another --parallel or size")
    if cp == "ulysses" and info.num_heads % n:
        raise PaikError(f"--cp ulysses splits the model's {info.num_heads} heads across processes: --parallel {n} "
                        "does not divide them; choose another --parallel, or --cp ring on CUDA")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def generate_parallel(opts, n: int, cp: str = "ulysses", timeout_s: float = 1800.0) -> Path:
    """``paik generate --parallel N``: N ranks of one generation; returns the bundle path. Under
    torchrun this process is one of them; otherwise the N processes are spawned here."""
    import torch

    check_parallel(n, cp, torch.cuda.is_available() and (opts.device is None or str(opts.device).startswith("cuda")))
    from paik.capture.generate import check_options, resolve_sizes
    from paik.capture.models import peek_model

    check_options(opts)
    if opts.bends or opts.bend_presets or opts.replay_bends:
        raise PaikError("bending is not available with --parallel yet (a rank sees only its own positions); "
                        "generate without --parallel to bend")
    if opts.offload:
        raise PaikError("--offload and --parallel do not go together: each process holds its own model")
    peeked = peek_model(opts.model)
    if peeked is not None:
        check_model(peeked, n, cp, resolve_sizes(opts, peeked).latent)
    run_ranks(n, _generate_rank, (opts, cp), use_cuda=opts.device is None or str(opts.device).startswith("cuda"),
              what="parallel generation", timeout_s=timeout_s,
              after=f"; the bundle {opts.out} keeps the steps every rank finished")
    return Path(opts.out)


def run_ranks(n: int, main, payload, use_cuda: bool = True, what: str = "the parallel run",
              timeout_s: float = 1800.0, after: str = ""):
    """Run ``main(rank, world, device, payload)`` on N ranks with torch.distributed initialized
    (NCCL, one GPU each, when ``use_cuda`` and CUDA is there; gloo on the CPU). Under torchrun this
    process is one rank and ``main``'s result is returned; otherwise N processes are spawned here
    (``main`` and ``payload`` must pickle) and None is returned once all have finished. A rank's
    failure ends the others and is raised as one line: "{what} failed: rank r: ...{after}"."""
    if launched_by_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if world != n:
            raise PaikError(f"--parallel {n} but torchrun started {world} processes; give the same number")
        return _rank_run(int(os.environ["RANK"]), n, main, payload, use_cuda)

    import time

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = _free_port()
    errors = ctx.SimpleQueue()
    procs = [ctx.Process(target=_rank_entry, args=(r, n, port, main, payload, use_cuda, errors),
                         name=f"paik-rank{r}") for r in range(n)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    failed = None
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(0.1)
                if p.exitcode not in (None, 0) and failed is None:
                    failed = p
            if failed is not None or time.monotonic() > deadline:
                break
    except KeyboardInterrupt:
        failed = failed or "interrupted"
    finally:
        # one rank down leaves the others waiting in a collective: end them (ours, by handle)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    if failed == "interrupted":
        raise KeyboardInterrupt
    if failed is None and any(p.exitcode != 0 for p in procs):
        failed = next(p for p in procs if p.exitcode != 0)
    if failed is not None or messages:
        first = sorted(messages)[0] if messages else f"{failed.name} exited with code {failed.exitcode}"
        raise PaikError(f"{what} failed: {first[1] if isinstance(first, tuple) else first}{after}")
    return None


def _rank_entry(rank, world, port, main, payload, use_cuda, errors):
    """A spawned rank: its own one-line error goes to the parent, which reports the first one."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    try:
        _rank_run(rank, world, main, payload, use_cuda)
    except PaikError as e:
        errors.put((rank, f"rank {rank}: {e}"))
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as e:  # a bug: the parent prints one line, the trace goes to stderr
        traceback.print_exc()
        errors.put((rank, f"rank {rank}: {type(e).__name__}: {e}"))
        sys.exit(1)


def _rank_run(rank, world, main, payload, use_cuda):
    import datetime

    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available() and use_cuda
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=30))
    try:
        result = main(rank, world, device, payload)
        # no rank tears its group down while a peer is still in a collective (gloo aborts the rank
        # whose peer has gone: "terminate called without an active exception")
        _barrier(world)
        return result
    finally:
        dist.destroy_process_group()


def _generate_rank(rank, world, device, payload) -> Path:
    from paik.capture import compat
    from paik.capture.generate import generate
    from paik.capture.models import load_pipeline

    opts, cp = payload
    mine = replace(opts, device=device, quiet=opts.quiet or rank != 0)
    loaded = load_pipeline(mine.model, mine.dtype, device, None)
    pipe = loaded[0]
    for name in ("transformer", "transformer_2"):  # both experts of Wan2.2 A14B
        t = getattr(pipe, name, None)
        if t is not None:
            compat.enable_context_parallel(t, world, cp)
    return generate(mine, loaded=loaded, shard=(rank, world), cp=cp)
