"""Σ vector parsing: exact vectors for hand-written cases and the error messages."""
import pytest

from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.layout import Component, JoinLayout
from lora_merge_ext.sigma import format_sigma, parse_number, parse_sigma

TWO = JoinLayout([Component("style", 2), Component("face", 3)])      # total rank 5
JOIN24 = JoinLayout([Component("a", 4), Component("b", 20)])           # the DESIGN example
PLAIN = JoinLayout([Component("lora", 4)])
UNIT = JoinLayout([Component("p", 1), Component("q", 1), Component("r", 1)])   # components == ranks


@pytest.mark.parametrize("text, expected", [
    ("1", [1, 1, 1, 1, 1]),
    ("0.5", [0.5] * 5),
    ("-2", [-2] * 5),
    ("  .25 ", [0.25] * 5),
    ("1e-1", [0.1] * 5),
    ("1,0", [1, 1, 0, 0, 0]),
    ("0, -1.5", [0, 0, -1.5, -1.5, -1.5]),
    ("1,0,0,1,1", [1, 0, 0, 1, 1]),
    ("1*2,0*3", [1, 1, 0, 0, 0]),
    ("2.5*5", [2.5] * 5),
    ("1*4,0", [1, 1, 1, 1, 0]),
    ("0,1*3,0", [0, 1, 1, 1, 0]),
    (" 1 * 2 , 0.5 * 3 ", [1, 1, 0.5, 0.5, 0.5]),
    ("1*1", [1] * 5),                       # one value: uniform
    ("3*2", [3, 3, 3, 3, 3]),               # two values = per component
    ("1*001", [1] * 5),
    ("style=1", [1, 1, 0, 0, 0]),
    ("face=0.5", [0, 0, 0.5, 0.5, 0.5]),
    (" face = -1 , style = 2 ", [2, 2, -1, -1, -1]),
    ("+1,-0", [1, 1, 0, 0, 0]),
])
def test_vectors(text, expected):
    assert parse_sigma(text, TWO) == [float(v) for v in expected]


def test_design_examples():
    assert parse_sigma("2.5*8,0*16", JOIN24) == [2.5] * 8 + [0.0] * 16
    assert parse_sigma("1*4,0,0.5*3,1*16", JOIN24) == [1.0] * 4 + [0.0] + [0.5] * 3 + [1.0] * 16
    assert parse_sigma("1,0", JOIN24) == [1.0] * 4 + [0.0] * 20
    assert parse_sigma("0.7", JOIN24) == [0.7] * 24


def test_plain_lora_is_one_component():
    assert parse_sigma("0.5", PLAIN) == [0.5] * 4
    assert parse_sigma("1,0,1,0", PLAIN) == [1.0, 0.0, 1.0, 0.0]
    assert parse_sigma("lora=2", PLAIN) == [2.0] * 4


def test_equal_lengths_coincide():
    assert parse_sigma("1,2,3", UNIT) == [1.0, 2.0, 3.0]
    assert parse_sigma("4", UNIT) == [4.0] * 3


def test_python_values_accepted():
    assert parse_sigma(0.5, TWO) == [0.5] * 5
    assert parse_sigma([1, 0], TWO) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert parse_sigma((1, 2, 3, 4, 5), TWO) == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_arrays_and_tensors_are_read_like_lists():
    import numpy as np
    import torch
    assert parse_sigma(np.array([1.0, 0.0]), TWO) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert parse_sigma(torch.tensor([0.5, 1.0]), TWO) == [0.5, 0.5, 1.0, 1.0, 1.0]
    assert parse_sigma(np.float32(2.0), TWO) == [2.0] * 5


@pytest.mark.parametrize("value", [True, [1, None], {"a": 1}, object()])
def test_values_that_are_not_numbers_say_so(value):
    with pytest.raises(LoraMergeError, match="is not a Σ string or a list of numbers"):
        parse_sigma(value, TWO)


@pytest.mark.parametrize("text, words", [
    ("1,0,1", ["'1,0,1'", "has 3 values", "expected 1, 2 (one per component) or 5 (one per rank)"]),
    ("1*6", ["'1*6'", "has 6 values", "or 5 (one per rank)"]),
    ("1*99999999", ["has 99999999 values"]),
])
def test_wrong_length_names_value_and_lengths(text, words):
    with pytest.raises(LoraMergeError) as info:
        parse_sigma(text, TWO)
    for w in words:
        assert w in str(info.value)


