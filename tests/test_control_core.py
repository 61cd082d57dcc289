"""Control without GL: the command grammar, normalized values, soft takeover, smoothing,
scenes as data, token words, and key bindings for scenes."""

from __future__ import annotations

import pytest

from paik.errors import PaikError
from paik.instrument.control import grammar, keys
from paik.instrument.control.live import Live, RateLimitedLog
from paik.instrument.control.params import SPECS, Command, Params, apply, denormalized, normalized
from paik.instrument.control.scenes import SceneStore
from paik.instrument.render.source import Source
from instrument_fixtures import make_bundle


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    b = tmp_path_factory.mktemp("ctl") / "b"
    make_bundle(b, steps=3, blocks=4, heads=2, video=False, preview=False)
    return Source.open(b, "cpu")


def bank(src):
    from paik.instrument.render import colormaps

    d = src.dims
    return Params().bind(len(src.words), d.n_steps, d.n_blocks, d.n_heads, colormaps.available())


def live(src, tmp_path, **kw):
    return Live(src, bank(src), SceneStore(tmp_path / "scenes", shipped=None), **kw)


def test_grammar_lines_are_commands():
    P = grammar.parse
    assert P("step 12.5") == Command("step", "set", "12.5", "console")
    assert P("step nudge -0.1") == Command("step", "nudge", -0.1, "console")
    assert P("gain norm 0.5", "osc") == Command("gain", "norm", 0.5, "osc")
    assert P("colormap next").op == "cycle" and P("colormap prev").value == -1
    assert P("playing") == Command("playing", "toggle", None, "console")
    assert P("token 'soccer ball'").value == "soccer ball" and P("token soccer ball").value == "soccer ball"
    assert P("scene 3") == Command("scene", "recall", "3", "console")
    assert P("scene save intro").op == "save"
    assert P("learn gain") == Command("learn", "arm", "gain", "console")
    assert P("learn scene recall 2").value == "scene recall 2"
    for bad in ("", "nope 1", "step", "step nudge", "step nudge x", "scene save ../../etc", "scene", "learn nope 1",
                "token 'unclosed"):
        with pytest.raises(PaikError):
            P(bad)
    for line in ("step 3", "step nudge 0.5", "colormap cycle 1", "scene recall 3", "load /tmp/b", "playing toggle"):
        assert grammar.format(P(line)) == line


def test_normalized_values_and_strict_set(src):
    p = bank(src)
    apply(p, Command("step", "norm", 1.0))
    assert p.step == 2.0
    apply(p, Command("head", "norm", 0.0))
    assert p.head == -1
    apply(p, Command("view", "norm", 0.999))
    assert p.view == "diff"  # the last view
    assert normalized(p, "view") == 1.0 and denormalized(p, "playing", 0.2) is False
    apply(p, Command("gain", "norm", 0.25))
    assert p.gain == 4.0 and normalized(p, "gain") == 0.25
    for bad in (Command("head", "set", 7), Command("gain", "set", 17), Command("gain", "norm", 1.5),
                Command("step", "set", -1)):
        with pytest.raises(PaikError, match="range|must lie"):
            apply(p, bad)
    apply(p, Command("gain", "nudge", 100))  # nudges clamp
    assert p.gain == 16.0
    apply(p, Command("gain", "reset"))
    assert p.gain == SPECS["gain"].default


def test_pickup_never_jumps(src, tmp_path):
    lv = live(src, tmp_path)
    lv.target.gain = 8.0  # normalized 0.5
    fader = "midi:x:cc0"

    def move(x, prev):
        lv.put(Command("gain", "pickup", (x, prev), fader))
        lv.update(0.0)
        return lv.target.gain

    assert move(0.1, None) == 8.0  # far away: ignored
    assert move(0.3, 0.1) == 8.0  # still below
    assert move(0.6, 0.3) == pytest.approx(9.6)  # crossed 0.5: taken over at the fader's value
    assert move(0.2, 0.6) == pytest.approx(3.2)  # held: follows
    lv.put(Command("gain", "set", 12.0, "osc"))  # someone else moves it
    lv.update(0.0)
    assert move(0.25, 0.2) == 12.0  # must be picked up again
    assert move(0.76, 0.25) == pytest.approx(0.76 * 16)


