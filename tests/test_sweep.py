"""``paik sweep`` as a user runs it: a real process with two spawned CPU workers on the tiny
model, one bend swept over the items, one item whose prompt lacks the bent word. The finished
bundles must hold exactly the maps a single ``paik generate`` of the same item writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from paik.capture.bundle import open_bundle
from paik.cli import main

SIZE = ["-m", "tiny", "--steps", "2", "--frames", "5", "--height", "32", "--width", "32", "--preview", "none",
        "--tokens", "cat"]
GOOD = ["a cat on a mat", "the cat sleeps", "one cat runs"]
BAD = "a dog barks"  # no "cat": its bend (and its --tokens) cannot resolve


def _sweep(out, prompts, timeout=120):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "paik", "sweep", *prompts, "-o", str(out), *SIZE, "--seeds", "3",
           "--bend", "gain cat {}", "--values", "2", "--workers", "2", "-q"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def _maps(bundle):
    return {s: bundle.step_arrays(s) for s in bundle.step_indices}


def test_sweep_items_bundles_failures_and_rerun(tmp_path):
    out = tmp_path / "sweep"
    r = _sweep(out, GOOD + [BAD])
    assert r.returncode == 1, r.stderr[-2000:]  # one item failed
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    doc = json.loads((out / "sweep.json").read_text())
    rows = {row["item"]: row for row in doc["items"]}
    names = [f"{i:03d}_seed3_gain-cat-2" for i in range(4)]
    assert list(rows) == names
    for name in names[:3]:
        assert rows[name]["status"] == "complete", rows[name]
        assert rows[name]["device"] == "cpu" and rows[name]["seconds"] > 0
        b = open_bundle(out / name)
        assert b.status == "complete" and b.step_indices == [0, 1] and not b.broken
        assert b.manifest["bends"] == ["gain cat 2"]
    bad = rows[names[3]]
    assert bad["status"] == "failed"
    assert "cat" in bad["message"] and "\n" not in bad["message"], bad
    assert f"{names[3]}: failed:" in r.stdout  # the table says why too
    assert doc["counts"] == {"complete": 3, "failed": 1}

    # the same item from one `paik generate`: the sweep's worker (a reused model, a queue) changes nothing
    ref = tmp_path / "ref"
    os.environ["HF_HUB_OFFLINE"] = "1"
    assert main(["generate", GOOD[1], "-o", str(ref), *SIZE, "--seed", "3", "--bend", "gain cat 2", "-q"]) == 0
    a, b = _maps(open_bundle(out / names[1])), _maps(open_bundle(ref))
    assert a.keys() == b.keys() == {0, 1}
    for s in a:
        for key in ("maps", "padding"):
            assert a[s][key].dtype == b[s][key].dtype and np.array_equal(a[s][key], b[s][key]), (s, key)
    # and the bend took part: another prompt's maps differ (the comparison above can fail)
    other = _maps(open_bundle(out / names[0]))
    assert not np.array_equal(other[1]["maps"], a[1]["maps"])

    # a re-run skips the complete bundles, rewriting nothing (no worker starts: all are done)
    stamps = {n: (out / n / "manifest.json").stat().st_mtime_ns for n in names[:3]}
    r2 = _sweep(out, GOOD)
    assert r2.returncode == 0, r2.stderr[-2000:]
    doc2 = json.loads((out / "sweep.json").read_text())
    assert [row["status"] for row in doc2["items"]] == ["skipped"] * 3
    assert all(row["message"] == "already complete" for row in doc2["items"])
    assert {n: (out / n / "manifest.json").stat().st_mtime_ns for n in names[:3]} == stamps
    assert "3 skipped" in r2.stdout
