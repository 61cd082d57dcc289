"""``paik live``'s side of the live state: generate requests out to the engine, its events in.

:class:`EngineLive` is the :class:`~paik.instrument.control.live.Live` of ``paik live``. Input
threads still only enqueue; the actions ``generate`` (``/paik/generate [s] [i]``) and
``generate cancel`` run on the render thread and only hand a request to the engine (a
:class:`paik.capture.engine.Engine`, duck-typed here: ``submit``, ``cancel``, ``poll``), whose
worker does the work. Once per frame, before the commands, the engine's events are drained:

- a take's first finished step swaps its :class:`~paik.instrument.render.resident.ResidentSource`
  in (follow mode, on by default; with follow off the take replaces the one playing when it
  completes), and each further step grows the step range (following: the newest step is shown);
- every step sets ``progress`` (done, total), every take ``take`` (its name), and every failure
  or refused command ``error``: published like the parameters, so OSC subscribers get
  ``/paik/take s``, ``/paik/progress ii`` and ``/paik/error s``.

Bends: the bank's bend slots (``bend1_op``, ``bend1_word``, ... ``bend4_steps``; the action
``bend N LINE`` sets a whole slot) are handed to the engine whenever one changes, once per frame
after the commands; the running take plays them from its next step start, and its manifest
records per step what was active (``bend_log``). A slot that cannot be played (an unknown word,
op or range) is an ``error`` and stays out of the take; the other slots play on.

A step whose maps are not yet complete on the GPU (its CUDA event has not passed) waits for a
later frame: the render thread never blocks on the generation.

A take is done (its video shown, from the decoded frames in memory) before its bundle is complete
on disk: the engine writes the bundle behind it, and a failed write is an ``error`` too.

Continuous mode (the ``continuous`` parameter, with :class:`Continuous` settings from ``paik live
--continuous-size/-steps/-frames/--prompts``): whenever the engine is idle and no finished take is
waiting to be shown, the next draft take is submitted (the next prompt of the list, else the next
seed); a take forming in continuous mode is not followed, and a finished one replaces the take on
screen at its loop point (the playhead wrapping), so the visuals never wait for a take.
"""

from __future__ import annotations

import logging
import sys
import shlex
from dataclasses import dataclass, field, replace

from paik.errors import PaikError

from paik.instrument.control.live import Live
from paik.instrument.control.params import BEND_FIELDS, BEND_SLOTS, Command

log = logging.getLogger("paik.live")


def request_from(p, request_type):
    """The next take's request from the bank's generation parameters."""
    from paik.capture.engine import parse_size
    from paik.capture.tokens import split_token_list

    width = height = None
    if p.size.strip():
        width, height = parse_size(p.size)
    return request_type(
        prompt=p.prompt, negative=p.negative or None, seed=int(p.seed), steps=p.steps or None,
        frames=p.frames or None, height=height, width=width, guidance=float(p.guidance),
        tokens=tuple(split_token_list(p.tokens)) if p.tokens.strip() else (),
    )


@dataclass
class Continuous:
    """Continuous mode's draft settings (None: the bank's); ``prompts`` cycled, else the seed steps."""

    size: tuple[int, int] | None = (416, 240)  # width, height
    steps: int | None = 10
    frames: int | None = 33
    prompts: list[str] = field(default_factory=list)


