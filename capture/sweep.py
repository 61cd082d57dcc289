"""``paik sweep``: many generations, one per device at a time, each into its own bundle.

The items are prompts x seeds, or prompts x seeds x the values of one bend swept over
(``--bend "gain kiss {}" --values 0,0.5,1,2``). Each worker is a spawned process on one device
(a GPU of ``--gpus``, or the CPU with ``--workers N``) that loads the model once and is handed
one item at a time by this process, so the parent always knows which item a worker holds: a
worker that dies fails only that item, and the others carry on with the rest.

Every item is a bundle ``DIR/<prompt>_seed<seed>[_<bend>]`` (``000_seed3_gain-kiss-2``) written
by :func:`paik.capture.generate.generate`; a bundle already complete is skipped, never
rewritten. At the end a table (item, device, status, seconds, path) is printed and written,
with each failure's one-line reason, to ``DIR/sweep.json`` (also rewritten after every item,
so a sweep killed outright still leaves its record).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

from paik.errors import PaikError

SWEEP_FILE = "sweep.json"


@dataclass
class Item:
    index: int
    name: str
    prompt: str
    seed: int
    value: str | None  # the swept bend value as typed, or None
    bends: list[str]  # bend lines with the value filled in
    status: str = "pending"  # complete | skipped | failed | interrupted | not run
    device: str = ""
    seconds: float | None = None
    message: str = ""
    steps_done: int = 0

    def row(self, out: Path) -> dict:
        return {"item": self.name, "prompt": self.prompt, "seed": self.seed, "value": self.value,
                "bends": self.bends, "device": self.device, "status": self.status, "seconds": self.seconds,
                "path": str(out / self.name), "message": self.message}


# -- planning -------------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    """``0-3``, ``0,5,7`` or a mix, in the grammar of :mod:`paik.indices` (seeds have no upper end)."""
    from paik import indices

    t = str(text).strip()
    if not re.fullmatch(r"\d+(-\d+)?(\s*,\s*\d+(-\d+)?)*", t):
        raise PaikError(f"--seeds {text!r}: expected seeds like 0-3, 0,5,7 or 0-3,10")
    bound = max(int(x) for x in re.findall(r"\d+", t)) + 1
    return indices.parse(t, bound, "--seeds")


def parse_values(text: str) -> list[str]:
    values = [v.strip() for v in str(text).split(",") if v.strip()]
    if not values:
        raise PaikError("--values is empty; give numbers like 0,0.5,1,2")
    for v in values:
        try:
            float(v)
        except ValueError:
            raise PaikError(f"--values {v!r}: expected numbers like 0,0.5,1,2") from None
    return values


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-.") or "x"


def read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts:
        try:
            lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise PaikError(f"--prompts {args.prompts}: cannot read it ({e.__class__.__name__}: {e}); give a "
                            "UTF-8 text file with one prompt a line") from None
        prompts += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise PaikError("no prompts: give them as arguments or with --prompts FILE (one a line)")
    return prompts


def plan_items(prompts: list[str], seeds: list[int], bends: list[str], values: list[str] | None) -> list[Item]:
    """Every prompt x seed (x value); a bend line holding ``{}`` takes each value in turn."""
    from paik.capture.bend import parse_bends

    swept = [b for b in bends if "{}" in b]
    if values is not None and not swept:
        raise PaikError('--values needs a --bend with {} where the value goes, e.g. --bend "gain kiss {}"')
    if swept and values is None:
        raise PaikError(f"--bend {swept[0]!r} has {{}} but no --values to put there; add e.g. --values 0,1,2")
    items: list[Item] = []
    for p, prompt in enumerate(prompts):
        for seed in seeds:
            for value in (values if values is not None else [None]):
                lines = [b.replace("{}", value) if value is not None else b for b in bends]
                parse_bends(lines)  # a typo in a bend is said now, before any model loads
                name = f"{p:03d}_seed{seed}" + (f"_{slug(swept[0].replace('{}', value))}" if value is not None
                                                else "")
                items.append(Item(len(items), name, prompt, seed, value, lines))
    return items


def bundle_complete(path: Path) -> bool:
    """A bundle that says it is complete and whose step files all pass their checks."""
    from paik.capture.bundle import open_bundle

    if not (path / "manifest.json").is_file():
        return False
    try:
        b = open_bundle(path, strict=False)
    except PaikError:
        return False
    return b.status == "complete" and not b.broken


def is_bundle(path: Path) -> bool:
    return (path / "manifest.json").is_file()


# -- workers --------------------------------------------------------------------------------------
def _worker(wid: int, device: str, base, inbox, outbox, stop) -> None:
    """One device: load the model once, then generate each item handed over until told to end.
    Ctrl-C reaches the parent, which sets ``stop``: the item in hand ends at its next step,
    keeping its finished steps ("interrupted")."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import torch

        from paik.capture.generate import generate
        from paik.capture.models import load_pipeline

        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        loaded = load_pipeline(base.model, base.dtype, device, base.offload)
    except PaikError as e:
        outbox.put(("dead", wid, f"loading the model on {device}: {e}"))
        return
    except BaseException as e:  # a bug or a broken install: one line to the parent, the trace here
        traceback.print_exc()
        outbox.put(("dead", wid, f"loading the model on {device}: {type(e).__name__}: {e}"))
        return
    outbox.put(("ready", wid))
    while True:
        job = inbox.get()
        if job is None:
            return
        index, opts = job
        t0 = time.perf_counter()
        status, message = "complete", ""
        try:
            generate(replace(opts, device=device), loaded=loaded, stop=stop,
                     on_progress=lambda done, total: outbox.put(("step", wid, index)))
        except PaikError as e:
            status, message = "failed", str(e)
        except Exception as e:
            from paik.capture.api import Cancelled

            if isinstance(e, Cancelled):
                status, message = "interrupted", "stopped by Ctrl-C; the bundle keeps its finished steps"
            else:
                traceback.print_exc()
                status, message = "failed", f"{type(e).__name__}: {e}"
            if device.startswith("cuda"):  # after an OOM the next item needs the memory back
                torch.cuda.empty_cache()
        outbox.put(("done", wid, index, status, message, round(time.perf_counter() - t0, 3)))


