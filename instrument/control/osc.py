"""OSC in and out (python-osc for the wire format; our own socket loop).

Every parameter has an address with its natural type and 0..1 variants for faders; every
address is also a line of the command grammar (``/paik/step/nudge 0.5`` is ``step nudge 0.5``).
:func:`address_space` is the single list the server, the OSCQuery namespace, the README table
and the patch tests are built from.

The receive thread only parses and enqueues (the render loop applies). python-osc's own server
swallows parse errors silently; here every bad packet (malformed, unknown address, wrong types,
unknown type tags, sender not allowed) is dropped with a rate-limited log line, and every
refusal (those, and what the render loop refuses: out of range, unknown words, files) reaches
the sender's subscriptions as ``/paik/error s`` (at most ``ERRORS_PER_SECOND`` per host).

Feedback: a client sends ``/paik/subscribe`` (replies go to the port it sends from) or
``/paik/subscribe i PORT`` (replies go to PORT on its host). It gets the whole state at once and
then every change, once per frame: ``/paik/<param> value`` and ``/paik/<param>/norm f``, plus
``/paik/token/word s``, ``/paik/words s...``, ``/paik/counts i i i i`` and ``/paik/scene s``.
Every value goes out with the type OSCQuery announces for it (``f`` for step and block even
when they sit on a whole number).

Not a reflector: a whole state (``/paik/state``, ``/paik/subscribe``) answers at most
``STATES_PER_SECOND`` requests a second per host, and a reply PORT other than the sender's own
is honoured only where every sender is trusted: OSC listening on loopback only (this machine's
own programs, such as Max or Pd with separate send and receive ports), or a sender named in
``--osc-allow``. Senders are compared as IPv4 when they arrive as IPv4-mapped IPv6
(``::ffff:a.b.c.d`` on a socket bound to ``::``).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_message import OscMessage, ParseError
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.parsing import osc_types

from paik.errors import PaikError

from paik.instrument.control import grammar
from paik.instrument.control.live import Live, RateLimitedLog
from paik.instrument.control.params import SPECS, Command, Params, normalized

log = logging.getLogger("paik.osc")

PREFIX = "/paik"
MAX_SUBSCRIBERS = 32
STATES_PER_SECOND = 2.0  # whole-state replies per sender host (burst: STATE_BURST)
STATE_BURST = 6
STATES_PER_SECOND_ALL = 20.0  # and from all hosts together (spoofed senders each get a fresh burst)
ERRORS_PER_SECOND = 10.0  # /paik/error datagrams per sender host (burst: ERROR_BURST)
ERROR_BURST = 20
TYPE_TAGS = set("ifdsbrmtTFNh[]")  # what python-osc parses (it logs every other tag on the root logger)


@dataclass(frozen=True)
class Address:
    path: str
    types: tuple[str, ...]  # accepted type tag strings ("f", "i", "s", "T" for bools, "" = no argument)
    help: str
    param: str | None = None  # the parameter it reads back (OSCQuery VALUE, feedback)
    rng: tuple = ()  # (lo, hi) for numbers, or the list of choices
    writable: bool = True


def _kind_types(spec) -> tuple[str, ...]:
    return {"float": ("f", "i"), "int": ("i", "f"), "bool": ("i", "T", "f", ""), "enum": ("s", "i"), "text": ("s",)}[spec.kind]


# what each operation's address /paik/NAME/OP takes (set is /paik/NAME itself, typed by kind)
_OP_TYPES = {"norm": ("f", "i"), "nudge": ("f", "i"), "cycle": ("", "i"), "toggle": ("",), "reset": ("",)}


def _op_help(name: str, spec, op: str) -> str:
    return {"norm": f"{name} as 0..1 (faders, CHOPs)", "nudge": f"add to {name} (clamped)",
            "cycle": f"next {name} (or N places; wraps)", "toggle": f"flip {name}",
            "reset": f"{name} back to {spec.default!r}"}[op]


def address_space(p: Params) -> list[Address]:
    """Every address the instrument understands, with the types it accepts (first = canonical).
    A parameter has /paik/NAME (set) and /paik/NAME/OP for every other operation its kind takes
    (:data:`~paik.instrument.control.params.KIND_OPS`)."""
    out = []
    for name, spec in SPECS.items():
        if spec.kind == "enum":
            rng = tuple(p.choices(name))
        elif spec.kind == "bool":
            rng = (0, 1)
        elif spec.numeric:
            rng = p.bounds(name)
        else:
            rng = ()
        types = ("i", "s", "f") if name == "token" else _kind_types(spec)
        what = {"token": "word of the prompt (s) or its index (i)", "head": "head index, -1 = reduce over heads"}.get(
            name, spec.help or name)
        for op in spec.ops:
            if op == "set":
                out.append(Address(f"{PREFIX}/{name}", types, what, name, rng))
            else:
                out.append(Address(f"{PREFIX}/{name}/{op}", _OP_TYPES[op], _op_help(name, spec, op),
                                   name if op == "norm" else None, (0.0, 1.0) if op == "norm" else ()))
    for op, text in (("recall", "recall a scene (number or name)"), ("save", "save every parameter as a scene"),
                     ("delete", "delete a saved scene")):
        out.append(Address(f"{PREFIX}/scene/{op}", ("i", "s", "f"), text))
    out += [
        Address(f"{PREFIX}/load", ("s",), "open another bundle (a folder under paik play's --load-from folders)"),
        Address(f"{PREFIX}/snapshot", ("s", ""), "write the next rendered frame as NAME.png into --out-dir "
                "(a plain name, never overwritten: NAME_2.png ...; nothing = a dated name)"),
        Address(f"{PREFIX}/cmd", ("s",), "one line of the typed command grammar, e.g. 'step nudge 0.5'"),
        Address(f"{PREFIX}/learn", ("s",), "MIDI learn: the next control moved plays this parameter (or command line)"),
        Address(f"{PREFIX}/learn/cancel", ("",), "disarm MIDI learn"),
        Address(f"{PREFIX}/learn/save", ("s",), "save the learned MIDI map as ~/.config/paik/midi/NAME.toml"),
        Address(f"{PREFIX}/generate", ("", "s", "i", "si"),
                "paik live: start a take from prompt, seed, ... (optional prompt s and seed i set them first)"),
        Address(f"{PREFIX}/generate/cancel", ("",), "paik live: stop the running take (its finished steps stay)"),
        Address(f"{PREFIX}/bend", ("is",), "paik live: bend slot i from one bend line s, like 1 'gain kiss 2 blocks "
                "10-20' (the bendN_ addresses play one part of a slot)"),
        Address(f"{PREFIX}/bend/off", ("i",), "paik live: clear bend slot i"),
        Address(f"{PREFIX}/subscribe", ("", "i", "f"), "send state to me now and on every change (optional reply port)"),
        Address(f"{PREFIX}/unsubscribe", ("", "i", "f"), "stop sending state to me"),
        Address(f"{PREFIX}/state", ("", "i", "f"), "send the whole state to me once (optional reply port)"),
    ]
    return out


def feedback_addresses() -> list[tuple[str, str, str]]:
    """What the instrument sends to subscribers: (address, types, meaning)."""
    out = []
    for name, spec in SPECS.items():
        t = {"float": "f", "int": "i", "bool": "i", "enum": "s", "text": "s"}[spec.kind]
        out.append((f"{PREFIX}/{name}", t, f"{name} changed"))
        if "norm" in spec.ops:
            out.append((f"{PREFIX}/{name}/norm", "f", f"{name} as 0..1"))
    out += [(f"{PREFIX}/token/word", "s", "the selected word"), (f"{PREFIX}/words", "s...", "the bundle's words, in order"),
            (f"{PREFIX}/counts", "iiii", "tokens, steps, blocks, heads of the bundle"),
            (f"{PREFIX}/scene", "s", "the scene last recalled or saved"), (f"{PREFIX}/error", "s", "a command was refused"),
            (f"{PREFIX}/take", "s", "paik live: the take now generating or shown, by name"),
            (f"{PREFIX}/progress", "ii", "paik live: steps done, total, as each step of the take finishes")]
    return out


def typetag(value) -> str:
    if isinstance(value, bool):
        return "T"
    if isinstance(value, int):
        return "i"
    if isinstance(value, float):
        return "f"
    if isinstance(value, str):
        return "s"
    return "?"


def _integral(value, what: str) -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise PaikError(f"{what} expects a whole number, not {value!r}")
        return int(value)
    return int(value)


def translate(address: str, args: list, source: str = "osc") -> Command:
    """An OSC message -> a command, checking the argument types. Raises PaikError."""
    if not address.startswith(PREFIX + "/"):
        raise PaikError(f"unknown address {address!r} (addresses start with {PREFIX}/)")
    parts = address[len(PREFIX) + 1:].split("/")
    args = [a for a in args if a is not None]  # N (nil), as some clients send for a bare trigger
    tags = "".join(typetag(a) for a in args)
    if parts[0] == "generate":  # the one address with two arguments: prompt s and seed i, both optional
        if parts == ["generate", "cancel"] and tags == "":
            return Command("generate", "cancel", None, source)
        if len(parts) != 1 or tags not in ("", "s", "i", "si"):
            raise PaikError(f"{address} takes nothing, a prompt (s), a seed (i) or both (si), not {tags}")
        given = {"prompt": a for a in args if isinstance(a, str)}
        given.update({"seed": _integral(a, address) for a in args if typetag(a) == "i"})
        return Command("generate", "start", given, source)
    if parts[0] == "bend":  # a whole slot: number i and a bend line s
        if parts == ["bend"] and tags == "is":
            try:
                words = grammar.shlex.split(args[1])
            except ValueError as e:
                raise PaikError(f"{address} {args[1]!r}: {e} (close the quote around a phrase)") from None
            return grammar.bend_command([str(_integral(args[0], address)), *words], source)
        if parts == ["bend", "off"] and tags in ("i", "f"):
            return Command("bend", "off", grammar.bend_slot(_integral(args[0], address)), source)
        raise PaikError(f"{address}: expected /paik/bend i s (slot, bend line) or /paik/bend/off i, not {tags or 'nothing'}")
    if len(args) > 1:
        raise PaikError(f"{address} takes at most one argument, got {len(args)} ({tags})")
    arg = args[0] if args else None
    tag = tags
    name = parts[0]
    if name in SPECS and len(parts) <= 2:
        spec = SPECS[name]
        op = parts[1] if len(parts) == 2 else "set"
        if op not in spec.ops:  # exactly the addresses address_space lists
            others = ", ".join(f"/{o}" for o in spec.ops if o != "set")
            raise PaikError(f"unknown address {address!r}; {PREFIX}/{name} also takes {others}")
        if op == "set":
            if spec.kind == "bool":
                if tag == "":
                    return Command(name, "toggle", None, source)
                if tag not in ("i", "f", "T"):
                    raise PaikError(f"{address} expects i (0/1), T/F or nothing (toggle), not {tag}")
                return Command(name, "set", bool(arg), source)
            if tag == "":
                raise PaikError(f"{address} needs a value")
            if spec.kind == "text":
                if tag != "s":
                    raise PaikError(f"{address} expects s (text), not {tag}")
                return Command(name, "set", arg, source)
            if spec.kind == "enum":
                if tag == "i":
                    return Command(name, "norm_index", arg, source)
                if tag != "s":
                    raise PaikError(f"{address} expects s (a name) or i (an index), not {tag}")
                return Command(name, "set", arg, source)
            if name == "token" and tag == "s":
                if not arg.strip():
                    raise PaikError(f"{address} needs a word of the prompt (s) or an index (i), not an empty string")
                return Command(name, "set", arg, source)
            if tag not in ("i", "f"):
                raise PaikError(f"{address} expects a number (f or i), not {tag}")
            if spec.kind == "int":
                arg = _integral(arg, address)
            return Command(name, "set", arg, source)
        if op == "norm":
            if tag not in ("f", "i"):
                raise PaikError(f"{address} expects f in 0..1, not {tag or 'nothing'}")
            return Command(name, "norm", float(arg), source)
        if op == "nudge":
            if tag not in ("f", "i"):
                raise PaikError(f"{address} expects a number, not {tag or 'nothing'}")
            return Command(name, "nudge", float(arg), source)
        if op == "cycle":
            if tag not in ("", "i", "f"):
                raise PaikError(f"{address} expects nothing or i, not {tag}")
            return Command(name, "cycle", 1 if arg is None else _integral(arg, address), source)
        if op == "toggle":
            return Command(name, "toggle", None, source)
        if tag != "":
            raise PaikError(f"{address} takes nothing, not {tag}")
        return Command(name, "reset", None, source)
    if name == "scene" and len(parts) == 2 and parts[1] in ("recall", "save", "delete"):
        if tag not in ("i", "s", "f"):
            raise PaikError(f"{address} expects a scene number (i) or name (s), not {tag or 'nothing'}")
        return Command("scene", parts[1], grammar.scene_name(arg), source)
    if len(parts) == 1 and name == "snapshot" and tag == "":
        return Command("snapshot", "set", None, source)
    if len(parts) == 1 and name in ("load", "snapshot", "cmd", "learn"):
        if tag != "s":
            raise PaikError(f"{address} expects s, not {tag or 'nothing'}")
        if name == "cmd":
            return grammar.parse(arg, source)
        if name == "learn":
            return grammar.parse(f"learn {arg}", source)
        if name == "snapshot":
            return Command(name, "set", grammar.file_name(arg, ".png"), source)
        if not arg.strip():
            raise PaikError(f"{address} needs a bundle folder")
        return Command(name, "set", arg, source)
    if name == "learn" and len(parts) == 2 and parts[1] in ("cancel", "save"):
        if parts[1] == "save":
            if tag != "s":
                raise PaikError(f"{address} expects s (a map name)")
            return Command("learn", "save", grammar.scene_name(arg), source)
        return Command("learn", "cancel", None, source)
    raise PaikError(f"unknown address {address!r}")


def _message(address: str, *values) -> bytes:
    b = OscMessageBuilder(address)
    for v in values:
        if isinstance(v, bool):
            b.add_arg(int(v), "i")
        elif isinstance(v, int):
            b.add_arg(v, "i")
        elif isinstance(v, float):
            b.add_arg(v, "f")
        else:
            b.add_arg(str(v), "s")
    return b.build().dgram


def state_messages(values: dict, names, live_params: Params) -> list[bytes]:
    """The feedback datagrams for the given names of a published state (see :class:`Live`)."""
    out = []
    for name in names:
        if name in SPECS:
            v = values[name]
            kind = SPECS[name].kind
            if kind == "float":
                v = float(v)
            elif kind == "int":
                v = int(v)
            out.append(_message(f"{PREFIX}/{name}", v))
            if "norm" not in SPECS[name].ops:
                continue
            try:
                out.append(_message(f"{PREFIX}/{name}/norm", float(normalized(live_params, name, v))))
            except (ValueError, KeyError):
                pass
            if name == "token":
                words = values.get("words", ())
                out.append(_message(f"{PREFIX}/token/word", words[v] if 0 <= v < len(words) else ""))
        elif name == "words":
            out.append(_message(f"{PREFIX}/words", *values["words"]))
        elif name == "counts":
            out.append(_message(f"{PREFIX}/counts", *values["counts"]))
        elif name == "scene":
            out.append(_message(f"{PREFIX}/scene", values.get("scene", "")))
        elif name == "take" and values.get("take"):  # paik live (instrument/control/takes.py)
            out.append(_message(f"{PREFIX}/take", values["take"]))
        elif name == "progress" and values.get("progress"):
            out.append(_message(f"{PREFIX}/progress", *values["progress"]))
        elif name == "error" and values.get("error"):  # (count, message): each new one is sent
            out.append(_message(f"{PREFIX}/error", values["error"][1][:400]))
    return out


def parse_packet(data: bytes, depth: int = 0) -> list[OscMessage]:
    """The messages of a datagram (bundles walked here: python-osc logs to the root logger, once
    per bad element, and drops what it cannot identify; this raises instead)."""
    if OscMessage.dgram_is_message(data):
        _check_tags(data)
        return [OscMessage(data)]
    if not OscBundle.dgram_is_bundle(data):
        raise ParseError("neither an OSC message nor a bundle")
    if depth > 8 or len(data) < 16:
        raise ParseError("bundle too short or nested too deep")
    out, i = [], 16  # "#bundle\0" + 8-byte time tag (ignored: messages apply at once)
    while i < len(data):
        if i + 4 > len(data):
            raise ParseError("truncated bundle element size")
        size = struct.unpack(">i", data[i:i + 4])[0]
        i += 4
        if size <= 0 or size % 4 or i + size > len(data):
            raise ParseError(f"bundle element of size {size} does not fit")
        out += parse_packet(data[i:i + size], depth + 1)
        i += size
    return out


def _check_tags(data: bytes) -> None:
    """Refuse unknown type tags before python-osc sees them (it would log each on the root logger)."""
    _, i = osc_types.get_string(data, 0)
    if i >= len(data):
        return
    tags, _ = osc_types.get_string(data, i)
    bad = set(tags[1:]) - TYPE_TAGS
    if bad:
        raise ParseError(f"unknown type tag {''.join(sorted(bad))!r}")


def host_of(addr) -> str:
    """A sender's address as the allowlist writes it: IPv4-mapped IPv6 as IPv4, no scope."""
    host = str(addr[0]).split("%")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def parse_allow(allow) -> set[str] | None:
    """``--osc-allow``'s addresses (IPv4-mapped IPv6 written as IPv4); None = everyone."""
    if not allow:
        return None
    out = set()
    for a in (x.strip() for x in allow):
        if not a:
            continue
        try:
            ipaddress.ip_address(a.split("%")[0])
        except ValueError as e:
            raise PaikError(f"--osc-allow: {e}; expected IP addresses like 192.168.1.20,192.168.1.21") from None
        out.add(host_of((a,)))
    return out or None


