"""Wiring of the ways in for ``paik play``: the live state, OSC (+ OSCQuery), MIDI and the
console, from the command line's flags; started together, stopped together."""

from __future__ import annotations

import argparse
import logging
import sys

from paik.errors import PaikError

from paik.instrument.control.live import Live
from paik.instrument.control.scenes import SceneStore

log = logging.getLogger("paik.control")


def add_flags(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("control (OSC, MIDI, console)")
    g.add_argument("--osc-host", default="127.0.0.1",
                   help="address to listen on for OSC (default 127.0.0.1: this machine only; 0.0.0.0 = every network)")
    g.add_argument("--osc-port", type=int, help="UDP port for OSC (default 9000, skipped with a warning when "
                   "taken; -1 = no OSC)")
    g.add_argument("--osc-allow", help="only accept OSC from these comma-separated IP addresses")
    g.add_argument("--oscquery-port", type=int,
                   help="TCP port of the OSCQuery HTTP namespace (default: the OSC port number; -1 = off)")
    g.add_argument("--no-zeroconf", action="store_true", help="do not advertise OSCQuery over zeroconf/mDNS")
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
        """``make_live(src, params, scenes)`` builds the live state (``paik live`` passes its own)."""
        if not 0 <= args.smooth <= 5:
            raise PaikError(f"--smooth {args.smooth}: expected seconds in 0..5")
        params.smooth = args.smooth
        ctl = cls(make_live(src, params, SceneStore(args.scenes) if args.scenes else None))
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

                try:
                    self.oscquery = OscQueryServer(live, args.osc_host, qport, self.osc.port).start(
                        advertise=not args.no_zeroconf)
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


def _interactive() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False
