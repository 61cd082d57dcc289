"""Live bending: bend slots in the one bank, applied from the next denoising step of the running
take and recorded per step (issue 17 item 4), in process and over real UDP against a headless
``paik live`` with the tiny model."""

from __future__ import annotations

import time

import numpy as np
import pytest

from test_live import _events_until, _start, _stop


@pytest.fixture(scope="module")
def tiny():
    from paik.capture.models import load_pipeline

    return load_pipeline("tiny", device="cpu")


def test_slot_fields_make_bends_and_bad_ones_are_one_line_errors():
    from paik.capture.bend import OPS, parse_bend, slot_spec
    from paik.errors import PaikError
    from paik.instrument.control.params import BEND_OPS

    assert BEND_OPS == ("off", *OPS)  # the bank's copy of the operations stays the capture's
    assert slot_spec("off", "cat") is None and slot_spec("gain", "") is None
    assert slot_spec("gain", "kiss", "2", 0.5, "10-20", "0-12") == parse_bend("gain kiss 2 strength 0.5 blocks 10-20 steps 0-12")
    assert slot_spec("mute", "kiss", "2") == parse_bend("mute kiss")  # an argument the op does not take is kept, unused
    assert slot_spec("gain", "soccer ball") == parse_bend('gain "soccer ball" 2')  # the op's default argument
    for fields, why in ((("swap", "cat"), "needs OTHER"), (("gain", "cat", "x"), "must be a number"),
                        (("gain", "cat", "2", 1.0, "ten"), "not a range"), (("bogus", "cat"), "unknown operation")):
        with pytest.raises(PaikError, match=why):
            slot_spec(*fields)


def test_grammar_and_osc_reach_the_slots():
    from paik.errors import PaikError
    from paik.instrument.control import grammar
    from paik.instrument.control.osc import address_space, translate
    from paik.instrument.control.params import Command, Params

    cmd = grammar.parse("bend 1 gain kiss 2 blocks 10-20")
    assert cmd == Command("bend", "set", (1, "gain kiss 2 blocks 10-20"), "console")
    assert grammar.parse(grammar.format(cmd)) == cmd
    assert grammar.parse("bend 3 off") == Command("bend", "off", 3, "console")
    assert translate("/paik/bend", [2, "mute 'a cat'"]) == Command("bend", "set", (2, "mute 'a cat'"), "osc")
    assert translate("/paik/bend/off", [4]) == Command("bend", "off", 4, "osc")
    assert translate("/paik/bend1_amount/norm", [0.25]) == Command("bend1_amount", "norm", 0.25, "osc")
    assert translate("/paik/bend2_word", ["kiss"]) == Command("bend2_word", "set", "kiss", "osc")
    for line, why in (("bend 5 mute cat", "slots are 1 to 4"), ("bend 1 wobble cat", "unknown operation"),
                      ("bend 1 gain cat 2 steps x", "not a range"), ("bend 1 mute cat pass sideways", "cond, uncond or both"),
                      ("bend", "expected")):
        with pytest.raises(PaikError, match=why):
            grammar.parse(line)
    with pytest.raises(PaikError, match="expected /paik/bend i s"):
        translate("/paik/bend", ["mute cat"])
    paths = {a.path: a.types for a in address_space(Params())}
    assert paths["/paik/bend"] == ("is",) and paths["/paik/bend/off"] == ("i",)
    for n in range(1, 5):
        assert paths[f"/paik/bend{n}_amount"][0] == "f" and paths[f"/paik/bend{n}_op"][0] == "s"
        assert f"/paik/bend{n}_amount/norm" in paths and paths[f"/paik/bend{n}_word"] == ("s",)


def test_a_bend_set_mid_take_applies_from_the_next_step(tiny, tmp_path):
    """The engine in process: slots set after a step finished are recorded from a later step on,
    every step after that keeps them, and the muted word's captured maps are zero exactly there."""
    from paik.capture.bend import slot_spec
    from paik.capture.bundle import open_bundle
    from paik.capture.engine import Engine, TakeRequest
    from paik.capture.generate import GenerateOptions

    eng = Engine(tiny, GenerateOptions(prompt="a cat kisses a dog", out="", steps=10), tmp_path / "takes")
    try:
        eng.submit(TakeRequest(seed=3))
        evs = _events_until(eng, ("StepDone",))
        at = evs[-1].index
        errors = eng.set_bends([slot_spec("mute", "kisses"), None, slot_spec("gain", "zebra")])
        assert len(errors) == 1 and "zebra" in errors[0] and "\n" not in errors[0]
        evs += _events_until(eng, ("TakeDone", "TakeFailed"))
    finally:
        eng.close()
    assert type(evs[-1]).__name__ == "TakeDone", evs[-1]
    b = open_bundle(evs[-1].path)
    log = {e["step"]: e["bends"] for e in b.manifest["bend_log"]}
    assert sorted(log) == b.step_indices == list(range(10))
    first = min(s for s, lines in log.items() if lines)
    assert at < first < 10 and all(log[s] == (["mute kisses"] if s >= first else []) for s in log)
    word = b.resolve("kisses")
    for s in b.step_indices:
        m = np.asarray(b.step_arrays(s)["maps"][:, :, word], dtype=np.float32)
        assert (m.max() == 0) == (s >= first), (s, first, m.max())


