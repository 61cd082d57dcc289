"""The example patches (Pure Data, Max, TouchDesigner) send only addresses the instrument
has, with argument types it accepts; the README documents every address."""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

import pytest

from paik.instrument.render import colormaps
from paik.instrument.control.osc import address_space, feedback_addresses, translate
from paik.instrument.control.params import Params

ROOT = Path(__file__).resolve().parent.parent
PATCHES = ROOT / "patches"


def space():
    p = Params().bind(4, 3, 4, 2, colormaps.available())
    return {a.path: a for a in address_space(p)}


def _sample(tag: str, literal=None):
    if literal is not None:
        return literal
    return {"f": 0.5, "i": 1, "s": "kiss", "": None}[tag]


def _samples(tags: str) -> list:
    if tags == "is":  # /paik/bend: a slot and a bend line
        return [1, "mute kiss"]
    return [] if tags == "" else [_sample(tags)]


def check(sends: list[tuple[str, str, list]]):
    """(address, type tags, literal args or []) -> every one exists and is accepted."""
    known = space()
    assert sends
    for address, tags, literals in sends:
        assert address in known, f"{address} is not an address of the instrument"
        assert tags in known[address].types, f"{address} does not take {tags!r} (takes {known[address].types})"
        if address.split("/")[-1] in ("subscribe", "unsubscribe", "state"):
            continue  # answered by the server itself (see test_control_osc)
        args = literals or _samples(tags)
        if address.endswith("/norm") and args:
            args = [min(1.0, float(args[0]))]
        if address in ("/paik/step", "/paik/block", "/paik/token", "/paik/head", "/paik/seed") and tags in "if":
            args = [type(args[0])(1)]
        translate(address, args)  # raises if the instrument would refuse it


def pd_sends(path: Path):
    objs, conns = [], []
    for line in path.read_text().split(";\n"):
        parts = line.strip().split()
        if len(parts) >= 2 and parts[0] == "#X":
            if parts[1] == "connect":
                conns.append(tuple(int(x) for x in parts[2:6]))
            elif parts[1] in ("obj", "msg", "text", "floatatom", "symbolatom"):
                objs.append((parts[1], parts[4:]))
    out = []
    for i, (kind, args) in enumerate(objs):
        if kind != "obj" or not args or args[0] != "oscformat":
            continue
        address = "/" + "/".join(args[1:])
        for src, _, dst, _ in conns:
            if dst != i:
                continue
            skind, sargs = objs[src]
            if skind == "floatatom" or (skind == "obj" and sargs[:1] in (["hsl"], ["vsl"])):
                out.append((address, "f", []))
            elif skind == "symbolatom":
                out.append((address, "s", []))
            elif skind == "msg":
                if sargs == ["bang"]:
                    out.append((address, "", []))
                elif sargs[0] == "symbol":
                    out.append((address, "s", [sargs[1]]))
                else:  # Pd sends every number as a float
                    out.append((address, "f" * len(sargs), [float(x) for x in sargs]))
            else:
                pytest.fail(f"{path.name}: oscformat {address} fed by an unknown {skind} {sargs}")
    return out


def _max_tags(tokens):
    tags, vals = "", []
    for t in tokens:
        if re.fullmatch(r"-?\d+", t):
            tags, vals = tags + "i", vals + [int(t)]
        elif re.fullmatch(r"-?\d*\.\d*", t):
            tags, vals = tags + "f", vals + [float(t)]
        else:
            tags, vals = tags + "s", vals + [t]
    return tags, vals


def max_sends(path: Path):
    patcher = json.loads(path.read_text())["patcher"]
    boxes = {b["box"]["id"]: b["box"] for b in patcher["boxes"]}
    sender = {i for i, b in boxes.items() if b.get("text", "").startswith("udpsend")}
    assert sender, "no udpsend"
    into = {}
    for line in patcher["lines"]:
        s, d = line["patchline"]["source"][0], line["patchline"]["destination"][0]
        into.setdefault(d, []).append(s)
    out = []
    for i, b in boxes.items():
        if not any(i in into.get(s, []) for s in sender):
            continue
        text = b.get("text", "")
        if b["maxclass"] == "message":
            address, *rest = shlex.split(text)
            out.append((address, *_max_tags(rest)))
        elif text.startswith("prepend "):
            address = text.split()[1]
            for src in into.get(i, []):
                cls = boxes[src]["maxclass"]
                assert cls in ("flonum", "number"), f"{path.name}: prepend {address} fed by {cls}"
                out.append((address, "f" if cls == "flonum" else "i", []))
        else:
            pytest.fail(f"{path.name}: {b['maxclass']} {text!r} sends to udpsend")
    return out


