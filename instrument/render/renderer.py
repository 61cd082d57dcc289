"""Draws one view of a bundle into the current framebuffer (window or offscreen alike).

Two passes, so that the work per output pixel stays the same small constant whatever the view:

1. at map resolution (``field.frag``): for every cell and map texel, the cell's crossfade tiles
   (up to four) at the current time, each normalized by its range, one tile per channel of a
   half-float texture laid out like the picture's grid (300 cells x 30x52 texels for the
   heads x steps grid: under half a million texels). At background resolution
   (``backdrop.frag``): the distinct background tiles at the current time (the video frame, or
   the previews blended in time and across steps) into one RGBA8 texture. Each runs only when
   what it depends on changes (time, the cells, the selection, the ranges, the shader);
2. at output resolution (``attention.frag``): one bilinear sample of the field, clamp and blend
   the channels, shape, one LUT sample, one background sample (none for the heatmap), composite.

Bilinear filtering, the crossfade weights, the time interpolation and the (lo, hi) mapping are
all linear, so normalizing at the texels and filtering afterwards gives what filtering each tile
(trilinear) and normalizing it would; what is not linear (the clamp of each tile to 0..1, gain,
gamma, threshold, colormap) stays per pixel in pass 2, after the sample.

Heavier work happens only when what it depends on changes:

- selection (token, view, step/block pair, head, reduce) -> reduce + one atlas upload;
- normalization settings -> (lo, hi) ranges upload;
- colormap -> LUT upload; background mode -> video or previews upload (decoded once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from time import perf_counter as _clock

import numpy as np

from paik.errors import PaikError

from paik.instrument.render import atlas, background, colormaps, normalize, views
from paik.instrument.control.params import COMPOSITES, Params
from paik.instrument.render.resident import SlotWorker
from paik.instrument.render.shaders import Program
from paik.instrument.render.source import Source

log = logging.getLogger(__name__)

CHANNELS = {1: 1, 2: 2, 3: 4, 4: 4}  # field channels for a number of crossfade taps (no RGB16F: not renderable)


@dataclass
class Prepared:
    """A selection's volumes made ready for the GPU: everything but the upload, so that live play
    does it on the selection thread (resident.AsyncSelector) and the render thread only uploads."""

    tiles: np.ndarray  # [N, F', H', W'] float32 holding the f16-rounded volumes the GPU samples
    pairs: np.ndarray  # the packed atlas, each frame with the next: [D, H, W, 2] float16
    origins: np.ndarray  # [N, 2] texel origin of every tile in the atlas
    ranges: dict = field(default_factory=dict)  # range key -> the renderer's statistic for it


def prepare(vols: np.ndarray, max3d: int) -> Prepared:
    """[N, F', H', W'] float32 volumes -> :class:`Prepared` for an atlas of at most ``max3d`` texels a side."""
    half = np.asarray(vols).astype(np.float16)
    packed, cols = atlas.pack(half[..., None], max3d)
    n, _, h, w = half.shape
    return Prepared(half.astype(np.float32), atlas.frame_pairs(packed), atlas.origins(n, cols, w, h))


class Passes:
    """The renderer's programs, seen as one by the hot-reload loop (``poll``, ``error``,
    ``generation``); ``prog`` is the output pass's program."""

    def __init__(self, ctx, directory=None):
        kw = {} if directory is None else {"directory": directory}
        self.main = Program(ctx, "fullscreen.vert", "attention.frag", **kw)
        self.field = Program(ctx, "field.vert", "field.frag", **kw)
        self.backdrop = Program(ctx, "backdrop.vert", "backdrop.frag", **kw)
        self.all = (self.main, self.field, self.backdrop)

    @property
    def prog(self):
        return self.main.prog

    @property
    def generation(self) -> int:
        return sum(p.generation for p in self.all)

    @property
    def error(self) -> str | None:
        errors = [p.error for p in self.all if p.error]
        return "\n".join(errors) if errors else None

    def poll(self) -> bool:
        """Rebuild whichever program's files changed; True when a new program is in use."""
        return any([p.poll() for p in self.all])

    def set(self, name: str, value) -> None:
        self.main.set(name, value)


def frame_pair(t01: float, n: int) -> tuple[int, int, float]:
    """Frames around video position t01 (0..1) of n frames and the weight of the second."""
    z = min(max(float(t01), 0.0), 1.0) * (n - 1)
    f0 = min(max(int(np.floor(z)), 0), n - 1)
    return f0, min(f0 + 1, n - 1), min(max(z - f0, 0.0), 1.0)


class _Backgrounds(SlotWorker):
    """Backgrounds (the video decoded, the previews) computed on a thread with one pending slot:
    :meth:`get` returns the data of ``(mode, version)`` once made, else None and asks for it."""

    def __init__(self, compute):
        self.compute = compute
        self._done: dict = {}
        super().__init__("paik-background")

    def get(self, key):
        with self._cond:
            if key in self._done:
                out = self._done[key]
                if isinstance(out, Exception):
                    del self._done[key]  # said once; asked again on a later change
                    raise out
                return out
            self._ask(key)
        return None

    def _work(self, key):
        try:
            return self.compute(key[0])
        except Exception as e:  # noqa: BLE001 - a broken video: reported by the render thread
            return e if isinstance(e, PaikError) else PaikError(f"background: {type(e).__name__}: {e}")

    def _store(self, key, out) -> None:
        self._done = {k: v for k, v in self._done.items() if k[1] == key[1]}  # older versions go
        self._done[key] = out


class Renderer:
    def __init__(self, ctx, source: Source, shader_dir=None, asynchronous: bool | None = None, programs=None):
        self.ctx = ctx
        self.src = source
        # live play: reductions on a worker thread, the map on screen kept until the new one is ready
        # (resident.AsyncSelector); offline rendering stays synchronous, every frame exact
        self.selector = None
        if asynchronous if asynchronous is not None else getattr(source, "asynchronous", False):
            from paik.instrument.render.resident import AsyncSelector

            self.selector = AsyncSelector(source.reducer, prepare=self._prepare, range_stat=self._range_stat)
        self.shader_dir = shader_dir
        self.program = programs if programs is not None else Passes(ctx, shader_dir)  # a Stage shares them
        self.max3d = int(ctx.info["GL_MAX_3D_TEXTURE_SIZE"])
        self.max2d = int(ctx.info["GL_MAX_TEXTURE_SIZE"])
        self._quad = ctx.buffer(np.array([-1, -1, 1, -1, -1, 1, 1, 1], "f4").tobytes())
        self._unit = ctx.buffer(np.array([0, 0, 1, 0, 0, 1, 1, 1], "f4").tobytes())
        self._vaos: dict[str, tuple[tuple, object]] = {}
        self.maps = self.lut = self.bg = None
        self._staging = atlas.Staging(ctx)  # uploads go through a pixel buffer: the CPU never waits on the GPU
        self._keys: dict[str, object] = {}
        self.plan: views.Plan | None = None
        self._plan_key: tuple | None = None  # (the parameters, the plan they ask for)
        self.prepared: Prepared | None = None  # the selection on the GPU (its tiles, atlas, ranges)
        self.tile_org = np.zeros((1, 2), np.float32)  # texel origin of every tile in the map atlas
        self.ranges = np.zeros((1, 1, 2), np.float32)  # [tile, frame, (lo, hi)]
        self.cell_tiles = np.zeros((1, 4), np.int64)  # the (up to) four tiles each cell blends
        self.cell_bg = np.zeros(1, np.float32)  # background position of every cell
        self.weights = (1.0, 0.0, 0.0, 0.0)  # crossfade weight of each tap, the same in every cell
        self.taps = 1
        self.bg_info = (0, 1, (1, 1, 1), False)  # count, cols, tile size, nearest-time
        self._bg_cache: dict[tuple, tuple] = {}  # (mode, source version) -> (texture, bg_info)
        self._bg_key: tuple | None = None  # (mode, source version) of the background on the GPU
        self._bg_asked: tuple | None = None  # what the last frame asked for
        # live: backgrounds decoded and packed on a thread, like the selections
        self._backgrounds = _Backgrounds(self._background_data) if self.selector is not None else None
        # pass 1: texture, framebuffer and the key of what they hold; per-instance attributes
        self._targets: dict[str, list] = {"field": [None, None, None], "backdrop": [None, None, None]}
        self._inst: dict[str, object] = {"field": None, "backdrop": None}
        self._buffers = 0  # instance buffers made so far (a new one needs a new vertex array)
        self._version = {"field": 0, "backdrop": 0}  # bumped when an input of a pass-1 target changes
        self.backdrop_step = (0.0, 0.0)
        self._layout = (-1, (False, False))  # (backdrop version, _backdrop_layout()) cached
        self.bakes = {"field": 0, "backdrop": 0}  # pass-1 runs so far (tests, profiling)
        self.picture = (0, 0, 1, 1)  # where the last draw put the picture in its viewport (x, y, w, h)
        self.twin_views = None  # the twin and diff views (twin.TwinViews), made when first shown
        self.diff_gain = 1.0  # the diff view's gain, folded into its ranges (twin.DiffRenderer)
        # the last draw's phases in ms and its uploads in bytes (paik bench live's worst frames)
        self.profile: dict = {}

    def release(self, programs: bool = True) -> None:
        """Free every GL object this renderer made (moderngl frees nothing on garbage collection):
        the loops call it when a loaded bundle replaces the renderer. Its selector thread ends too.
        ``programs=False`` keeps the compiled programs (a :class:`Stage` hands them on)."""
        # the workers call back into this renderer and the twin views point at it: cycles that
        # would keep its source (a resident capture's device memory) alive until Python's next
        # full collection. Broken here, the source goes as soon as nothing else holds it.
        if self.selector is not None:
            self.selector.close()
            self.selector.prepare = self.selector.range_stat = None  # a job mid-way fails, unseen
        if self._backgrounds is not None:
            self._backgrounds.close()
            self._backgrounds.compute = None
        if self.twin_views is not None:
            self.twin_views.release()
            self.twin_views = None
        objs = [self._quad, self._unit, self.maps, self.lut, self._staging]
        objs += [tex for tex, _ in self._bg_cache.values()]
        objs += [x for slot in self._targets.values() for x in slot[:2]]
        objs += list(self._inst.values()) + [vao for _, vao in self._vaos.values()]
        objs += [p.prog for p in self.program.all] if programs else []
        for o in objs:
            if o is not None and hasattr(o, "release"):
                try:
                    o.release()
                except Exception:  # noqa: BLE001 - already released, or the context is gone
                    pass
        self._bg_cache.clear()
        self._vaos.clear()
        self.maps = self.lut = self.bg = None

    # -- state --------------------------------------------------------------------------------
    def update(self, p: Params, time: float) -> None:
        """Bring GPU state in line with ``p`` at video position ``time`` (0..1)."""
        # the plan (up to 300 cell labels) depends on these alone: rebuilt when one changes, not per frame
        key = (p.token, p.view, p.step, p.block, p.head, p.reduce, self.src.dims)  # a live take's dims grow
        if self._plan_key is None or self._plan_key[0] != key:
            word = self.src.words[p.token]
            self._plan_key = (key, views.plan(p, self.src.dims, word.positions, word.label))
        pl = self._plan_key[1]
        prep = None
        mark = _clock()
        if self.selector is not None:
            # never waits long: the old plan, its bank and its prepared volumes if the new one is not ready
            # the newest step of a take forming and followed: what follow mode moves to as steps arrive
            growing = (p.follow and getattr(self.src.bundle, "status", None) == "running"
                       and p.step >= self.src.dims.n_steps - 1)
            pl, p, prep = self.selector.ready(pl, p, self._range_key(p), growing)
        self.profile["ready_ms"], mark = (_clock() - mark) * 1e3, _clock()
        if self._changed("selection", pl.selection) or (prep is not None and prep is not self.prepared):
            if prep is None:  # offline: synchronous, every frame exact
                prep = self._prepare(self.src.reducer.volumes(pl.selection))
            self.prepared = prep
            self.maps = atlas.upload(self.ctx, self.maps, prep.pairs, "f2", self._staging)
            self.profile["maps_bytes"] = prep.pairs.nbytes
            self.tile_org = prep.origins
            self._keys.pop("ranges", None)
            self._version["field"] += 1
        self.plan = pl
        if self._changed("ranges", self._final_key(p)):
            key = self._range_key(p)
            stat = self.prepared.ranges.get(key)
            if stat is None:  # offline, or a range key the selection thread did not see
                stat = self._range_stat(self.prepared, key)
                self.prepared.ranges = {**self.prepared.ranges, key: stat}  # a new dict, as the selection thread makes
            self.ranges = self._range_final(stat)  # [N, F', 2]
            self._version["field"] += 1
        self.profile["upload_ms"], mark = (_clock() - mark) * 1e3, _clock()
        sweep_t = time if p.view == "sweep" else None
        if self._changed("cells", (pl, p.step, p.block, p.view, sweep_t)):
            taps, bg = views.cell_table(p, self.src.dims, pl, time)
            weights = taps[:, 1]
            if not np.allclose(weights, weights[:1], rtol=0, atol=1e-7):
                raise PaikError(f"view {p.view}: crossfade weights differ between cells; pass 2 takes one set")
            self.weights = tuple(float(x) for x in weights[0])
            self.taps = max([k + 1 for k in range(4) if weights[0, k] > 0] or [1])
            self.cell_tiles = np.rint(taps[:, 0]).astype(np.int64)
            self.cell_bg = bg.astype(np.float32)
            self._version["field"] += 1
            self._version["backdrop"] += 1
        if self._changed("lut", p.colormap):
            if self.lut is not None:
                self.lut.release()
            self.lut = self.ctx.texture((256, 1), 3, colormaps.lut_bytes(p.colormap))
            self.lut.repeat_x = self.lut.repeat_y = False
        self.profile["cells_ms"], mark = (_clock() - mark) * 1e3, _clock()
        # the heatmap alone needs no background: do not decode the video for it (first frame fast)
        bg_mode = "none" if p.composite == "heatmap" else p.background
        # a live take's previews grow, its video arrives; no background stays none whatever comes
        current = getattr(self.src, "version", 0)
        version = 0 if bg_mode == "none" else current
        want = self._bg_asked = (bg_mode, version)
        if self._bg_key != want:
            hit = self._bg_cache.get(want)
            if hit is None:
                sync = self._backgrounds is None or bg_mode == "none"  # none: nothing to decode
                data = self._background_data(bg_mode) if sync else self._backgrounds.get(want)
                if data is not None:  # live: None while its thread decodes; the old background stays
                    # a growing take's previews keep their atlas size (packed for every planned step):
                    # the older version's texture is written over, never remade each step
                    # (only when its size matches: a failed upload then leaves the old one intact)
                    older = next((k for k in self._bg_cache if k[0] == bg_mode and k[1] != version), None)
                    reuse = self._bg_cache[older][0] if older is not None and data[1] is not None else None
                    if reuse is not None and not atlas.fits(reuse, data[1][0], "f1"):
                        reuse = None
                    hit = self._upload_background(data[1], reuse)
                    if reuse is not None:
                        self._bg_cache.pop(older)
                    self.profile["bg_bytes"] = 0 if data[1] is None else data[1][0].nbytes
                    # replaced: an older version's (none, made once, and the current version's stay)
                    for k in [k for k in self._bg_cache if k[0] != "none" and k[1] != current]:
                        self._bg_cache.pop(k)[0].release()
                    self._bg_cache[want] = hit
            if hit is not None:
                self.bg, self.bg_info = hit
                self._bg_key = want
                self._version["backdrop"] += 1
        self.profile["bg_ms"] = (_clock() - mark) * 1e3

    def prime(self, p: Params) -> bool:
        """Live: ask, without waiting, for what drawing ``p`` first needs (its selection with its
        ranges, its background); True once all of it is ready (or failed: drawing says why)."""
        if self.selector is None:
            return True
        q = p
        if p.view in ("twin", "diff"):  # their own renderers prime on their first frame; the bent take's single view here
            q = p.copy()
            q.view = "single"
        try:
            word = self.src.words[q.token]
            pl = views.plan(q, self.src.dims, word.positions, word.label)
            ok = self.selector.request(pl.selection, self._range_key(q))
            bg_mode = "none" if q.composite == "heatmap" else q.background
            if bg_mode != "none":
                ok = self._backgrounds.get((bg_mode, getattr(self.src, "version", 0))) is not None and ok
            return ok
        except Exception:  # noqa: BLE001 - the first draw reports it
            return True

    @property
    def tiles(self) -> np.ndarray | None:
        """The f16-rounded volumes on the GPU, as float32 [N, F', H', W']."""
        return None if self.prepared is None else self.prepared.tiles

    @property
    def settled(self) -> bool:
        """The last frame showed what was asked: its selection and its background (snapshots wait)."""
        return (self.selector is None or self.selector.settled) and self._bg_key == self._bg_asked

    def _prepare(self, vols: np.ndarray) -> Prepared:
        return prepare(vols, self.max3d)

    # the normalization ranges: a statistic of the tiles for a key of the bank's settings (the
    # percentiles: heavy, computed with the selection on its thread), then a cheap final step
    def _range_key(self, p: Params) -> tuple:
        return (p.norm, p.clip_lo, p.clip_hi)

    def _final_key(self, p: Params) -> tuple:
        return self._range_key(p)

    def _range_stat(self, prep: Prepared, key: tuple):
        return normalize.ranges(prep.tiles, *key)

    def _range_final(self, stat) -> np.ndarray:
        return stat

    def _changed(self, key: str, value) -> bool:
        if key in self._keys and self._keys[key] == value:
            return False
        self._keys[key] = value
        return True

    def _background_data(self, mode: str):
        """(mode, (packed RGBA atlas [D, H, W, 4] uint8, (count, cols, tile size, nearest)) or None):
        the decoding and packing, safe off the render thread."""
        tiles, nearest = None, False
        if mode == "video" and self.src.bundle.video_path is None and getattr(self.src, "asynchronous", False):
            mode = "preview"  # a take still forming: its per-step previews until the video replaces them
        frames = getattr(self.src.bundle, "video_frames", None)  # a live take's video, decoded in memory
        if mode == "video" and frames is not None:
            k = max(1, -(-max(frames.shape[1:3]) // self.max3d))  # a 3D texture's side limits it
            tiles, nearest = frames[:self.max3d, ::k, ::k][None], True
        elif mode == "video":
            path = self.src.bundle.video_path
            if path is None:
                log.warning("%s has no video; compositing over black", self.src.bundle.path)
            else:
                tiles, nearest = background.decode_video(path, self.max3d)[None], True
        elif mode == "preview":
            tiles = background.previews(self.src.bundle)
            if tiles is None:
                log.warning("%s has no per-step previews; compositing over black", self.src.bundle.path)
        if tiles is None:
            return mode, None
        n, d, h, w, _ = tiles.shape
        planned = len(getattr(getattr(self.src.bundle, "layout", None), "steps", ()))
        # a take still forming: room for every planned step, so the atlas keeps one size
        forming = mode == "preview" and getattr(self.src, "asynchronous", False) and planned > n
        packed, cols = atlas.pack(tiles, self.max3d, slots=planned if forming else None)
        return mode, (packed, (n, cols, (w, h, d), nearest))

    def _upload_background(self, data, tex=None):
        """(texture, info) of a background's data; ``tex``, when given, is written over (it fits)."""
        if data is None:
            tex = self.ctx.texture3d((1, 1, 1), 4, bytes(4))
            return tex, (0, 1, (1, 1, 1), False)
        packed, info = data
        return atlas.upload(self.ctx, tex, packed, "f1", self._staging), info

    # -- pass 1 -------------------------------------------------------------------------------
    def _target(self, name: str, size: tuple[int, int], comps: int, dtype: str):
        """The texture + framebuffer pass 1 renders ``name`` into, (re)made at this size/format."""
        import moderngl

        slot = self._targets[name]
        tex = slot[0]
        # a crossfade that comes and goes (the sweep passing an integer step) must not remake the
        # target every time: keep more channels than needed while the size stays the same
        if tex is None or tex.size != size or tex.components < comps or tex.dtype != dtype:
            if size[0] > self.max2d or size[1] > self.max2d:
                raise PaikError(f"the {name} of this view needs a {size[0]}x{size[1]} texture; this GPU allows "
                                f"{self.max2d} per side: choose fewer steps/blocks or a smaller capture")
            if tex is not None:
                slot[1].release()
                tex.release()
            tex = self.ctx.texture(size, comps, dtype=dtype)
            tex.filter = (moderngl.LINEAR, moderngl.LINEAR)
            tex.repeat_x = tex.repeat_y = False
            fbo = self.ctx.framebuffer(color_attachments=[tex])
            fbo.clear(0.0, 0.0, 0.0, 1.0)  # cells of the grid left empty stay defined
            slot[:] = [tex, fbo, None]
        return slot

    def _instances(self, name: str, prog: Program, data: np.ndarray, layout: str, attrs: tuple[str, ...]):
        """Write per-instance attributes [instances, floats] and return the vertex array."""
        data = np.ascontiguousarray(data, np.float32)
        buf = self._inst[name]
        if buf is None or buf.size < data.nbytes:
            if buf is not None:
                buf.release()
            buf = self._inst[name] = self.ctx.buffer(reserve=max(data.nbytes, 4096), dynamic=True)
            self._buffers += 1
        buf.write(data.tobytes())
        key = (prog.generation, self._buffers)
        old = self._vaos.get(name)
        if old is None or old[0] != key:
            if old is not None:
                old[1].release()
            vao = self.ctx.vertex_array(prog.prog, [(self._unit, "2f", "in_pos"), (buf, layout, *attrs)],
                                        skip_errors=True)
            self._vaos[name] = (key, vao)
        return self._vaos[name][1]

    def _bake_field(self, time: float) -> tuple[int, int]:
        """Pass 1 for the maps; returns the field's size in texels."""
        import moderngl

        f, h, w = self.src.reducer.latent
        pl = self.plan
        size = (pl.cols * w, pl.rows * h)
        slot = self._target("field", size, CHANNELS[self.taps], "f2")
        prog = self.program.field
        f0, f1, t = frame_pair(time, f)
        key = (self._version["field"], prog.generation, f0, t)
        if slot[2] == key:
            return size
        tiles = self.cell_tiles  # [cells, 4]
        n = len(tiles)
        r = self.ranges[tiles, f0] * (1.0 - t) + self.ranges[tiles, f1] * t  # [cells, 4, (lo, hi)]
        lo = r[..., 0]
        scale = 1.0 / np.maximum(r[..., 1] - lo, 1e-20)
        rows, cols = np.divmod(np.arange(n), pl.cols)
        inst = np.concatenate([np.stack([cols * w, rows * h], 1), self.tile_org[tiles].reshape(n, 8), lo, scale], 1)
        vao = self._instances("field", prog, inst, "2f 4f 4f 4f 4f/i",
                              ("in_cell", "in_org01", "in_org23", "in_lo", "in_scale"))
        slot[1].use()
        self.maps.use(0)
        for k, v in (("u_maps", 0), ("u_frame", f0), ("u_frac", float(t)), ("u_taps", self.taps),
                     ("u_tile", (float(w), float(h))), ("u_target", (float(size[0]), float(size[1])))):
            prog.set(k, v)
        vao.render(moderngl.TRIANGLE_STRIP, instances=n)
        slot[2] = key
        self.bakes["field"] += 1
        return size

    def _backdrop_layout(self) -> tuple[bool, bool]:
        """Whether cells need their own background tiles along columns / rows (else they share)."""
        n = self.bg_info[0]
        pl = self.plan
        eff = np.clip(self.cell_bg, 0, max(n - 1, 0))
        grid = np.full(pl.rows * pl.cols, np.nan, np.float64)
        grid[:len(eff)] = eff
        grid = grid.reshape(pl.rows, pl.cols)
        with np.errstate(invalid="ignore"):
            sx = bool(np.any(np.nanmax(grid, 1) != np.nanmin(grid, 1)))
            sy = bool(np.any(np.nanmax(grid, 0) != np.nanmin(grid, 0)))
        rep = grid[:, :1] if not sx else grid
        rep = rep[:1] if not sy else rep
        ok = np.isnan(grid) | (grid == np.broadcast_to(rep, grid.shape))
        return (sx, sy) if ok.all() else (True, True)

    def _bake_backdrop(self, time: float) -> tuple[int, int]:
        """Pass 1 for the background; returns the backdrop's size in texels."""
        import moderngl

        n, bcols, (bw, bh, bd), nearest = self.bg_info
        pl = self.plan
        if self._layout[0] != self._version["backdrop"]:
            self._layout = (self._version["backdrop"], self._backdrop_layout())
        sx, sy = self._layout[1]
        tc, tr = (pl.cols if sx else 1), (pl.rows if sy else 1)
        size = (tc * bw, tr * bh)
        slot = self._target("backdrop", size, 4, "f1")
        self.backdrop_step = (float(sx), float(sy))
        prog = self.program.backdrop
        if nearest:  # the video: whole frames, never a blend of two
            z0 = z1 = min(int(np.floor(min(max(float(time), 0.0), 1.0) * (bd - 1) + 0.5)), bd - 1)
            zf = 0.0
        else:
            z0, z1, zf = frame_pair(time, bd)
        key = (self._version["backdrop"], prog.generation, z0, zf, sx, sy)
        if slot[2] == key:
            return size
        rows, cols = np.divmod(np.arange(tc * tr), tc)
        cells = np.minimum(rows * pl.cols + cols, len(self.cell_bg) - 1)
        pos = np.clip(self.cell_bg[cells].astype(np.float64), 0, n - 1)
        i0 = np.floor(pos).astype(np.int64)
        i1 = np.minimum(i0 + 1, n - 1)
        org = atlas.origins(n, bcols, bw, bh)
        inst = np.concatenate([np.stack([cols * bw, rows * bh], 1), org[i0], org[i1], (pos - i0)[:, None]], 1)
        vao = self._instances("backdrop", prog, inst, "2f 4f 1f/i", ("in_cell", "in_org", "in_mix"))
        slot[1].use()
        self.bg.use(0)
        for k, v in (("u_bg", 0), ("u_bg_z0", z0), ("u_bg_z1", z1), ("u_bg_zfrac", float(zf)),
                     ("u_tile", (float(bw), float(bh))), ("u_target", (float(size[0]), float(size[1])))):
            prog.set(k, v)
        vao.render(moderngl.TRIANGLE_STRIP, instances=len(inst))
        slot[2] = key
        self.bakes["backdrop"] += 1
        return size

    # -- drawing ------------------------------------------------------------------------------
    def draw(self, p: Params, time: float, viewport: tuple[int, int, int, int], gap: float = 0.0,
             premultiply: bool = True) -> None:
        """Draw the view into ``viewport`` of the bound framebuffer: the picture keeps the video's
        aspect (bars around it, transparent black), every pixel of the viewport is written."""
        if p.view in ("twin", "diff"):  # two takes at once: twin.py
            if self.twin_views is None:
                from paik.instrument.render.twin import TwinViews

                self.twin_views = TwinViews(self)
            self.twin_views.draw(p, time, viewport, gap, premultiply)
            return
        self._draw(p, time, viewport, gap, premultiply)

    def _draw(self, p: Params, time: float, viewport: tuple[int, int, int, int], gap: float = 0.0,
              premultiply: bool = True) -> None:
        t0 = _clock()
        self.profile = prof = {}
        self.update(p, time)
        t1 = _clock()
        target = self.ctx.fbo  # the framebuffer the caller bound: pass 1 binds its own
        f, h, w = self.src.reducer.latent
        pl = self.plan
        fsize = self._bake_field(time)
        t2 = _clock()
        bg_on = p.composite != "heatmap" and self.bg_info[0] > 0
        bsize, btile = (1, 1), (1.0, 1.0)
        if bg_on:
            bsize = self._bake_backdrop(time)
            btile = tuple(float(x) for x in self.bg_info[2][:2])
        t3 = _clock()
        target.use()
        self.ctx.viewport = viewport
        field = self._targets["field"][0]
        backdrop = self._targets["backdrop"][0] if bg_on else field
        field.use(0)
        backdrop.use(1)
        self.lut.use(2)
        gap = float(gap) if pl.rows * pl.cols > 1 else 0.0
        picture = views.fit(tuple(int(v) for v in viewport), pl.rows, pl.cols, self.src.dims.aspect, gap)
        self.picture = picture
        pitch = ((picture[2] + gap) / pl.cols, (picture[3] + gap) / pl.rows)
        self._fullscreen(self.program.main, (
            ("u_field", 0), ("u_backdrop", 1), ("u_lut", 2),
            ("u_viewport", tuple(float(v) for v in picture)), ("u_grid", (float(pl.cols), float(pl.rows))),
            ("u_pitch", pitch), ("u_cell", (pitch[0] - gap, pitch[1] - gap)), ("u_ncells", float(len(pl.labels))),
            ("u_field_tile", (float(w), float(h))), ("u_field_texel", (1.0 / fsize[0], 1.0 / fsize[1])),
            ("u_weights", self.weights),
            ("u_backdrop_on", bool(bg_on)), ("u_backdrop_tile", btile),
            ("u_backdrop_texel", (1.0 / bsize[0], 1.0 / bsize[1])), ("u_backdrop_step", self.backdrop_step),
            ("u_gain", p.gain), ("u_gamma", p.gamma), ("u_threshold", p.threshold),
            ("u_opacity", p.opacity), ("u_composite", COMPOSITES.index(p.composite)),
            ("u_premultiply", bool(premultiply)),
        ))
        prof.update(state_ms=(t1 - t0) * 1e3, field_ms=(t2 - t1) * 1e3, backdrop_ms=(t3 - t2) * 1e3,
                    main_ms=(_clock() - t3) * 1e3)

    def _fullscreen(self, prog: Program, uniforms) -> None:
        import moderngl

        for k, v in uniforms:
            prog.set(k, v)
        old = self._vaos.get("main")
        if old is None or old[0] != prog.generation:  # a hot reload made a new program
            if old is not None:
                old[1].release()
            self._vaos["main"] = (prog.generation, self.ctx.vertex_array(prog.prog, [(self._quad, "2f", "in_pos")]))
        self._vaos["main"][1].render(moderngl.TRIANGLE_STRIP)


class Stage:
    """The renderer of the source a live show plays, across source swaps (a bundle loaded, a take's
    first step, the next continuous take). The new source's renderer is made, sharing the compiled
    programs, and primed (:meth:`Renderer.prime`) while the old one keeps drawing what it last drew;
    it takes over on the first frame its selection and background are ready, so a swap never holds
    up a frame. A synchronous stage (fixed-step tests, offline) swaps at once. ``on_swap(renderer)``
    tells the outputs."""

    def __init__(self, ctx, src, asynchronous: bool = True, on_swap=None, shader_dir=None):
        self.ctx, self.asynchronous, self.on_swap = ctx, asynchronous, on_swap
        self.renderer = Renderer(ctx, src, shader_dir, asynchronous=asynchronous)
        self.next: Renderer | None = None
        self._bank: Params | None = None  # the bank the current renderer last drew (drawn on during a swap)
        self.swaps = 0  # (tests) renderers that took over
        self.held = 0  # (tests) frames the old renderer drew while the new one primed

    @property
    def settled(self) -> bool:
        """What was asked is on screen: no swap pending, the selection and background in place."""
        return self.next is None and self.renderer.settled

    def frame(self, src, p: Params) -> tuple[Renderer, Params]:
        """The renderer to draw this frame with, and the bank to draw it with."""
        r = self.renderer
        if r.src is src:
            self._drop_next()
            if self.asynchronous:  # a copy: Live rebinds its bank in place when the source changes
                self._bank = p.copy()
            return r, p
        if self.next is not None and self.next.src is not src:
            self._drop_next()  # a newer source came while the last one primed
        if self.next is None:
            self.next = Renderer(self.ctx, src, r.shader_dir, asynchronous=self.asynchronous, programs=r.program)
        if not self.asynchronous or self._bank is None or self.next.prime(p):
            old, self.renderer, self.next = r, self.next, None
            self._bank = p.copy() if self.asynchronous else None
            old.release(programs=False)
            self.swaps += 1
            if self.on_swap is not None:
                self.on_swap(self.renderer)
            return self.renderer, p
        self.held += 1
        q = self._bank.copy()
        q.time = p.time
        return r, q

    def _drop_next(self) -> None:
        if self.next is not None:
            self.next.release(programs=False)
            self.next = None

    def release(self) -> None:
        self._drop_next()
        self.renderer.release()
