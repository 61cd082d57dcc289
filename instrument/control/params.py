"""The parameter bank: every knob of the instrument, with its range and default, and the one
way to change it (:func:`apply`).

Keys, the CLI, and later OSC and MIDI all speak the same small command grammar: a
:class:`Command` names a parameter and an operation ("set", "nudge", "toggle", "cycle"). Input
handlers only build commands and enqueue them; the render loop drains the queue once per frame
and applies them here, so no input thread ever touches GL state or a half-updated bank.
"""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass, field, make_dataclass, replace
from typing import Any

from paik.errors import PaikError

VIEWS = ("single", "heads", "blocks", "steps", "grid-blocks", "grid-steps", "grid-heads-steps", "grand", "sweep",
         "twin", "diff")
VIEW_HELP = {
    "single": "one map: token at step, block, head (head -1 = reduce over heads)",
    "heads": "reduce over all heads (at step, block)",
    "blocks": "reduce over all blocks and heads (at step)",
    "steps": "reduce over all steps and heads (at block)",
    "grid-blocks": "a grid of every block at one step (paper Fig. 3)",
    "grid-steps": "a grid of every step at one block (paper Fig. 4)",
    "grid-heads-steps": "heads (columns) x steps (rows) at one block (paper Fig. 5)",
    "grand": "the grand average over steps, blocks and heads (paper Fig. 6)",
    "sweep": "the token's map moving through the steps along the video's timeline",
    "twin": "a bent take (right) beside its unbent twin (left, same seed), one map each over its own video",
    "diff": "bent minus unbent map, signed (blue less, orange more, black unchanged), over the bent video",
}
NORMS = ("global", "frame", "step")
COMPOSITES = ("heatmap", "overlay", "multiply", "screen", "alpha")
BACKGROUNDS = ("video", "preview", "none")
REDUCES = ("mean", "max")


@dataclass(frozen=True)
class Spec:
    """What a parameter may hold. ``choices`` for enums; ``lo``/``hi`` for numbers (``hi`` None
    means the bound comes from the bundle, see :meth:`Params.bounds`)."""

    kind: str  # "float", "int", "bool", "enum", "text"
    default: Any
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""

    @property
    def ops(self) -> tuple[str, ...]:
        """The operations this parameter takes (:data:`KIND_OPS`; "pickup" wherever "norm" is)."""
        return KIND_OPS[self.kind]

    def allows(self, op: str) -> bool:
        return op in self.ops or (op == "pickup" and "norm" in self.ops)

    @property
    def numeric(self) -> bool:
        return self.kind in ("float", "int")

    def out_of_range(self, x: float) -> bool:
        """Outside the bounds known without a bundle (a ``hi`` of None comes from the bundle)."""
        return (self.lo is not None and x < self.lo - 1e-9) or (self.hi is not None and x > self.hi + 1e-9)

    def range_text(self) -> str:
        """The bounds known without a bundle, as messages and docs write them."""
        if self.hi is None:
            return f"{self.lo:g} .. count - 1 (the bundle's)"
        return f"{self.lo:g} .. {self.hi:g}"


# Which operations each kind of parameter takes: the one definition that the grammar, OSC (its
# addresses, OSCQuery, the docs tables), MIDI (the modes a control may use) and apply consult.
# Order is the order of the OSC addresses /paik/NAME, /norm, /nudge, /cycle, /toggle, /reset.
KIND_OPS: dict[str, tuple[str, ...]] = {
    "float": ("set", "norm", "nudge", "reset"),
    "int": ("set", "norm", "nudge", "cycle", "reset"),  # cycle wraps through the range (head, token)
    "bool": ("set", "norm", "toggle", "reset"),
    "enum": ("set", "norm", "cycle", "reset"),
    "text": ("set", "reset"),  # no fader, no steps: a line of text
}


