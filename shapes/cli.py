"""Subcommands of the shapes world: ``paik train`` (the built-in ``paik-shapes`` model),
``paik bench shapes`` and ``paik bench faithfulness``. Registered from :mod:`paik.capture.cli`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def register(sub, bench) -> None:
    from paik.shapes.train import add_arguments

    t = sub.add_parser("train", help="train the built-in paik-shapes model (VAE, then transformer)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Train a small Wan (real diffusers classes) on procedural shape videos; resumable, "
                                   "time-budgeted. Writes OUT/ckpt/ and OUT/paik-shapes.tar.")
    add_arguments(t)
    t.set_defaults(func=_train)

    for name, helptext in (("shapes", "do generated videos show the named shapes in the named colours?"),
                           ("faithfulness", "does each object word's cross-attention land on that object?")):
        b = bench.add_parser(name, help=helptext, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        b.add_argument("--model", "-m", default="paik-shapes", help="model (a paik-shapes folder or name)")
        b.add_argument("--split", default="heldout", choices=["eval", "heldout"],
                       help="eval: unseen seeds; heldout: unseen seeds with unseen (colour, shape) pairs")
        b.add_argument("--clips", type=_at_least(1), default=16 if name == "shapes" else 8)
        b.add_argument("--start", type=_at_least(0), default=0, help="first clip seed of the split")
        b.add_argument("--steps", type=_at_least(1), default=None, help="denoising steps (default: the model's)")
        b.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
        b.add_argument("--device", default=None)
        b.add_argument("--threads", type=_at_least(1), default=2, help="torch CPU threads")
        b.add_argument("--json", type=_json_path, default=None, help="write the results as JSON here")
        if name == "shapes":
            b.add_argument("--objects", type=int, choices=[1, 2, 3], default=None,
                           help="only clips with this many objects (default: the split's mix of one to three)")
        if name == "faithfulness":
            b.add_argument("--mode", default="both", choices=["known", "generated", "both"],
                           help="known: rendered clips noised to each step (true masks); generated: paik generate "
                                "with masks detected in its video")
            b.add_argument("--threshold", type=_fraction, default=0.5, help="IoU: map >= threshold x its maximum")
            b.add_argument("--tables", default="object",
                           help="comma-separated words (object, shape, colour) whose step x block table is printed")
        b.set_defaults(func=_bench_shapes if name == "shapes" else _bench_faith)

    w = bench.add_parser("words", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         help="how much the model's denoising rests on the shape word, the colour word, the caption",
                         description="The training script's word-reliance probe on a model: on fixed one-object eval "
                                     "clips noised to sigma 0.7 and 0.9, the transformer's flow-matching error "
                                     "(objects weighted up) with the true caption, and how much a wrong shape word, a "
                                     "wrong colour word or no caption adds; on as many two-object clips, how much "
                                     "swapping their colour words adds (does the model know which colour goes with "
                                     "which shape?). About a minute on a CPU.")
    w.add_argument("--model", "-m", default="paik-shapes", help="model (a paik-shapes folder or name)")
    w.add_argument("--clips", type=_at_least(1), default=32)
    w.add_argument("--device", default=None)
    w.add_argument("--threads", type=_at_least(1), default=2, help="torch CPU threads")
    w.add_argument("--json", type=_json_path, default=None, help="write the results as JSON here")
    w.set_defaults(func=_bench_words)


def _at_least(lo: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, not {v}")
        return v
    return parse


def _json_path(text: str) -> str:
    """A file the results can be written to, checked before minutes of benchmarking."""
    folder = Path(text).expanduser().resolve().parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text}: cannot write a file there")
    return text


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {v}")
    return v


def _train(args) -> int:
    from paik.shapes.train import run

    return run(args)


def _load(args):
    import torch

    from paik.capture.models import load_pipeline

    torch.set_num_threads(args.threads)
    return load_pipeline(args.model, "float32" if (args.device or "cpu") == "cpu" and not torch.cuda.is_available()
                         else "auto", args.device)


def _bench_shapes(args) -> int:
    from paik.shapes.faithfulness import _log, shape_rate, world_note

    r = shape_rate(_load(args), args.split, args.clips, args.steps, args.guidance, args.start, log=_log,
                   objects=args.objects)
    print(f"{r['split']}{world_note(r['world'])}: {r['clips']} clips, {r['objects']} objects, {r['steps']} steps, "
          f"guidance {r['guidance']}, on {r['device']}")
    print(f"  named colour present      {r['colour_present']:.3f}")
    print(f"  named colour + shape      {r['colour_and_shape']:.3f}")
    print(f"  clips with every object   {r['clips_all_correct']:.3f}")
    print(f"  named colour + shape in the VAE's reconstructions of the true clips (for scale) "
          f"{r['reconstructed_colour_and_shape']:.3f}")
    for key, label in (("shape", "per shape"), ("size", "per size"), ("objects", "per objects in the clip")):
        print(f"  {label}: " + ", ".join(f"{k} {v:.2f} (n={r['per_count'][key][k]})"
                                         for k, v in r[f"per_{key}"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


def _bench_faith(args) -> int:
    from paik.shapes.faithfulness import WORDS, _log, faithfulness, format_report

    tables = tuple(w.strip() for w in args.tables.split(",") if w.strip())
    bad = [w for w in tables if w not in WORDS]
    if bad:
        raise SystemExit(f"paik: error: --tables: unknown {', '.join(bad)}; expected some of {', '.join(WORDS)}")
    r = faithfulness(_load(args), args.split, args.clips, args.steps, args.mode, args.threshold, args.guidance,
                     args.start, log=_log)
    print(format_report(r, tables))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


def _bench_words(args) -> int:
    import sys

    from tqdm import tqdm

    from paik.shapes.faithfulness import device_name, model_defaults, model_world, world_name
    from paik.shapes.train import BINDING, PROBE_WORDS, build_probes, probe_forwards, probe_words

    loaded = _load(args)
    pipe, _, device = loaded
    d, world = model_defaults(loaded), model_world(loaded)
    # a minute or more of silence otherwise: batches of clips encoded, then forward passes
    encodes = 2 * -(-args.clips // 16)
    with tqdm(total=encodes, desc="bench words: encoding clips", unit="batch", file=sys.stderr,
              leave=False) as bar:
        probes = build_probes(pipe, args.clips, d["frames"], d["height"], device, **world, bar=bar)
    forwards = sum(probe_forwards(args.clips, len(probes[k][3])) for k in (1, 2))
    with tqdm(total=forwards, desc="bench words: probing", unit="pass", file=sys.stderr, leave=False) as bar:
        r = probe_words(pipe.transformer, probes, bar=bar)
    r.update(model=args.model, clips=args.clips, world=world_name(world),
             device=device_name(device))
    print(f"word reliance of {args.model}: {args.clips} one-object and {args.clips} two-object eval clips "
          f"({r['world']} world), on {r['device']}")
    print("  sigma                  " + "".join(f"{x:>9}" for x in r["sigma"]))
    print("  error, true caption    " + "".join(f"{x:9.4f}" for x in r["loss"]))
    names = {"shape": "+ a wrong shape word ", "colour": "+ a wrong colour word", "caption": "+ no caption         ",
             BINDING: "+ colours swapped (2)"}
    for k in PROBE_WORDS + (BINDING,):
        print(f"  {names[k]}  " + "".join(f"{x:+9.4f}" for x in r[k]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0
