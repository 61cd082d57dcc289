"""The typed command grammar: one line of text -> one :class:`~paik.instrument.control.params.Command`.

The same words reach the instrument from the console (``paik play`` reads lines from stdin),
from OSC (``/paik/cmd "step nudge 0.5"``, and every address ``/paik/a/b x`` is the line
``a b x``), from MIDI maps (a control's ``command = "scene recall 3"``) and from keys::

    step 12.5            set (out of range is refused, not clamped)
    step nudge -0.1      add, clamped to the range
                         (which operations a parameter takes: params.KIND_OPS, by its kind)
    step norm 0.5        a 0..1 position along the range (faders)
    colormap next        cycle forward (prev: backward; cycle N: N places)
    playing toggle       flip an on/off parameter (a bare "playing" does the same)
    gain reset           back to the default
    token kiss           a word of the prompt (or its index; "soccer ball" as two words)
    scene save 3         store every parameter as scene "3" (recall, delete; "scene 3" recalls)
    load out/kiss        open another bundle
    learn gain           MIDI learn: the next control moved plays gain (learn cancel, learn save NAME)
    snapshot shot.png    write the next rendered frame as a PNG into the output folder (a bare
                         "snapshot" picks a name; names hold no folders, see files.py)
    prompt a red kiss    text parameters take the rest of the line (paik live: prompt, negative, size, tokens)
    generate             paik live: a new take from prompt, seed, steps, ... ("generate a cat" sets the
                         prompt too; "generate cancel" stops the running take); "seed next" adds one
    bend 1 gain kiss 2 blocks 10-20 heads 0-3 pass both
                         paik live: bend slot 1 from one bend line (capture/bend.py's grammar; strength
                         sets its amount); "bend 1 off" clears it; bend1_amount 0.5 and the other
                         bendN_ fields play one part of a slot

Values are checked here, when a line is parsed (a MIDI map's lines when the map is loaded), as
far as they can be without the bundle: a number where a number goes, a known choice, a word
that is not empty. Ranges that depend on the bundle are checked when the command is applied.
"""

from __future__ import annotations

import re
import shlex

from paik.errors import PaikError

from paik.instrument.control.files import file_name
from paik.instrument.control.params import BEND_SLOTS, OPS, SPECS, Command, check_op

# actions: names that are not parameters, with the operations they take
ACTIONS = {
    "scene": ("recall", "save", "delete"),
    "load": ("set",),
    "learn": ("arm", "cancel", "save", "clear"),
    "snapshot": ("set",),
    "state": ("get",),
    "generate": ("start", "cancel"),  # paik live: a take from prompt, seed, ... ("generate cancel" stops it)
    "bend": ("set", "off"),  # paik live: a whole bend slot from one bend line ("bend 1 off" clears it)
}
SCENE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def scene_name(value) -> str:
    """A scene name from an OSC int or string; refuses names that could escape the scene folder."""
    if isinstance(value, bool):
        raise PaikError(f"scene name {value!r}: expected a number or a word")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    name = str(value).strip()
    if not SCENE_NAME.match(name) or ".." in name:
        raise PaikError(f"scene name {name!r}: use letters, digits, '-', '_' or '.' (up to 64)")
    return name


