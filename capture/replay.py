"""``paik generate --replay BUNDLE``: the options that regenerate a take from its manifest, bends
and all, so a performance can be re-rendered offline (at a larger size, with more steps, ...).

The prompt, negative prompt, seed, model and every generation and capture setting come from the
manifest; the bends come from its per-step record (``bend_log``), so what was active at each step
is what plays again, however it got there. Flags given on the command line replace the recorded
values. Same settings on the same device and dtype give the same video.
"""

from __future__ import annotations

from pathlib import Path

from paik.errors import PaikError

# GenerateOptions fields taken from manifest["settings"] as recorded
_SETTINGS = ("steps", "frames", "height", "width", "guidance", "guidance_2", "flow_shift", "fps",
             "max_sequence_length", "dtype", "offload", "capture_uncond", "capture_steps", "heads", "tokens",
             "preview")


def replay_options(bundle: str, out: str, no_bends: bool = False, **overrides):
    """GenerateOptions for a replay of ``bundle`` written to ``out``; ``overrides`` (GenerateOptions
    fields) win over the manifest. ``no_bends``: without the take's bends (its unbent twin). The device is not replayed: a take made on one machine is
    re-rendered on whatever this one has (pass ``device`` to choose)."""
    from paik.capture.bundle import open_bundle
    from paik.capture.generate import GenerateOptions
    from paik.capture.models import BUILTIN, TINY

    b = open_bundle(bundle)
    m = b.manifest
    s = m.get("settings") or {}
    missing = [k for k in ("prompt", "seed", "model") if k not in m] + [k for k in ("steps", "frames", "height",
                                                                                   "width") if k not in s]
    if missing:
        raise PaikError(f"--replay {bundle}: its manifest lacks {', '.join(missing)}; it cannot be replayed")
    if Path(out).resolve() == b.path.resolve():
        raise PaikError(f"--replay {bundle}: --out must be another directory than the take being replayed")
    model = m["model"] or {}
    mid, mpath = str(model.get("id", "")), str(model.get("path", ""))
    # a named model by its name (its cache folder may have moved); a local folder by its path
    spec = mid if mid.lower() in TINY or mid.lower() in BUILTIN or not Path(mpath).is_dir() else mpath
    fields = {k: s[k] for k in _SETTINGS if k in s}
    fields["capture_blocks"] = s.get("capture_blocks", "all")
    fields["tokens"] = list(fields.get("tokens") or [])
    opts = dict(prompt=m["prompt"], negative=m.get("negative_prompt") or None, seed=int(m["seed"]), model=spec,
                out=str(out), **fields)
    if no_bends:
        pass
    elif "bend_log" in m:
        opts["replay_bends"] = {"steps": int(s["steps"]), "log": list(m["bend_log"])}
    elif m.get("bends"):  # stopped before its first step ended: replay the bends as written
        opts["bends"] = list(m["bends"])
    if overrides.get("bends") or overrides.get("bend_presets"):
        raise PaikError("--replay plays the take's own bends; to change them, generate anew with --bend/--bends "
                        "(the take's are listed by 'paik info --json BUNDLE' under \"bends\")")
    opts.update(overrides)
    return GenerateOptions(**opts)