class Buckets:
    """Token buckets per key (a sender's host): ``rate`` a second, up to ``burst`` at once. At most
    ``keys`` are remembered (the oldest forgotten), so spoofed senders cannot grow it."""

    def __init__(self, rate: float, burst: float, keys: int = 1024):
        self.rate, self.burst, self.keys = rate, burst, keys
        self._b: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            level, last = self._b.pop(key, (self.burst, now))
            level = min(self.burst, level + (now - last) * self.rate)
            ok = level >= 1.0
            self._b[key] = (level - 1.0 if ok else level, now)
            while len(self._b) > self.keys:
                self._b.popitem(last=False)
            return ok


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host_of((host,))).is_loopback  # ::ffff:127.0.0.1 too
    except ValueError:
        return host == "localhost"


class OscServer:
    """UDP server on ``host:port`` (port 0 picks a free one: see :attr:`port`)."""

    def __init__(self, live: Live, host: str = "127.0.0.1", port: int = 9000, allow: list[str] | None = None,
                 rlog: RateLimitedLog | None = None, reply_ports: str | None = None):
        self.live = live
        self.rlog = rlog or live.rlog
        self.allow = parse_allow(allow)
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        except socket.gaierror as e:
            raise PaikError(f"--osc-host {host!r}: {e.strerror}") from None
        self.sock = socket.socket(info[0], socket.SOCK_DGRAM)
        try:
            self.sock.bind(info[4])
        except OSError as e:
            self.sock.close()
            raise PaikError(f"cannot listen for OSC on {host}:{port} ({e.strerror}); is another paik running? "
                            "pick another --osc-port") from None
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()[:2]
        if not _is_loopback(self.host):
            log.warning("OSC listens beyond this machine on %s:%s%s", self.host, self.port,
                        f" (only from {', '.join(sorted(self.allow))})" if self.allow else " (anyone on the network may play)")
        # "any": a reply PORT of the sender's choosing; "own": only the port it sends from
        self.reply_ports = reply_ports or ("any" if _is_loopback(self.host) or self.allow else "own")
        self.subscribers: dict[tuple, None] = {}
        self._sub_lock = threading.Lock()
        self._states = Buckets(STATES_PER_SECOND, STATE_BURST)
        self._states_all = Buckets(STATES_PER_SECOND_ALL, 2 * STATES_PER_SECOND_ALL, keys=1)
        self._errors = Buckets(ERRORS_PER_SECOND, ERROR_BURST)
        self._family = self.sock.family
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paik-osc", daemon=True)
        live.listeners.append(self._feedback)
        live.error_listeners.append(self._on_error)

    def start(self) -> "OscServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for lst, fn in ((self.live.listeners, self._feedback), (self.live.error_listeners, self._on_error)):
            if fn in lst:
                lst.remove(fn)
        self.sock.close()

    # -- receive thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:  # e.g. ECONNREFUSED left by feedback to a closed port: keep serving
                if self._stop.is_set():
                    return
                continue
            try:
                self.handle_packet(data, addr)
            except Exception as e:  # never let one packet end the thread
                self.rlog("osc", f"osc: packet from {addr[0]} dropped: {type(e).__name__}: {e}")

    def handle_packet(self, data: bytes, addr) -> None:
        self.received += 1
        host = host_of(addr)
        if self.allow is not None and host not in self.allow:
            self.rlog("osc-deny", f"osc: ignored a packet from {host} (not in --osc-allow)")
            return
        try:
            messages = parse_packet(data)
        except Exception as e:  # python-osc raises ParseError, but also struct/Unicode/Index errors
            self.rlog("osc-parse", f"osc: malformed packet from {host}:{addr[1]} ({len(data)} bytes): {e}")
            self._reply_error(addr, f"malformed packet ({len(data)} bytes): {e}")
            return
        for msg in messages:
            try:
                self.handle_message(msg.address, list(msg.params), addr)
            except PaikError as e:
                self.rlog("osc", f"osc: {e}")
                self._reply_error(addr, str(e))
            except Exception as e:  # noqa: BLE001 - one message must not drop the rest
                text = f"{msg.address}: {type(e).__name__}: {e}"
                self.rlog("osc", f"osc: {text}")
                self._reply_error(addr, text)

    def handle_message(self, address: str, args: list, addr) -> None:
        host = host_of(addr)
        if address in (f"{PREFIX}/subscribe", f"{PREFIX}/unsubscribe", f"{PREFIX}/state"):
            if len(args) > 1 or (args and typetag(args[0]) not in ("i", "f")):
                raise PaikError(f"{address} takes nothing or a reply port (i)")
            port = _integral(args[0], address) if args else addr[1]
            if not 0 < port < 65536:
                raise PaikError(f"{address}: port {port} is out of range")
            if port != addr[1] and self.reply_ports != "any":
                raise PaikError(f"{address} {port}: replies go only to the port you send from while OSC listens "
                                f"beyond this machine without --osc-allow (start paik play with --osc-allow {host})")
            dest = (addr[0], port)
            if address.endswith("unsubscribe"):
                with self._sub_lock:
                    self.subscribers.pop(dest, None)
                return
            if not (self._states.take(host) and self._states_all.take("*")):
                self.rlog("osc-state", f"osc: {address} from {host}: more than {STATES_PER_SECOND:g} a second; "
                                       "ignored")
                return
            if address.endswith("subscribe"):
                with self._sub_lock:
                    if dest not in self.subscribers and len(self.subscribers) >= MAX_SUBSCRIBERS:
                        raise PaikError(f"too many subscribers ({MAX_SUBSCRIBERS}); unsubscribe one first")
                    self.subscribers[dest] = None
            values = self.live.values
            self._send([dest], state_messages(values, list(SPECS) + ["words", "counts", "scene", "take", "progress"],
                                                 self.live.target))
            return
        cmd = translate(address, args, source=f"osc:{host}")
        if cmd.op == "norm_index":  # an enum by index: resolved against the current choices
            choices = self.live.target.choices(cmd.name)
            i = _integral(cmd.value, address)
            if not 0 <= i < len(choices):
                raise PaikError(f"{address} index {i} is out of range (0..{len(choices) - 1})")
            cmd = Command(cmd.name, "set", choices[i], cmd.source)
        self.live.put(cmd)

    # -- feedback (called on the render thread: sendto only) ---------------------------------------
    def _feedback(self, values: dict, changed: dict) -> None:
        with self._sub_lock:
            dests = list(self.subscribers)
        if dests:
            self._send(dests, state_messages(values, list(changed), self.live.target))

    def _on_error(self, message: str, source: str) -> None:
        """An error of the render loop (any thread): to the subscriptions of the OSC sender whose
        command failed; errors of other sources (console, MIDI, a load) to every subscriber."""
        if source.startswith("osc:"):
            self._reply_error((source[4:], 0), message)
            return
        with self._sub_lock:
            dests = list(self.subscribers)
        if dests and self._errors.take("*"):
            self._send(dests, [_message(f"{PREFIX}/error", message[:400])])

    def _reply_error(self, addr, text: str) -> None:
        host = host_of(addr)
        with self._sub_lock:
            dests = [d for d in self.subscribers if host_of(d) == host]
        if dests and self._errors.take(host):
            self._send(dests, [_message(f"{PREFIX}/error", text[:400])])

    def _send(self, dests, datagrams: list[bytes]) -> None:
        for dest in dests:
            for d in datagrams:
                try:
                    self.sock.sendto(d, dest)
                except OSError:
                    pass  # a subscriber that went away: UDP feedback is best effort


