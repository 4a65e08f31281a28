"""Core benchmark: µs to plan one chunk, and points/s to generate a chunk's arrays.

Run by hand: ``uv run python bench/bench_core.py``. The baseline measured in the same run is
a bare ``np.arange`` of the same length (the memory-bound floor for building an array).
"""

from __future__ import annotations

import time

import numpy as np

from ld2.core.planning import aligned_count
from ld2.core.space import Axis, Space


def _best(fn, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    space4 = Space(
        (
            Axis("float", -2.0, 0.001, 1000, "x"),
            Axis("float", -2.0, 0.001, 1000, "y"),
            Axis("int", 0, 3, 100, "z"),
            Axis("int", -50, 1, 100, "w"),
        )
    )
    starts = [(k * 7919 * 104729) % space4.total for k in range(2000)]  # type: ignore[operator]
    n = len(starts)

    def plans() -> None:
        for s in starts:
            aligned_count(space4, s, 4096)

    t = _best(plans)
    print(f"plan one chunk, random starts (4 axes):      {t / n * 1e6:8.2f} µs   (goal ≤ 50 µs)")
    aligned = [k * 10**6 for k in range(n)]  # walks all four axes: the slowest case

    def plans_aligned() -> None:
        for s in aligned:
            aligned_count(space4, s, 4 * 10**6)

    t = _best(plans_aligned)
    print(f"plan one chunk, plane-aligned starts:        {t / n * 1e6:8.2f} µs   (goal ≤ 50 µs)")

    space2 = Space((Axis("float", -2.0, 0.004, 1000, "x"), Axis("float", -2.0, 0.004, 1000, "y")))
    count = 10**6
    base = _best(lambda: np.arange(count, dtype=np.float64))
    t2 = _best(lambda: space2.arrays(0, count))
    t4 = _best(lambda: space4.arrays(12345, count))
    print(f"baseline np.arange(1e6) float64:             {count / base / 1e6:8.1f} M points/s")
    print(
        f"2-axis float space, 1e6-point chunk arrays:  {count / t2 / 1e6:8.1f} M points/s "
        f"({t2 / base:.1f}x baseline; goal ≥ 20 M/s)"
    )
    print(
        f"4-axis mixed space, 1e6-point chunk arrays:  {count / t4 / 1e6:8.1f} M points/s "
        f"({t4 / base:.1f}x baseline)"
    )


if __name__ == "__main__":
    main()
