import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ld2.core.strategies import best_of, find_hit, order_key


def test_find_hit_first_match_by_value() -> None:
    assert find_hit(np.array([5, 7, 7]), (7,)) == 1
    assert find_hit(np.array([5, 7]), (8,)) is None
    assert find_hit(np.array([0.5, -0.0]), (0.0,)) == 1  # -0.0 equals 0.0
    assert find_hit(np.array([math.nan, 1.0]), (1.0,)) == 1
    big = np.empty(2, dtype=object)
    big[:] = [2**127, 0xEA1D00C87EFBE3BE913D70587320E3E8]
    assert find_hit(big, (0xEA1D00C87EFBE3BE913D70587320E3E8,)) == 1


def test_find_hit_vectors() -> None:
    vals = np.array([[1.0, 2.0], [3.0, 4.0], [3.0, 4.0]])
    assert find_hit(vals, (3.0, 4.0)) == 1
    assert find_hit(vals, (3.0,)) is None
    assert find_hit(np.array([1, 2]), (1, 2)) is None


def test_best_of_keeps_lowest_index_on_ties() -> None:
    assert best_of(np.array([3, 1, 1, 2])) == 1
    assert best_of(np.array([math.nan, 2.0, -1.0, -1.0])) == 2
    assert best_of(np.array([math.nan])) is None
    assert best_of(np.array([], dtype=np.int64)) is None
    big = np.empty(3, dtype=object)
    big[:] = [2**100, -(2**100), -(2**100)]
    assert best_of(big) == 1


@settings(max_examples=300, deadline=None)
@given(
    st.integers(-(2**130), 2**130),
    st.integers(-(2**130), 2**130),
    st.integers(0, 2**53),
    st.integers(0, 2**53),
)
def test_int_order_key_orders_like_values(a: int, b: int, fa: int, fb: int) -> None:
    ka, kb = order_key(a, "int", fa), order_key(b, "int", fb)
    assert (ka < kb) == ((a, fa) < (b, fb))


@settings(max_examples=300, deadline=None)
@given(
    st.floats(allow_nan=False),
    st.floats(allow_nan=False),
    st.integers(0, 2**53),
    st.integers(0, 2**53),
)
def test_float_order_key_orders_like_values(a: float, b: float, fa: int, fb: int) -> None:
    ka, kb = order_key(a, "float", fa), order_key(b, "float", fb)
    assert (ka.encode() < kb.encode()) == ((a, fa) < (b, fb))


def test_order_key_edges() -> None:
    assert order_key(-0.0, "float", 1) == order_key(0.0, "float", 1)
    assert order_key(False, "bool", 9) < order_key(True, "bool", 0)
    with pytest.raises(ValueError, match="NaN"):
        order_key(math.nan, "float", 0)
