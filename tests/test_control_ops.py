"""One definition of what each parameter takes (params.KIND_OPS): every spec walked through the
grammar, OSC (its address space, translate, the OSCQuery namespace), MIDI's modes, apply and the
look flags of play/render/grid, each checked against the table and against the others."""

from __future__ import annotations

import argparse
import math

import mido
import pytest

from paik.errors import PaikError
from paik.instrument import cli
from paik.instrument.control import grammar, midi, osc, oscquery
from paik.instrument.control.live import Live
from paik.instrument.control.params import KIND_OPS, OPS, SPECS, Command, Params, apply
from paik.instrument.control.scenes import SceneStore
from paik.instrument.render import colormaps
from paik.instrument.render.source import Source
from instrument_fixtures import make_bundle

PARAM_OPS = ("set", "norm", "nudge", "cycle", "toggle", "reset")  # every op but pickup (MIDI's, resolved to norm)
assert set(PARAM_OPS) | {"pickup"} == set(OPS)


def bank() -> Params:
    p = Params().bind(4, 3, 4, 2, colormaps.available())
    p.smooth = 0
    return p


def good_value(name: str):
    """A value no bundle refuses, as a console line would write it."""
    spec = SPECS[name]
    if spec.kind == "enum":
        return (spec.choices or colormaps.available())[-1]
    if spec.kind == "bool":
        return "on"
    if spec.kind == "text":
        return "a red kiss" if name != "size" else "416x240"
    return "1" if spec.hi is None or spec.hi >= 1 else str(spec.hi)


def line(name: str, op: str) -> str:
    arg = {"set": f"set {good_value(name)}", "norm": "norm 0.5", "nudge": "nudge 0.5", "cycle": "cycle 1"}
    return f"{name} {arg.get(op, op)}"


def test_the_table_covers_every_kind_and_only_known_ops():
    assert {s.kind for s in SPECS.values()} <= set(KIND_OPS)
    for kind, ops in KIND_OPS.items():
        assert ops[0] == "set" and "reset" in ops and set(ops) <= set(PARAM_OPS), kind
    # what a performer relies on, written out (not read from the table)
    assert set(KIND_OPS["float"]) == {"set", "norm", "nudge", "reset"}
    assert set(KIND_OPS["bool"]) == {"set", "norm", "toggle", "reset"}
    assert set(KIND_OPS["text"]) == {"set", "reset"}
    assert "cycle" in KIND_OPS["int"] and "cycle" in KIND_OPS["enum"] and "nudge" not in KIND_OPS["enum"]


@pytest.mark.parametrize("name", list(SPECS))
def test_grammar_and_apply_accept_exactly_the_ops_of_the_table(name):
    spec = SPECS[name]
    for op in PARAM_OPS:
        text = line(name, op)
        if spec.allows(op):
            cmd = grammar.parse(text)
            assert (cmd.name, cmd.op) == (name, op), text
            p = bank()
            if name == "token":  # a word is resolved by Live against the bundle; an index applies here
                cmd = Command(name, op, 1 if op == "set" else cmd.value)
            apply(p, cmd)
            assert grammar.parse(grammar.format(cmd)).op == op  # maps and logs write it back the same
        elif spec.kind == "text":  # the rest of a text parameter's line is its text
            assert grammar.parse(text) == Command(name, "set", text.split(" ", 1)[1], "console")
        else:
            with pytest.raises(PaikError, match=f"{name} .*takes .*not {op}"):
                grammar.parse(text)
        if not spec.allows(op):  # and apply refuses it too, whoever builds the command
            with pytest.raises(PaikError, match=f"not {op}"):
                apply(bank(), Command(name, op, 1 if op in ("nudge", "norm", "cycle") else None))
    if spec.allows("cycle"):
        assert grammar.parse(f"{name} next").op == "cycle"
    elif spec.kind != "text":
        with pytest.raises(PaikError):
            grammar.parse(f"{name} next")


