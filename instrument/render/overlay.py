"""Text panels over the picture (help, status, errors): rasterized with Pillow only when their
text changes, then drawn as one blended textured quad per panel."""

from __future__ import annotations

import numpy as np

from paik.instrument.render.shaders import Program


class Overlay:
    def __init__(self, ctx, size: int = 15):
        from PIL import ImageFont

        self.ctx = ctx
        self.font = ImageFont.load_default(size=size)
        self.program = Program(ctx, "quad.vert", "overlay.frag")
        self._quad = ctx.buffer(np.array([-1, -1, 1, -1, -1, 1, 1, 1], "f4").tobytes())
        self._vao, self._gen = None, -1
        self._panels: dict[str, tuple[str, object, tuple[int, int]]] = {}

    def _texture(self, key: str, text: str, color):
        hit = self._panels.get(key)
        if hit is not None and hit[0] == text:
            return hit[1], hit[2]
        from PIL import Image, ImageDraw

        probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
        x0, y0, x1, y1 = probe.multiline_textbbox((0, 0), text, font=self.font, spacing=3)
        w, h = int(x1 - x0) + 16, int(y1 - y0) + 12
        img = Image.new("RGBA", (w, h), (0, 0, 0, 170))
        ImageDraw.Draw(img).multiline_text((8 - x0, 6 - y0), text, font=self.font, fill=color, spacing=3)
        if hit is not None:
            hit[1].release()
        tex = self.ctx.texture((w, h), 4, img.tobytes())
        self._panels[key] = (text, tex, (w, h))
        return tex, (w, h)

    def draw(self, key: str, text: str, fb_size: tuple[int, int], anchor: str = "top-left",
             color=(255, 255, 255, 255)) -> None:
        import moderngl

        if not text:
            return
        tex, (w, h) = self._texture(key, text, color)
        if self._gen != self.program.generation:
            self._vao = self.ctx.vertex_array(self.program.prog, [(self._quad, "2f", "in_pos")])
            self._gen = self.program.generation
        fw, fh = fb_size
        w, h = min(w, fw), min(h, fh)
        x = 0 if "left" in anchor else fw - w
        y = fh - h if "top" in anchor else 0  # GL y grows upwards
        rect = (2 * x / fw - 1, 2 * y / fh - 1, 2 * (x + w) / fw - 1, 2 * (y + h) / fh - 1)
        self.program.set("u_rect", rect)
        self.program.set("u_image", 0)
        tex.use(0)
        self.ctx.viewport = (0, 0, fw, fh)
        self.ctx.enable(moderngl.BLEND)
        self.ctx.blend_func = moderngl.SRC_ALPHA, moderngl.ONE_MINUS_SRC_ALPHA
        self._vao.render(moderngl.TRIANGLE_STRIP)
        self.ctx.disable(moderngl.BLEND)
