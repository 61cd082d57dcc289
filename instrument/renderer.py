"""Draws one view of a bundle into the current framebuffer (window or offscreen alike).

Per frame: a handful of uniforms, at most a small cell-table write (the sweep's time) and one
full-screen draw. Everything heavier happens only when what it depends on changes:

- selection (token, view, step/block pair, head, reduce) -> reduce + one atlas upload;
- normalization settings -> (lo, hi) ranges upload;
- colormap -> LUT upload; background mode -> video or previews upload (decoded once).
"""

from __future__ import annotations

import logging

import numpy as np

from . import atlas, background, colormaps, normalize, views
from .params import COMPOSITES, Params
from .shaders import Program
from .source import Source

log = logging.getLogger(__name__)


class Renderer:
    def __init__(self, ctx, source: Source, shader_dir=None):
        import moderngl

        self.ctx = ctx
        self.src = source
        kw = {} if shader_dir is None else {"directory": shader_dir}
        self.program = Program(ctx, "fullscreen.vert", "attention.frag", **kw)
        self.max3d = int(ctx.info["GL_MAX_3D_TEXTURE_SIZE"])
        self._quad = ctx.buffer(np.array([-1, -1, 1, -1, -1, 1, 1, 1], "f4").tobytes())
        self._vao, self._vao_gen = None, -1
        self.maps = self.ranges_tex = self.cells_tex = self.lut = self.bg = None
        self._keys: dict[str, object] = {}
        self.plan: views.Plan | None = None
        self.tiles: np.ndarray | None = None  # the f16-rounded volumes on the GPU, as float32
        self.tile_cols = 1
        self.bg_info = (0, 1, (1, 1, 1), False)  # count, cols, tile size, nearest-time
        self._bg_cache: dict[str, tuple] = {}
        self._nearest = moderngl.NEAREST

    # -- state --------------------------------------------------------------------------------
    def update(self, p: Params, time: float) -> None:
        """Bring GPU state in line with ``p`` at video position ``time`` (0..1)."""
        word = self.src.words[p.token]
        pl = views.plan(p, self.src.dims, word.positions, word.label)
        if self._changed("selection", pl.selection):
            vols = self.src.reducer.volumes(pl.selection)  # [N, F', H', W'] float32
            half = vols.astype(np.float16)
            self.tiles = half.astype(np.float32)
            packed, self.tile_cols = atlas.pack(half[..., None], self.max3d)
            self.maps = atlas.upload(self.ctx, self.maps, packed, "f2")
            self._keys.pop("ranges", None)
        self.plan = pl
        if self._changed("ranges", (p.norm, p.clip_lo, p.clip_hi)):
            r = normalize.ranges(self.tiles, p.norm, p.clip_lo, p.clip_hi)  # [N, F', 2]
            self.ranges_tex = self._data_texture(self.ranges_tex, r, 2)
        sweep_t = time if p.view == "sweep" else None
        if self._changed("cells", (pl, p.step, p.block, p.view, sweep_t)):
            taps, bg = views.cell_table(p, self.src.dims, pl, time)
            self.one = (tuple(taps[0, 0]), tuple(taps[0, 1]), float(bg[0]))
            if len(bg) > 1:  # grids: a table texture, written only when the selection moves
                cells = np.zeros((len(bg), 3, 4), np.float32)
                cells[:, :2] = taps
                cells[:, 2, 0] = bg
                self.cells_tex = self._data_texture(self.cells_tex, cells, 4)
            elif self.cells_tex is None:
                self.cells_tex = self._data_texture(None, np.zeros((1, 3, 4), np.float32), 4)
        if self._changed("lut", p.colormap):
            if self.lut is not None:
                self.lut.release()
            self.lut = self.ctx.texture((256, 1), 3, colormaps.lut_bytes(p.colormap))
            self.lut.repeat_x = self.lut.repeat_y = False
        # the heatmap alone needs no background: do not decode the video for it (first frame fast)
        bg_mode = "none" if p.composite == "heatmap" else p.background
        if self._changed("bg", bg_mode):
            self._set_background(bg_mode)

    def _changed(self, key: str, value) -> bool:
        if key in self._keys and self._keys[key] == value:
            return False
        self._keys[key] = value
        return True

    def _data_texture(self, tex, data: np.ndarray, comps: int):
        """A float32 2D texture read with texelFetch: rows = first axis, texels = second."""
        rows, cols = data.shape[:2]
        if tex is None or tex.size != (cols, rows) or tex.components != comps:
            if tex is not None:
                tex.release()
            tex = self.ctx.texture((cols, rows), comps, dtype="f4")
            tex.filter = (self._nearest, self._nearest)
        tex.write(np.ascontiguousarray(data, np.float32).tobytes())
        return tex

    def _set_background(self, mode: str) -> None:
        if mode not in self._bg_cache:
            self._bg_cache[mode] = self._load_background(mode)
        tex, self.bg_info = self._bg_cache[mode]
        self.bg = tex

    def _load_background(self, mode: str):
        tiles, nearest = None, False
        if mode == "video":
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
            tex = self.ctx.texture3d((1, 1, 1), 4, bytes(4))
            return tex, (0, 1, (1, 1, 1), False)
        n, d, h, w, _ = tiles.shape
        packed, cols = atlas.pack(tiles, self.max3d)
        tex = atlas.upload(self.ctx, None, packed, "f1")
        return tex, (n, cols, (w, h, d), nearest)

    # -- drawing ------------------------------------------------------------------------------
    def draw(self, p: Params, time: float, viewport: tuple[int, int, int, int], gap: float = 0.0,
             premultiply: bool = True) -> None:
        self.update(p, time)
        prog = self.program
        if self._vao_gen != prog.generation:  # a hot reload made a new program
            self._vao = self.ctx.vertex_array(prog.prog, [(self._quad, "2f", "in_pos")])
            self._vao_gen = prog.generation
        f, h, w = self.src.reducer.latent
        pl = self.plan
        self.maps.use(0)
        self.ranges_tex.use(1)
        self.cells_tex.use(2)
        self.lut.use(3)
        self.bg.use(4)
        n, cols, size, nearest = self.bg_info
        for name, value in (
            ("u_maps", 0), ("u_ranges", 1), ("u_cells", 2), ("u_lut", 3), ("u_bg", 4),
            ("u_latent", (float(w), float(h), float(f))), ("u_tile_cols", self.tile_cols),
            ("u_viewport", tuple(float(v) for v in viewport)), ("u_grid", (pl.cols, pl.rows)),
            ("u_gap", float(gap) if pl.rows * pl.cols > 1 else 0.0), ("u_ncells", len(pl.labels)),
            ("u_time", float(time)), ("u_gain", p.gain), ("u_gamma", p.gamma), ("u_threshold", p.threshold),
            ("u_opacity", p.opacity), ("u_composite", COMPOSITES.index(p.composite)),
            ("u_premultiply", bool(premultiply)),
            ("u_bg_count", n), ("u_bg_cols", cols), ("u_bg_tile", tuple(float(x) for x in size)),
            ("u_bg_nearest_time", bool(nearest)),
            ("u_one_tiles", self.one[0]), ("u_one_weights", self.one[1]), ("u_one_bg", self.one[2]),
        ):
            prog.set(name, value)
        self.ctx.viewport = viewport
        import moderngl

        self._vao.render(moderngl.TRIANGLE_STRIP)
