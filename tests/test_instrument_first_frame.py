"""``paik bench first-frame``: opening a bundle and drawing its first frame reads only what the
frame needs (here: a bundle whose step files are mostly never touched)."""

from __future__ import annotations

from instrument_fixtures import make_bundle

from paik.cli import main as paik


def test_first_frame_bench_reports_time_and_reads(tmp_path, capsys):
    b = tmp_path / "b"
    make_bundle(b, steps=3, blocks=2, heads=2, video=False, preview=False)
    assert paik(["bench", "first-frame", str(b), "--size", "64x48", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "GiB bundle: first 64x48 frame in" in out and "MiB read from storage" in out


def test_first_frame_bench_bad_bundle_is_a_message(tmp_path, capsys):
    assert paik(["bench", "first-frame", str(tmp_path / "nothing")]) == 2
    assert "no such bundle directory" in capsys.readouterr().err
