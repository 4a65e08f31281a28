"""Hypothesis strategies for random axes and spaces (shared by several test modules)."""

from __future__ import annotations

from hypothesis import strategies as st

from ld2.core.space import Axis, Space


@st.composite
def axes(draw: st.DrawFn, name: str, infinite: bool = False) -> Axis:
    kind = draw(st.sampled_from(["bool", "int", "float"]))
    size = None
    if kind == "bool":
        start = draw(st.booleans())
        return Axis("bool", start, True, 1 if start else draw(st.integers(1, 2)), name)
    if not infinite:
        size = draw(st.integers(1, 7))
    if kind == "int":
        start = draw(st.integers(-(2**70), 2**70) | st.integers(-20, 20))
        step = draw(st.integers(-5, 5).filter(bool) | st.integers(2**60, 2**66))
        return Axis("int", start, step, size, name)
    start_f = draw(st.floats(-1e6, 1e6, allow_nan=False))
    step_f = draw(st.floats(-100, 100, allow_nan=False).filter(lambda x: abs(x) > 1e-3))
    return Axis("float", start_f, step_f, size, name)


@st.composite
def spaces(draw: st.DrawFn, max_dim: int = 4, allow_infinite: bool = True) -> Space:
    dim = draw(st.integers(1, max_dim))
    infinite = allow_infinite and draw(st.booleans())
    first = draw(axes("a0", infinite=infinite))
    rest = [draw(axes(f"a{k}")) for k in range(1, dim)]
    return Space((first, *rest))