def test_a_bad_slot_for_a_new_take_is_reported_and_the_take_runs(tiny, tmp_path):
    from paik.capture.bend import slot_spec
    from paik.capture.bundle import open_bundle
    from paik.capture.engine import Engine, TakeRequest
    from paik.capture.generate import GenerateOptions

    eng = Engine(tiny, GenerateOptions(prompt="a cat", out="", steps=2), tmp_path / "takes")
    try:
        assert eng.set_bends([slot_spec("swap", "cat", "zebra"), slot_spec("gain", "cat", "3")]) == []  # no take yet
        eng.submit(TakeRequest())
        evs = _events_until(eng, ("TakeDone", "TakeFailed"))
    finally:
        eng.close()
    refused = [e for e in evs if type(e).__name__ == "BendRefused"]
    assert len(refused) == 1 and "zebra" in refused[0].message
    assert type(evs[-1]).__name__ == "TakeDone"
    b = open_bundle(evs[-1].path)
    assert [e["bends"] for e in b.manifest["bend_log"]] == [["gain cat 3"], ["gain cat 3"]]


def _log_of(bundle_dir):
    import json

    try:
        return json.loads((bundle_dir / "manifest.json").read_text()).get("bend_log", [])
    except (OSError, ValueError):
        return []


def test_paik_live_bend_over_udp(tmp_path):
    """A bend sent mid-take over real UDP is recorded in the take's bend_log from a following step
    on, the bent word's maps change from then on (muted: zero), the slot is fed back, and bad
    bends are /paik/error while the show goes on."""
    from paik.capture.bundle import open_bundle

    proc, c = _start(tmp_path, "--model", "tiny", "--prompt", "a cat kisses a dog", "--steps", "2")
    try:
        c.wait(lambda: any(a == "/paik/progress" and v == [2, 2] for a, v in c.log), 120, proc, "the first take")
        take = tmp_path / "takes" / "take_0002"
        c.log.clear()
        c.send("/paik/steps", 1000)  # far longer than the test: the bend lands mid-take
        c.send("/paik/generate", "a cat kisses a dog", 9)
        c.wait(lambda: any(a == "/paik/progress" and v[0] >= 2 and v[1] == 1000 for a, v in c.log), 120, proc,
               "the long take under way")
        before = max(v[0] for a, v in c.log if a == "/paik/progress" and v[1] == 1000)
        c.send("/paik/bend", 1, "mute kisses")
        c.wait(lambda: c.state.get("/paik/bend1_op") == ["mute"] and c.state.get("/paik/bend1_word") == ["kisses"],
               30, proc, "the slot's feedback")
        end = time.monotonic() + 60
        while not any(e["bends"] for e in _log_of(take)):
            assert time.monotonic() < end and proc.poll() is None, "the bend never reached the take"
            c.pump(0.2)
        # bad bends: errors, and the take goes on
        c.log.clear()
        c.send("/paik/bend", 2, "mute zebra")
        c.send("/paik/cmd", "bend 3 wobble cat")
        c.send("/paik/bend4_steps", "ten")
        c.send("/paik/bend4_op", "gain")
        c.send("/paik/bend4_word", "cat")
        for what in ("zebra", "wobble", "'ten'"):
            c.wait(lambda: any(a == "/paik/error" and what in v[0] for a, v in c.log), 30, proc, f"the {what} error")
        c.send("/paik/generate/cancel")
        c.wait(lambda: any(a == "/paik/error" and "cancelled" in v[0] for a, v in c.log), 60, proc, "cancelled")
        time.sleep(0.5)
        assert proc.poll() is None
    finally:
        err = _stop(proc, c) if proc.poll() is None else ""
    assert "Traceback" not in err
    b = open_bundle(take)
    log = {e["step"]: e["bends"] for e in b.manifest["bend_log"]}
    assert sorted(log) == b.step_indices and len(log) >= 3
    first = min(s for s, lines in log.items() if lines)
    assert first >= before  # from a step that began after the packet: steps 0..before-1 had finished
    assert all(log[s] == (["mute kisses"] if s >= first else []) for s in log)
    word = b.resolve("kisses")
    for s in b.step_indices:
        m = np.asarray(b.step_arrays(s)["maps"][:, :, word], dtype=np.float32)
        assert (m.max() == 0) == (s >= first), (s, first, m.max())


@pytest.mark.parametrize("name, generate, next_seed, amount", [
    ("generic", ("note_on", 56), ("note_on", 57), 12),
    ("korg-nanokontrol2", ("control_change", 46), ("control_change", 60), 21),
])
def test_shipped_midi_maps_bind_generate_next_seed_and_a_bend_amount(name, generate, next_seed, amount):
    import mido

    from paik.instrument.control import midi
    from paik.instrument.control.params import Params, apply

    ctl = midi.Controller(midi.load_map(name), "x")

    def press(kind, number):
        field = {"note_on": "note", "control_change": "control"}[kind]
        extra = {"velocity": 100} if kind == "note_on" else {"value": 127}
        return ctl.handle(mido.Message(kind, **{field: number}, **extra))

    assert [(c.name, c.op) for c in press(*generate)] == [("generate", "start")]
    p = Params()
    (seed,) = press(*next_seed)
    apply(p, seed)
    assert p.seed == 1
    (knob,) = ctl.handle(mido.Message("control_change", control=amount, value=32))
    assert knob.name == "bend1_amount" and knob.op == "pickup" and knob.value[0] == pytest.approx(32 / 127)