def test_smoothing_glides_continuous_and_jumps_discrete(src, tmp_path):
    lv = live(src, tmp_path)
    lv.target.smooth = 0.1
    lv.update(0.0)
    lv.put(Command("gain", "set", 5.0))
    lv.put(Command("colormap", "set", "jet"))
    s = lv.update(0.05)
    assert lv.target.gain == 5.0 and 1.0 < s.gain < 5.0  # gliding
    assert s.colormap == "jet"  # discrete: at once
    s = lv.update(2.0)
    assert s.gain == 5.0
    lv.put(Command("smooth", "set", 0))
    lv.put(Command("gain", "set", 2.0))
    assert lv.update(2.01).gain == 2.0


def test_token_by_word_scenes_round_trip_and_errors_are_logged(src, tmp_path, caplog):
    lv = live(src, tmp_path)
    lv.put(Command("token", "set", "kiss"))
    lv.put(Command("colormap", "set", "viridis"))
    lv.put(Command("step", "set", 1.5))
    lv.put(Command("smooth", "set", 0))
    lv.update(0.0)
    assert src.words[lv.target.token].label == "kiss"
    lv.put(grammar.parse("scene save 3"))
    lv.put(Command("token", "set", "red"))
    lv.put(Command("colormap", "set", "jet"))
    lv.put(Command("step", "set", 0))
    lv.update(0.01)
    text = (tmp_path / "scenes" / "3.toml").read_text()
    assert 'token = "kiss"' in text and "time" not in text.split("[params]")[1].split("\n")[1:][0]
    seen = []
    lv.listeners.append(lambda values, changed: seen.append(dict(changed)))
    lv.put(grammar.parse("scene recall 3"))
    s = lv.update(0.02)
    assert (lv.target.colormap, lv.target.step, src.words[lv.target.token].label) == ("viridis", 1.5, "kiss")
    assert s.step == 1.5 and seen and seen[-1]["scene"] == "3" and seen[-1]["colormap"] == "viridis"
    # bad commands and missing scenes: logged, rate-limited, never raised
    before = lv.rlog.count
    for _ in range(50):
        lv.put(Command("scene", "recall", "99"))
        lv.put(Command("token", "set", "zebra"))
        lv.put(Command("view", "set", "sideways"))
    lv.update(0.03)
    assert lv.rlog.count - before == 150
    assert len([r for r in caplog.records if r.name == "paik.control"]) <= 3
    assert (lv.target.colormap, lv.target.view) == ("viridis", "single")


def test_tempo_drives_the_playhead(src, tmp_path):
    lv = live(src, tmp_path)
    lv.update(0.0)
    lv.put(Command("tempo", "set", 120.0))
    lv.put(Command("beats", "set", 8.0))
    lv.update(0.0)
    lv.update(1.0)  # 120 BPM = 2 beats a second; 8 beats per pass -> a quarter of the video
    assert lv.target.time == pytest.approx(0.25)


def test_rate_limited_log_counts_and_suppresses(caplog):
    r = RateLimitedLog(interval=60)
    for i in range(1000):
        r("x", f"bad {i}")
    assert r.count == 1000 and len(caplog.records) == 1


def test_scene_keys_are_valid_commands():
    assert keys.lookup("F2", False) == Command("scene", "recall", "1")
    assert keys.lookup("F9", True) == Command("scene", "save", "8")
    for _, _, cmd, _ in keys.SCENE_BINDINGS:
        assert grammar.parse(grammar.format(cmd)) == Command(cmd.name, cmd.op, cmd.value, "console")