SPECS: dict[str, Spec] = {
    "token": Spec("int", 0, 0, None, help="index into the bundle's captured words"),
    "step": Spec("float", 0.0, 0, None, help="position among captured steps; fractions crossfade"),
    "block": Spec("float", 0.0, 0, None, help="position among captured blocks; fractions crossfade"),
    "head": Spec("int", -1, -1, None, help="head index, -1 = reduce over heads"),
    "view": Spec("enum", "single", choices=VIEWS),
    "reduce": Spec("enum", "mean", choices=REDUCES, help="how reduced axes are combined"),
    "colormap": Spec("enum", "magma", choices=(), help="a LUT from presets/colormaps"),
    "norm": Spec("enum", "global", choices=NORMS, help="range used to normalize the maps"),
    "clip_lo": Spec("float", 0.0, 0.0, 100.0, help="lower percentile clipped to black"),
    "clip_hi": Spec("float", 100.0, 0.0, 100.0, help="upper percentile clipped to white"),
    "gain": Spec("float", 1.0, 0.0, 16.0, help="multiplies the normalized map (then clamped to 1)"),
    "gamma": Spec("float", 1.0, 0.05, 8.0, help="exponent on the map after gain (below 1 brightens weak attention)"),
    "threshold": Spec("float", 0.0, 0.0, 1.0, help="normalized values below are transparent"),
    "composite": Spec("enum", "heatmap", choices=COMPOSITES),
    "background": Spec("enum", "video", choices=BACKGROUNDS, help="what the maps are composited over"),
    "opacity": Spec("float", 0.7, 0.0, 1.0, help="map opacity in the overlay, multiply and screen composites"),
    "time": Spec("float", 0.0, 0.0, 1.0, help="position in the video, 0..1"),
    "speed": Spec("float", 1.0, -8.0, 8.0, help="playback rate (1 = the video's fps)"),
    "playing": Spec("bool", True),
    "tempo": Spec("float", 0.0, 0.0, 300.0, help="BPM of the playhead (0 = the video's own pace x speed); MIDI clock sets it"),
    "beats": Spec("float", 16.0, 1.0, 256.0, help="beats per pass through the video (and the step sweep) when tempo > 0"),
    "smooth": Spec("float", 0.05, 0.0, 5.0, help="seconds continuous parameters take to glide to a new value (0 = jump)"),
    "help": Spec("bool", False, help="show the key overlay"),
    "record": Spec("bool", False, help="record the output to a file while on (paik play --record FILE; each take "
                   "after the first gets _2, _3 ...)"),
    # the next take of `paik live` (the live engine); `generate` starts it
    "follow": Spec("bool", True, help="live takes: show the newest finished step as it arrives"),
    "continuous": Spec("bool", False, help="live: keep generating draft takes (paik live --continuous-*), each "
                       "shown at the loop point of the one playing"),
    "prompt": Spec("text", "", help="prompt of the next take"),
    "negative": Spec("text", "", help="negative prompt of the next take (empty: none)"),
    "seed": Spec("int", 0, 0, 2**31 - 1, help="seed of the next take ('seed next' adds one)"),
    "steps": Spec("int", 0, 0, 1000, help="denoising steps of the next take (0 = the model's default)"),
    "frames": Spec("int", 0, 0, 1025, help="frames of the next take, 4k+1 (0 = the model's default)"),
    "size": Spec("text", "", help="WIDTHxHEIGHT of the next take, like 416x240 (empty: the model's default)"),
    "guidance": Spec("float", 5.0, 1.0, 20.0, help="classifier-free guidance of the next take (1 = off)"),
    "tokens": Spec("text", "", help='words to capture in the next take, like kiss,"soccer ball" (empty: all)'),
    "twin": Spec("bool", False, help="live takes: after a take that played bends, also generate its unbent twin "
                 "(same settings, no bends) for the twin and diff views"),
}
# paik live's bend slots: bend1_op, bend1_word, ... (see paik.capture.bend; "bend 1 LINE" sets a
# whole slot). The operations are capture/bend.py's OPS, written here so the bank needs no torch.
BEND_SLOTS = 4
BEND_PASSES = ("cond", "uncond", "both")  # capture/bend.py's passes
BEND_OPS = ("off", "gain", "mute", "swap", "shift", "rotate", "flip", "zoom", "blur", "sharpen", "mask", "inject")
BEND_FIELDS = {
    "op": Spec("enum", "off", choices=BEND_OPS, help="bend slot N's operation (off: the slot does nothing)"),
    "word": Spec("text", "", help="bend slot N's word or phrase of the prompt"),
    "arg": Spec("text", "", help="bend slot N's operation arguments, like 2 (gain), dog (swap), 0.2 0 (shift); "
                "empty: the op's default"),
    "amount": Spec("float", 1.0, 0.0, 1.0, help="bend slot N's strength, 0..1"),
    "blocks": Spec("text", "", help="bend slot N's blocks, like 10-20 (empty: all)"),
    "steps": Spec("text", "", help="bend slot N's steps, like 0-12 (empty: all)"),
    "heads": Spec("text", "", help="bend slot N's heads, like 0-3 (empty: all)"),
    "pass": Spec("enum", "cond", choices=BEND_PASSES, help="bend slot N's pass: cond (the prompt's), uncond (the "
                 "negative prompt's) or both"),
}
for _n in range(1, BEND_SLOTS + 1):
    SPECS.update({f"bend{_n}_{k}": replace(v, help=v.help.replace("slot N", f"slot {_n}")) for k, v in BEND_FIELDS.items()})
