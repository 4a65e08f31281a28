import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ld2.core.errors import InvalidInput
from ld2.core.space import Axis, Space
from tests.strategies_hyp import spaces


def test_float_values_are_lite_dist2s_formula() -> None:
    axis = Axis("float", -2.0, 0.4, 10, "x")
    for i in range(10):
        assert axis.value(i) == -2.0 + i * 0.4
    # wire/45: lite_dist2's study-level value at index 9 is ...ap+0
    assert axis.value(9).hex() == "0x1.999999999999ap+0"


def test_int_values_exact_beyond_2_53() -> None:
    axis = Axis("int", 2**60 + 1, 1, 3, "n")
    assert [axis.value(i) for i in range(3)] == [2**60 + 1, 2**60 + 2, 2**60 + 3]
    big = Axis("int", 2**100, 3, 4)
    arr = big.values(np.arange(4))
    assert arr.tolist() == [2**100, 2**100 + 3, 2**100 + 6, 2**100 + 9]


def test_bool_values() -> None:
    assert Axis("bool", False, True, 2).values(np.arange(2)).tolist() == [False, True]
    assert Axis("bool", True, True, 1).value(0) is True


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "int", "start": 0, "step": 1, "size": 0}, "size"),
        ({"kind": "int", "start": 0, "step": 1, "size": -3}, "size"),
        ({"kind": "int", "start": 0, "step": 0, "size": 3}, "step"),
        ({"kind": "float", "start": 0.0, "step": 0.0, "size": 3}, "step"),
        ({"kind": "float", "start": math.inf, "step": 1.0, "size": 3}, "start"),
        ({"kind": "float", "start": 0.0, "step": math.nan, "size": 3}, "step"),
        ({"kind": "bool", "start": False, "step": True, "size": 3}, "size"),
        ({"kind": "bool", "start": False, "step": True, "size": None}, "size"),
        ({"kind": "bool", "start": True, "step": True, "size": 2}, "size"),
        ({"kind": "bool", "start": False, "step": False, "size": 2}, "step"),
        ({"kind": "int", "start": 0.5, "step": 1, "size": 2}, "start"),
    ],
)
def test_axis_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        Axis(**kwargs)
    assert err.value.field == field


def test_space_validation() -> None:
    with pytest.raises(InvalidInput, match=r"^axes: "):
        Space(())
    with pytest.raises(InvalidInput, match=r"axes\[1\]\.size: only the first axis"):
        Space((Axis("int", 0, 1, 3), Axis("int", 0, 1, None)))
    with pytest.raises(InvalidInput, match=r"axes\[1\]\.name: axis name 'x' is used twice"):
        Space((Axis("int", 0, 1, 3, "x"), Axis("int", 0, 1, 3, "x")))
    Space((Axis("int", 0, 1, 3), Axis("int", 0, 1, 3)))  # null names may repeat


def test_strides_total_and_infinite() -> None:
    s = Space((Axis("int", 0, 1, 3), Axis("int", 0, 1, 4), Axis("int", 0, 1, 5)))
    assert s.strides == (20, 5, 1) and s.total == 60
    inf = Space((Axis("int", 0, 1, None), Axis("float", 0.0, 1.0, 10)))
    assert inf.total is None and inf.unravel(10**15 + 3) == (10**14, 3)


@settings(max_examples=150, deadline=None)
@given(spaces(), st.data())
def test_flat_index_round_trip(space: Space, data: st.DataObject) -> None:
    hi = (space.total or 10**12) - 1
    flat = data.draw(st.integers(0, hi))
    idx = space.unravel(flat)
    assert space.ravel(idx) == flat
    assert space.flat_of_point(space.point(flat)) == flat


@settings(max_examples=150, deadline=None)
@given(spaces(), st.data())
def test_arrays_equal_pointwise_values(space: Space, data: st.DataObject) -> None:
    hi = space.total if space.total is not None else 10**6
    start = data.draw(st.integers(0, hi - 1))
    count = data.draw(st.integers(1, min(hi - start, 200)))
    arrays = space.arrays(start, count)
    for k in range(count):
        point = space.point(start + k)
        for axis_values, value in zip(arrays, point, strict=True):
            got = axis_values[k]
            assert got == value and type(got.item() if hasattr(got, "item") else got) is type(value)
        if isinstance(point[0], float):
            assert arrays[0][k].hex() == point[0].hex()


def test_arrays_far_out_on_an_infinite_axis() -> None:
    s = Space((Axis("int", 0, 1, None), Axis("int", 0, 1, 3)))
    start = 2**70 * 3 + 2
    a0, a1 = s.arrays(start, 4)
    assert a0.tolist() == [2**70, 2**70 + 1, 2**70 + 1, 2**70 + 1]
    assert a1.tolist() == [2, 0, 1, 2]


def test_index_of_tolerates_a_few_ulps_only() -> None:
    axis = Axis("float", -2.0, 0.4, 10)
    # lite_dist2's Worker computes index 9 as ...bp+0 (one ulp off): still index 9
    assert axis.index_of(float.fromhex("0x1.999999999999bp+0")) == 9
    assert axis.index_of(-2.0 + 0.2) is None
    assert axis.index_of(-2.4) is None  # off the grid, below start
    assert Axis("int", 1, 3, 5).index_of(7) == 2
    assert Axis("int", 1, 3, 5).index_of(8) is None
    assert axis.index_of(math.nan) is None and axis.index_of(5.0) is None
