"""MIDI in (mido + python-rtmidi): controller maps as data, learn, soft takeover, 14-bit CCs,
notes as triggers and toggles, LED feedback, MIDI clock as the playhead's tempo, and ports that
come and go while the instrument runs.

A map is a TOML preset (``presets/midi/*.toml``; see ``generic.toml`` for every field). Each
``[[control]]`` is a CC (``cc = 7``), a 14-bit CC pair (``cc14 = [0, 32]``: MSB, LSB) or a note
(``note = 36``), optionally on one ``channel`` (1-16), and plays either a parameter
(``param = "step"``: faders and knobs cover its range; notes toggle an on/off parameter or step
through choices) or a line of the command grammar (``command = "scene recall 1"``: on press).

:class:`Controller` turns messages into commands (no I/O: tests feed it mido messages);
:class:`MidiHub` owns the ports: it opens the wanted ones, notices when one disappears, reopens
it when it comes back, and lights LEDs from the state. Port callbacks only parse and enqueue.

Soft takeover: an absolute control sends ``Command(param, "pickup", (x, previous x))``; the
render loop (:class:`~paik.instrument.control.live.Live`) lets it move the parameter only once it reaches or
crosses the current value, so a fader never makes a parameter jump.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from paik.errors import PaikError

from paik.instrument.control import grammar, tomlio
from paik.instrument.control.live import Live, RateLimitedLog
from paik.instrument.control.params import SPECS, Command
from paik import resources

log = logging.getLogger("paik.midi")

SHIPPED = resources.presets("midi")
MODES = ("absolute", "relative", "toggle", "momentary", "trigger", "cycle")
# What a control in each mode sends to its parameter, first choice first; a mode fits a parameter
# whose kind takes one of them (params.KIND_OPS), so a map that could only fail mid-show is refused
# when it loads. (A button in absolute or relative mode sends norm 1.0: every kind taking nudge
# takes norm.)
MODE_OPS = {
    "absolute": ("norm",),  # faders and knobs; soft takeover's "pickup" resolves to norm
    "relative": ("nudge",),  # endless encoders
    "toggle": ("toggle", "cycle"),  # flips an on/off parameter, else steps through
    "momentary": ("toggle",),  # held = on, released = off (sent as set on/off): on/off parameters only
    "trigger": ("cycle",),
    "cycle": ("cycle",),
}


def modes_for(param: str, kind: str = "cc") -> tuple[str, ...]:
    """The modes a control (``kind`` cc, cc14 or note) may use to play parameter ``param``. A note
    is never an encoder: it has no relative mode."""
    spec = SPECS[param]
    return tuple(m for m in MODES if any(spec.allows(op) for op in MODE_OPS[m])
                 and not (kind == "note" and m == "relative"))


def default_mode(kind: str, param: str) -> str:
    """A fader or knob covers the range; a button (a note) flips an on/off parameter or steps."""
    return "absolute" if kind != "note" else "toggle" if SPECS[param].kind == "bool" else "cycle"


def check_mode(param: str, mode: str, kind: str = "cc") -> None:
    fits = modes_for(param, kind)
    if mode not in fits:
        raise PaikError(f"mode {mode!r} does not fit {param} ({SPECS[param].kind}, which takes "
                        f"{', '.join(SPECS[param].ops)}); " +
                        (f"modes that fit: {', '.join(fits)}" if fits else
                         f"no control mode fits it: use command = \"{param} ...\" instead"))
CLOCK_WINDOW = 24  # ticks averaged (one beat at 24 PPQN)


def user_dir() -> Path:
    return Path(os.environ.get("PAIK_MIDI_MAPS") or Path.home() / ".config" / "paik" / "midi")


@dataclass
class Control:
    kind: str  # "cc", "cc14", "note"
    number: int | tuple[int, int]
    channel: int | None  # 0-15 (mido), None = any
    param: str | None = None
    command: Command | None = None
    release: Command | None = None
    mode: str = "absolute"
    pickup: bool = True
    amount: float = 0.0  # relative encoders: change per tick (default: 1/100 of the range)
    led: bool = False
    led_on: int = 127
    led_off: int = 0

    def key(self) -> tuple:
        return (self.kind, self.number, self.channel)

    def to_toml(self) -> dict:
        d: dict = {self.kind: list(self.number) if self.kind == "cc14" else self.number}
        if self.channel is not None:
            d["channel"] = self.channel + 1
        if self.param:
            d["param"] = self.param
        if self.command:
            d["command"] = grammar.format(self.command)
        if self.release:
            d["release"] = grammar.format(self.release)
        d["mode"] = self.mode
        if self.led:
            d.update(led=True, led_on=self.led_on, led_off=self.led_off)
        return d


@dataclass
class MidiMap:
    name: str
    match: tuple[str, ...] = ()
    controls: list[Control] = field(default_factory=list)
    clock: bool = True
    path: Path | None = None

    def fits(self, port: str) -> bool:
        return any(m.lower() in port.lower() for m in self.match)

    def put(self, c: Control) -> None:
        """Add a control, replacing one on the same message (learn)."""
        self.controls = [x for x in self.controls if x.key() != c.key()] + [c]

    def to_toml(self) -> dict:
        return {"name": self.name, "match": list(self.match), "clock": self.clock,
                "control": [c.to_toml() for c in self.controls]}


def _int(d: dict, key: str, lo: int, hi: int, where: str) -> int:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise PaikError(f"{where}: {key} must be a whole number {lo}..{hi}, not {v!r}")
    return v


KEYS = {"cc", "cc14", "note", "channel", "param", "command", "release", "mode", "pickup", "amount", "led",
        "led_on", "led_off"}


def _bool(d: dict, key: str, default: bool, where: str) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise PaikError(f"{where}: {key} must be true or false, not {v!r}")
    return v


def parse_map(data: dict, where: str = "map") -> MidiMap:
    """A map from its TOML tables; every mistake names the control it is in. Every command
    line is parsed (values included) here, so a bad line is refused when the map loads, never
    when the control is pressed mid-show."""
    if not isinstance(data, dict) or not isinstance(data.get("control", []), list):
        raise PaikError(f"{where}: [[control]] entries expected")
    match = data.get("match", [])
    if isinstance(match, str) or not isinstance(match, list) or not all(isinstance(x, str) for x in match):
        raise PaikError(f"{where}: match must be a list of port name parts, like [\"nanoKONTROL2\"]")
    m = MidiMap(str(data.get("name", where)), tuple(match), [], _bool(data, "clock", True, where))
    for i, d in enumerate(data.get("control", [])):
        at = f"{where}: control #{i + 1}"
        if not isinstance(d, dict):
            raise PaikError(f"{at}: expected a table ([[control]]), not {d!r}")
        unknown = sorted(set(d) - KEYS)
        if unknown:
            raise PaikError(f"{at}: unknown field {', '.join(unknown)}; fields: {', '.join(sorted(KEYS))}")
        kinds = [k for k in ("cc", "cc14", "note") if k in d]
        if len(kinds) != 1:
            raise PaikError(f"{at}: give exactly one of cc, cc14, note")
        kind = kinds[0]
        if kind == "cc14":
            pair = d["cc14"]
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, int) and 0 <= x < 128 for x in pair)):
                raise PaikError(f"{at}: cc14 must be [MSB, LSB] controller numbers, like [0, 32]")
            number = (pair[0], pair[1])
        else:
            number = _int(d, kind, 0, 127, at)
        channel = _int(d, "channel", 1, 16, at) - 1 if "channel" in d else None
        param, command, release = d.get("param"), None, None
        if (param is None) == ("command" not in d):
            raise PaikError(f"{at}: give either param or command")
        if param is not None and (not isinstance(param, str) or param not in SPECS):
            raise PaikError(f"{at}: unknown parameter {param!r}; parameters: {', '.join(SPECS)}")
        try:
            for key in ("command", "release"):
                if key in d and not isinstance(d[key], str):
                    raise PaikError(f"{key} must be a command line in quotes, not {d[key]!r}")
            if "command" in d:
                command = grammar.parse(d["command"], source="midi")
            if "release" in d:
                release = grammar.parse(d["release"], source="midi")
        except PaikError as e:
            raise PaikError(f"{at}: {e}") from None
        mode = d.get("mode", default_mode(kind, param) if param else "trigger")
        if mode not in MODES:
            raise PaikError(f"{at}: mode must be one of {', '.join(MODES)}, not {mode!r}")
        if param:
            try:
                check_mode(param, mode, kind)
            except PaikError as e:
                raise PaikError(f"{at}: {e}") from None
        amount = d.get("amount", 0.0)
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not abs(amount) < 1e6:
            raise PaikError(f"{at}: amount must be a number (change per encoder tick), not {amount!r}")
        c = Control(kind, number, channel, param, command, release, mode, _bool(d, "pickup", True, at),
                    float(amount), _bool(d, "led", False, at),
                    _int(d, "led_on", 0, 127, at) if "led_on" in d else 127,
                    _int(d, "led_off", 0, 127, at) if "led_off" in d else 0)
        m.controls.append(c)
    return m


def map_dirs() -> list[Path]:
    return [user_dir(), SHIPPED]


def load_map(name_or_path: str) -> MidiMap:
    """A map by file path or by name (``~/.config/paik/midi/NAME.toml``, then ``presets/midi``)."""
    p = Path(name_or_path)
    if p.suffix != ".toml" or not p.is_file():
        p = next((d / f"{name_or_path}.toml" for d in map_dirs() if (d / f"{name_or_path}.toml").is_file()), None)
        if p is None:
            raise PaikError(f"no MIDI map {name_or_path!r}; maps: {', '.join(n for n, _ in available_maps())}")
    m = parse_map(tomlio.load(p), str(p))
    m.path = p
    return m


def available_maps() -> list[tuple[str, Path]]:
    seen = {}
    for d in map_dirs():
        for f in sorted(d.glob("*.toml")) if d.is_dir() else ():
            seen.setdefault(f.stem, f)
    return sorted(seen.items())


def map_for_port(port: str) -> MidiMap:
    for name, _ in available_maps():
        try:
            m = load_map(name)
        except PaikError as e:
            log.warning("%s (map skipped)", e)
            continue
        if m.fits(port):
            return m
    return load_map("generic")


class Controller:
    """One port's map in action: :meth:`handle` turns a mido message into commands."""

    def __init__(self, midi_map: MidiMap, port: str = "midi"):
        self.map, self.port = midi_map, port
        self._last: dict[tuple, float] = {}  # control key -> last position 0..1 (pickup needs where it was)
        self._msb: dict[tuple, int] = {}  # (channel, msb cc) -> value
        self._ticks: list[float] = []
        self._tempo_sent = 0.0
        self._pressed: dict[tuple, bool] = {}

    def source(self, c: Control) -> str:
        return f"midi:{self.port}:{c.kind}{c.number}"

    def handle(self, msg, now: float | None = None) -> list[Command]:
        t = msg.type
        if t == "clock":
            return self._clock(time.perf_counter() if now is None else now)
        if t == "start":
            self._ticks.clear()
            return [Command("time", "set", 0.0, "midi-clock"), Command("playing", "set", True, "midi-clock")] \
                if self.map.clock else []
        if t == "control_change":
            return self._cc(msg.channel, msg.control, msg.value)
        if t in ("note_on", "note_off"):
            on = t == "note_on" and msg.velocity > 0
            return self._note(msg.channel, msg.note, on)
        return []  # aftertouch, pitch bend, sysex, ...: not mapped

    def _find(self, kind: str, number, channel: int) -> list[Control]:
        return [c for c in self.map.controls if c.kind == kind and c.number == number
                and (c.channel is None or c.channel == channel)]

    def _cc(self, channel: int, cc: int, value: int) -> list[Command]:
        out = []
        for c in self.map.controls:
            if c.kind != "cc14" or (c.channel is not None and c.channel != channel):
                continue
            msb, lsb = c.number
            if cc == msb:
                self._msb[(channel, msb)] = value  # the LSB that follows completes the value
            elif cc == lsb and (channel, msb) in self._msb:
                out += self._position(c, ((self._msb[(channel, msb)] << 7) | value) / 16383.0)
        for c in self._find("cc", cc, channel):
            if c.param and c.mode == "absolute":
                out += self._position(c, value / 127.0)
            elif c.param and c.mode == "relative":
                ticks = value if value < 64 else value - 128  # two's complement encoders
                lo, hi = _bounds_hint(c.param)
                default = (hi - lo) / 100.0 if hi is not None else (1.0 if SPECS[c.param].kind == "int" else 0.1)
                amount = c.amount or default
                out.append(Command(c.param, "nudge", ticks * amount, self.source(c)))
            else:  # a button sending CC: 127 pressed, 0 released
                out += self._button(c, value >= 64)
        return out

    def _note(self, channel: int, note: int, on: bool) -> list[Command]:
        out = []
        for c in self._find("note", note, channel):
            out += self._button(c, on)
        return out

    def _position(self, c: Control, x: float) -> list[Command]:
        prev = self._last.get(c.key())
        self._last[c.key()] = x
        if c.pickup:
            return [Command(c.param, "pickup", (x, prev), self.source(c))]
        return [Command(c.param, "norm", x, self.source(c))]

    def _button(self, c: Control, on: bool) -> list[Command]:
        was = self._pressed.get(c.key(), False)
        self._pressed[c.key()] = on
        if on == was:
            return []  # a held button repeating, or a release without press
        src = self.source(c)
        if c.command is not None:
            cmd = c.command if on else c.release
            return [] if cmd is None else [Command(cmd.name, cmd.op, cmd.value, src)]
        if c.mode == "momentary":
            return [Command(c.param, "set", on, src)]
        if not on:
            return []
        if c.mode in ("cycle", "toggle", "trigger"):
            # a control built by hand, not by parse_map, may not fit: it sends what apply refuses
            op = next((o for o in MODE_OPS[c.mode] if SPECS[c.param].allows(o)), MODE_OPS[c.mode][-1])
            return [Command(c.param, op, 1 if op == "cycle" else None, src)]
        return [Command(c.param, "norm", 1.0, src)]

    def _clock(self, now: float) -> list[Command]:
        """24 ticks per quarter note; the tempo is the mean over the last beat, sent when it moves."""
        if not self.map.clock:
            return []
        ticks = self._ticks
        if ticks and now - ticks[-1] > 1.0:  # the clock stopped and started again
            ticks.clear()
        ticks.append(now)
        if len(ticks) > CLOCK_WINDOW + 1:
            del ticks[0]
        if len(ticks) <= CLOCK_WINDOW // 2:
            return []
        bpm = 60.0 / ((ticks[-1] - ticks[0]) / (len(ticks) - 1) * 24.0)
        if not 20.0 <= bpm <= 300.0 or abs(bpm - self._tempo_sent) < 0.5:
            return []
        self._tempo_sent = bpm
        return [Command("tempo", "set", round(bpm, 2), "midi-clock")]

    # -- LEDs -------------------------------------------------------------------------------
    def leds(self, values: dict) -> dict[tuple, int]:
        """What every control with ``led = true`` should show now: key -> value to send."""
        out = {}
        for c in self.map.controls:
            if c.led:
                out[c.key()] = c.led_on if _lit(c, values) else c.led_off
        return out


