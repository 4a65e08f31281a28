"""Chunk planning: how many points the next trial takes, and in which order chunks are issued.

Every trial is a contiguous flat range ``[start, start+count)``. An *aligned* trial is also a
box (leading axes of size 1, one partial axis, trailing axes full): the largest such box from
`start` with at most `limit` points, the shapes lite_dist2 hands out on finite spaces. A
*jagged* trial (``strict_aligned: false`` on ≥ 2 axes) is simply the next `limit` points.
"""

from __future__ import annotations

from dataclasses import dataclass

from ld2.core.errors import InvalidInput
from ld2.core.space import Space


def uses_jagged(space: Space, strict_aligned: bool) -> bool:
    """lite_dist2's rule: point lists only when not strict and the space has ≥ 2 axes."""
    return not strict_aligned and space.dim >= 2


MAX_TRIAL_POINTS = 10_000_000
"""Most points one reservation holds, whatever ``max_size`` asks: a larger request is clamped,
not refused (lite_dist2 workers send big numbers). ld2's own workers never ask for more
(``--max-size auto`` stops at the same 10⁷). An aligned reply does not grow with it, but the
trial's results do: 80 MB as float64, well inside one Redis value (512 MB) and a worker's
memory; much more would not be."""

MAX_JAGGED_REPLY_BYTES = 4 * 1024 * 1024
"""Budget for a jagged trial's point lists on the wire: the reply lists every point's values and
indices, so a trial holds at most the points that fit in 4 MiB by the study's per-point bound
(`ld2.core.subspace.jagged_point_bytes`): about 55,000 with two float axes of 10⁴ points,
12,000 with ten axes. Enough to amortise a round trip; small enough to build in ~50 ms."""


def check_max_size(max_size: int, field: str = "max_size") -> None:
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise InvalidInput(field, f"must be a positive integer, got {max_size!r}")


def aligned_count(space: Space, start: int, limit: int) -> int:
    """Points in the largest aligned box starting at flat `start` with at most `limit` points.

    Walking from the last axis outwards, the box may grow to the rest of the current row, then
    whole rows to the end of the plane, then whole planes, … as far as `start` is aligned.
    """
    check_max_size(limit, "limit")
    if not space.contains(start):
        raise InvalidInput("start", f"{start} is outside the space")
    rest = start
    count = 1
    for d in range(space.dim - 1, -1, -1):
        stride = space.strides[d]
        size = space.sizes[d]
        index = (rest // stride) if size is None else (rest // stride) % size
        remaining = None if size is None else size - index  # points left on axis d, in strides
        whole = limit // stride
        if remaining is not None and remaining <= whole:
            count = remaining * stride
            if index != 0:  # the box cannot grow past a partially covered axis
                return count
            continue
        return max(count, whole * stride)
    return count


def plan_count(space: Space, start: int, limit: int, jagged: bool) -> int:
    """Points of the next trial at flat `start`, at most `limit` (already capped by any gap)."""
    if jagged:
        check_max_size(limit, "limit")
        if not space.contains(start):
            raise InvalidInput("start", f"{start} is outside the space")
        return limit if space.total is None else min(limit, space.total - start)
    return aligned_count(space, start, limit)


def box_of(space: Space, start: int, count: int) -> list[tuple[int, int]]:
    """Per-axis ``(first index, size)`` of the flat range, which must be an aligned box."""
    if count < 1 or not space.contains(start) or not space.contains(start + count - 1):
        raise InvalidInput("range", f"[{start}, {start + count}) is not inside the space")
    first = space.unravel(start)
    last = space.unravel(start + count - 1)
    out = [(a, b - a + 1) for a, b in zip(first, last, strict=True)]
    box_points = 1
    for _, n in out:
        box_points *= n
    if box_points != count:
        raise InvalidInput("range", f"[{start}, {start + count}) is not an aligned box")
    return out


# -- random order ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tiling:
    """The chunks sequential planning produces from 0 with a fixed `limit`, numbered in order.

    Chunk `n` is found in O(dim) without walking earlier chunks, which is what lets the random
    order visit chunks through a bijection on chunk numbers.
    """

    space: Space
    limit: int
    jagged: bool

    @property
    def _axis_and_width(self) -> tuple[int, int]:
        """The partial axis of a chunk and how many of its indices one chunk spans."""
        if self.jagged:
            return -1, self.limit
        first = aligned_count(self.space, 0, self.limit)
        for d in range(self.space.dim):
            if first % self.space.strides[d] == 0:
                return d, first // self.space.strides[d]
        raise AssertionError("unreachable: stride of the last axis is 1")

    @property
    def count(self) -> int:
        total = self.space.total
        if total is None:
            raise InvalidInput("parameter_space", "a random order needs a finite space")
        axis, width = self._axis_and_width
        if axis < 0:
            return -(-total // width)
        size = self.space.sizes[axis]
        assert size is not None
        per_row = -(-size // width)
        return (total // (size * self.space.strides[axis])) * per_row

    def chunk(self, n: int) -> tuple[int, int]:
        """``(start, count)`` of chunk number `n`."""
        total = self.space.total
        assert total is not None
        axis, width = self._axis_and_width
        if axis < 0:
            start = n * width
            return start, min(width, total - start)
        size = self.space.sizes[axis]
        stride = self.space.strides[axis]
        assert size is not None
        per_row = -(-size // width)
        row, j = divmod(n, per_row)
        first = j * width
        return row * size * stride + first * stride, min(width, size - first) * stride


class Permutation:
    """A reproducible pseudo-random bijection on ``range(n)`` with O(1) state.

    A 4-round Feistel network over the smallest even-bit power of two ≥ n, with cycle walking
    to stay inside ``range(n)``. Its arithmetic stays below 2⁵³, so the store's Lua scripts,
    which only have doubles, compute the very same order.
    """

    __slots__ = ("half", "keys", "n")

    MAX_N = 2**54
    MUL1 = 0x3C6EF35  # odd multipliers below 2**26: products with half-words stay < 2**53
    MUL2 = 0x27D4EB5

    def __init__(self, n: int, seed: int) -> None:
        if not 1 <= n <= self.MAX_N:
            raise InvalidInput("n", f"must be between 1 and 2**54, got {n}")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self.half = bits // 2
        self.keys = tuple(_mix(seed * 4 + r) % (1 << self.half) for r in range(4))

    def _round(self, x: int, key: int) -> int:
        h = self.half
        m = (1 << h) - 1
        x = (x + key) & m
        x = (x * self.MUL1) & m
        x ^= x >> (h // 2 + 1)
        x = (x * self.MUL2) & m
        return x ^ (x >> (h // 2))

    def _encrypt(self, x: int) -> int:
        h = self.half
        left, right = x >> h, x & ((1 << h) - 1)
        for key in self.keys:
            left, right = right, left ^ self._round(right, key)
        return (left << h) | right

    def __call__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise InvalidInput("i", f"{i} is outside range({self.n})")
        x = self._encrypt(i)
        while x >= self.n:  # the domain is < 4n, so this walk is short on average
            x = self._encrypt(x)
        return x


def _mix(x: int) -> int:
    """splitmix64's finaliser: spreads a seed into round keys (computed once, in Python)."""
    x &= 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)