TEXT_MAX = 2000  # characters of a text parameter (a prompt)
# continuous parameters glide (see instrument/live.py); time is the playhead and never glides
SMOOTHED = ("step", "block", "clip_lo", "clip_hi", "gain", "gamma", "threshold", "opacity", "speed")


# the bend slots' fields of Params, one per SPECS entry above
_BendSlots = make_dataclass("_BendSlots", [
    (f"bend{n}_{k}", {"enum": str, "text": str, "float": float}[v.kind], field(default=v.default))
    for n in range(1, BEND_SLOTS + 1) for k, v in BEND_FIELDS.items()])


@dataclass
class Params(_BendSlots):
    """The live values. Bounds that depend on the bundle (token, step, block, head counts) are
    set once with :meth:`bind`."""

    token: int = 0
    step: float = 0.0
    block: float = 0.0
    head: int = -1
    view: str = "single"
    reduce: str = "mean"
    colormap: str = "magma"
    norm: str = "global"
    clip_lo: float = 0.0
    clip_hi: float = 100.0
    gain: float = 1.0
    gamma: float = 1.0
    threshold: float = 0.0
    composite: str = "heatmap"
    background: str = "video"
    opacity: float = 0.7
    time: float = 0.0
    speed: float = 1.0
    playing: bool = True
    tempo: float = 0.0
    beats: float = 16.0
    smooth: float = 0.05
    help: bool = False
    record: bool = False
    follow: bool = True
    continuous: bool = False
    prompt: str = ""
    negative: str = ""
    seed: int = 0
    steps: int = 0
    frames: int = 0
    size: str = ""
    guidance: float = 5.0
    tokens: str = ""
    twin: bool = False
    # bundle-dependent bounds (counts); not parameters themselves
    n_tokens: int = field(default=1, repr=False)
    n_steps: int = field(default=1, repr=False)
    n_blocks: int = field(default=1, repr=False)
    n_heads: int = field(default=1, repr=False)
    colormaps: tuple[str, ...] = field(default=("magma",), repr=False)

    def bind(self, n_tokens: int, n_steps: int, n_blocks: int, n_heads: int, colormaps: tuple[str, ...]) -> "Params":
        self.n_tokens, self.n_steps, self.n_blocks, self.n_heads = n_tokens, n_steps, n_blocks, n_heads
        self.colormaps = tuple(colormaps)
        for name in SPECS:  # re-clamp values set before the bounds were known
            setattr(self, name, _coerce(self, name, getattr(self, name)))
        return self

    def bounds(self, name: str) -> tuple[float, float]:
        spec = SPECS[name]
        hi = {"token": self.n_tokens - 1, "step": self.n_steps - 1, "block": self.n_blocks - 1,
              "head": self.n_heads - 1}.get(name, spec.hi)
        return spec.lo, hi

    def choices(self, name: str) -> tuple[str, ...]:
        return self.colormaps if name == "colormap" else SPECS[name].choices

    def copy(self) -> "Params":
        return replace(self)

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SPECS}


