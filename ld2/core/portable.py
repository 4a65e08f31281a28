"""lite_dist2's "portable" value encoding, written canonically and read strictly.

On the wire an int is ``hex(v)``, a float is ``float.hex(v)`` (or ``inf``/``-inf``/``nan``) and a
bool is a JSON bool. lite_dist2 decodes leniently (``"10"`` means 16, ``"0.1"`` means 0.0625);
ld2 refuses anything that is not unambiguously hexadecimal, naming the field.
"""

from __future__ import annotations

import math
import re
from typing import Literal, TypeAlias

from ld2.core.errors import InvalidInput

ValueType: TypeAlias = Literal["bool", "int", "float"]
Scalar: TypeAlias = bool | int | float
Portable: TypeAlias = bool | str

VALUE_TYPES: tuple[ValueType, ...] = ("bool", "int", "float")

ZERO: dict[ValueType, Portable] = {"bool": False, "int": "0x0", "float": "0x0.0p+0"}
"""Each type's zero in canonical form: lite_dist2's placeholder in templates and dummy axes."""

_INT_RE = re.compile(r"-?0[xX][0-9a-fA-F]+")
_FLOAT_RE = re.compile(
    r"-?0[xX](?:[0-9a-fA-F]+(?:\.[0-9a-fA-F]*)?|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?"
)
_FLOAT_WORDS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def encode_int(value: int) -> str:
    return hex(value)


def encode_float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value.hex()


def encode(value: Scalar, value_type: ValueType) -> Portable:
    """Canonical portable form of `value` as `value_type` (the exact text lite_dist2 writes)."""
    if value_type == "bool":
        return bool(value)
    if value_type == "int":
        if isinstance(value, float):
            raise InvalidInput("", f"{value!r} is a float, not an int")
        return encode_int(int(value))
    return encode_float(float(value))


def decode_int(text: object, field: str = "") -> int:
    if not isinstance(text, str) or isinstance(text, bool):
        raise InvalidInput(field, f"expected a portable int string like '0x1f', got {text!r}")
    if not _INT_RE.fullmatch(text):
        raise InvalidInput(
            field, f"{text!r} is not a portable int: write it in hex with a 0x prefix, e.g. '0xa'"
        )
    return int(text, 16)


def decode_float(text: object, field: str = "") -> float:
    if not isinstance(text, str) or isinstance(text, bool):
        raise InvalidInput(field, f"expected a portable float string like '0x1.8p+1', got {text!r}")
    word = _FLOAT_WORDS.get(text)
    if word is not None:
        return word
    if not _FLOAT_RE.fullmatch(text):
        raise InvalidInput(
            field,
            f"{text!r} is not a portable float: use float.hex() form such as "
            "'0x1.999999999999ap-4', or inf, -inf, nan",
        )
    try:
        return float.fromhex(text)
    except OverflowError:
        raise InvalidInput(field, f"{text!r} overflows a 64-bit float") from None


def decode_bool(value: object, field: str = "") -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(field, f"expected a JSON true/false, got {value!r}")
    return value


def decode(value: object, value_type: ValueType, field: str = "") -> Scalar:
    """Strictly decode a portable value of a declared type."""
    if value_type == "bool":
        return decode_bool(value, field)
    if value_type == "int":
        return decode_int(value, field)
    if value_type == "float":
        return decode_float(value, field)
    raise InvalidInput(field, f"unknown value type {value_type!r}")


def check(value: object, value_type: ValueType, field: str = "") -> None:
    """Raise InvalidInput unless `value` is a valid portable `value_type`."""
    decode(value, value_type, field)
