import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ld2.core import portable
from ld2.core.errors import InvalidInput


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0x0.0p+0"),
        (-0.0, "-0x0.0p+0"),
        (1.0, "0x1.0000000000000p+0"),
        (-2.0, "-0x1.0000000000000p+1"),
        (0.1, "0x1.999999999999ap-4"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (math.nan, "nan"),
        (5e-324, "0x0.0000000000001p-1022"),
        (1.7976931348623157e308, "0x1.fffffffffffffp+1023"),
    ],
)
def test_float_encoding_matches_lite_dist2(value: float, text: str) -> None:
    assert portable.encode(value, "float") == text
    back = portable.decode(text, "float")
    assert (math.isnan(back) and math.isnan(value)) or (
        back == value and math.copysign(1, back) == math.copysign(1, value)
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0x0"),
        (255, "0xff"),
        (-255, "-0xff"),
        (2**64, "0x10000000000000000"),
        (2**128, "0x1" + "0" * 32),
    ],
)
def test_int_encoding(value: int, text: str) -> None:
    assert portable.encode(value, "int") == text
    assert portable.decode(text, "int") == value


def test_bool_is_a_json_bool() -> None:
    assert portable.encode(True, "bool") is True
    assert portable.decode(False, "bool") is False
    for bad in ("true", "True", 1, 0, "0x1"):
        with pytest.raises(InvalidInput, match="flag"):
            portable.decode(bad, "bool", "flag")


@pytest.mark.parametrize(
    "text", ["10", "ff", "0.1", "1e3", " 0x1", "0x1_0", "+0x1", "", "0x", "1.5"]
)
def test_ambiguous_int_text_is_refused_with_field(text: str) -> None:
    with pytest.raises(InvalidInput) as err:
        portable.decode(text, "int", "axes[0].start")
    assert err.value.field == "axes[0].start"
    assert "axes[0].start" in str(err.value)


@pytest.mark.parametrize(
    "text", ["0.1", "1.5", "1e3", "10", "infinity", "-nan", "Inf", " 0x1p0", "0x1p"]
)
def test_ambiguous_float_text_is_refused_with_field(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"^step: "):
        portable.decode(text, "float", "step")


@pytest.mark.parametrize("value", [1, 0, 1.5, None, [], True])
def test_json_numbers_are_not_portable_strings(value: object) -> None:
    with pytest.raises(InvalidInput, match="value"):
        portable.decode(value, "int", "value")
    with pytest.raises(InvalidInput, match="value"):
        portable.decode(value, "float", "value")


def test_short_hex_float_and_uppercase_are_unambiguous() -> None:
    assert portable.decode("0x2p0", "float") == 2.0
    assert portable.decode("0X1.8P+1", "float") == 3.0
    assert portable.decode("0xEA1D", "int") == 0xEA1D


def test_int_given_for_int_slot_must_be_int() -> None:
    with pytest.raises(InvalidInput):
        portable.encode(1.5, "int")
    assert portable.encode(3, "float") == "0x1.8000000000000p+1"


@given(st.floats(allow_nan=False))
def test_float_round_trip(value: float) -> None:
    back = portable.decode(portable.encode(value, "float"), "float")
    assert back == value and math.copysign(1, back) == math.copysign(1, value)


@given(st.integers(min_value=-(2**200), max_value=2**200))
def test_int_round_trip(value: int) -> None:
    assert portable.decode(portable.encode(value, "int"), "int") == value


def test_spellings_decode_to_the_same_value() -> None:
    assert portable.decode("0xEA", "int") == portable.decode("0xea", "int") == 234
    assert portable.decode("-0x0.0p+0", "float") == portable.decode("0x0p0", "float")
