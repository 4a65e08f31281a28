import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ld2.core.errors import InvalidInput
from ld2.core.planning import Permutation, Tiling, aligned_count, box_of, plan_count, uses_jagged
from ld2.core.space import Axis, Space
from tests.conftest import wire_json
from tests.strategies_hyp import spaces


def _space(sizes: list[int | None]) -> Space:
    return Space(tuple(Axis("int", 0, 1, n, f"a{k}") for k, n in enumerate(sizes)))


def _describe(space: Space, n: int, start: int, count: int, jagged: bool) -> str:
    if jagged:
        pts = " ".join(
            "(" + ",".join(str(i) for i in space.unravel(f)) + ")"
            for f in range(start, start + count)
        )
        return f"{hex(n)} jagged n={count} {pts}"
    box = " x ".join(f"[{i}:+{k}]" for i, k in box_of(space, start, count))
    return f"{hex(n)} aligned n={count} {box}"


def _plan_all(space: Space, max_size: int, jagged: bool, limit: int | None = None) -> list[str]:
    out, start, n = [], 0, 0
    while (space.total is None or start < space.total) and (limit is None or n < limit):
        count = plan_count(space, start, max_size, jagged)
        out.append(_describe(space, n, start, count, jagged))
        start += count
        n += 1
    return out


CASES = wire_json("S-split-examples.offline.json")


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_split_examples(case: dict) -> None:
    space = _space(case["axis_sizes"])
    jagged = uses_jagged(space, case["strict_aligned"])
    max_size = case["max_size"]
    expected = case["trials_in_order"]
    if max_size <= 0:  # lite_dist2 errors (aligned) or hands out 1-point trials (jagged)
        with pytest.raises(InvalidInput, match="limit"):
            plan_count(space, 0, max_size, jagged)
        return
    if space.total is not None:
        assert [*_plan_all(space, max_size, jagged), "no more trial (None)"] == expected
        return
    got = _plan_all(space, max_size, jagged, limit=len(expected))
    for line, theirs in zip(got, expected, strict=True):
        count = int(line.split("n=")[1].split()[0])
        assert count <= max_size
        if int(theirs.split("n=")[1].split()[0]) <= max_size:
            assert line == theirs  # same shape wherever lite_dist2 respected max_size
        else:
            assert count == (max_size // space.strides[0]) * space.strides[0]


def test_infinite_axis_never_exceeds_max_size() -> None:
    space = _space([None, 10])
    assert _plan_all(space, 15, False, limit=2) == [
        "0x0 aligned n=10 [0:+1] x [0:+10]",
        "0x1 aligned n=10 [1:+1] x [0:+10]",
    ]
    assert plan_count(space, 0, 25, False) == 20
    assert plan_count(space, 3, 9, False) == 7  # the rest of the row, no further
    assert plan_count(space, 3, 5, False) == 5


def test_limit_caps_gaps() -> None:
    space = _space([10, 10])
    assert aligned_count(space, 20, 35) == 30
    assert aligned_count(space, 23, 35) == 7
    assert aligned_count(space, 20, 3) == 3
    assert plan_count(space, 95, 7, jagged=True) == 5


@settings(max_examples=200, deadline=None)
@given(spaces(allow_infinite=False), st.integers(1, 50), st.booleans())
def test_planning_covers_every_point_exactly_once(
    space: Space, max_size: int, strict: bool
) -> None:
    jagged = uses_jagged(space, strict)
    start, seen = 0, []
    assert space.total is not None
    while start < space.total:
        count = plan_count(space, start, max_size, jagged)
        assert 1 <= count <= max_size
        if not jagged:
            box_of(space, start, count)  # raises unless an aligned box
        seen.extend(range(start, start + count))
        start += count
    assert seen == list(range(space.total))


@settings(max_examples=100, deadline=None)
@given(spaces(allow_infinite=True), st.integers(1, 10**6), st.integers(0, 10**9))
def test_plan_never_exceeds_max_size_anywhere(space: Space, max_size: int, start: int) -> None:
    if space.total is not None:
        start %= space.total
    count = aligned_count(space, start, max_size)
    assert 1 <= count <= max_size
    box_of(space, start, count)


@settings(max_examples=100, deadline=None)
@given(spaces(allow_infinite=False), st.integers(1, 40), st.booleans())
def test_tiling_matches_sequential_planning(space: Space, max_size: int, strict: bool) -> None:
    jagged = uses_jagged(space, strict)
    tiling = Tiling(space, max_size, jagged)
    chunks, start = [], 0
    assert space.total is not None
    while start < space.total:
        count = plan_count(space, start, max_size, jagged)
        chunks.append((start, count))
        start += count
    assert tiling.count == len(chunks)
    assert [tiling.chunk(n) for n in range(tiling.count)] == chunks


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 3000), st.integers(0, 2**64))
def test_random_order_is_a_permutation(n: int, seed: int) -> None:
    perm = Permutation(n, seed)
    order = [perm(i) for i in range(n)]
    assert sorted(order) == list(range(n))
    assert order == [Permutation(n, seed)(i) for i in range(n)]  # reproducible


def test_random_order_actually_shuffles() -> None:
    order = [Permutation(1000, 7)(i) for i in range(1000)]
    assert order != list(range(1000))
    assert order != [Permutation(1000, 8)(i) for i in range(1000)]
    assert sum(abs(a - b) for a, b in zip(order, range(1000), strict=True)) > 100_000


def test_random_order_needs_a_finite_space() -> None:
    with pytest.raises(InvalidInput, match="finite"):
        _ = Tiling(_space([None, 3]), 5, False).count


def test_box_of_refuses_non_boxes() -> None:
    with pytest.raises(InvalidInput, match="aligned box"):
        box_of(_space([10, 10]), 5, 10)
