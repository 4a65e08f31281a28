"""Spaces on the wire: a study's space and its trials' sub-spaces, both ways.

ld2 thinks of a trial as a flat range; lite_dist2 clients see it as an aligned box
(``ambient_index``/``ambient_size`` per axis) or as a jagged point list. Reading a submitted
space back checks that it really is a sub-space of the study (values matched to grid indices
within a few ulps, since lite_dist2's Worker may be one ulp off).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ld2.core import portable
from ld2.core.errors import InvalidInput
from ld2.core.models import (
    LineSegmentModel,
    LineSegmentRegistry,
    ParameterAlignedSpaceModel,
    ParameterAlignedSpaceRegistry,
    ParameterJaggedSpaceModel,
)
from ld2.core.planning import box_of
from ld2.core.space import Axis, Space


def axis_from_wire(seg: LineSegmentRegistry, field: str = "") -> Axis:
    prefix = f"{field}." if field else ""
    size = None if seg.size is None else portable.decode_int(seg.size, f"{prefix}size")
    start = portable.decode(seg.start, seg.type, f"{prefix}start")
    step = portable.decode(seg.step, seg.type, f"{prefix}step")
    try:
        return Axis(kind=seg.type, start=start, step=step, size=size, name=seg.name)
    except InvalidInput as err:
        raise err.under(field) from None


def space_from_wire(
    model: ParameterAlignedSpaceRegistry | ParameterAlignedSpaceModel,
    field: str = "parameter_space",
) -> Space:
    """A study's space from its registry (or study-level portable) model, validated."""
    axes = tuple(axis_from_wire(seg, f"{field}.axes[{k}]") for k, seg in enumerate(model.axes))
    try:
        return Space(axes)
    except InvalidInput as err:
        raise err.under(field) from None


def _segment(axis: Axis, first: int, size: int | None, dummy: bool = False) -> LineSegmentModel:
    return LineSegmentModel(
        name=axis.name,
        type=axis.kind,
        size=None if size is None else hex(size),
        step=portable.encode(axis.step, axis.kind),
        start=portable.ZERO[axis.kind] if dummy else portable.encode(axis.value(first), axis.kind),
        ambient_index=hex(first),
        ambient_size=None if axis.size is None else hex(axis.size),
        is_dummy=dummy,
    )


def space_to_wire(space: Space) -> ParameterAlignedSpaceModel:
    """The study-level model: every axis whole, values in canonical spelling."""
    return ParameterAlignedSpaceModel(
        axes=[_segment(a, 0, a.size) for a in space.axes], check_lower_filling=True
    )


def trial_space(
    space: Space, start: int, count: int, jagged: bool, *, points: bool = True
) -> ParameterAlignedSpaceModel | ParameterJaggedSpaceModel:
    """The wire model of the trial covering the flat range ``[start, start+count)``.

    ``points=False`` leaves a jagged trial's point lists empty, for a writer that fills them in
    as JSON text (`jagged_points_json`).
    """
    if not jagged:
        box = box_of(space, start, count)
        return ParameterAlignedSpaceModel(
            axes=[_segment(a, i, n) for a, (i, n) in zip(space.axes, box, strict=True)],
            check_lower_filling=True,
        )
    axes_info = [_segment(a, 0, None, dummy=True) for a in space.axes]
    if not points:
        return ParameterJaggedSpaceModel(parameters=[], ambient_indices=[], axes_info=axes_info)
    values, indices = _columns(space, start, count, json_text=False)
    # our own encoding of grid points: not checked point by point again (seconds per 10⁶ points)
    return ParameterJaggedSpaceModel.model_construct(
        parameters=[list(row) for row in zip(*values, strict=True)],
        ambient_indices=[list(row) for row in zip(*indices, strict=True)],
        axes_info=axes_info,
    )


JSON_CHUNK = 8192
"""Points `jagged_points_json` encodes at a time."""

_FLOAT_CELL = len('"-0x1.fffffffffffffp-1022"')  # the longest float.hex(), quoted
_LAST_FLAT = 2**53  # no flat index beyond it is ever issued (the store's Lua has doubles)


def jagged_point_bytes(space: Space) -> int:
    """An upper bound on the JSON bytes one point adds to a jagged trial's wire form.

    A point is a row ``[v₁,…,v_d],`` in ``parameters`` and a row ``["0x…",…],`` in
    ``ambient_indices``. An int axis's longest value is at one of its ends; a float takes at most
    24 characters, a bool ``false``.
    """
    total = 2 * (space.dim + 2)  # brackets, commas between cells and after the rows
    for axis, stride in zip(space.axes, space.strides, strict=True):
        last = _LAST_FLAT // stride if axis.size is None else axis.size - 1
        if axis.kind == "float":
            value = _FLOAT_CELL
        elif axis.kind == "int":
            value = 2 + max(len(hex(int(axis.value(0)))), len(hex(int(axis.value(last)))))
        else:
            value = len("false")
        total += value + 2 + len(hex(last))
    return total


