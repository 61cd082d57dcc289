"""Syphon output on macOS (syphon-python, ``pip install 'paik[syphon]'``): the render target's
GL texture is published as is, with no copy through the CPU. Runs on the render thread, with
the window's (CGL) context current."""

from __future__ import annotations

from paik.instrument.outputs._extras import need
from paik.instrument.outputs.base import Sink

GL_TEXTURE_2D = 0x0DE1


class SyphonSink(Sink):
    kind = "texture"
    components = 4

    def __init__(self, name: str, size, fps, lib=None):
        syphon = lib if lib is not None else need("syphon", "syphon", "Syphon output", "darwin")
        super().__init__(size, fps)
        self.label = f"syphon:{name}"
        self.name = name
        self.server = syphon.SyphonOpenGLServer(name)

    def publish(self, texture, size) -> None:
        # GL textures are bottom-up, which is Syphon's own convention: not flipped
        self.server.publish_frame_texture(texture.glo, size=tuple(size), is_flipped=False, target=GL_TEXTURE_2D)
        self.sent += 1

    def close(self) -> None:
        self.server.stop()
