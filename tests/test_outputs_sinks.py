"""Live outputs that cannot run on a Linux machine without their platform (Syphon: macOS,
Spout: Windows, the virtual camera: a v4l2loopback kernel module), exercised up to the platform
library: a stand-in module records every call, and the pictures handed to it are compared
with headless renders. Also: the --out grammar and the messages for a missing extra."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from paik.errors import PaikError
from outputs_common import SIZE, ctx, params, reference, src  # noqa: F401  (fixtures)




def drive(ctx, src, sinks, p, n=3, fps=10.0):
    from paik.instrument.outputs.live import Outputs
    from paik.instrument.render.renderer import Renderer

    outs = Outputs(ctx, Renderer(ctx, src), sinks, None)
    for i in range(n):
        outs.frame(p, i / 4, i / fps)
    return outs


# -- the --out grammar ---------------------------------------------------------------------------
def test_out_specs_parse():
    from paik.instrument.outputs import OutSpec, parse_out, parse_outs

    assert parse_out("ndi:Paik") == OutSpec("ndi", "Paik")
    assert parse_out("NDI:Paik main,size=1280x720,fps=30") == OutSpec("ndi", "Paik main", (1280, 720), 30.0)
    assert parse_out("v4l2:/dev/video10") == OutSpec("v4l2", "/dev/video10")
    assert [str(s) for s in parse_outs(["syphon:A", "spout:A", "ndi:A"])] == ["syphon:A", "spout:A", "ndi:A"]
    for bad, msg in [("foo:bar", "KIND:NAME"), ("ndi", "KIND:NAME"), ("ndi:", "give a name"),
                     ("v4l2:video10", "device path"), ("ndi:A,size=big", "WIDTHxHEIGHT"),
                     ("ndi:A,fps=0", "between 0 and 1000"), ("ndi:A,colour=red", "unknown option")]:
        with pytest.raises(PaikError, match=msg):
            parse_out(bad)
    with pytest.raises(PaikError, match="twice"):
        parse_outs(["ndi:A", "ndi:A"])


def test_a_missing_extra_names_the_pip_extra(monkeypatch):
    from paik.instrument.outputs import open_output, parse_out

    monkeypatch.setitem(sys.modules, "cyndilib", None)  # import fails as if not installed
    with pytest.raises(PaikError, match=r"pip install 'paik\[ndi\]'"):
        open_output(parse_out("ndi:Paik"), SIZE, 30)
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)
    with pytest.raises(PaikError, match=r"pip install 'paik\[v4l2\]'"):
        open_output(parse_out("v4l2:/dev/video10"), SIZE, 30)
    if sys.platform != "darwin":
        with pytest.raises(PaikError, match="macOS only"):
            open_output(parse_out("syphon:Paik"), SIZE, 30)
    if sys.platform != "win32":
        with pytest.raises(PaikError, match="Windows only"):
            open_output(parse_out("spout:Paik"), SIZE, 30)


# -- texture outputs: the GL texture itself is handed over, no CPU copy ----------------------------
class FakeSyphonServer:
    instances: list = []

    def __init__(self, name):
        self.name, self.calls = name, []
        FakeSyphonServer.instances.append(self)

    def publish_frame_texture(self, texture, region=None, size=None, is_flipped=False, target=0x0DE1):
        self.calls.append(("publish_frame_texture", texture, size, is_flipped, target))

    def stop(self):
        self.calls.append(("stop",))


class FakeSpoutSender:
    def __init__(self):
        self.calls = []

    def setSenderName(self, name):
        self.calls.append(("setSenderName", name))

    def sendTexture(self, tex, target, w, h, invert, host_fbo):
        self.calls.append(("sendTexture", tex, target, w, h, invert, host_fbo))
        return True

    def releaseSender(self):
        self.calls.append(("releaseSender",))


def texture_picture(ctx, glo, size):
    """Read a GL texture by name (as Syphon/Spout would get it) -> [H, W, 4] top row first."""
    tex = ctx.external_texture(glo, size, 4, 0, "f1")
    return np.frombuffer(tex.read(), np.uint8).reshape(size[1], size[0], 4)[::-1]


def test_syphon_publishes_the_render_texture(ctx, src):
    from paik.instrument.outputs.syphon import SyphonSink

    fake = types.SimpleNamespace(SyphonOpenGLServer=FakeSyphonServer)
    p = params(src, composite="alpha")
    sink = SyphonSink("Paik", SIZE, 10.0, lib=fake)
    outs = drive(ctx, src, [sink], p, n=3)
    server = FakeSyphonServer.instances[-1]
    assert server.name == "Paik"
    pubs = [c for c in server.calls if c[0] == "publish_frame_texture"]
    assert len(pubs) == 3 and sink.sent == 3
    _, glo, size, flipped, target = pubs[-1]
    assert size == SIZE and flipped is False and target == 0x0DE1
    got = texture_picture(ctx, glo, SIZE).astype(int)  # straight alpha, like the ProRes path
    want = reference(ctx, src, p, 2 / 4, premultiply=False).astype(int)
    assert np.abs(got - want).max() <= 1
    outs.close()
    assert server.calls[-1] == ("stop",)


def test_spout_sends_the_render_texture_inverted(ctx, src):
    from paik.instrument.outputs.spout import SpoutSink

    fake = types.SimpleNamespace(SpoutSender=FakeSpoutSender)
    p = params(src)
    sink = SpoutSink("Paik", (80, 40), 5.0, lib=fake)
    outs = drive(ctx, src, [sink], p, n=4, fps=10.0)  # a 10 Hz loop: every other frame at 5 fps
    calls = sink.sender.calls
    assert calls[0] == ("setSenderName", "Paik")
    sends = [c for c in calls if c[0] == "sendTexture"]
    assert len(sends) == 2
    _, glo, target, w, h, invert, host = sends[-1]
    assert (target, w, h, invert, host) == (0x0DE1, 80, 40, True, 0)
    assert texture_picture(ctx, glo, (80, 40)).std() > 5
    outs.close()
    assert calls[-1] == ("releaseSender",)


# -- the virtual camera: pixels on its own thread ---------------------------------------------------
class FakeCamera:
    instances: list = []

    def __init__(self, width, height, fps, fmt=None, device=None, backend=None):
        if device == "/dev/video99":
            raise RuntimeError("'/dev/video99' is not a video4linux device")
        self.args = dict(width=width, height=height, fps=fps, fmt=fmt, device=device, backend=backend)
        self.frames, self.closed = [], False
        FakeCamera.instances.append(self)

    def send(self, frame):
        assert frame.flags.c_contiguous
        self.frames.append(frame.copy())

    def close(self):
        self.closed = True


def test_v4l2_sends_rgb_frames_top_row_first(ctx, src):
    from paik.instrument.outputs import open_output, parse_out

    fake = types.SimpleNamespace(Camera=FakeCamera, PixelFormat=types.SimpleNamespace(RGB="RGB"))
    with pytest.raises(PaikError, match="modprobe v4l2loopback"):
        open_output(parse_out("v4l2:/dev/video99"), SIZE, 10.0, lib=fake)
    p = params(src)
    sink = open_output(parse_out("v4l2:/dev/video10,fps=10"), SIZE, 30.0, lib=fake)
    outs = drive(ctx, src, [sink], p, n=1)
    outs.close()  # delivers the frame still in flight, then closes the camera
    cam = FakeCamera.instances[-1]
    assert cam.args == dict(width=SIZE[0], height=SIZE[1], fps=10.0, fmt="RGB", device="/dev/video10",
                            backend="v4l2loopback")
    assert cam.closed and len(cam.frames) == 1
    want = reference(ctx, src, p, 0.0)[..., :3].astype(int)  # premultiplied over black: no alpha
    assert cam.frames[0].shape == (SIZE[1], SIZE[0], 3)
    assert np.abs(cam.frames[0].astype(int) - want).max() <= 1
