"""`paik bench parallel-plan`: the projection of what N GPUs hold, checked against the layout's
own sizes and a model really built (not on the meta device)."""

from __future__ import annotations

import json

import pytest
import torch

from paik.capture.bench import build_transformer
from paik.capture.bench_project import RESERVE_GIB, project, weight_bytes
from paik.capture.layout import GiB
from paik.cli import main as paik


def test_weights_are_counted_as_the_built_model_holds_them():
    model, _ = build_transformer("tiny", "cpu", torch.bfloat16)
    assert weight_bytes("tiny") == sum(p.numel() * p.element_size() for p in model.parameters())


def test_projection_shards_the_maps_and_fills_the_card_exactly():
    w = 3 * GiB
    measured = {"config": "wan2.1-14b", "grid": [21, 30, 52], "device": "x", "best": {"none": {"peak_gib": 5.0}}}
    r = project(measured, [1, 2, 4, 8], 81, 720, 1280, tokens=32, steps=50, card_gib=140.0, weights=w)
    positions = 21 * 45 * 80
    assert r["positions"] == positions and r["grid"] == [21, 45, 80]
    total = 50 * 33 * 40 * 40 * positions * 2  # 32 tokens and the padding's map, float16
    assert r["capture_gib_total"] == pytest.approx(total / GiB)
    for row in r["rows"]:
        n = row["gpus"]
        assert row["capture_gib_per_gpu"] == pytest.approx(total / GiB / n, rel=1e-4)
        assert row["working_gib"] == pytest.approx(2.0 * positions / (21 * 30 * 52) / n, rel=1e-4)
        free = 140.0 - 3.0 - row["working_gib"] - RESERVE_GIB
        step = total / GiB / n / 50
        assert row["max_steps_at_tokens"] * step <= free < (row["max_steps_at_tokens"] + 1) * step
        assert row["fits"] == (row["peak_gib_per_gpu"] <= 140.0 - RESERVE_GIB)


def test_cli_prints_a_table_and_refuses_bad_input(tmp_path, capsys):
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"config": "tiny", "grid": [3, 4, 4], "device": "cpu",
                             "best": {"none": {"peak_gib": 0.01}}}))
    assert paik(["bench", "parallel-plan", str(m), "--gpus", "1,2", "--height", "64", "--width", "64",
                 "--frames", "9", "--json", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "GPUs" in out and len(json.loads((tmp_path / "p.json").read_text())["rows"]) == 2
    (tmp_path / "bad.json").write_text("{}")
    assert paik(["bench", "parallel-plan", str(tmp_path / "bad.json")]) == 2
    assert paik(["bench", "parallel-plan", str(m), "--gpus", "3"]) == 2  # 2 heads do not split 3 ways
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("paik: error: ") for e in err), err