def test_wrong_length_message_variants():
    with pytest.raises(LoraMergeError, match=r"^Σ vector '1,0,1' has 3 values; expected 1, 2 \(one per component\) "
                                             r"or 24 \(one per rank\)$"):
        parse_sigma("1,0,1", JOIN24)
    with pytest.raises(LoraMergeError, match=r"has 2 values; expected 1 or 4 \(one per rank\)$"):
        parse_sigma("1,0", PLAIN)
    with pytest.raises(LoraMergeError, match=r"has 2 values; expected 1 or 3 \(one per component or per rank\)$"):
        parse_sigma("1,0", UNIT)


@pytest.mark.parametrize("text, words", [
    ("", ["empty"]),
    ("   ", ["empty"]),
    ("1,,0", ["empty entry"]),
    ("1,0,", ["empty entry"]),
    ("abc", ["'abc' is not a number"]),
    ("1,x", ["'x' is not a number"]),
    ("nan", ["'nan' is not a number"]),
    ("inf,1", ["'inf' is not a number"]),
    ("-infinity", ["is not a number"]),
    ("1e999", ["'1e999' is too large"]),
    ("1_0", ["'1_0' is not a number"]),
    ("١", ["is not a number"]),                      # non-ASCII digit
    ("0x10", ["is not a number"]),
    ("1*0", ["'1*0'", "at least 1"]),
    ("1*-2", ["'1*-2'", "whole number"]),
    ("1*2.5", ["'1*2.5'", "whole number"]),
    ("2*1e9", ["'2*1e9'", "whole number"]),
    ("1*99999999999", ["'1*99999999999'", "too large"]),
    ("1*" + "9" * 5000, ["too large"]),
    ("1*", ["whole number"]),
    ("*3", ["empty entry"]),
    ("1*2*3", ["whole number"]),
    ("style=1,0", ["'0' has no name"]),
    ("1,face=0", ["'1' has no name"]),
    ("eyes=1", ["unknown component 'eyes'", "style, face"]),
    ("style=1,style=0", ["named twice"]),
    ("style=1*2", ["'1*2' is not a number"]),
    ("style=", ["empty entry"]),
    ("=1", ["unknown component ''"]),
])
def test_bad_input(text, words):
    with pytest.raises(LoraMergeError) as info:
        parse_sigma(text, TWO)
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message


def test_duplicate_component_names_cannot_be_named():
    twins = JoinLayout([Component("lora", 2), Component("lora", 2)])
    with pytest.raises(LoraMergeError, match="several components"):
        parse_sigma("lora=1", twins)
    assert parse_sigma("1,0", twins) == [1.0, 1.0, 0.0, 0.0]


def test_long_value_is_shortened_in_message():
    text = ",".join(["1"] * 1000)
    with pytest.raises(LoraMergeError) as info:
        parse_sigma(text, TWO)
    assert "has 1000 values" in str(info.value)
    assert len(str(info.value)) < 200


def test_parse_number():
    assert parse_number(" -2.5e1 ", "x") == -25.0
    with pytest.raises(LoraMergeError, match="^w: 'a' is not a number$"):
        parse_number("a", "w")


@pytest.mark.parametrize("values, text", [
    ([1, 1, 1, 1, 0], "1*4,0"),
    ([0.5], "0.5"),
    ([2.5] * 8 + [0] * 16, "2.5*8,0*16"),
    ([1, 0, 1, 0], "1,0,1,0"),
    ([-1.25, -1.25, 3], "-1.25*2,3"),
    ([1e-7, 1e20], "1e-07,1e+20"),
    ([0.1, 0.1], "0.1*2"),
    ([], ""),
])
def test_format_sigma(values, text):
    assert format_sigma(values) == text


@pytest.mark.parametrize("values", [[1, 1, 1, 1, 0], [0.3, -7, 1e-9, 2.5, 2.5], [1 / 3] * 5])
def test_format_round_trip(values):
    assert parse_sigma(format_sigma(values), TWO) == [float(v) for v in values]


def test_format_refuses_nan():
    with pytest.raises(LoraMergeError):
        format_sigma([float("nan")])
