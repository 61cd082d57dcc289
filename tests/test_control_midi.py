"""MIDI: mido messages fed to the real handlers and maps; ports that vanish and come back; learn;
LEDs; clock; garbage. A virtual port where the system has an ALSA sequencer."""

from __future__ import annotations

import os
import time

import mido
import pytest

from paik.errors import PaikError
from paik.instrument.control import midi
from paik.instrument.control.live import Live
from paik.instrument.control.params import Command, Params
from paik.instrument.control.scenes import SceneStore
from paik.instrument.render.source import Source
from instrument_fixtures import make_bundle


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    b = tmp_path_factory.mktemp("midi") / "b"
    make_bundle(b, steps=3, blocks=4, heads=2, video=False, preview=False)
    return Source.open(b, "cpu")


def live(src, tmp_path):
    from paik.instrument.render import colormaps

    d = src.dims
    p = Params().bind(len(src.words), d.n_steps, d.n_blocks, d.n_heads, colormaps.available())
    p.smooth = 0
    return Live(src, p, SceneStore(tmp_path / "scenes", shipped=None))


def cc(control, value, channel=0):
    return mido.Message("control_change", control=control, value=value, channel=channel)


def note(n, on=True, channel=0):
    return mido.Message("note_on" if on else "note_off", note=n, velocity=100 if on else 0, channel=channel)


def feed(lv, ctl, *msgs):
    for m in msgs:
        for c in ctl.handle(m):
            lv.put(c)
    lv.update(time.monotonic())


def test_every_shipped_map_loads_and_names_real_parameters():
    names = [n for n, _ in midi.available_maps()]
    assert {"generic", "korg-nanokontrol2", "novation-launch-control-xl", "akai-apc-mini"} <= set(names)
    for n in names:
        m = midi.load_map(n)
        assert m.controls
    assert midi.load_map("korg-nanokontrol2").fits("nanoKONTROL2:nanoKONTROL2 MIDI 1 24:0")
    with pytest.raises(PaikError, match="control #1"):
        midi.parse_map({"control": [{"cc": 200, "param": "gain"}]})
    with pytest.raises(PaikError, match="unknown parameter"):
        midi.parse_map({"control": [{"cc": 1, "param": "loudness"}]})


def test_nanokontrol2_faders_buttons_and_pickup(src, tmp_path):
    lv = live(src, tmp_path)
    ctl = midi.Controller(midi.load_map("korg-nanokontrol2"), "nano")
    lv.target.gain = 8.0  # fader 5 (CC 4) at 0 must not pull gain down
    feed(lv, ctl, cc(4, 0))
    assert lv.target.gain == 8.0
    feed(lv, ctl, cc(4, 40), cc(4, 70))  # crosses 63.5 -> takes over at 70/127
    assert lv.target.gain == pytest.approx(70 / 127 * 16)
    feed(lv, ctl, cc(0, 0), cc(0, 127))  # fader 1 = step, from 0 (= current) to the last step
    assert lv.target.step == 2.0
    feed(lv, ctl, cc(32 + 2, 127), cc(32 + 2, 0))  # S3 = scene recall 3 (missing: logged, not fatal)
    feed(lv, ctl, cc(48 + 7, 127), cc(48 + 7, 0))  # M8 = sweep view
    assert lv.target.view == "sweep"
    feed(lv, ctl, cc(41, 127), cc(41, 0))  # play toggles
    assert lv.target.playing is False
    feed(lv, ctl, cc(59, 127), cc(59, 0), cc(59, 127))  # track > twice (press, release, press)
    assert lv.target.token == 2
    feed(lv, ctl, cc(4, 70, channel=5))  # another channel: not this map's
    leds = ctl.leds(lv.values)
    assert leds[("cc", 48 + 7, 0)] == 127 and leds[("cc", 48, 0)] == 0 and leds[("cc", 41, 0)] == 0


def test_14_bit_pairs_notes_relative_and_clock(src, tmp_path):
    lv = live(src, tmp_path)
    ctl = midi.Controller(midi.load_map("generic"), "gen")
    feed(lv, ctl, cc(16, 0), cc(48, 0))  # block 14-bit at 0 = current: engaged
    feed(lv, ctl, cc(16, 64), cc(48, 0))  # MSB 64, LSB 0 = 8192/16383
    assert lv.target.block == pytest.approx(8192 / 16383 * 3)
    feed(lv, ctl, cc(16, 127))  # an MSB alone waits for its LSB
    assert lv.target.block == pytest.approx(8192 / 16383 * 3)
    feed(lv, ctl, cc(48, 127))
    assert lv.target.block == 3.0
    feed(lv, ctl, note(52), note(52, False))  # play/pause toggle note
    assert lv.target.playing is False
    feed(lv, ctl, note(44 + 7))  # sweep view (a trigger)
    assert lv.target.view == "sweep"
    feed(lv, ctl, cc(10, 1), cc(10, 1))  # relative encoder: head +1 +1 from -1
    assert lv.target.head == 1
    feed(lv, ctl, cc(10, 127))  # -1
    assert lv.target.head == 0
    feed(lv, ctl, cc(64, 127))  # sustain held: the key overlay shows
    assert lv.target.help is True
    feed(lv, ctl, cc(64, 0))
    assert lv.target.help is False
    # MIDI clock at 120 BPM: 24 ticks per beat, every 1/48 s
    cmds = []
    for k in range(40):
        cmds += ctl.handle(mido.Message("clock"), now=k / 48.0)
    assert cmds and cmds[-1].name == "tempo" and cmds[-1].value == pytest.approx(120.0, abs=0.1)
    for c in cmds:
        lv.put(c)
    lv.update(time.monotonic())
    assert lv.target.tempo == pytest.approx(120.0, abs=0.1)