@dataclass(frozen=True)
class Command:
    """One change to the bank: ``op`` is "set" (value; out of range is an error), "nudge" (add
    value, clamped), "toggle" (bools), "cycle" (enums and ints: step by value, wrapping), "norm"
    (a 0..1 position along the range or list of choices: faders), "reset" (the default), or
    "pickup" (value = (position 0..1, previous position or None): a fader under soft takeover,
    resolved by :class:`paik.instrument.control.live.Live`). ``source`` names who sent it ("key", "osc",
    "midi:<port>:<control>", ...); names outside the bank are actions (see instrument/grammar.py)."""

    name: str
    op: str = "set"
    value: Any = None
    source: str = ""


OPS = ("set", "nudge", "toggle", "cycle", "norm", "reset", "pickup")
OP_HELP = {"set": "set (out of range is refused)", "norm": "a 0..1 position along the range or the choices",
           "nudge": "add, clamped", "cycle": "step through, wrapping", "toggle": "flip on/off",
           "reset": "back to the default"}


def check_op(name: str, op: str) -> None:
    """Refuse an operation that parameter ``name`` does not take (PaikError saying which it does)."""
    spec = SPECS.get(name)
    if spec is None:
        raise PaikError(f"unknown parameter {name!r}; parameters: {', '.join(SPECS)}")
    if op not in OPS:
        raise PaikError(f"unknown operation {op!r} ({', '.join(OPS[:-1])})")
    if not spec.allows(op):
        raise PaikError(f"{name} ({_KIND_WORDS[spec.kind]}) takes {', '.join(spec.ops)}; not {op}")


_KIND_WORDS = {"float": "a number", "int": "a whole number", "bool": "on/off", "enum": "a choice", "text": "text"}


def normalized(p: Params, name: str, value=None) -> float:
    """The value (default: the current one) as a 0..1 position, as a fader or LED would show it."""
    spec = SPECS[name]
    v = getattr(p, name) if value is None else value
    if spec.kind == "text":
        return 0.0
    if spec.kind == "bool":
        return 1.0 if v else 0.0
    if spec.kind == "enum":
        choices = p.choices(name)
        return choices.index(v) / max(len(choices) - 1, 1) if v in choices else 0.0
    lo, hi = p.bounds(name)
    return 0.0 if hi <= lo else min(1.0, max(0.0, (float(v) - lo) / (hi - lo)))


def denormalized(p: Params, name: str, x: float):
    """A 0..1 position -> a value of the parameter (enums: equal bands per choice)."""
    x = float(x)
    if not (math.isfinite(x) and -1e-9 <= x <= 1 + 1e-9):
        raise PaikError(f"{name}: a normalized value must lie in 0..1, not {x!r}")
    x = min(1.0, max(0.0, x))
    spec = SPECS[name]
    if spec.kind == "text":
        raise PaikError(f"{name} is text, not a fader; send it a string")
    if spec.kind == "bool":
        return x >= 0.5
    if spec.kind == "enum":
        choices = p.choices(name)
        return choices[min(int(x * len(choices)), len(choices) - 1)]
    lo, hi = p.bounds(name)
    v = lo + x * (hi - lo)
    return int(round(v)) if spec.kind == "int" else v