def choose_devices(args) -> list[str]:
    if args.gpus is not None and args.workers is not None:
        raise PaikError("--gpus and --workers do not go together: --gpus runs one worker per GPU, --workers N "
                        "runs N on the CPU")
    if args.workers is not None:
        if args.workers < 1:
            raise PaikError("--workers must be at least 1")
        return ["cpu"] * args.workers
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.gpus is None:
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    if count == 0:
        raise PaikError(f"--gpus {args.gpus}: this machine has no CUDA device; use --workers N on the CPU")
    from paik import indices

    return [f"cuda:{i}" for i in indices.parse(args.gpus, count, "--gpus", where="this machine", listed="its")]


# -- the sweep ------------------------------------------------------------------------------------
def run_sweep(base, items: list[Item], out: Path, devices: list[str], total_steps: int, quiet: bool = False,
              grace_s: float = 60.0) -> list[Item]:
    """Generate every pending item on ``devices``; returns the items with their outcome."""
    import torch.multiprocessing as mp
    from tqdm import tqdm

    todo = [it for it in items if it.status == "pending"]
    bar = tqdm(total=total_steps * len(todo), desc="paik sweep", unit="step", disable=quiet, file=sys.stderr)
    if not todo:
        bar.close()
        write_summary(out, items)
        return items
    ctx = mp.get_context("spawn")
    outbox, stop = ctx.Queue(), ctx.Event()
    devices = devices[:len(todo)]  # no worker loads a model it will never use
    inboxes = [ctx.Queue() for _ in devices]
    procs = [ctx.Process(target=_worker, args=(w, d, base, inboxes[w], outbox, stop), name=f"paik-sweep{w}",
                         daemon=True) for w, d in enumerate(devices)]
    for p in procs:
        p.start()
    holding: dict[int, Item | None] = {w: None for w in range(len(procs))}
    alive = set(range(len(procs)))
    load_errors: list[str] = []
    pending = list(todo)
    interrupted = False
    stop_at = None

    def save():
        write_summary(out, items)

    def finish(it: Item, status: str, message: str, seconds=None):
        it.status, it.message, it.seconds = status, message, seconds
        bar.update(max(0, total_steps - it.steps_done))  # the bar counts what is left of the sweep
        it.steps_done = total_steps
        save()

    def hand_out(w: int):
        if pending and not interrupted:
            it = pending.pop(0)
            it.device, holding[w] = devices[w], it
            opts = replace(base, prompt=it.prompt, seed=it.seed, bends=list(it.bends), out=str(out / it.name),
                           overwrite=is_bundle(out / it.name))  # only an unfinished bundle of ours is there
            inboxes[w].put((it.index, opts))
        else:
            holding[w] = None
            inboxes[w].put(None)

    try:
        while alive and (any(h is not None for h in holding.values()) or (pending and not interrupted)):
            try:
                try:
                    msg = outbox.get(timeout=0.2)
                except queue.Empty:
                    msg = None
                if msg is not None:
                    kind, w = msg[0], msg[1]
                    if kind == "ready":
                        hand_out(w)
                    elif kind == "step":
                        it = items[msg[2]]
                        it.steps_done += 1
                        bar.update(1)
                    elif kind == "done":
                        _, _, index, status, message, seconds = msg
                        finish(items[index], status, message, seconds)
                        holding[w] = None
                        hand_out(w)
                    elif kind == "dead":
                        load_errors.append(msg[2])
                        print(f"paik: sweep: worker {w} ({devices[w]}) is out: {msg[2]}", file=sys.stderr)
                        alive.discard(w)
                for w in list(alive):  # a worker killed (OOM killer, a crash in a kernel) fails only its item
                    if not procs[w].is_alive() and outbox.empty():
                        alive.discard(w)
                        it = holding.get(w)
                        if it is not None:
                            finish(it, "failed", f"worker {w} on {devices[w]} died (exit code {procs[w].exitcode})"
                                   f"; {'the others carry on' if alive else 'no worker left'}")
                            holding[w] = None
                if stop_at is not None and time.monotonic() > stop_at:
                    break
            except KeyboardInterrupt:
                if interrupted:  # a second Ctrl-C: stop waiting for the steps in flight
                    break
                interrupted = True
                stop.set()
                stop_at = time.monotonic() + grace_s
                print("paik: sweep: stopping; the items in hand end at their next step (Ctrl-C again to stop now)",
                      file=sys.stderr)
    finally:
        for q in inboxes:
            try:
                q.put(None)
            except (OSError, ValueError):
                pass
        for p in procs:
            p.join(5 if not interrupted else 2)
            if p.is_alive():
                p.terminate()
                p.join(5)
        bar.close()
    reason = "; ".join(dict.fromkeys(load_errors)) or "no worker left"
    held = {id(h) for h in holding.values() if h is not None}
    for it in items:
        if it.status == "pending" and id(it) in held:
            it.status, it.message = "interrupted", "stopped; the bundle keeps its finished steps"
        elif it.status == "pending":
            it.status = "not run" if interrupted else "failed"
            it.message = "the sweep was stopped" if interrupted else reason
    save()
    if interrupted:
        raise KeyboardInterrupt
    return items