def test_garbage_is_ignored(src, tmp_path):
    lv = live(src, tmp_path)
    hub = midi.MidiHub(lv, None, "generic", backend=FakeBackend([]), poll=0.05)
    hub.ports["x"] = midi._Port("x", None, None, midi.Controller(midi.load_map("generic"), "x"))
    for m in (mido.Message("sysex", data=[1, 2, 3]), mido.Message("pitchwheel", pitch=100),
              mido.Message("aftertouch", value=3), mido.Message("polytouch", note=3, value=1),
              mido.Message("program_change", program=5), mido.Message("songpos", pos=3),
              mido.Message("note_on", note=127, velocity=0), "not a message", None, 42):
        hub._on_message("x", m)
    for c in midi.Controller(midi.load_map("generic")).handle(mido.Message("stop")):
        lv.put(c)
    lv.update(0.0)
    assert lv.target.view == "single"


class FakePort:
    def __init__(self, name, callback=None):
        self.name, self.callback, self.closed, self.sent = name, callback, False, []

    def send(self, msg):
        self.sent.append(msg)

    def close(self):
        self.closed = True


class FakeBackend:
    """mido's port functions over a list of names the test changes (a device plugged and unplugged)."""

    def __init__(self, names):
        self.names, self.opened, self.outs = list(names), [], []

    def get_input_names(self):
        return list(self.names)

    def get_output_names(self):
        return list(self.names)

    def open_input(self, name, callback=None):
        if name not in self.names:
            raise OSError("no such port")
        p = FakePort(name, callback)
        self.opened.append(p)
        return p

    def open_output(self, name):
        p = FakePort(name)
        self.outs.append(p)
        return p


def test_port_that_disappears_is_reopened_and_leds_follow_state(src, tmp_path):
    lv = live(src, tmp_path)
    be = FakeBackend(["APC MINI:APC MINI MIDI 1 20:0"])
    hub = midi.MidiHub(lv, ["apc"], backend=be, poll=0.05)
    hub.scan()
    assert list(hub.ports) == ["APC MINI:APC MINI MIDI 1 20:0"]
    assert hub.ports[be.names[0]].controller.map.name == "Akai APC mini"
    be.opened[-1].callback(note(16 + 7))  # grid row 3, last pad: sweep view
    lv.update(0.0)
    assert lv.target.view == "sweep"
    out = be.outs[-1]
    lit = {(m.note, m.velocity) for m in out.sent if m.type == "note_on"}
    assert (16 + 7, 5) in lit and (16, 0) in lit  # sweep pad yellow, single pad off
    be.names = []  # unplugged
    hub.scan()
    assert hub.ports == {} and be.opened[-1].closed
    be.names = ["APC MINI:APC MINI MIDI 1 24:0"]  # back, on another client number
    hub.scan()
    assert len(hub.ports) == 1 and len(be.opened) == 2
    be.opened[-1].callback(cc(48 + 4, 0))  # fader 5 (gain) from 0: far from 1/16 -> no jump
    be.opened[-1].callback(cc(48 + 4, 127))
    lv.update(0.0)
    assert lv.target.gain == 16.0
    # MIDI unavailable (no ALSA): a warning, no crash
    class Broken(FakeBackend):
        def get_input_names(self):
            raise SystemError("MidiInAlsa::initialize: error creating ALSA sequencer client object.")

    midi.MidiHub(lv, None, backend=Broken([])).scan()


def test_learn_arms_binds_and_saves(src, tmp_path, monkeypatch):
    monkeypatch.setenv("PAIK_MIDI_MAPS", str(tmp_path / "maps"))
    lv = live(src, tmp_path)
    be = FakeBackend(["Some Knobs 28:0"])
    hub = midi.MidiHub(lv, None, backend=be, poll=0.05)
    hub.scan()
    lv.put(Command("learn", "arm", "threshold"))
    lv.update(0.0)
    be.opened[-1].callback(cc(77, 0, channel=3))  # the control moved while armed: bound, not played
    be.opened[-1].callback(cc(77, 127, channel=3))  # crosses 0 -> plays
    lv.update(0.0)
    assert lv.target.threshold == 1.0
    lv.put(Command("learn", "arm", "scene recall 2"))
    lv.update(0.0)
    be.opened[-1].callback(note(60))
    lv.put(Command("learn", "save", "mine"))
    lv.update(0.0)
    saved = midi.load_map("mine")
    keys = {(c.kind, c.number, c.channel): (c.param, c.command) for c in saved.controls}
    assert keys[("cc", 77, 3)][0] == "threshold"
    assert keys[("note", 60, 0)][1] == Command("scene", "recall", "2", "midi")


@pytest.mark.skipif(not os.path.exists("/dev/snd/seq"), reason="no ALSA sequencer (/dev/snd/seq) on this system")
def test_virtual_port_through_alsa(src, tmp_path):
    lv = live(src, tmp_path)
    with mido.open_output("paik-test-virtual", virtual=True) as out:
        hub = midi.MidiHub(lv, ["paik-test-virtual"], "generic", poll=0.05)
        names = [n for n in mido.get_input_names() if "paik-test-virtual" in n]
        assert names
        for n in names:  # the hub's scan skips ports named paik* (its own): open directly
            hub._open(n)
        try:
            out.send(note(44 + 7))
            deadline = time.monotonic() + 5
            while lv.target.view != "sweep":
                assert time.monotonic() < deadline
                time.sleep(0.01)
                lv.update(time.monotonic())
        finally:
            hub.stop()