def osc_args(name: str, op: str) -> list:
    spec = SPECS[name]
    if op == "set":
        return {"float": [0.5], "int": [1], "bool": [1], "enum": [spec.choices[0] if spec.choices else "magma"],
                "text": ["x"]}[spec.kind]
    return {"norm": [0.5], "nudge": [0.5], "cycle": [1]}.get(op, [])


@pytest.mark.parametrize("name", list(SPECS))
def test_osc_addresses_and_translate_follow_the_table(name):
    spec = SPECS[name]
    paths = {a.path for a in osc.address_space(bank())}
    mine = {x for x in paths if x == f"/paik/{name}" or x.startswith(f"/paik/{name}/")}
    if name == "token":
        mine.discard("/paik/token/word")  # feedback only, never a listened-to address
    assert mine == {f"/paik/{name}"} | {f"/paik/{name}/{op}" for op in spec.ops if op != "set"}
    for op in PARAM_OPS:
        address = f"/paik/{name}" if op == "set" else f"/paik/{name}/{op}"
        if spec.allows(op):
            assert address in paths
            cmd = osc.translate(address, osc_args(name, op))
            assert cmd.name == name and cmd.op in (op, "norm_index"), address
        else:
            assert address not in paths
            with pytest.raises(PaikError, match="unknown address"):
                osc.translate(address, osc_args(name, op))
    feedback = {a for a, _, _ in osc.feedback_addresses()}
    assert (f"/paik/{name}/norm" in feedback) == spec.allows("norm")


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    b = tmp_path_factory.mktemp("ops") / "b"
    make_bundle(b, steps=3, blocks=4, heads=2, video=False, preview=False)
    return Source.open(b, "cpu")


def make_live(src, tmp_path) -> Live:
    d = src.dims
    p = Params().bind(len(src.words), d.n_steps, d.n_blocks, d.n_heads, colormaps.available())
    p.smooth = 0
    return Live(src, p, SceneStore(tmp_path / "scenes", shipped=None))


def test_oscquery_access_and_range_follow_the_table(src, tmp_path):
    lv = make_live(src, tmp_path)
    tree = oscquery.namespace(lv)
    for name, spec in SPECS.items():
        node = tree["CONTENTS"]["paik"]["CONTENTS"][name]
        assert node["ACCESS"] == 3, name  # read + write
        children = set(node.get("CONTENTS", {})) - {"word"}
        assert children == {op for op in spec.ops if op != "set"}, name
        for op in children:
            assert node["CONTENTS"][op]["ACCESS"] == (3 if op == "norm" else 2), (name, op)
        if spec.kind == "enum":
            assert node["RANGE"] == [{"VALS": list(lv.target.choices(name))}]
        elif spec.numeric:
            lo, hi = lv.target.bounds(name)
            assert node["RANGE"] == [{"MIN": lo, "MAX": hi}] and lo == spec.lo
            assert hi == spec.hi or spec.hi is None
        if spec.allows("norm"):
            assert node["CONTENTS"]["norm"]["RANGE"] == [{"MIN": 0.0, "MAX": 1.0}]


def press(ctl, kind):
    """What a control of this kind sends when moved or pressed, then released."""
    if kind == "note":
        return [mido.Message("note_on", note=36, velocity=100), mido.Message("note_off", note=36, velocity=0)]
    return [mido.Message("control_change", control=1, value=v) for v in (127, 0, 64)]