def _bounds_hint(param: str):
    spec = SPECS[param]
    return spec.lo, spec.hi


def _lit(c: Control, values: dict) -> bool:
    if c.param:
        v = values.get(c.param)
        return bool(v) if SPECS[c.param].kind == "bool" else False
    cmd = c.command
    if cmd.name == "scene":
        return cmd.op == "recall" and values.get("scene") == str(cmd.value)
    if cmd.name in SPECS:
        if cmd.op in ("toggle",):
            return bool(values.get(cmd.name))
        if cmd.op == "set":
            v = values.get(cmd.name)
            if cmd.name == "token" and not str(cmd.value).lstrip("-").isdigit():
                words = values.get("words", ())
                return 0 <= v < len(words) and words[v] == str(cmd.value)
            try:
                return v == type(v)(cmd.value) if not isinstance(v, bool) else v == grammar.parse(
                    f"{cmd.name} {cmd.value}").value
            except (TypeError, ValueError, PaikError):
                return str(v) == str(cmd.value)
    return False


def _msg_for(key: tuple, value: int):
    import mido

    kind, number, channel = key
    ch = channel or 0
    if kind == "note":
        return mido.Message("note_on", channel=ch, note=number, velocity=value)
    return mido.Message("control_change", channel=ch, control=number if kind == "cc" else number[0], value=value)


