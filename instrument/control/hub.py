"""Wiring of the ways in for ``paik play``: the live state, OSC (+ OSCQuery), MIDI and the
console, from the command line's flags; started together, stopped together."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from paik.errors import PaikError

from paik.instrument.control.live import Live
from paik.instrument.control.scenes import SceneStore

log = logging.getLogger("paik.control")


def add_flags(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("control (OSC, MIDI, console)")
    g.add_argument("--osc-host", default="127.0.0.1",
                   help="address to listen on for OSC and OSCQuery (default 127.0.0.1: this machine only; 0.0.0.0 "
                        "= every network: anyone who can reach it may play, browse the namespace, snapshot into "
                        "--out-dir and load bundles from --load-from, unless --osc-allow narrows it)")
    g.add_argument("--osc-port", type=int, help="UDP port for OSC (default 9000, skipped with a warning when "
                   "taken; -1 = no OSC)")
    g.add_argument("--osc-allow", help="only accept OSC and OSCQuery from these comma-separated IP addresses "
                   "(they may also ask for replies on another port of theirs)")
    g.add_argument("--oscquery-port", type=int,
                   help="TCP port of the OSCQuery HTTP namespace (default: the OSC port number; -1 = off)")
    g.add_argument("--zeroconf", choices=("auto", "on", "off"), default="auto",
                   help="advertise OSC and OSCQuery over zeroconf/mDNS (auto, the default: only when --osc-host "
                        "listens beyond this machine)")
    g.add_argument("--no-zeroconf", dest="zeroconf", action="store_const", const="off", help="= --zeroconf off")
    g.add_argument("--out-dir", metavar="DIR", help="folder for snapshots and for recordings started without "
                   "--record FILE (default: the current folder); names sent over OSC/MIDI/console are plain file "
                   "names in it, never overwritten (NAME_2.png ...)")
    g.add_argument("--load-from", metavar="DIRS", help="comma-separated folders that 'load' (OSC /paik/load, "
                   "console, MIDI) may open bundles from (default: the folder holding BUNDLE)")
    g.add_argument("--midi", metavar="PORTS",
                   help="MIDI input ports to open: 'all', or comma-separated parts of their names (default: none)")
    g.add_argument("--midi-map", help="a MIDI map for every port: a name from presets/midi or a .toml path "
                   "(default: chosen by port name, else 'generic')")
    g.add_argument("--scenes", help="folder for saved scenes (default ~/.config/paik/scenes; presets/scenes is also read)")
    g.add_argument("--smooth", type=float, default=0.05,
                   help="seconds continuous parameters glide to a new value (default 0.05; 0 = jump)")
    g.add_argument("--console", choices=("auto", "on", "off"), default="auto",
                   help="read command lines from stdin (auto: when stdin is a terminal)")


class Control:
    def __init__(self, live: Live):
        self.live = live
        self.osc = self.oscquery = self.midi = None

    @classmethod
    def from_args(cls, args, src, params, make_live=Live) -> "Control":
        """``make_live(src, params, scenes, out_dir=, load_from=)`` builds the live state (``paik live``
        passes its own)."""
        if not 0 <= args.smooth <= 5:
            raise PaikError(f"--smooth {args.smooth}: expected seconds in 0..5")
        params.smooth = args.smooth
        out_dir, roots = folders(args, src)
        ctl = cls(make_live(src, params, SceneStore(args.scenes) if args.scenes else None, out_dir=out_dir,
                            load_from=roots))
        try:
            ctl._start(args)
        except BaseException:
            ctl.stop()
            raise
        return ctl

    def _start(self, args) -> None:
        live = self.live
        port = 9000 if args.osc_port is None else args.osc_port
        if port != -1:
            from paik.instrument.control.osc import OscServer

            if not 0 <= port < 65536:
                raise PaikError(f"--osc-port {port}: expected 0..65535 (or -1 for no OSC)")
            allow = args.osc_allow.split(",") if args.osc_allow else None
            try:
                self.osc = OscServer(live, args.osc_host, port, allow).start()
            except PaikError as e:
                if args.osc_port is not None:
                    raise  # asked for: a clear error
                log.warning("%s; playing without OSC", e)  # the default port is taken: play on
                return self._start_midi_console(args)
            qport = args.oscquery_port if args.oscquery_port is not None else self.osc.port
            msg = f"paik: OSC on udp://{self.osc.host}:{self.osc.port}"
            if qport != -1:
                from paik.instrument.control.oscquery import OscQueryServer

                advertise = args.zeroconf == "on" or (args.zeroconf == "auto" and not _loopback(self.osc.host))
                try:
                    self.oscquery = OscQueryServer(live, args.osc_host, qport, self.osc.port, allow=allow).start(
                        advertise=advertise)
                    msg += f", OSCQuery on http://{self.oscquery.host}:{self.oscquery.port}/"
                except PaikError as e:
                    if args.oscquery_port is not None:
                        raise
                    log.warning("%s", e)  # the default port was taken: OSC still works
            print(msg, file=sys.stderr, flush=True)
        self._start_midi_console(args)

    def _start_midi_console(self, args) -> None:
        from paik.instrument.control import console

        live = self.live
        if args.midi:
            from paik.instrument.control.midi import MidiHub

            wanted = None if args.midi.strip().lower() == "all" else [w for w in args.midi.split(",") if w.strip()]
            self.midi = MidiHub(live, wanted, args.midi_map).start()
        elif args.midi_map:
            raise PaikError("--midi-map needs --midi PORTS (or --midi all)")
        if args.console == "on" or (args.console == "auto" and not sys.stdin.closed and _interactive()):
            console.start(live)

    def stop(self) -> None:
        for part in (self.midi, self.oscquery, self.osc):
            if part is not None:
                try:
                    part.stop()
                except Exception as e:
                    log.warning("stopping %s: %s", type(part).__name__, e)

    def __enter__(self) -> "Control":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def folders(args, src) -> tuple[Path, list[Path]]:
    """``--out-dir`` (made now; refused if it cannot be written) and the ``--load-from`` folders."""
    from paik.instrument.control.files import OutputFolder

    out = OutputFolder(Path(args.out_dir) if getattr(args, "out_dir", None) else Path.cwd())
    if getattr(args, "out_dir", None):
        out.check()
    roots = [Path(src.bundle.path).resolve().parent]
    if getattr(args, "load_from", None):
        roots = [Path(x.strip()).expanduser() for x in args.load_from.split(",") if x.strip()]
        missing = [str(r) for r in roots if not r.is_dir()]
        if missing or not roots:
            raise PaikError(f"--load-from: {', '.join(missing) or args.load_from!r} is not a folder; give "
                            "comma-separated folders that hold bundles")
    return out.dir, roots


def _loopback(host: str) -> bool:
    from paik.instrument.control.osc import _is_loopback

    return _is_loopback(host)


def _interactive() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False
