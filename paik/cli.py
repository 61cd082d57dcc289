"""The ``paik`` command: one dispatcher; each package registers its own subcommands.

Subcommand modules expose ``register(sub, bench)``, adding parsers to ``sub`` (top level) and
``bench`` (``paik bench ...``) with ``set_defaults(func=handler)``. Handlers take the parsed
args and return an exit code. Heavy imports (torch, diffusers, moderngl) happen inside the
handlers, so ``paik --help`` is instant and the instrument never imports diffusers.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys

from paik.errors import PaikError

# modules that register subcommands, each with register(sub, bench)
COMMAND_MODULES = ("paik.capture.cli", "paik.instrument.cli", "paik.shapes.cli", "paik.live")


class _Parser(argparse.ArgumentParser):
    """argparse with Paik's one-line errors (``paik play: error: ...``, exit 2) instead of a usage
    dump, pointing to the help of the (sub)command that refused; subcommand parsers inherit it
    through ``add_subparsers``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _leaf(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The subcommand parser that ``args`` came through (``paik bench words``, ``paik play``)."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if name not in (subs[0].choices if subs else {}):
            return parser
        parser = subs[0].choices[name]


def _unrecognized(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """argparse's message for arguments no parser took, with the closest flag for a typo
    (argparse itself suggests only for choices, and only from Python 3.14)."""
    msg = f"unrecognized arguments: {' '.join(extras)}"
    flags = [o for a in parser._actions for o in a.option_strings if a.help is not argparse.SUPPRESS]
    hints = []
    for x in extras:
        if x.startswith("--"):
            hints += difflib.get_close_matches(x.split("=", 1)[0], flags, n=1, cutoff=0.6)
    return msg + (f"; did you mean {' or '.join(dict.fromkeys(hints))}?" if hints else "")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="paik",
        description="Paik: generate video with Wan while capturing its cross-attention, and play the maps live.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more, and show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench_parser = sub.add_parser("bench", help="measure speed and memory on this machine")
    bench = bench_parser.add_subparsers(dest="bench", metavar="WHAT")
    bench_parser.set_defaults(func=lambda args: (bench_parser.print_help(), 2)[1])
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub, bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:  # said by the subcommand that was given them, so the help it points to is the one to read
            leaf = _leaf(parser, args)
            leaf.error(_unrecognized(leaf, extras))
    except SystemExit as e:  # --help (0), or a flag error already printed on one line (2)
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="paik: %(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SystemExit as e:  # a handler's usage error, already printed on one line by its parser
        return e.code if isinstance(e.code, int) else 2
    except PaikError as e:
        if args.verbose:
            raise
        print(f"paik: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("paik: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `paik info B | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