def test_load_swaps_the_bundle_between_frames(src, tmp_path):
    other = tmp_path / "other"
    make_bundle(other, steps=2, blocks=1, heads=1, video=False, preview=False)
    lv = live(src, tmp_path, load_from=[tmp_path])
    lv.put(Command("step", "set", 2.0))
    lv.put(Command("load", "set", str(tmp_path / "missing")))
    lv.update(0.0)
    import time

    deadline = time.monotonic() + 20
    while not lv.errors:  # one loader at a time: requests meanwhile merge (the newest wins)
        assert time.monotonic() < deadline
        time.sleep(0.02)
    lv.put(Command("load", "set", "other"))  # relative: looked up under the --load-from folders
    lv.update(0.0)
    while lv.src is src:
        assert time.monotonic() < deadline, list(lv.errors)
        time.sleep(0.02)
        lv.update(0.0)
    assert lv.target.n_steps == 2 and lv.target.step == 1.0  # re-clamped to the new bundle
    assert lv.values["counts"] == (4, 2, 1, 1)
    assert any("missing" in m for _, m in lv.errors)


def test_shipped_scenes_recall(src, tmp_path):
    from paik.instrument.control.scenes import SHIPPED

    lv = Live(src, bank(src), SceneStore(tmp_path / "s", shipped=SHIPPED))
    assert {"kiss-sweep", "fig3-blocks"} <= set(lv.scenes.names())
    lv.put(grammar.parse("scene kiss-sweep"))
    lv.update(0.0)
    assert (lv.target.view, lv.target.colormap, lv.target.composite) == ("sweep", "kiss", "overlay")


def test_osc_reference_documents_every_address():
    from paik.instrument.render import colormaps
    from paik.instrument.control.osc import address_space, reference

    text = reference()
    for a in address_space(Params().bind(4, 3, 4, 2, colormaps.available())):
        parts = a.path.split("/")
        assert f"`{a.path}`" in text or (parts[2] in SPECS and f"| `{parts[2]}` |" in text), a.path


def test_console_lines_reach_the_bank(src, tmp_path, capsys):
    import io

    from paik.instrument.control import console

    lv = live(src, tmp_path)
    t = console.start(lv, io.StringIO("colormap jet\n# a comment\nstep nudge 1\nnonsense 3\ngain norm 0.5\n"))
    t.join(timeout=5)
    lv.update(0.0)
    assert (lv.target.colormap, lv.target.step, lv.target.gain) == ("jet", 1.0, 8.0)
    assert "unknown command 'nonsense'" in capsys.readouterr().err


def test_the_first_live_freezes_the_loaded_heap_once(tmp_path):
    """The instrument moves what is loaded when it starts out of the garbage collector's reach
    (a full collection of paik live's heap holds the interpreter lock for tens of ms): in a fresh
    interpreter, the first Live freezes, a later one does not collect again, and what a full
    collection scans afterwards is a small part of what was frozen."""
    import subprocess
    import sys

    make_bundle(tmp_path / "b", steps=2, blocks=2, heads=1, video=False, preview=False)
    code = f"""
import gc, json, sys
from paik.instrument.control.live import HEAP, Live
from paik.instrument.control.params import Params
from paik.instrument.render import colormaps
from paik.instrument.render.source import Source
import torch  # as paik live: a large heap
src = Source.open({str(tmp_path / "b")!r}, "cpu")
before = gc.get_freeze_count()
Live(src, Params().bind(1, 2, 2, 1, colormaps.available()))
first = dict(HEAP)
Live(src, Params().bind(1, 2, 2, 1, colormaps.available()))
print(json.dumps(dict(before=before, first=first, second=dict(HEAP), frozen=gc.get_freeze_count(),
                      tracked=len(gc.get_objects()))))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["before"] == 0 and out["first"]["frozen"] > 50_000 and out["first"]["collect_ms"] > 0
    assert out["second"] == out["first"]  # once a process: the second Live neither collected nor froze
    assert out["tracked"] < out["frozen"] // 10, out
