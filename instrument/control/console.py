"""The typed console: lines of the command grammar read from stdin (``paik play`` in a
terminal, or piped: ``echo "scene recall 3" | paik play B --headless``). Each line is parsed on
this thread and enqueued; mistakes are printed, never fatal."""

from __future__ import annotations

import sys
import threading

from paik.errors import PaikError

from paik.instrument.control import grammar
from paik.instrument.control.live import Live


def start(live: Live, stream=None) -> threading.Thread:
    stream = stream if stream is not None else sys.stdin

    def run():
        for line in stream:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                live.put(grammar.parse(line, source="console"))
            except PaikError as e:
                print(f"paik: {e}", file=sys.stderr, flush=True)

    t = threading.Thread(target=run, name="paik-console", daemon=True)
    t.start()
    return t