def td_sends(path: Path):
    tree = ast.parse(path.read_text())
    sends = next(ast.literal_eval(n.value) for n in tree.body
                 if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "SENDS")
    shows = next((ast.literal_eval(n.value) for n in tree.body
                  if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "SHOWS"), {})
    feedback = {a: t for a, t, _ in feedback_addresses()}
    for address, tags in shows.items():  # what it reads back is what the instrument sends
        assert feedback.get(address) == tags, f"{address} {tags} is not feedback the instrument sends"
    used = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and n.value.startswith("/paik/")}
    faders = [f"/paik/{n}/norm" for n in ("step", "block", "gain", "gamma", "threshold", "opacity", "time",
                                          "bend1_amount")]
    assert used - set(sends) - set(shows) <= {"/paik/"}, f"addresses sent but not declared: {used - set(sends)}"
    assert set(faders) <= set(sends)
    return [(a, t, []) for a, t in sends.items()]


# paik live: a prompt field, a generate button, a seed control and a bend slot's controls
LIVE = {"/paik/prompt", "/paik/generate", "/paik/generate/cancel", "/paik/seed", "/paik/seed/cycle",
        "/paik/bend1_op", "/paik/bend1_word", "/paik/bend1_amount/norm"}


def _shows_progress(routes: list[str], word: str) -> None:
    assert any(word in r.split() for r in routes), "the patch does not show /paik/progress"


def test_pure_data_patch():
    sends = pd_sends(PATCHES / "paik.pd")
    addresses = {a for a, _, _ in sends}
    assert {"/paik/token", "/paik/block", "/paik/head", "/paik/step", "/paik/colormap", "/paik/scene/recall",
            "/paik/subscribe"} <= addresses
    check(sends)
    assert LIVE <= addresses, LIVE - addresses
    text = (PATCHES / "paik.pd").read_text()
    assert "netreceive -u -b 9001" in text and "oscparse" in text  # shows the feedback
    _shows_progress([line for line in text.split(";\n") if " route " in line], "progress")


def test_max_patch():
    sends = max_sends(PATCHES / "paik.maxpat")
    addresses = {a for a, _, _ in sends}
    assert {"/paik/token", "/paik/block", "/paik/head", "/paik/step", "/paik/colormap", "/paik/scene/recall",
            "/paik/subscribe"} <= addresses
    check(sends)
    assert LIVE <= addresses and "/paik/bend" in addresses, LIVE - addresses
    assert ("/paik/bend", "is", [1, "gain kiss 2 blocks 10-20"]) in sends
    assert "udpreceive 9001" in (PATCHES / "paik.maxpat").read_text()
    patcher = json.loads((PATCHES / "paik.maxpat").read_text())["patcher"]
    _shows_progress([b["box"].get("text", "") for b in patcher["boxes"] if b["box"].get("text", "").startswith("route")],
                    "/paik/progress")


def test_touchdesigner_script():
    sends = td_sends(PATCHES / "touchdesigner" / "paik_osc.py")
    check(sends)
    assert LIVE | {"/paik/bend"} <= {a for a, _, _ in sends}
    assert (PATCHES / "touchdesigner" / "README.md").is_file()


def test_parsers_catch_a_wrong_address(tmp_path):
    bad = tmp_path / "bad.pd"
    bad.write_text("#N canvas 0 0 100 100 12;\n#X msg 0 0 symbol kiss;\n#X obj 0 40 oscformat paik tokn;\n"
                   "#X connect 0 0 1 0;\n")
    with pytest.raises(AssertionError, match="not an address"):
        check(pd_sends(bad))
    wrong_type = tmp_path / "t.pd"
    wrong_type.write_text("#N canvas 0 0 100 100 12;\n#X msg 0 0 symbol loud;\n#X obj 0 40 oscformat paik gain;\n"
                          "#X connect 0 0 1 0;\n")
    with pytest.raises(AssertionError, match="does not take"):
        check(pd_sends(wrong_type))
