"""Grid parameter spaces: axes, flat indices and point values.

A point's values follow from its flat index alone (row-major, last axis fastest), so every
process computes them bit for bit alike: floats as ``float(start) + i * float(step)`` (what
lite_dist2 does), ints in exact integer arithmetic at any magnitude, bools as ``start + i``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ld2.core.errors import InvalidInput
from ld2.core.portable import Scalar, ValueType

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
_SAFE = 2**62  # bound under which int64 sums of two such values cannot overflow


def _fits_int64(*values: int) -> bool:
    return all(-_SAFE < v < _SAFE for v in values)


@dataclass(frozen=True, slots=True)
class Axis:
    """One axis of ``size`` points ``start, start+step, …``; ``size=None`` is a half-line."""

    kind: ValueType
    start: Scalar
    step: Scalar
    size: int | None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.size is not None and (isinstance(self.size, bool) or self.size < 1):
            raise InvalidInput("size", f"must be at least 1, got {self.size}")
        if self.kind == "bool":
            if not isinstance(self.start, bool):
                raise InvalidInput(
                    "start", f"a bool axis starts at true or false, got {self.start!r}"
                )
            if self.step is not True:
                raise InvalidInput("step", f"a bool axis has step true, got {self.step!r}")
            if self.size is None or self.size > 2:
                raise InvalidInput("size", "a bool axis has at most 2 points (false, true)")
            if self.start and self.size == 2:
                raise InvalidInput("size", "a bool axis starting at true has only 1 point")
        elif self.kind == "int":
            for name in ("start", "step"):
                v = getattr(self, name)
                if not isinstance(v, int) or isinstance(v, bool):
                    raise InvalidInput(name, f"an int axis needs an int {name}, got {v!r}")
            if self.step == 0:
                raise InvalidInput("step", "must not be 0")
        elif self.kind == "float":
            for name in ("start", "step"):
                v = getattr(self, name)
                if not isinstance(v, float) or not math.isfinite(v):
                    raise InvalidInput(name, f"a float axis needs a finite float {name}, got {v!r}")
            if self.step == 0.0:
                raise InvalidInput("step", "must not be 0")
        else:
            raise InvalidInput("type", f"must be bool, int or float, got {self.kind!r}")

    # -- values -----------------------------------------------------------------------------
    def value(self, i: int) -> Scalar:
        """The value at index `i` of this axis (the lite_dist2 formula, exact for ints)."""
        if self.kind == "float":
            return float(self.start) + i * float(self.step)
        if self.kind == "int":
            return int(self.start) + i * int(self.step)
        return bool(int(self.start) + i)

    def values(self, indices: np.ndarray) -> np.ndarray:
        """Values at an array of indices: float64, int64 (object when too big for int64), bool."""
        if self.kind == "float":
            return float(self.start) + indices.astype(np.float64) * float(self.step)
        if self.kind == "bool":
            return np.not_equal(indices.astype(np.int64) + int(self.start), 0)
        start, step = int(self.start), int(self.step)
        if indices.dtype != object and indices.size:
            lo, hi = int(indices.min()), int(indices.max())
            if _fits_int64(start, step, lo * step, hi * step, start + lo * step, start + hi * step):
                return indices.astype(np.int64) * step + start
        out = np.empty(indices.shape, dtype=object)
        out[...] = [start + int(i) * step for i in indices.ravel().tolist()]
        return out if indices.size else indices.astype(np.int64)

    def index_of(self, value: Scalar) -> int | None:
        """The grid index whose value is `value` (floats within a few ulps), or None."""
        if self.kind == "bool":
            if not isinstance(value, bool):
                return None
            i = int(value) - int(self.start)
        elif self.kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                return None
            i, rem = divmod(value - int(self.start), int(self.step))
            if rem:
                return None
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            v = float(value)
            if not math.isfinite(v):
                return None
            start, step = float(self.start), float(self.step)
            i = round((v - start) / step)
            grid = start + i * step
            if abs(grid - v) > 8 * math.ulp(abs(start) + abs(i * step)):
                return None
        if i < 0 or (self.size is not None and i >= self.size):
            return None
        return i


@dataclass(frozen=True)
class Space:
    """A row-major grid over `axes` (only axis 0 may be infinite)."""

    axes: tuple[Axis, ...]
    sizes: tuple[int | None, ...] = field(init=False)
    strides: tuple[int, ...] = field(init=False)
    total: int | None = field(init=False)

    def __post_init__(self) -> None:
        if not self.axes:
            raise InvalidInput("axes", "a space needs at least one axis")
        seen: set[str] = set()
        for k, axis in enumerate(self.axes):
            if axis.size is None and k > 0:
                raise InvalidInput(f"axes[{k}].size", "only the first axis may be infinite (null)")
            if axis.name is not None:
                if axis.name in seen:
                    raise InvalidInput(f"axes[{k}].name", f"axis name {axis.name!r} is used twice")
                seen.add(axis.name)
        sizes = tuple(a.size for a in self.axes)
        strides = [1] * len(sizes)
        for d in range(len(sizes) - 2, -1, -1):
            strides[d] = strides[d + 1] * int(sizes[d + 1])  # type: ignore[arg-type]
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "strides", tuple(strides))
        object.__setattr__(self, "total", None if sizes[0] is None else sizes[0] * strides[0])

    @property
    def dim(self) -> int:
        return len(self.axes)

    @property
    def infinite(self) -> bool:
        return self.total is None

    def contains(self, flat: int) -> bool:
        return flat >= 0 and (self.total is None or flat < self.total)

    def unravel(self, flat: int) -> tuple[int, ...]:
        """Per-axis indices of a flat index."""
        if not self.contains(flat):
            raise InvalidInput("flat_index", f"{flat} is outside the space")
        out = []
        for stride in self.strides:
            q, flat = divmod(flat, stride)
            out.append(q)
        return tuple(out)

    def ravel(self, indices: Sequence[int]) -> int:
        """Flat index of per-axis indices (each checked against its axis)."""
        if len(indices) != self.dim:
            raise InvalidInput("indices", f"expected {self.dim} indices, got {len(indices)}")
        flat = 0
        for d, (i, size, stride) in enumerate(zip(indices, self.sizes, self.strides, strict=True)):
            if i < 0 or (size is not None and i >= size):
                raise InvalidInput(f"indices[{d}]", f"{i} is outside axis {d} (size {size})")
            flat += i * stride
        return flat

    def point(self, flat: int) -> tuple[Scalar, ...]:
        return tuple(a.value(i) for a, i in zip(self.axes, self.unravel(flat), strict=True))

    def flat_of_point(self, values: Sequence[Scalar]) -> int | None:
        """Flat index of a point given by values (floats matched within a few ulps), or None."""
        if len(values) != self.dim:
            return None
        idx = [a.index_of(v) for a, v in zip(self.axes, values, strict=True)]
        if any(i is None for i in idx):
            return None
        return self.ravel(idx)  # type: ignore[arg-type]

    # -- vectorised ---------------------------------------------------------------------------
    def axis_indices(self, start: int, count: int) -> list[np.ndarray]:
        """Per-axis index arrays of the flat range ``[start, start+count)``.

        Built run by run (axis d holds each index for ``strides[d]`` consecutive points), so the
        work is proportional to `count` and int64 never overflows whatever the flat offsets are.
        """
        if count < 0 or not self.contains(start) or not self.contains(start + count - 1):
            raise InvalidInput("range", f"[{start}, {start + count}) is outside the space")
        out: list[np.ndarray] = []
        for d, (size, stride) in enumerate(zip(self.sizes, self.strides, strict=True)):
            head, offset = divmod(start, stride)  # start lies `offset` points into run `head`
            if stride == 1:
                rel = np.arange(count, dtype=np.int64)
            else:
                first = min(stride - offset, count)  # each run is at most `count` long
                n_mid, last = divmod(count - first, stride)
                lengths = [first] + [stride] * n_mid + ([last] if last else [])
                rel = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
            if d == 0:
                base = head
                if _fits_int64(base, base + count):
                    out.append(rel + base)
                else:
                    out.append(np.array([base + int(r) for r in rel.tolist()], dtype=object))
            else:
                assert size is not None
                out.append((rel + head % size) % size)
        return out

    def arrays(self, start: int, count: int) -> list[np.ndarray]:
        """Per-axis value arrays (float64 / int64 / bool; object for huge ints) of a flat range."""
        return [
            axis.values(idx)
            for axis, idx in zip(self.axes, self.axis_indices(start, count), strict=True)
        ]
