"""The typed console: lines of the command grammar read from stdin (``paik play`` in a
terminal, or piped: ``echo "scene recall 3" | paik play B --headless``). Each line is parsed on
this thread and enqueued; mistakes are printed (every one: a person typed it, see
:meth:`Live.error`), never fatal."""

from __future__ import annotations

import sys
import threading

from paik.errors import PaikError

from paik.instrument.control import grammar
from paik.instrument.control.live import Live


def start(live: Live, stream=None) -> threading.Thread:
    stream = stream if stream is not None else sys.stdin

    def run():
        try:
            for line in stream:
                one(line.strip())
        except (OSError, ValueError) as e:  # stdin closed, or not text (UnicodeDecodeError)
            print(f"paik: the console stopped reading ({type(e).__name__}: {e})", file=sys.stderr, flush=True)

    def one(line: str) -> None:
        if not line or line.startswith("#"):
            return
        try:
            live.put(grammar.parse(line, source="console"))
        except PaikError as e:
            print(f"paik: {e}", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 - the console must keep reading
            print(f"paik: {line!r}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

    t = threading.Thread(target=run, name="paik-console", daemon=True)
    t.start()
    return t
