"""Spout output on Windows (SpoutGL, ``pip install 'paik[spout]'``): the render target's GL
texture is shared with DirectX receivers with no copy through the CPU. Runs on the render
thread, with the window's context current."""

from __future__ import annotations

from paik.instrument.outputs._extras import need
from paik.instrument.outputs.base import Sink

GL_TEXTURE_2D = 0x0DE1


class SpoutSink(Sink):
    kind = "texture"
    components = 4

    def __init__(self, name: str, size, fps, lib=None):
        spout = lib if lib is not None else need("SpoutGL", "spout", "Spout output", "win32")
        super().__init__(size, fps)
        self.label = f"spout:{name}"
        self.name = name
        self.sender = spout.SpoutSender()
        self.sender.setSenderName(name)

    def publish(self, texture, size) -> None:
        w, h = size
        # invert: GL rows are bottom-up, DirectX receivers expect top-down; host FBO 0 (none bound)
        if not self.sender.sendTexture(texture.glo, GL_TEXTURE_2D, w, h, True, 0):
            self.error = "sendTexture failed"
        else:
            self.sent += 1

    def close(self) -> None:
        self.sender.releaseSender()
