"""``paik live``'s unbent twins: with the bank's ``twin`` on, a take that played bends gets its
twin — the same request (prompt, seed, sizes, steps) without bends — generated behind it, so the
twin and diff views can compare them (paik.instrument.render.twin).

Bounded: one twin is wanted at a time (a newer bent take replaces a twin not yet started); it is
handed to the engine only while the engine is idle, so a take the performer asked for always
goes first; the two most recent unbent takes are kept, and a bent take whose settings match one
of them reuses it instead of generating again. The twin forms out of sight: it never replaces the
take on screen, and its steps, progress and name are not published as the performer's take.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import replace

log = logging.getLogger("paik.live")

KEEP = 2  # unbent takes remembered for reuse (each holds its maps on the device)


def _unbent_key(request):
    return replace(request, bends=False) if request is not None else None


def _played_bends(ev) -> bool:
    """Whether a bend played in the take of TakeDone ``ev`` (the engine says; else its manifest)."""
    if getattr(ev, "bent", None) is not None:
        return bool(ev.bent)
    try:
        m = json.loads((ev.path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False
    return any(e.get("bends") for e in m.get("bend_log") or [] if isinstance(e, dict))


def _pair_on_disk(engine, bent, twin) -> None:
    """Name each take in the other's manifest, as ``paik generate --twin`` does, so that
    ``paik play TAKE --view twin`` finds the twin later: through the engine, off the render
    thread and after each bundle's own writer is done."""
    import os

    for path, other, role in ((bent, twin, "bent"), (twin, bent, "unbent")):
        engine.annotate(path, {"twin": {"path": os.path.relpath(other, path), "role": role}})


class TwinMaker:
    def __init__(self, live):
        self.live = live
        self.requests: dict = {}  # take id -> its request (the last few takes)
        self.unbent: OrderedDict = OrderedDict()  # unbent request -> ResidentSource of a finished take
        self.want = None  # {"request", "bent", "submitted", "take", "live"} of the twin being made
        self.made = 0  # twins attached so far (tests)

    def event(self, ev, kind: str) -> bool:
        """Look at one engine event; True when it belongs to a twin (the caller skips it)."""
        from paik.instrument.render.resident import LiveTake, ResidentSource

        w = self.want
        take = getattr(ev, "take", None)
        if kind == "TakeStarted":
            if w is not None and w["submitted"] and ev.request is w["request"]:
                w["take"] = ev.take
                w["live"] = LiveTake(ev.path, ev.manifest, ev.store.maps, ev.store.step_slot)
                return True
            if w is not None and w["submitted"] and w["take"] is None:
                w["submitted"] = False  # the performer's newer request replaced it: ask again when idle
            self.requests[ev.take] = ev.request
            while len(self.requests) > 8:
                self.requests.pop(next(iter(self.requests)))
            return False
        if w is not None and w["take"] is not None and take == w["take"]:
            if kind == "StepDone" and ev.captured:
                w["live"].add_step(ev.index, None if ev.preview is None else ev.preview.numpy())
            elif kind == "TakeDone":
                w["live"].finish(ev.video, "complete")
                w["live"].path = ev.path
                src = ResidentSource(w["live"])
                src.refresh()
                w["bent"].twin = src
                _pair_on_disk(self.live.engine, w["bent"].bundle.path, ev.path)
                self._remember(w["request"], src)
                self.want = None
                self.made += 1
                log.info("twin %s of a bent take complete", ev.name)
            elif kind == "TakeFailed":
                self.live.error(f"the unbent twin {ev.name}: {ev.message}", kind="twin")
                self.want = None
            return True
        if kind == "TakeDone":
            self._done(ev)
        return False

    def _done(self, ev) -> None:
        """A performer's take finished: remember it when unbent, want its twin when bent."""
        f = self.live._forming
        src = f[2] if f is not None and f[0] == ev.take else None
        request = self.requests.get(ev.take)
        if src is None or request is None:
            return
        key = _unbent_key(request)
        if not _played_bends(ev):
            self._remember(key, src)
            return
        if not self.live.target.twin:
            return
        if key in self.unbent:  # the same settings were played unbent: that take is the twin
            src.twin = self.unbent[key]
            self.made += 1
            return
        self.want = {"request": key, "bent": src, "submitted": False, "take": None, "live": None}

    def _remember(self, key, src) -> None:
        self.unbent[key] = src
        self.unbent.move_to_end(key)
        while len(self.unbent) > KEEP:
            self.unbent.popitem(last=False)

    def idle(self) -> None:
        """Once per frame, after the events: hand the wanted twin to an idle engine."""
        w = self.want
        if w is None or w["submitted"] or getattr(self.live.engine, "busy", True):
            return
        w["submitted"] = True
        self.live.engine.submit(w["request"])
