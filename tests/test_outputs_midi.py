"""The recording toggle reaches the bank from MIDI like any parameter: the nanoKONTROL2's REC
button starts and stops takes and its LED shows when the instrument records (the takes
themselves follow the ``record`` parameter: see test_outputs_record)."""

from __future__ import annotations

from paik.instrument.control import midi
from test_control_midi import cc, feed, live, src  # noqa: F401 - src is a fixture


def test_nanokontrol2_rec_button_toggles_recording_with_its_led(src, tmp_path):  # noqa: F811
    lv = live(src, tmp_path)
    ctl = midi.Controller(midi.load_map("korg-nanokontrol2"), "nano")
    assert lv.target.record is False
    feed(lv, ctl, cc(45, 127), cc(45, 0))  # press, release: recording starts
    assert lv.target.record is True
    assert ctl.leds(lv.values)[("cc", 45, 0)] == 127
    feed(lv, ctl, cc(45, 127), cc(45, 0))  # and stops
    assert lv.target.record is False
    assert ctl.leds(lv.values)[("cc", 45, 0)] == 0
