"""The one grammar for lists of model indices (steps, blocks, heads), used by every flag and
command that names them: ``--capture-steps`` and ``--blocks`` of ``paik generate``, ``--step`` and
``--block`` of ``play``/``render``/``grid``, and the ranges of a bend.

    all            every index there is
    12             one index (a model index: step 12 of the run, block 12 of the model)
    -1, last       the last; first is the first
    0,12,24        a list
    10-19          a range, both ends included (-5--1: the last five)
    every:N        0, N, 2N, ... and always the last
    0-3,12,last    any mix

``names`` is what exists: an int ``n`` (indices 0..n-1, as when choosing what to capture) or the
sorted model indices a bundle holds (its captured steps). Results are model indices, sorted and
unique; :func:`position` turns one into a position along ``names`` (fractions crossfade).
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

from paik.errors import PaikError

_PART = re.compile(r"(-?\d+|first|last)(?:-(-?\d+|first|last))?")
SYNTAX = "expected indices like 0,12,24, a range like 10-19, all, last (or -1) or every:N"


def _names(names: int | Sequence[int]) -> list[int]:
    return list(range(names)) if isinstance(names, int) else sorted(int(x) for x in names)


def format_ranges(values: Iterable[int]) -> str:
    """Indices as a user types them: [0, 1, 2, 3, 7, 9, 10] -> '0-3,7,9-10'."""
    values = sorted(values)
    out, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(out)


def _missing(label: str, part, names, have: list[int], where: str, listed: str) -> PaikError:
    if isinstance(names, int):
        return PaikError(f"{label} {part!r} is out of range: valid values are 0..{names - 1}")
    noun = label.lstrip("-").rstrip("s")
    return PaikError(f"{label} {part} is not in {where}; {listed} {noun}s: {format_ranges(have) or 'none'}")


def parse(text: str | None, names: int | Sequence[int], label: str, default: str = "all",
          where: str = "this bundle", listed: str = "captured") -> list[int]:
    """Model indices named by ``text`` (see the module's grammar), checked against ``names``.

    ``label`` is how the user spelled the thing in error messages (``--blocks``, ``blocks``);
    ``where`` and ``listed`` word the message for an index that is not among ``names``."""
    have = _names(names)
    if not have:
        raise PaikError(f"{label}: there is nothing to choose from")
    text = (default if text is None else str(text)).strip().lower()
    if text in ("all", "*"):
        return have
    m = re.fullmatch(r"every:(-?\d+)", text)
    if m:
        k = int(m.group(1))
        if k < 1:
            raise PaikError(f"{label} every:N needs N >= 1, not {k}")
        out = have[::k]
        return out if out[-1] == have[-1] else out + [have[-1]]
    lo, hi = have[0], have[-1]

    def one(tok: str) -> int:
        if tok == "first":
            return lo
        if tok == "last":
            return hi
        v = int(tok)
        return have[v] if v < 0 and -v <= len(have) else v

    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        m = _PART.fullmatch(part)
        if not m:
            raise PaikError(f"{label} {text!r}: {SYNTAX}")
        a = one(m.group(1))
        b = one(m.group(2)) if m.group(2) is not None else a
        if b < a:
            raise PaikError(f"{label} {part!r}: a range runs from low to high, like {b}-{a}")
        inside = [v for v in have if a <= v <= b]
        if not inside or (a == b and a not in have) or a < lo or b > hi:
            raise _missing(label, part, names, have, where, listed)
        out.update(inside)
    return sorted(out)


def position(text: str | float | None, names: Sequence[int], label: str, default: str = "first") -> float:
    """One model index (fractions crossfade: 12.5 lies halfway between 12 and 13) as a position
    along ``names``; ``first``, ``last`` and negative indices as in :func:`parse`."""
    have = _names(names)
    raw = default if text is None else str(text).strip().lower()
    if raw in ("first", "last") or re.fullmatch(r"-\d+", raw):
        return float(have.index(parse(raw, have, label)[0]))
    try:
        x = float(raw)
    except ValueError:
        raise PaikError(f"{label} {raw!r}: expected a number like 12 or 12.5 (or first, last, -1)") from None
    if not math.isfinite(x):
        raise PaikError(f"{label} {raw!r}: expected a finite number")
    if x in have:
        return float(have.index(int(x)))
    if x == int(x) or not have[0] < x < have[-1]:  # a whole index that was not captured is a mistake
        raise _missing(label, raw, names, have, "this bundle", "captured")
    j = next(k for k, v in enumerate(have) if v > x)  # x lies between two neighbouring captured indices
    a, b = have[j - 1], have[j]
    return (j - 1) + (x - a) / (b - a)

def positions(text: str | None, names: Sequence[int], label: str, default: str = "first") -> list[float]:
    """Several model indices (the :func:`parse` grammar) as positions along ``names``."""
    have = _names(names)
    return [float(have.index(v)) for v in parse(text, have, label, default=default)]


def pick(value, available: Sequence[int], label: str, total: int | None = None, where: str = "this bundle",
         listed: str = "available") -> list[int]:
    """What the Python API takes for an axis (``Bundle.select``, ``Capture.select``): None (all
    available), an int or a list of ints (negative ones count from the end of ``total`` model
    indices, or of ``available``), or a string in the module's grammar."""
    have = _names(available)
    if not have:
        raise PaikError(f"there are no finished {label}s yet")
    if value is None:
        return have
    if isinstance(value, str):
        return parse(value, have, label, where=where, listed=listed)
    values = [value] if not isinstance(value, (list, tuple, range)) and not hasattr(value, "__len__") else list(value)
    if not values:
        raise PaikError(f"{label} {value!r}: name at least one")
    out = []
    for v in values:
        v = int(v)
        if v < 0:
            v = v + total if total is not None else (have[v] if -v <= len(have) else v)
        if v not in have:
            raise _missing(label, v, have, have, where, listed)
        out.append(v)
    return out