def reference() -> str:
    """The README's OSC tables, from the same list the server uses (``python -m paik.instrument.control.osc``)."""
    from paik.instrument.render import colormaps

    p = Params().bind(32, 25, 30, 12, colormaps.available())
    space = address_space(p)
    paths = {a.path for a in space}
    rows = ["| parameter | `/paik/NAME` takes | range or choices | default | also `/paik/NAME/...` |",
            "| --- | --- | --- | --- | --- |"]
    for name, spec in SPECS.items():
        a = next(x for x in space if x.path == f"{PREFIX}/{name}")
        if spec.kind == "enum":
            rng = "a name in presets/colormaps" if name == "colormap" else ", ".join(p.choices(name))
        elif spec.kind == "bool":
            rng = "0 / 1"
        elif spec.kind == "text":
            rng = "text (one line)"
        else:
            rng = spec.range_text()
        takes = {"token": "i (index) or s (word)", "head": "i (-1 = mean of heads)"}.get(
            name, {"float": "f (or i)", "int": "i (or a whole f)", "bool": "i 0/1, T/F, or nothing (toggle)",
                   "enum": "s (or i: index)", "text": "s"}[spec.kind])
        also = " ".join(f"`{op}`" for op in spec.ops if op != "set")
        assert all(f"{PREFIX}/{name}/{op}" in paths for op in spec.ops if op != "set")
        rows.append(f"| `{name}` | {takes} | {rng} | {spec.default!r} | {also} |")
        assert a.types
    rows += ["", "`/norm f` takes 0..1 across the range (choices in equal bands), for faders and CHOPs; "
             "`/nudge f` adds (clamped); `/cycle [i]` steps through choices (wraps); `/toggle` flips; "
             "`/reset` restores the default. A value out of range is refused, not clamped.", "",
             "| address | takes | does |", "| --- | --- | --- |"]
    for a in space:
        if a.param is None and a.path.count("/") >= 2 and a.path.split("/")[2] not in SPECS:
            types = " or ".join(t if t else "nothing" for t in a.types)
            rows.append(f"| `{a.path}` | {types} | {a.help} |")
    rows += ["", "Sent to subscribers (after `/paik/subscribe`, once whole, then on every change):", "",
             "| address | types | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{a}` | {t} | {m} |" for a, t, m in feedback_addresses()
             if not (a.endswith("/norm") or a.split("/")[-1] in SPECS)]
    rows += ["| `/paik/NAME` | as above | every parameter, when it changed |",
             "| `/paik/NAME/norm` | f | the same as 0..1 |"]
    return "\n".join(rows)


if __name__ == "__main__":
    print(reference())