def write_summary(out: Path, items: list[Item]) -> None:
    counts: dict[str, int] = {}
    for it in items:
        counts[it.status] = counts.get(it.status, 0) + 1
    doc = {"items": [it.row(out) for it in items], "counts": counts}
    tmp = out / (SWEEP_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / SWEEP_FILE)


def summary_table(out: Path, items: list[Item]) -> str:
    rows = [("item", "device", "status", "seconds", "path")]
    rows += [(it.name, it.device or "-", it.status, "-" if it.seconds is None else f"{it.seconds:.1f}",
              str(out / it.name)) for it in items]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = ["  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4] for r in rows]
    lines += [f"{it.name}: {it.status}: {it.message}" for it in items if it.status in ("failed", "interrupted")]
    counts = {}
    for it in items:
        counts[it.status] = counts.get(it.status, 0) + 1
    lines.append("sweep: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; written to {out / SWEEP_FILE}")
    return "\n".join(lines)


# -- the command ----------------------------------------------------------------------------------
def register(sub) -> None:
    from paik.capture.cli import add_take_flags

    s = sub.add_parser(
        "sweep", help="many generations (prompts x seeds, or a bend over values), one per device in parallel",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Generate every prompt x seed (x value of one swept bend) with capture, one generation per "
                    "GPU (or CPU worker) at a time, each into its own bundle under --out. Complete bundles are "
                    "skipped; a failed item is reported and the sweep goes on; the summary is written to "
                    "DIR/sweep.json. Exit 1 when any item failed.")
    s.add_argument("prompt", nargs="*", help="prompts (or --prompts FILE)")
    s.add_argument("--prompts", default=None, metavar="FILE", help="a text file of prompts, one a line (# comments)")
    s.add_argument("--out", "-o", required=True, metavar="DIR", help="folder of the bundles and sweep.json")
    add_take_flags(s)
    s.add_argument("--seeds", default=None, metavar="SPEC", help="seeds: 0-3, 0,5,7 (default: --seed)")
    s.add_argument("--bend", action="append", default=[], metavar="BEND",
                   help='a bend on every item; with {} it is swept over --values, e.g. "gain kiss {}"')
    s.add_argument("--values", default=None, metavar="LIST", help="values for the {} of --bend, e.g. 0,0.5,1,2")
    s.add_argument("--gpus", default=None, metavar="SPEC", help="GPUs to use, e.g. 0,1 or 0-3 (default: every one)")
    s.add_argument("--workers", type=int, default=None, metavar="N",
                   help="CPU worker processes (without CUDA; default 1)")
    s.add_argument("--step-buffers", type=int, default=3, metavar="K", help="steps of maps held on a device at once")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    s.set_defaults(func=_sweep)


def _sweep(args) -> int:
    from paik.capture.cli import take_fields
    from paik.capture.generate import GenerateOptions, check_options, resolve_sizes
    from paik.capture.models import peek_model
    from paik.capture.tokens import split_token_list

    tokens = split_token_list(args.tokens) if args.tokens is not None else []
    if args.tokens is not None and not tokens:
        raise PaikError("--tokens is empty; name words like kiss,\"soccer ball\",eos (or leave it out for every token)")
    if args.step_buffers < 1:
        raise PaikError(f"--step-buffers {args.step_buffers}: needs at least 1")
    prompts = read_prompts(args)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [args.seed]
    values = parse_values(args.values) if args.values is not None else None
    items = plan_items(prompts, seeds, args.bend, values)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise PaikError(f"--out {out}: is a file; name a folder for the sweep's bundles")
    base = GenerateOptions(prompt=prompts[0], out=str(out), **take_fields(args, tokens), quiet=True,
                           step_buffers=args.step_buffers)
    check_options(base)
    for p in prompts:
        check_options(replace(base, prompt=p))
    peeked = peek_model(args.model)
    total_steps = resolve_sizes(base, peeked).steps if peeked is not None else (base.steps or 1)
    devices = choose_devices(args)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PaikError(f"--out {out}: cannot create it ({e.strerror or e}); choose a folder you can write") from None
    for it in items:
        if bundle_complete(out / it.name):
            it.status, it.message = "skipped", "already complete"
    skipped = sum(it.status == "skipped" for it in items)
    if not args.quiet:
        print(f"paik: sweep: {len(items)} items ({skipped} already complete) on {', '.join(dict.fromkeys(devices))}"
              f" x{len(devices)}", file=sys.stderr, flush=True)
    try:
        run_sweep(base, items, out, devices, total_steps, quiet=args.quiet)
    except KeyboardInterrupt:
        print(summary_table(out, items), flush=True)
        return 130
    print(summary_table(out, items), flush=True)
    return 1 if any(it.status in ("failed", "interrupted") for it in items) else 0