def read_prompts(path) -> list[str]:
    """One prompt a line; blank lines and lines starting with # are skipped."""
    from pathlib import Path

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PaikError(f"--prompts {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise PaikError(f"--prompts {path}: no prompts in it (one a line; # starts a comment)")
    return prompts


SWITCH_INTERVAL_S = 0.0005


class EngineLive(Live):
    def __init__(self, src, params, engine, request_type, scenes=None, continuous: Continuous | None = None,
                 **folders):
        super().__init__(src, params, scenes, **folders)  # out_dir, load_from
        # the generation thread holds the GIL between kernel launches; a short switch interval lets
        # the render and selection threads in within a fraction of a frame (Python's default: 5 ms).
        # Set here, so that paik live and paik bench live run the same way.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.continuous = continuous or Continuous()
        self._switch = None  # continuous: a finished take's source, shown at the loop point
        self._next_prompt = 0
        self.takes_shown = 0  # continuous: takes switched to (tests, the bench)
        self.takes_written = 0
        self.engine = engine
        self.request_type = request_type
        self.actions["generate"] = self._generate
        self.actions["bend"] = self._bend
        self._bend_key = None  # the slot fields last handed to the engine
        self.take_name = ""
        self.progress: tuple[int, int] | None = None
        self._error = (0, "")
        self._forming = None  # (take id, LiveTake, ResidentSource or None) of the newest take
        self._waiting: list = []  # step events whose maps are not complete on the device yet
        self.takes_done = 0
        from paik.instrument.control.twins import TwinMaker

        self.twins = TwinMaker(self)  # the twin parameter: unbent twins of bent takes, made behind them
        self._publish(force=True)

    # -- actions (render thread) ----------------------------------------------------------------
    def _generate(self, cmd: Command) -> None:
        if cmd.op == "cancel":
            if not self.engine.cancel():
                raise PaikError("generate cancel: nothing is generating")
            return
        for name, value in (cmd.value or {}).items():
            self._apply(Command(name, "set", value, cmd.source))
        if not self.target.prompt.strip():
            raise PaikError("generate: the prompt is empty; set one first ('prompt a red kiss' or /paik/prompt s)")
        self.engine.submit(request_from(self.target, self.request_type))
        log.info("generate: %r seed %d", self.target.prompt, self.target.seed)

    def _bend(self, cmd: Command) -> None:
        """``bend N LINE`` (value (N, line)) fills slot N's fields; ``bend N off`` turns it off."""
        if cmd.op == "off":
            self._apply(Command(f"bend{cmd.value}_op", "set", "off", cmd.source))
            return
        from paik.capture.bend import OPS, _num, parse_bend

        n, line = cmd.value
        spec = parse_bend(line)
        args = " ".join(_num(v) if kind == "float" else shlex.quote(str(v)) for (_, kind), v in zip(OPS[spec.op], spec.args))
        for key, value in (("op", spec.op), ("word", spec.word), ("arg", args), ("amount", spec.strength),
                           ("blocks", spec.blocks or ""), ("steps", spec.steps or ""), ("heads", spec.heads or ""),
                           ("pass", spec.pass_)):
            self._apply(Command(f"bend{n}_{key}", "set", value, cmd.source))

    def _sync_bends(self) -> None:
        """Hand the slots to the engine when one changed (render thread, after the commands)."""
        t = self.target
        key = tuple(tuple(getattr(t, f"bend{n}_{k}") for k in BEND_FIELDS) for n in range(1, BEND_SLOTS + 1))
        if key == self._bend_key:
            return
        self._bend_key = key
        from paik.capture.bend import slot_spec

        specs = []
        for n, fields in enumerate(key, 1):
            try:
                specs.append(slot_spec(*fields))
            except PaikError as e:
                specs.append(None)
                self.error(f"bend slot {n}: {e}", kind="bend")
        if hasattr(self.engine, "set_bends"):
            for message in self.engine.set_bends(specs):
                self.error(message, kind="bend")

    def error(self, message: str, kind: str = "command", source: str = "") -> None:
        super().error(message, kind, source)
        self._error = (self._error[0] + 1, f"{kind}: {message}")

    def extra_values(self) -> dict:
        if not hasattr(self, "_error"):  # Live.__init__ publishes before ours has run
            return {}
        return {"take": self.take_name, "progress": self.progress, "error": self._error}

    # -- engine events (render thread, once per frame) ----------------------------------------------
    def update(self, now: float):
        try:
            self._drain()
        except Exception as e:  # a fault here must not end the show
            log.debug("engine events", exc_info=True)
            self.error(f"{type(e).__name__}: {e}", kind="engine")
        before = self.target.time
        shown = super().update(now)
        try:
            self._continue(wrapped=self.target.time < before)
        except Exception as e:  # a fault in continuous mode must not end the show
            log.debug("continuous", exc_info=True)
            self.error(f"continuous: {type(e).__name__}: {e}", kind="generate")
        try:
            self._sync_bends()
        except Exception as e:  # a fault in a bend must not end the show
            log.debug("bends", exc_info=True)
            self.error(f"bend: {type(e).__name__}: {e}", kind="bend")
        return shown

    def _drain(self) -> None:
        from paik.instrument.render.resident import LiveTake, ResidentSource

        events = self._waiting + self.engine.poll()
        self._waiting = []
        for i, ev in enumerate(events):
            kind = type(ev).__name__
            if not (kind == "StepDone" and not ev.is_ready()) and self.twins.event(ev, kind):
                continue
            if kind == "TakeStarted":
                take = LiveTake(ev.path, ev.manifest, ev.store.maps, ev.store.step_slot)
                self._forming = [ev.take, take, None]
                self.take_name = ev.name
                self.progress = (0, int(ev.manifest.get("settings", {}).get("steps") or len(take.layout.steps)))
            elif kind == "StepDone":
                if not ev.is_ready():
                    self._waiting = events[i:]  # keep the order: later events wait behind this one
                    return
                self.progress = (ev.done, ev.total)
                f = self._forming
                if f is None or f[0] != ev.take or not ev.captured:
                    continue
                f[1].add_step(ev.index, None if ev.preview is None else ev.preview.numpy(), ev.ready)
                if f[2] is None:
                    f[2] = ResidentSource(f[1])
                    if self.target.follow and not self.target.continuous:
                        self._show(f[2])
                elif f[2] is self.src or f[2] is self._pending_src:
                    self._grow(f[2])
            elif kind == "TakeDone":
                self.takes_done += 1
                f = self._forming
                if f is not None and f[0] == ev.take:
                    f[1].finish(ev.video, "complete", getattr(ev, "frames", None))
                    f[1].path = ev.path
                    if f[2] is not None and self.target.continuous and f[2] is not self.src:
                        self._switch = f[2]  # at the loop point of the take playing (see update)
                    elif f[2] is not None and f[2] is not self.src and f[2] is not self._pending_src:
                        self._show(f[2])  # follow off: the finished take replaces the one playing
                    elif f[2] is self.src:
                        self._grow(f[2])
                log.info("take %s complete: %s", ev.name, ev.path)
            elif kind == "TakeWritten":
                self.takes_written += 1
                if ev.error:
                    self.error(f"{ev.name}: {ev.error}", kind="generate")
                else:
                    log.info("take %s written: %s", ev.name, ev.path)
            elif kind == "BendRefused":
                self.error(ev.message, kind="bend")
            elif kind == "TakeFailed":
                self.error(f"{ev.name}: {ev.message}", kind="generate")
        self.twins.idle()

    def _continue(self, wrapped: bool) -> None:
        """Continuous mode, once per frame: switch to a finished take at the loop point (at once
        when nothing finished is playing), and keep one take generating ahead."""
        t = self.target
        if self._switch is not None:
            playing = getattr(self.src.bundle, "status", "") == "complete" and self.src is not self._switch
            if wrapped or not playing or not t.continuous:
                src, self._switch = self._switch, None
                self._show(src)
                self.takes_shown += 1
        if not t.continuous or self._switch is not None or self.engine.busy:
            return
        if not t.prompt.strip() and not self.continuous.prompts:
            return
        c = self.continuous
        if c.prompts:
            t.prompt = c.prompts[self._next_prompt % len(c.prompts)]
            self._next_prompt += 1
            self._touched.add("prompt")
        req = request_from(t, self.request_type)
        given = {"steps": c.steps, "frames": c.frames}
        if c.size is not None:
            given.update(width=c.size[0], height=c.size[1])
        self.engine.submit(replace(req, **{k: v for k, v in given.items() if v is not None}))
        if not c.prompts:  # the next take, the next seed
            t.seed = (int(t.seed) + 1) % 2**31
            self._touched.add("seed")

    def _show(self, src) -> None:
        self._pending_src = src  # swapped in by Live.update between frames
        if self.target.follow:
            self.target.step = float(src.dims.n_steps - 1)
            self._touched.add("step")

    def _grow(self, src) -> None:
        if src is not self.src or not src.refresh():
            return
        d = src.dims
        for bank in (self.target, self.shown):
            bank.bind(len(src.words), d.n_steps, d.n_blocks, d.n_heads, bank.colormaps)
        if self.target.follow:
            self.target.step = float(d.n_steps - 1)
        self._touched.update(("step", "counts"))

    def _swap_source(self) -> None:
        src = self._pending_src
        if hasattr(src, "refresh"):
            src.refresh()  # the steps that arrived while it waited to be swapped in
        super()._swap_source()
        if self.target.follow and hasattr(src, "refresh"):
            self.target.step = float(src.dims.n_steps - 1)
