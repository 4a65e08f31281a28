"""Study strategies on a trial's results: when a study is done, and what it keeps.

- ``all_calculation``: done when every point is registered (nothing to compute here).
- ``find_exact``: the first point whose result equals the target as a value (``0xA`` equals
  ``0xa``, ``-0.0`` equals ``0.0``); a hit ends the study.
- ``minimize``: the lowest result and its point; ties keep the lowest flat index. The store
  compares candidates with `order_key`, a string whose byte order is the numeric order, so a
  Redis script can keep the best atomically without doing arithmetic on big ints or floats.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from ld2.core.portable import Scalar, ValueType

_U64 = 0xFFFFFFFFFFFFFFFF


def find_hit(values: np.ndarray, target: tuple[Scalar, ...]) -> int | None:
    """Offset of the first result equal to `target` (one item for scalar results), or None."""
    if values.ndim == 2:
        if values.shape[1] != len(target):
            return None
        if values.dtype == object:
            wanted = list(target)
            for k, row in enumerate(values.tolist()):
                if row == wanted:
                    return k
            return None
        hits = np.all(values == np.asarray(target, dtype=values.dtype), axis=1)
    else:
        if len(target) != 1:
            return None
        if values.dtype == object:
            for k, v in enumerate(values.tolist()):
                if v == target[0]:
                    return k
            return None
        hits = values == target[0]
    found = np.flatnonzero(hits)
    return int(found[0]) if found.size else None


def best_of(values: np.ndarray) -> int | None:
    """Offset of the lowest scalar result (first on ties; NaN never wins), or None if none."""
    if values.size == 0:
        return None
    if values.dtype.kind == "f":
        if np.isnan(values).all():
            return None
        return int(np.nanargmin(values))
    if values.dtype == object:
        items = values.tolist()
        return min(range(len(items)), key=items.__getitem__)
    return int(np.argmin(values))


def order_key(value: Scalar, value_type: ValueType, flat: int) -> str:
    """A string ordered (bytewise) like ``(value, flat)``: for minimize's atomic compare.

    Values of one type map to prefix-free keys, so a tie in value falls through to the flat
    index, printed as fixed-width hex.
    """
    return f"{_value_key(value, value_type)}:{flat:016x}"


def _value_key(value: Scalar, value_type: ValueType) -> str:
    if value_type == "bool":
        return "1" if value else "0"
    if value_type == "float":
        v = float(value)
        if math.isnan(v):
            raise ValueError("NaN has no place in an order")
        if v == 0.0:
            v = 0.0  # -0.0 and 0.0 are the same value
        (bits,) = struct.unpack(">Q", struct.pack(">d", v))
        bits = (~bits & _U64) if bits >> 63 else bits | (1 << 63)
        return f"{bits:016x}"
    n = int(value)
    digits = f"{abs(n):x}"
    if n >= 0:
        return f"1{len(digits):04x}{digits}"
    flipped = digits.translate(_FLIP)
    return f"0{0xFFFF - len(digits):04x}{flipped}"


_FLIP = str.maketrans("0123456789abcdef", "fedcba9876543210")