class _Port:
    def __init__(self, name: str, inport, outport, controller: Controller):
        self.name, self.inport, self.outport, self.controller = name, inport, outport, controller
        self.leds: dict[tuple, int] = {}


class MidiHub:
    """Opens the wanted input ports (substrings of their names; None = all), rescans every
    ``poll`` seconds, and reopens ports that come back. ``backend`` is mido or anything with its
    ``get_input_names``/``get_output_names``/``open_input``/``open_output``."""

    def __init__(self, live: Live, wanted: list[str] | None = None, map_name: str | None = None,
                 backend=None, poll: float = 1.0, rlog: RateLimitedLog | None = None):
        if backend is None:
            import mido

            backend = mido
        self.live, self.wanted, self.backend, self.poll = live, wanted, backend, poll
        self.forced_map = load_map(map_name) if map_name else None
        self.rlog = rlog or live.rlog
        self.ports: dict[str, _Port] = {}
        self.armed: str | None = None
        self.learned: MidiMap | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paik-midi", daemon=True)
        self._unavailable_logged = False
        live.actions["learn"] = self._learn_action
        live.listeners.append(self._feedback)

    def start(self) -> "MidiHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        with self._lock:
            for name in list(self.ports):
                self._close(name)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan()
            except Exception as e:  # noqa: BLE001 - a port or a map gone bad: keep the others
                self.rlog("midi-scan", f"midi: {type(e).__name__}: {e}")
            self._stop.wait(self.poll)

    def _wants(self, name: str) -> bool:
        return self.wanted is None or any(w.lower() in name.lower() for w in self.wanted)

    def scan(self) -> None:
        """Open new wanted ports, close vanished ones (they reopen when they return)."""
        try:
            names = list(self.backend.get_input_names())
        except Exception as e:  # no ALSA sequencer / CoreMIDI: retry quietly
            if not self._unavailable_logged:
                log.warning("MIDI is not available here (%s); will keep looking", e)
                self._unavailable_logged = True
            return
        self._unavailable_logged = False
        with self._lock:
            for name in [n for n in self.ports if n not in names]:
                log.warning("MIDI port %r disappeared; it will be reopened when it comes back", name)
                self._close(name)
            for name in names:
                if name in self.ports or not self._wants(name) or name.startswith(("Midi Through", "paik")):
                    continue
                self._open(name)

    def _open(self, name: str) -> None:
        try:
            m = self.forced_map or map_for_port(name)
        except PaikError as e:
            self.rlog("midi-open", f"midi: no usable map for {name!r}: {e}")
            return
        ctl = Controller(m, name)
        try:
            inport = self.backend.open_input(name, callback=lambda msg, n=name: self._on_message(n, msg))
        except Exception as e:
            self.rlog("midi-open", f"midi: cannot open {name!r}: {e}")
            return
        outport = None
        if any(c.led for c in m.controls):
            try:
                outs = list(self.backend.get_output_names())
                out = next((o for o in outs if o == name), None) or next(
                    (o for o in outs if _stem(o) == _stem(name)), None)
                outport = self.backend.open_output(out) if out else None
            except Exception as e:
                self.rlog("midi-open", f"midi: no LED output for {name!r}: {e}")
        self.ports[name] = _Port(name, inport, outport, ctl)
        log.warning("MIDI: opened %r with map %r%s", name, m.name, " (LEDs on)" if outport else "")
        self._feedback(self.live.values, {}, force=True)

    def _close(self, name: str) -> None:
        port = self.ports.pop(name, None)
        if port is None:
            return
        for p in (port.inport, port.outport):
            try:
                if p is not None:
                    p.close()
            except Exception:
                pass

    # -- the port's thread: parse and enqueue only ---------------------------------------------------
    def _on_message(self, name: str, msg) -> None:
        try:
            port = self.ports.get(name)
            if port is None:
                return
            if self.armed is not None and msg.type in ("control_change", "note_on"):
                if msg.type == "note_on" and msg.velocity == 0:
                    return
                self._learn(port, msg)
                return
            for cmd in port.controller.handle(msg):
                self.live.put(cmd)
        except Exception as e:  # garbage must never reach the loop or kill the port's thread
            self.rlog("midi", f"midi: ignored a message from {name!r}: {type(e).__name__}: {e}")

    # -- learn ------------------------------------------------------------------------------------
    def _learn_action(self, cmd: Command) -> None:
        if cmd.op == "arm":
            target = str(cmd.value).strip()
            if target not in SPECS:
                grammar.parse(target, "midi")  # refused now, not when the control moves
            elif not modes_for(target):
                raise PaikError(f"learn {target}: no MIDI control can play {target} ({SPECS[target].kind}); "
                                f"learn a command line instead, like 'learn {target} reset'")
            self.armed = target
            log.warning("MIDI learn: move a control to play %r", self.armed)
        elif cmd.op == "cancel":
            self.armed = None
        elif cmd.op == "clear":
            self.learned = None
        elif cmd.op == "save":
            if self.learned is None:
                raise PaikError("nothing learned yet: 'learn PARAM', then move a control")
            path = user_dir() / f"{grammar.scene_name(cmd.value)}.toml"
            self.learned.name = str(cmd.value)
            tomlio.save(path, self.learned.to_toml(), header="paik MIDI map, made with MIDI learn")
            log.warning("MIDI learn: saved %s", path)

    def _learn(self, port: _Port, msg) -> None:
        target, self.armed = self.armed, None
        kind = "cc" if msg.type == "control_change" else "note"
        number = msg.control if kind == "cc" else msg.note
        if target in SPECS:
            mode = default_mode(kind, target)
            if mode not in modes_for(target, kind):  # a button for a float: press = the top of its range
                mode = modes_for(target, kind)[0]
            c = Control(kind, number, msg.channel, param=target, mode=mode)
        else:
            c = Control(kind, number, msg.channel, command=grammar.parse(target, "midi"), mode="trigger")
        port.controller.map.put(c)  # plays at once
        if kind == "cc":
            port.controller._last[c.key()] = msg.value / 127.0  # where it is: pickup can cross from here
        if self.learned is None:
            self.learned = MidiMap("learned", (_stem(port.name),), list(port.controller.map.controls),
                                   port.controller.map.clock)
        self.learned.put(c)
        log.warning("MIDI learn: %s %s (channel %d) on %r -> %s", kind, number, msg.channel + 1, port.name, target)

    # -- LEDs (render thread; sends only what changed) --------------------------------------------
    def _feedback(self, values: dict, changed: dict, force: bool = False) -> None:
        for port in list(self.ports.values()):
            if port.outport is None:
                continue
            for key, v in port.controller.leds(values).items():
                if force or port.leds.get(key) != v:
                    port.leds[key] = v
                    try:
                        port.outport.send(_msg_for(key, v))
                    except Exception as e:
                        self.rlog("midi-led", f"midi: LED feedback to {port.name!r} failed: {e}")


def _stem(port_name: str) -> str:
    """A port name without ALSA's client:port numbers (they change when a device is replugged)."""
    return re.sub(r"\s+\d+:\d+$", "", port_name).strip()