def parse(line: str, source: str = "console") -> Command:
    """One line -> one command. Raises PaikError with what was wrong and what is accepted."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError as e:
        raise PaikError(f"{line!r}: {e}") from None
    if not words:
        raise PaikError("empty command")
    name, rest = words[0].lower(), words[1:]
    if name in ACTIONS:
        return _action(name, rest, source)
    if name not in SPECS:
        raise PaikError(f"unknown command {name!r}; parameters: {', '.join(SPECS)}; actions: {', '.join(ACTIONS)}")
    kind = SPECS[name].kind
    if kind == "text" and rest:  # the rest of the line is the text ("prompt a red kiss")
        if rest == ["reset"]:
            return Command(name, "reset", None, source)
        return Command(name, "set", " ".join(rest[1:] if rest[0].lower() == "set" else rest), source)
    if not rest:
        if kind == "bool":
            return Command(name, "toggle", None, source)
        raise PaikError(f"{name} needs a value, e.g. '{name} {SPECS[name].default}'")
    op = rest[0].lower()
    if op in ("next", "prev"):
        check_op(name, "cycle")
        return Command(name, "cycle", 1 if op == "next" else -1, source)
    if op in OPS and op != "pickup":
        check_op(name, op)  # refused when the line is parsed (a MIDI map: when it loads), not later
        arg = " ".join(rest[1:]) if len(rest) > 1 else None
        if op in ("nudge", "norm", "set") and arg is None:
            raise PaikError(f"'{name} {op}' needs a value")
        if op == "cycle":
            arg = _number(arg or "1", name, int)
        elif op in ("nudge", "norm"):
            arg = _number(arg, name, float)
        if op == "set":
            check_value(name, arg)
        return Command(name, op, arg, source)
    value = " ".join(rest)
    check_value(name, value)
    return Command(name, "set", value, source)


def check_value(name: str, value) -> None:
    """Refuse a value that no bundle could accept for parameter ``name`` (PaikError)."""
    spec = SPECS[name]
    text = "" if value is None else str(value).strip()
    if name == "token":
        if not text:
            raise PaikError("token needs a word of the prompt or an index, e.g. 'token kiss'")
        return
    if spec.kind in ("float", "int"):
        try:
            x = float(text)
        except ValueError:
            raise PaikError(f"{name}: {text!r} is not a number") from None
        if x != x or x in (float("inf"), float("-inf")):
            raise PaikError(f"{name} must be finite, not {text!r}")
    elif spec.kind == "bool":
        if text.lower() not in ("1", "0", "true", "false", "on", "off", "yes", "no"):
            raise PaikError(f"{name} must be on or off, not {text!r}")
    elif spec.choices and text not in spec.choices:
        raise PaikError(f"{name} must be one of {', '.join(spec.choices)}, not {text!r}")
    elif not text:
        raise PaikError(f"{name} needs a value")


def _number(text, name: str, typ):
    try:
        return typ(float(text)) if typ is int else typ(text)
    except (TypeError, ValueError):
        raise PaikError(f"{name}: {text!r} is not a number") from None


def _action(name: str, rest: list[str], source: str) -> Command:
    ops = ACTIONS[name]
    if name == "scene":
        if len(rest) == 1:  # "scene 3" recalls
            return Command("scene", "recall", scene_name(rest[0]), source)
        if len(rest) != 2 or rest[0] not in ops:
            raise PaikError("scene: expected 'scene recall NAME', 'scene save NAME' or 'scene delete NAME'")
        return Command("scene", rest[0], scene_name(rest[1]), source)
    if name == "snapshot":
        if not rest:
            return Command(name, "set", None, source)  # a name is picked when it is written
        return Command(name, "set", file_name(" ".join(rest), ".png"), source)
    if name == "load":
        if not rest or not " ".join(rest).strip():
            raise PaikError("load needs a bundle folder")
        return Command(name, "set", " ".join(rest), source)
    if name == "generate":
        if rest == ["cancel"]:
            return Command("generate", "cancel", None, source)
        if rest and rest[0] == "start":
            rest = rest[1:]
        return Command("generate", "start", {"prompt": " ".join(rest)} if rest else {}, source)
    if name == "bend":
        return bend_command(rest, source)
    if name == "learn":
        if not rest:
            raise PaikError("learn: expected a parameter or a command line to arm, or cancel / save NAME / clear")
        if rest[0] in ("cancel", "clear"):
            return Command("learn", rest[0], None, source)
        if rest[0] == "save":
            return Command("learn", "save", scene_name(rest[1]) if len(rest) > 1 else "learned", source)
        target = " ".join(rest)
        if not (len(rest) == 1 and rest[0] in SPECS):
            parse(target)  # a whole command line: check it now, not when the control moves
        return Command("learn", "arm", target, source)
    return Command(name, "get", None, source)


def bend_slot(value) -> int:
    """A bend slot number, 1..BEND_SLOTS, from a word or an OSC int."""
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if not 1 <= n <= BEND_SLOTS:
        raise PaikError(f"bend: slot {value!r} does not exist; slots are 1 to {BEND_SLOTS} (bend 1 mute cat)")
    return n


def bend_command(rest: list[str], source: str) -> Command:
    """``bend N LINE`` / ``bend N off`` -> Command("bend", "set", (N, canonical line)) or
    Command("bend", "off", N). The line is checked now; its word, when the slot reaches a take."""
    if not rest:
        raise PaikError("bend: expected 'bend N OP WORD ...' (like bend 1 gain kiss 2 blocks 10-20) or 'bend N off'")
    n = bend_slot(rest[0])
    if rest[1:] in ([], ["off"]):
        if not rest[1:]:
            raise PaikError(f"bend {n}: expected a bend after the slot (bend {n} mute cat) or off")
        return Command("bend", "off", n, source)
    from paik.capture.bend import parse_bend  # torch: only once a bend is played

    spec = parse_bend(shlex.join(rest[1:]))
    return Command("bend", "set", (n, spec.line()), source)


def format(cmd: Command) -> str:
    """The line that :func:`parse` turns back into ``cmd`` (for maps and logs)."""
    value = "" if cmd.value is None else str(cmd.value)
    if " " in value:
        value = shlex.quote(value)
    if cmd.name == "bend":
        return f"bend {cmd.value} off" if cmd.op == "off" else f"bend {cmd.value[0]} {cmd.value[1]}"
    if cmd.name in ACTIONS:
        if cmd.op in ("set", "get"):
            return f"{cmd.name} {value}".strip()
        return f"{cmd.name} {cmd.op} {value}".strip()
    if cmd.op == "set":
        return f"{cmd.name} {value}"
    return f"{cmd.name} {cmd.op} {value}".strip()