@pytest.mark.parametrize("name", list(SPECS))
def test_midi_accepts_exactly_the_modes_whose_commands_apply(name, src, tmp_path):
    """A mode a map may give a parameter sends only commands that apply cleanly; every mode the map
    loader refuses would have sent one that the render loop refuses mid-show."""
    for kind in ("cc", "note"):
        for mode in midi.MODES:
            entry = {kind: 1 if kind == "cc" else 36, "param": name, "mode": mode, "pickup": False}
            fits = mode in midi.modes_for(name, kind)
            if fits:
                c = midi.parse_map({"control": [entry]}).controls[0]
            else:
                with pytest.raises(PaikError, match=f"control #1: mode {mode!r} does not fit {name}"):
                    midi.parse_map({"control": [entry]})
                if kind == "note" and mode == "relative":
                    continue  # a note is no encoder: refused for every parameter
                c = midi.Control(kind, entry[kind], None, param=name, mode=mode, pickup=False)
            ctl = midi.Controller(midi.MidiMap("t", (), [c]), "t")
            lv = make_live(src, tmp_path)
            cmds = [cmd for m in press(ctl, kind) for cmd in ctl.handle(m)]
            assert cmds, (kind, mode)
            errors = []
            for cmd in cmds:
                try:
                    apply(lv.target, cmd)
                except PaikError as e:
                    if "must stay below clip_hi" not in str(e):  # a value refused (clip_lo at 100), not an op
                        errors.append(str(e))
            if fits:
                assert not errors, (kind, mode, errors)
                assert all(SPECS[name].allows(cmd.op) for cmd in cmds)
            elif mode == "momentary":  # on/off sent to a number or a choice: 1/0, or refused
                assert all(isinstance(cmd.value, bool) for cmd in cmds) and SPECS[name].kind != "bool"
            else:
                assert errors, (kind, mode, [(c.op, c.value) for c in cmds])
    if midi.modes_for(name):  # the loader's default mode for a fader always fits
        assert midi.default_mode("cc", name) in midi.modes_for(name)
    else:
        with pytest.raises(PaikError, match="no control mode fits"):
            midi.parse_map({"control": [{"cc": 1, "param": name}]})


def look_actions() -> dict[str, argparse.Action]:
    ap = argparse.ArgumentParser()
    cli._look_flags(ap)
    return {a.dest: a for a in ap._actions}


def check(**kw) -> None:
    cli._check_look(cli.default_look_args(**kw))


def test_every_look_flag_matches_its_spec():
    actions = look_actions()
    names = cli.LOOK_SHOW + cli.LOOK_STYLE
    assert {"head", "reduce", "colormap", "norm", "gain", "gamma", "threshold", "composite", "background",
            "opacity"} == set(names)
    for name in names:
        spec, a = SPECS[name], actions[name]
        assert a.option_strings == [f"--{name}"]
        assert a.default == cli.FIRST_LOOK.get(name, spec.default), name
        assert spec.help in a.help, name
        if spec.numeric:
            assert a.type is (int if spec.kind == "int" else float) and a.choices is None
            check(**{name: a.type(spec.lo)})
            with pytest.raises(PaikError, match=f"--{name} .* is out of range"):
                check(**{name: spec.lo - 1})
            if spec.hi is not None:
                check(**{name: a.type(spec.hi)})
                with pytest.raises(PaikError, match=f"--{name} .* is out of range"):
                    check(**{name: spec.hi + 0.5})
                with pytest.raises(PaikError, match="finite"):
                    check(**{name: math.nan})
        elif name == "colormap":  # choices come from presets/colormaps, checked before anything loads
            check(colormap=colormaps.available()[-1])
            with pytest.raises(PaikError, match="unknown colormap"):
                check(colormap="no-such-map")
        else:
            assert tuple(a.choices) == spec.choices, name
    # the first look's own defaults stay (firstlook.py decides; see test_instrument_firstlook.py)
    assert actions["norm"].default == "frame" and actions["composite"].default is None
    clip = actions["clip"]
    assert clip.default == (SPECS["clip_lo"].default, SPECS["clip_hi"].default)
    assert clip.type(f"{SPECS['clip_lo'].lo:g},{SPECS['clip_hi'].hi:g}") == (SPECS["clip_lo"].lo, SPECS["clip_hi"].hi)
    for bad in (f"{SPECS['clip_lo'].lo - 1:g},50", f"1,{SPECS['clip_hi'].hi + 1:g}", "60,40"):
        with pytest.raises(argparse.ArgumentTypeError):
            clip.type(bad)
