"""`paik bench capture --parallel N`: two real gloo processes on the CPU, the tiny transformer made
context-parallel with diffusers' own Ulysses; the capture of every rank's positions checked
against an fp32 softmax over all keys computed from that rank's q and k (--check), the report's
figures against its own runs, and the one-line refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from paik.capture.layout import GiB
from paik.cli import main as paik

SMALL = ["--config", "tiny", "--device", "cpu", "--frames", "5", "--height", "32", "--width", "32",
         "--steps", "2", "--tokens", "4"]


def test_two_ranks_run_end_to_end_and_report(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, "-m", "paik", "bench", "capture", *SMALL, "--parallel", "2", "--repeats", "2",
                        "--check", "--json", str(out)], capture_output=True, text=True, timeout=240,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    for line in ("2 x cpu (gloo)", "4 a rank", "time ratio capture/none", "largest capture per rank"):
        assert line in r.stdout, r.stdout
    j = json.loads(out.read_text())
    assert j["parallel"] == 2 and j["cp"] == "ulysses" and j["grid"] == [2, 2, 2] and j["positions_per_rank"] == 4
    # per rank: 2 steps x 3 blocks x 2 heads x (4 tokens + padding) x 4 of the 8 positions, float16
    assert j["map_gib_per_rank"] == pytest.approx(2 * 3 * 2 * 5 * 4 * 2 / GiB)
    runs = j["runs"]
    assert [(x["variant"], x["repeat"]) for x in runs] == [("none", 0), ("capture", 0), ("none", 1), ("capture", 1)]
    for x in runs:  # a step ends when the slowest rank ends
        assert len(x["ms_per_step_per_rank"]) == 2 and x["ms_per_step"] == max(x["ms_per_step_per_rank"]) > 0
    for v in ("none", "capture"):
        assert j["best"][v]["ms_per_step"] == min(x["ms_per_step"] for x in runs if x["variant"] == v)
    assert j["ratio"] == pytest.approx(j["best"]["capture"]["ms_per_step"] / j["best"]["none"]["ms_per_step"])
    assert j["fits_per_rank"] is None  # GPU memory: CUDA only, never a made-up figure
    assert j["check"]["max_abs_err"] <= 1e-3 and j["check"]["max_sum_err"] <= 1e-3
    # the projection starts from one GPU: a parallel result is refused, in one line
    r2 = subprocess.run([sys.executable, "-m", "paik", "bench", "parallel-plan", str(out)], capture_output=True,
                        text=True, timeout=60)
    assert r2.returncode == 2 and "--parallel 2" in r2.stderr and len(r2.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, words", [
    (["--parallel", "3", "--frames", "9"], "splits the model's 2 heads"),  # 3x2x2 positions; Ulysses splits heads
    (["--parallel", "2", "--frames", "1", "--height", "48", "--width", "16"], "does not divide the 3 video"),
    (["--parallel", "2", "--cp", "ring"], "--cp ring needs CUDA"),
    (["--parallel", "0"], "at least 1"),
])
def test_refusals_are_one_line(extra, words, capsys):
    assert paik(["bench", "capture", *SMALL, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("paik: error: ") and words in err[0], err


def test_the_largest_capture_a_rank_holds_is_what_its_card_keeps():
    from paik.capture.bench import fit_per_rank
    from paik.capture.bench_project import RESERVE_GIB
    from paik.capture.layout import Layout, equal_shards

    lay = Layout(steps=[0, 1], blocks=[0, 1, 2], heads=2, head_mean=False, n_heads=2, tokens=[0, 1, 2, 3],
                 latent=(2, 2, 2), n_real=4, seq_len=512, shards=equal_shards(8, 2))
    step = 3 * 2 * 5 * 4 * 2  # one step of one rank: blocks x heads x (tokens + padding) x 4 positions, float16
    maps = 2 * step / GiB
    f = fit_per_rank(lay, base_gib=1.0, capture_gib=1.0 + maps + 0.25, card_bytes=10 * GiB, steps=2)
    assert f["capture_overhead_gib"] == pytest.approx(0.25)
    free = (10 - 1.0 - 0.25 - RESERVE_GIB) * GiB
    k = f["max_steps_at_tokens"]
    assert k * step <= free + 1 and free - 1 < (k + 1) * step
    t = f["max_tokens_at_steps"]  # at 2 steps: (t + 1) map slots of [3 blocks x 2 heads x 4 positions] a step
    assert 2 * (t + 1) * (step // 5) <= free + 1 and free - 1 < 2 * (t + 2) * (step // 5)
    # a capture that costs no more than its maps leaves no overhead; a card too small fits nothing
    assert fit_per_rank(lay, 1.0, 1.0 + maps, 10 * GiB, 2)["capture_overhead_gib"] == 0
    assert fit_per_rank(lay, 9.0, 9.0 + maps, 10 * GiB, 2)["max_steps_at_tokens"] == 0
