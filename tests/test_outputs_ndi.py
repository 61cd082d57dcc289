"""NDI on loopback: paik's NDI output sends, cyndilib's own finder and receiver get the frames,
and the pixels are compared with a headless render. Skipped (with the reason) where cyndilib
or the NDI runtime it bundles does not load.

Discovery here is unicast to 127.0.0.1 (an NDI config in NDI_CONFIG_DIR): CI machines run no
mDNS daemon, and nothing is sent beyond loopback."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from outputs_common import SIZE, ctx, params, reference, src  # noqa: F401  (fixtures)




@pytest.fixture
def ndi(tmp_path, monkeypatch):
    cfg = tmp_path / "ndi-config"
    cfg.mkdir()
    (cfg / "ndi-config.v1.json").write_text(json.dumps(
        {"ndi": {"networks": {"ips": "127.0.0.1", "discovery": ""}, "multicast": {"send": {"enable": False}}}}))
    monkeypatch.setenv("NDI_CONFIG_DIR", str(cfg))
    try:
        from cyndilib.finder import Finder
        from cyndilib.receiver import Receiver
        from cyndilib.video_frame import VideoFrameSync
        from cyndilib.wrapper.ndi_recv import RecvBandwidth, RecvColorFormat
    except (ImportError, OSError) as e:
        pytest.skip(f"cyndilib / the NDI runtime does not load here ({e}); pip install 'paik[ndi]'")
    return Finder, Receiver, VideoFrameSync, RecvColorFormat, RecvBandwidth


def test_ndi_sends_and_cyndilib_receives_the_picture(ctx, src, ndi):
    from paik.instrument.outputs import open_output, parse_out
    from paik.instrument.outputs.live import Outputs
    from paik.instrument.render.renderer import Renderer

    Finder, Receiver, VideoFrameSync, RecvColorFormat, RecvBandwidth = ndi
    name = f"paik-test-{os.getpid()}"
    p = params(src, composite="alpha")  # straight alpha travels with the picture
    sink = open_output(parse_out(f"ndi:{name},fps=30"), SIZE, 60.0)
    outs = Outputs(ctx, Renderer(ctx, src), [sink], None)
    finder = Finder()
    finder.open()
    received = None
    try:
        i, deadline = 0, time.monotonic() + 20
        source = receiver = None
        while time.monotonic() < deadline:
            outs.frame(p, 0.5, i / 30)  # the same moment every frame: any received frame must match
            i += 1
            time.sleep(1 / 30)
            if source is None:
                finder.update_sources()
                source = next((s for s in finder if s.stream_name == name), None)
                if source is not None:
                    receiver = Receiver(color_format=RecvColorFormat.RGBX_RGBA, bandwidth=RecvBandwidth.highest)
                    vf = VideoFrameSync()
                    receiver.frame_sync.set_video_frame(vf)
                    receiver.set_source(source)
                continue
            if receiver.is_connected():
                receiver.frame_sync.capture_video()
                if min(vf.get_resolution()) > 0 and vf.get_data_size() > 0:
                    received = (vf.get_resolution(), vf.get_frame_rate(),
                                np.asarray(vf.get_array()).reshape(SIZE[1], SIZE[0], 4).copy())
                    break
        assert source is not None, f"NDI source {name!r} not found on loopback: {finder.get_source_names()}"
        assert received is not None, "connected to the NDI source, but no frame arrived"
        assert sink.connections() >= 1
    finally:
        finder.close()
        outs.close()
    resolution, rate, got = received
    assert resolution == SIZE and rate == 30
    want = reference(ctx, src, p, 0.5, premultiply=False).astype(int)
    diff = np.abs(got.astype(int) - want)
    assert diff.mean() < 4 and np.percentile(diff, 99) < 40, (diff.mean(), diff.max())  # NDI compresses
    assert got[..., 3].min() < 50 and got[..., 3].max() > 200, "alpha crosses NDI"
