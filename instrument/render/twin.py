"""The twin and diff views: a bent take beside its unbent twin (same seed, no bends), or the
signed difference of their maps.

A :class:`~paik.instrument.render.renderer.Renderer` whose view is ``twin`` or ``diff`` hands the
frame to its :class:`TwinViews`, which keeps two more renderers of the same kind (synchronous
offline, with their own asynchronous selection live, so the twin's selection never holds up a
frame either):

- ``twin``: the unbent twin's renderer draws the left cell and the bent take's own renderer the
  right one, both the ``single`` view of the same word, step, block and head, each over its own
  video (or previews): the left half is exactly the single view of the unbent take;
- ``diff``: a renderer over :class:`DiffSource`, whose volumes are bent minus unbent (one
  reduction each, subtracted), normalized symmetrically (zero at the middle of the colormap,
  :func:`paik.instrument.render.normalize.symmetric`; ``gain`` magnifies the differences) and
  colored with the ``diverging`` colormap, whose middle is black, over the bent take's video.

The twin comes from the source (:attr:`paik.instrument.render.source.Source.twin`). Without one,
or with one of another layout, the bent take's single view is drawn and the reason is raised
once (after the frame is drawn): the loops report it as ``/paik/error``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from paik.errors import PaikError

from paik.instrument.render import normalize, views
from paik.instrument.render.reduce import Reducer, Selection
from paik.instrument.render.source import twin_mismatch

TWIN_VIEWS = ("twin", "diff")
DIFF_COLORMAP = "diverging"
LABELS = ("unbent", "bent")


def _own_reducer(src):
    """A reducer only this view's selection thread uses: the numpy one keeps unlocked caches, so
    it is not shared with the bent take's own renderer; the resident one locks, so it is."""
    r = src.reducer
    return Reducer(src.bundle, r.device) if isinstance(r, Reducer) else r


class DiffReducer:
    """Volumes of bent minus unbent for a selection (signed, [cells, F', H', W'] float32)."""

    def __init__(self, bent, unbent):
        self.bent, self.unbent = bent, unbent
        self.a, self.b = _own_reducer(bent), _own_reducer(unbent)
        self.latent = self.a.latent
        self.device = getattr(self.a, "device", "cpu")

    def volumes(self, sel: Selection) -> np.ndarray:
        have = len(self.unbent.bundle.step_indices)
        if sel.steps and max(sel.steps) >= have:
            raise PaikError(f"diff: the unbent twin has {have} finished steps so far; pick an earlier step or wait")
        return self.a.volumes(sel) - self.b.volumes(sel)


class DiffSource:
    """The bent source as the diff view sees it: its words, counts, video and version, with the
    difference's reducer."""

    def __init__(self, bent, unbent):
        self.base = bent
        self.reducer = DiffReducer(bent, unbent)

    def __getattr__(self, name):
        return getattr(self.base, name)


def _renderer_type():
    from paik.instrument.render.renderer import Renderer

    class DiffRenderer(Renderer):
        """Signed tiles: symmetric ranges (gain folded in), the shader's gain and gamma left at 1."""

        def _range_key(self, p):
            return ("symmetric", p.norm, p.clip_hi)

        def _final_key(self, p):
            return ("symmetric", p.norm, p.clip_hi, self.diff_gain)

        def _range_stat(self, prep, key):
            return normalize.magnitude(prep.tiles, key[1], key[2])  # on the selection thread when live

        def _range_final(self, stat):
            return normalize.symmetric_from(stat, self.diff_gain)  # the gain moves every frame: cheap

    return Renderer, DiffRenderer


class TwinViews:
    """The twin and diff views of one renderer (``owner``, the bent take's)."""

    def __init__(self, owner):
        self.owner = owner
        self._key = None  # (bent source, twin source) the renderers below were made for
        self.unbent = self.diff = None
        self._reported: set[str] = set()
        self._primed: set[str] = set()  # the views whose renderer has shown its first map

    def release(self) -> None:
        for r in (self.unbent, self.diff):
            if r is not None:
                r.release(programs=False)  # the owner's compiled programs: shared
        self.unbent = self.diff = None
        self._key = None
        self._primed = set()

    def _renderers(self):
        src = self.owner.src
        twin = getattr(src, "twin", None)
        if twin is None:
            why = getattr(src, "twin_error", None)
            name = getattr(src.bundle.path, "name", "this take")
            raise PaikError(why or f"{name} has no unbent twin; the twin and diff views need one (paik generate "
                                   "--twin, paik play --twin UNBENT, or 'twin on' in paik live)")
        key = (id(src), id(twin), id(twin.bundle))
        if self._key != key:
            self.release()
            why = twin_mismatch(src, twin)
            if why is not None:
                raise PaikError(why)
            Renderer, DiffRenderer = _renderer_type()
            o = self.owner
            live = o.selector is not None
            self.unbent = Renderer(o.ctx, twin, o.shader_dir, asynchronous=live, programs=o.program)
            self.diff = DiffRenderer(o.ctx, DiffSource(src, twin), o.shader_dir, asynchronous=live, programs=o.program)
            self._key = key
        for extra in src.words[len(twin.words):]:  # phrases picked on the bent take: the twin's too
            twin.words.append(extra)
        return twin

    def draw(self, p, time: float, viewport, gap: float, premultiply: bool) -> None:
        o = self.owner
        q = p.copy()
        q.view = "single"
        try:
            self._renderers()
        except PaikError as e:
            o._draw(q, time, viewport, gap, premultiply)  # the view falls back; said once
            if str(e) not in self._reported:
                self._reported.add(str(e))
                raise
            return
        # live: the view's renderer primes (its first selection asked, not waited for) while the
        # bent take's single view stands in, as a Stage does for a new source
        r = self.unbent if p.view == "twin" else self.diff
        if r.selector is not None and p.view not in self._primed:
            if not r.prime(q):
                o._draw(q, time, viewport, gap, premultiply)
                return
            self._primed.add(p.view)
        o.ctx.fbo.clear(0.0, 0.0, 0.0, 0.0, viewport=tuple(int(v) for v in viewport))  # bars and the gap
        if p.view == "twin":
            x, y, w, h = views.fit(tuple(int(v) for v in viewport), 1, 2, o.src.dims.aspect, gap)
            cw = max(1, round((w - gap) / 2))
            self.unbent._draw(q, time, (x, y, cw, h), 0.0, premultiply)
            o._draw(q, time, (x + w - cw, y, cw, h), 0.0, premultiply)
            pl = o.plan
            o.plan = views.Plan(pl.selection, 1, 2, LABELS, f"unbent | bent  {pl.title}")
            o.picture = (x, y, w, h)
            return
        d = self.diff
        d.diff_gain = float(p.gain)
        q.colormap, q.gain, q.gamma, q.threshold = DIFF_COLORMAP, 1.0, 1.0, 0.0
        d._draw(q, time, viewport, gap, premultiply)
        o.plan = replace(d.plan, title=f"bent - unbent  {d.plan.title}")
        o.picture = d.picture
