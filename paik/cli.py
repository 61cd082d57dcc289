"""The ``paik`` command: one dispatcher; each package registers its own subcommands.

Subcommand modules expose ``register(sub, bench)``, adding parsers to ``sub`` (top level) and
``bench`` (``paik bench ...``) with ``set_defaults(func=handler)``. Handlers take the parsed
args and return an exit code. Heavy imports (torch, diffusers, moderngl) happen inside the
handlers, so ``paik --help`` is instant and the instrument never imports diffusers.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from paik.errors import PaikError

# modules that register subcommands, each with register(sub, bench)
COMMAND_MODULES = ("paik.capture.cli", "paik.instrument.cli", "paik.shapes.cli", "paik.live")


class _Parser(argparse.ArgumentParser):
    """argparse with Paik's one-line errors (``paik: error: ...``, exit 2) instead of a usage
    dump; subcommand parsers inherit it through ``add_subparsers``."""

    def error(self, message: str):
        self.exit(2, f"paik: error: {message} (see '{self.prog} --help')\n")


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
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0), or a flag error already printed on one line (2)
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="paik: %(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
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