def _coerce(p: Params, name: str, value, strict: bool = False):
    spec = SPECS.get(name)
    if spec is None:
        raise PaikError(f"unknown parameter {name!r}; parameters: {', '.join(SPECS)}")
    if spec.kind == "text":
        text = " ".join(str(value).split())  # one line: no control characters reach a prompt
        if len(text) > TEXT_MAX:
            raise PaikError(f"{name} is {len(text)} characters long; at most {TEXT_MAX}")
        return text
    if spec.kind == "enum":
        choices = p.choices(name)
        value = str(value)
        if value not in choices:
            raise PaikError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        return value
    if spec.kind == "bool":
        if isinstance(value, str):
            if value.lower() not in ("1", "0", "true", "false", "on", "off", "yes", "no"):
                raise PaikError(f"{name} must be on or off, not {value!r}")
            return value.lower() in ("1", "true", "on", "yes")
        return bool(value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise PaikError(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(x):
        raise PaikError(f"{name} must be finite, not {value!r}")
    lo, hi = p.bounds(name)
    if strict and ((lo is not None and x < lo - 1e-9) or (hi is not None and x > hi + 1e-9)):
        raise PaikError(f"{name} {x:g} is out of range ({lo:g}..{hi:g})")
    x = max(lo, x) if lo is not None else x
    x = min(hi, x) if hi is not None else x
    # float() again: a clamp to an integer bound must not turn a float parameter into an int
    # (feedback would then send it as i, not the f that OSCQuery announces)
    return int(round(x)) if spec.kind == "int" else float(x)


def apply(p: Params, cmd: Command) -> None:
    """Apply one command to the bank in place. Raises PaikError for unknown names or bad values."""
    spec = SPECS.get(cmd.name)
    if spec is None:
        raise PaikError(f"unknown parameter {cmd.name!r}; parameters: {', '.join(SPECS)}")
    check_op(cmd.name, cmd.op)
    cur = getattr(p, cmd.name)
    strict = False
    if cmd.op == "set":
        new, strict = cmd.value, True
    elif cmd.op == "norm":
        new = denormalized(p, cmd.name, cmd.value)
    elif cmd.op == "reset":
        new = spec.default
    elif cmd.op == "toggle":
        new = not cur
    elif cmd.op == "nudge":
        new = cur + float(cmd.value)
    elif cmd.op == "cycle" and spec.kind == "enum":
        choices = p.choices(cmd.name)
        new = choices[(choices.index(cur) + int(cmd.value or 1)) % len(choices)]
    elif cmd.op == "cycle":
        lo, hi = p.bounds(cmd.name)
        span = int(hi - lo + 1)
        new = lo + (int(cur - lo) + int(cmd.value or 1)) % span
    else:  # pickup: resolved to norm by paik.instrument.control.live.Live before it gets here
        raise PaikError(f"{cmd.op} is resolved by the render loop, not applied to the bank")
    value = _coerce(p, cmd.name, new, strict)
    if cmd.name in ("clip_lo", "clip_hi"):  # as the command line's --clip LO,HI: LO < HI
        lo, hi = (value, p.clip_hi) if cmd.name == "clip_lo" else (p.clip_lo, value)
        if not lo < hi:
            raise PaikError(f"{cmd.name} {value:g} refused: clip_lo must stay below clip_hi ({lo:g} >= {hi:g}); "
                            "move the other one first")
    setattr(p, cmd.name, value)


class CommandQueue:
    """Thread-safe inbox. Producers (keys, OSC, MIDI) :meth:`put`; once per frame the render loop
    (:meth:`paik.instrument.control.live.Live.update`) :meth:`take` s them all. Bad commands are logged by the
    caller, never fatal."""

    def __init__(self):
        self._q: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._ready = threading.Event()

    def put(self, cmd: Command) -> None:
        self._q.put(cmd)
        self._ready.set()

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a command (a loop that renders on demand)."""
        return self._ready.wait(max(0.0, timeout))

    def take(self) -> list[Command]:
        """Every pending command, in order (the caller applies them)."""
        self._ready.clear()
        out = []
        while True:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                return out

    def drain(self, p: Params) -> list[str]:
        """Apply every pending command; returns the error messages of those that failed."""
        errors = []
        for cmd in self.take():
            try:
                apply(p, cmd)
            except PaikError as e:
                errors.append(str(e))
        return errors

