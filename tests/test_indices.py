"""The one index grammar (paik.indices): what generate's --capture-steps/--blocks, play's
--step/--block and grid's --steps/--blocks all accept."""

import pytest

from paik import indices
from paik.errors import PaikError


def test_parse_over_a_count():
    assert indices.parse("all", 4, "--blocks") == [0, 1, 2, 3]
    assert indices.parse(None, 3, "--blocks") == [0, 1, 2]
    assert indices.parse("every:10", 25, "--capture-steps") == [0, 10, 20, 24]
    assert indices.parse("0-2,7,-1", 30, "--blocks") == [0, 1, 2, 7, 29]
    assert indices.parse("last", 30, "--blocks") == [29]
    assert indices.parse("first,last", 30, "--blocks") == [0, 29]
    assert indices.parse("-3--1", 30, "--blocks") == [27, 28, 29]
    assert indices.parse(" 5 , 5,4 ", 30, "--blocks") == [4, 5]


def test_parse_over_captured_names():
    steps = [0, 5, 10, 15]  # captured every:5
    assert indices.parse("all", steps, "--step") == steps
    assert indices.parse("last", steps, "--step") == [15]
    assert indices.parse("-1", steps, "--step") == [15]
    assert indices.parse("0-10", steps, "--step") == [0, 5, 10]  # a range takes what was captured
    assert indices.parse("every:2", steps, "--step") == [0, 10, 15]


@pytest.mark.parametrize("bad, words", [
    ("30", "out of range: valid values are 0..29"), ("-31", "out of range"), ("5-2", "low to high"),
    ("every:0", "N >= 1"), ("x", "expected indices"), ("1,,2", "expected"), ("1.5", "expected"), ("", "expected"),
])
def test_parse_errors_say_what_is_valid(bad, words):
    with pytest.raises(PaikError, match=words) as e:
        indices.parse(bad, 30, "--blocks")
    assert "--blocks" in str(e.value)


def test_uncaptured_index_is_refused_with_what_was_captured():
    with pytest.raises(PaikError, match=r"--step 3 is not in this bundle; captured steps: 0,5,10"):
        indices.parse("3", [0, 5, 10], "--step")
    with pytest.raises(PaikError, match=r"captured steps: 0,5,10"):
        indices.position("3", [0, 5, 10], "--step")


def test_position_crossfades_between_captured_indices():
    steps = [0, 5, 10]
    assert indices.position("5", steps, "--step") == 1.0
    assert indices.position("7.5", steps, "--step") == 1.5
    assert indices.position("last", steps, "--step") == 2.0
    assert indices.position("-1", steps, "--step") == 2.0
    assert indices.position(None, steps, "--step") == 0.0
    assert indices.position(None, steps, "--step", default="last") == 2.0
    assert indices.positions("0,last", steps, "--step") == [0.0, 2.0]
    for bad in ("3", "nan", "inf", "x", "11"):
        with pytest.raises(PaikError):
            indices.position(bad, steps, "--step")


def test_format_ranges_reads_back():
    vals = [0, 1, 2, 3, 7, 9, 10]
    text = indices.format_ranges(vals)
    assert text == "0-3,7,9-10"
    assert indices.parse(text, 11, "x") == vals


def test_pick_takes_python_values():
    assert indices.pick(None, [0, 1, 2], "step") == [0, 1, 2]
    assert indices.pick(2, [0, 1, 2], "step") == [2]
    assert indices.pick([-1, 0], [0, 1, 2], "step") == [2, 0]
    assert indices.pick(-1, [0, 5], "step", total=6) == [5]  # counts from the model's end
    assert indices.pick("0-1", [0, 1, 2], "step") == [0, 1]
    with pytest.raises(PaikError, match="step 3 is not in this bundle; available steps: 0-2"):
        indices.pick(3, [0, 1, 2], "step")
    with pytest.raises(PaikError, match="no finished steps"):
        indices.pick(None, [], "step")
