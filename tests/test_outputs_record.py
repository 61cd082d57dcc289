"""Live recording: real EGL renders, real PyAV encode and decode.

The recorder is driven the way the play loops drive it (Outputs.frame once per iteration, with
the loop's clock), on a fixed clock so the frame grid is exact; every decoded frame is compared
with the same view rendered headless at the same video position.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from outputs_common import SIZE, ctx, params, reference, src  # noqa: F401  (fixtures)

def yuv420(rgb):
    """rgb -> yuv420p -> rgb with FFmpeg's converter: the reference a lossless H.264 would match."""
    import av

    f = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
    return f.to_ndarray(format="rgb24").astype(int)


def pack_yuv420(rgb):
    """What shaders/yuv420.frag computes, in numpy: BT.709 limited range, 2x2 mean chroma."""
    c = rgb.astype(np.float64) / 255
    kr, kb = 0.2126, 0.0722
    y = kr * c[..., 0] + (1 - kr - kb) * c[..., 1] + kb * c[..., 2]
    m = c.reshape(c.shape[0] // 2, 2, c.shape[1] // 2, 2, 3).mean(axis=(1, 3))
    my = kr * m[..., 0] + (1 - kr - kb) * m[..., 1] + kb * m[..., 2]
    u = 128 + 224 * (m[..., 2] - my) / 1.8556
    v = 128 + 224 * (m[..., 0] - my) / 1.5748
    return 16 + 219 * y, u, v


def decode(path, fmt="rgb24"):
    import av

    with av.open(str(path)) as c:
        st = c.streams.video[0]
        frames = [(f.pts, f.to_ndarray(format=fmt)) for f in c.decode(st)]
        return st.average_rate, st.time_base, frames


def run(ctx, src, p, settings, times, record_at=None):
    """Drive Outputs like a loop at settings.fps; record_at(i) -> bool sets p.record per frame."""
    from paik.instrument.outputs.live import Outputs
    from paik.instrument.render.renderer import Renderer

    outs = Outputs(ctx, Renderer(ctx, src), [], settings)
    for i, t in enumerate(times):
        p.record = True if record_at is None else record_at(i)
        outs.frame(p, t, i / settings.fps)
    return outs.close(), outs


def test_recording_has_the_frames_rate_and_pixels_of_the_renders(ctx, src, tmp_path):
    from paik.instrument.outputs.live import RecordSettings

    p = params(src)
    times = [i / 11 for i in range(12)]
    path = tmp_path / "take.mp4"
    takes, _ = run(ctx, src, p, RecordSettings(path, SIZE, 12.0, crf=0), times)
    assert takes == [{"path": str(path), "frames": 12, "repeated": 0, "late": 0, "dropped": 0, "error": None}]
    rate, tb, frames = decode(path)
    assert rate == 12 and len(frames) == 12
    assert [pts * tb for pts, _ in frames] == [Fraction(i, 12) for i in range(12)]
    _, _, planes = decode(path, fmt="yuv420p")
    w, h = SIZE
    for (_, got), (_, yuv), t in zip(frames, planes, times):
        ref = reference(ctx, src, p, t)[..., :3]
        # crf 0 is lossless: the planes are the GPU's packing, to the rounding of one level
        for plane, want in zip((yuv[:h], yuv[h:].reshape(2, h // 2, w // 2)[0], yuv[h:].reshape(2, h // 2, w // 2)[1]),
                               pack_yuv420(ref)):
            assert np.abs(plane.astype(float) - want).max() <= 1.0
        # and a player's RGB is the render, but for 4:2:0 chroma at colour edges
        assert np.abs(got.astype(int) - yuv420(ref)).mean() < 2.0
    # and the frames differ from each other the way the renders do (the blob moves over time)
    assert np.abs(frames[0][1].astype(int) - frames[-1][1].astype(int)).mean() > 5


def test_takes_toggle_on_the_record_parameter_and_late_slots_repeat_a_frame(ctx, src, tmp_path):
    from paik.instrument.outputs.live import Outputs, RecordSettings
    from paik.instrument.render.renderer import Renderer

    p = params(src)
    path = tmp_path / "live.mp4"
    outs = Outputs(ctx, Renderer(ctx, src), [], RecordSettings(path, SIZE, 10.0, crf=0))
    # 0..0.5 s recording; off at 0.6; on again at 0.8; the loop stalls at 1.0 for 0.33 s
    clock = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.33, 1.4, 1.5]
    for now in clock:
        p.record = not (0.55 < now < 0.75)
        outs.frame(p, now / 2, now)
    lines, warnings = outs.lines()
    assert lines and lines[0].startswith("REC") and "live_2.mp4" in lines[0] and not warnings
    takes = outs.close()
    assert [t["path"] for t in takes] == [str(path), str(tmp_path / "live_2.mp4")]
    assert takes[0]["frames"] == 6 and takes[0]["late"] == 0
    # second take from 0.8: slots 0, 1, 2 at 0.8..1.0; slots 3, 4 (1.1, 1.2) missed; 5, 6, 7
    assert takes[1]["late"] == 2 and takes[1]["repeated"] == 2
    _, _, frames = decode(takes[1]["path"])
    assert len(frames) == takes[1]["frames"] == 8
    assert np.array_equal(frames[2][1], frames[3][1]) and np.array_equal(frames[2][1], frames[4][1]), \
        "late slots repeat the previous picture"
    assert not np.array_equal(frames[4][1], frames[5][1])


def test_prores_recording_keeps_straight_alpha(ctx, src, tmp_path):
    from paik.instrument.outputs.live import RecordSettings

    p = params(src, composite="alpha")
    path = tmp_path / "alpha.mov"
    takes, _ = run(ctx, src, p, RecordSettings(path, SIZE, 8.0, codec="prores"), [0.25, 0.5, 0.75])
    assert takes[0]["frames"] == 3
    _, _, frames = decode(path, fmt="rgba")
    assert len(frames) == 3
    for (_, got), t in zip(frames, [0.25, 0.5, 0.75]):
        want = reference(ctx, src, p, t, premultiply=False).astype(int)
        assert np.abs(got.astype(int) - want).mean() < 2.0
        assert got[..., 3].min() < 50 and got[..., 3].max() > 200, "alpha varies with the map"


def test_recording_user_errors_are_clear(tmp_path):
    from paik.errors import PaikError
    from paik.instrument.outputs.record import Recorder

    with pytest.raises(PaikError, match="even width"):
        Recorder(tmp_path / "a.mp4", (63, 48), 30)
    with pytest.raises(PaikError, match=r"\.mov"):
        Recorder(tmp_path / "a.mp4", (64, 48), 30, codec="prores")
    with pytest.raises(PaikError, match=r"\.mp4"):
        Recorder(tmp_path / "a.avi", (64, 48), 30)


def test_cadence_phase_locks_to_the_output_rate():
    from paik.instrument.outputs.record import Cadence

    c = Cadence(30)
    rng = np.random.default_rng(0)
    # a 60 Hz loop with +-4 ms jitter delivers every 30 fps slot exactly once
    got = [c.tick(i / 60 + rng.uniform(-0.004, 0.004)) for i in range(600)]
    slots = [k for k in got if k is not None]
    assert slots == list(range(len(slots))) and 295 <= len(slots) <= 301 and c.late == 0
    # without jitter, exactly every other tick, starting with the first
    c = Cadence(30)
    assert [i for i in range(8) if c.tick(i / 60) is not None] == [0, 2, 4, 6]
    # a 30 Hz loop that stalls 200 ms jumps ahead and counts the skipped slots as late
    c = Cadence(30)
    ks = [c.tick(t) for t in [0, 1 / 30, 2 / 30, 2 / 30 + 0.2]]
    assert ks == [0, 1, 2, 8] and c.late == 5


def test_an_encoder_that_falls_behind_drops_says_so_and_keeps_the_timeline(ctx, src, tmp_path, monkeypatch, caplog):
    import threading

    from paik.instrument.outputs.live import Outputs, RecordSettings
    from paik.instrument.outputs.record import Recorder
    from paik.instrument.render.renderer import Renderer

    gate = threading.Event()
    real = Recorder._encode

    def stuck(self, frame, index):  # an encoder that cannot keep up until released
        gate.wait(10)
        real(self, frame, index)

    monkeypatch.setattr(Recorder, "_encode", stuck)
    monkeypatch.setattr(Recorder, "QUEUE_BYTES", SIZE[0] * SIZE[1] * 1.5 * 4)  # room for 4 frames
    p = params(src)
    p.record = True
    path = tmp_path / "slow.mp4"
    outs = Outputs(ctx, Renderer(ctx, src), [], RecordSettings(path, SIZE, 10.0))
    with caplog.at_level("WARNING"):
        for i in range(12):
            outs.frame(p, i / 11, i / 10)
    _, warnings = outs.lines()
    assert any("encoder is behind" in w for w in warnings), warnings
    assert any("encoder is behind" in r.getMessage() for r in caplog.records)
    gate.set()
    take = outs.close()[0]
    assert take["dropped"] >= 5 and take["late"] == 0
    # every slot is in the file: a dropped frame's slot repeats the previous picture
    assert take["frames"] == 12 and take["repeated"] == take["dropped"]
    _, _, frames = decode(path)
    assert len(frames) == 12