def jagged_points_json(space: Space, start: int, count: int) -> tuple[list[bytes], list[bytes]]:
    """The items of a jagged trial's ``parameters`` and ``ambient_indices`` as compact JSON.

    Joined, each list of pieces is byte for byte what pydantic writes between the brackets of
    that field of `trial_space`'s model, but built `JSON_CHUNK` points at a time with each
    distinct value encoded once: no Python object per point outlives its chunk.
    """
    row = "[" + ",".join(["{}"] * space.dim) + "]"
    params: list[bytes] = []
    indices: list[bytes] = []
    for offset in range(0, count, JSON_CHUNK):
        values, idx = _columns(space, start + offset, min(JSON_CHUNK, count - offset), True)
        sep = "," if offset else ""
        params.append((sep + ",".join(map(row.format, *values))).encode("ascii"))
        indices.append((sep + ",".join(map(row.format, *idx))).encode("ascii"))
    return params, indices


def _columns(
    space: Space, start: int, count: int, json_text: bool
) -> tuple[list[list[portable.Portable]], list[list[str]]]:
    """Per-axis columns of the points' portable values and hex indices (as JSON text when
    `json_text`). Each distinct value is encoded once and shared by the points that have it."""
    values: list[list[portable.Portable]] = []
    indices: list[list[str]] = []
    for axis, idx in zip(space.axes, space.axis_indices(start, count), strict=True):
        distinct, inverse = np.unique(idx, return_inverse=True)
        encoded = [portable.encode(v, axis.kind) for v in axis.values(distinct).tolist()]
        hexes = [hex(i) for i in distinct.tolist()]
        if json_text:
            encoded = [_json_cell(v) for v in encoded]
            hexes = [f'"{h}"' for h in hexes]
        values.append(_objects(encoded)[inverse].tolist())
        indices.append(_objects(hexes)[inverse].tolist())
    return values, indices


def _json_cell(value: portable.Portable) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"'  # hex digits, ".", "p", "+", "-", "inf", "nan": nothing to escape


def _objects(items: Sequence[object]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _check_axis_info(space: Space, segs: Sequence[LineSegmentModel], field: str) -> None:
    if len(segs) != space.dim:
        raise InvalidInput(field, f"expected {space.dim} axes, got {len(segs)}")
    for k, (axis, seg) in enumerate(zip(space.axes, segs, strict=True)):
        where = f"{field}[{k}]"
        if seg.type != axis.kind:
            raise InvalidInput(f"{where}.type", f"expected {axis.kind!r}, got {seg.type!r}")
        if seg.name != axis.name:
            raise InvalidInput(f"{where}.name", f"expected {axis.name!r}, got {seg.name!r}")
        if portable.decode(seg.step, seg.type, f"{where}.step") != axis.step:
            raise InvalidInput(f"{where}.step", f"does not match the study's step {axis.step!r}")
        ambient = None if seg.ambient_size is None else portable.decode_int(seg.ambient_size)
        if ambient != axis.size:
            raise InvalidInput(
                f"{where}.ambient_size", f"expected {axis.size}, got {ambient} (not this study)"
            )


def trial_range(
    space: Space,
    model: ParameterAlignedSpaceModel | ParameterJaggedSpaceModel,
    field: str = "parameter_space",
) -> tuple[int, int]:
    """The flat range ``(start, count)`` a trial's space covers; refuses non-sub-spaces."""
    if isinstance(model, ParameterAlignedSpaceModel):
        _check_axis_info(space, model.axes, f"{field}.axes")
        firsts: list[int] = []
        sizes: list[int] = []
        for k, (axis, seg) in enumerate(zip(space.axes, model.axes, strict=True)):
            where = f"{field}.axes[{k}]"
            if seg.size is None:
                raise InvalidInput(f"{where}.size", "a trial's axis must have a finite size")
            first = portable.decode_int(seg.ambient_index, f"{where}.ambient_index")
            n = portable.decode_int(seg.size, f"{where}.size")
            if first < 0 or n < 1 or (axis.size is not None and first + n > axis.size):
                raise InvalidInput(where, f"[{first}, {first + n}) is outside the study's axis")
            if axis.index_of(portable.decode(seg.start, seg.type)) != first:
                raise InvalidInput(
                    f"{where}.start", f"{seg.start!r} is not the value at index {first}"
                )
            firsts.append(first)
            sizes.append(n)
        start = space.ravel(firsts)
        count = int(np.prod(np.array(sizes, dtype=object)))
        if [n for _, n in box_of(space, start, count)] != sizes:
            raise InvalidInput(field, "the axes do not form an aligned (lower-filling) box")
        return start, count
    _check_axis_info(space, model.axes_info, f"{field}.axes_info")
    if not model.ambient_indices:
        raise InvalidInput(f"{field}.parameters", "a trial needs at least one point")
    flats = []
    for r, (params, idx) in enumerate(zip(model.parameters, model.ambient_indices, strict=True)):
        indices = [portable.decode_int(i) for i in idx]
        values = [portable.decode(p, a.kind) for p, a in zip(params, space.axes, strict=True)]
        got = [a.index_of(v) for a, v in zip(space.axes, values, strict=True)]
        if got != indices:
            raise InvalidInput(
                f"{field}.parameters[{r}]", "the values do not match their ambient_indices"
            )
        flats.append(space.ravel(indices))
    start = flats[0]
    if flats != list(range(start, start + len(flats))):
        raise InvalidInput(f"{field}.ambient_indices", "points must be consecutive in grid order")
    return start, len(flats)
