"""Runners of known cost for bench_pickup.py and bench_trial_loop.py.

``ld2 worker --import ld2_bench_kernels`` (with bench/ on PYTHONPATH) registers:

- ``bench-np``: escape-time Mandelbrot counts of c = x + iy in numpy (``max_iter`` from the
  study's constants, default 255);
- ``bench-trivial``: zeros, computing nothing.

Both take the axes ``y`` and ``x`` and an optional string constant ``tag``. When the variable
``LD2_BENCH_KERNEL_LOG`` names a folder, each call appends ``<tag> <ns> <points>`` to
``<folder>/kernel-<pid>.log``: the nanoseconds spent inside the kernel itself, measured in the
compute process, so a benchmark can subtract the kernel's own time from a worker's wall time.
The append (one write of a short line, a few µs) happens after the clock stops.

The kernels themselves (`mandelbrot`, `zeros`) need only numpy, so a baseline such as
``multiprocessing.Pool`` can call them without ld2.
"""

from __future__ import annotations

import os
import time

import numpy as np

LOG_ENV = "LD2_BENCH_KERNEL_LOG"
_log: dict[str, int] = {}  # pid -> fd of this process's log (opened after a fork)


def mandelbrot(y: np.ndarray, x: np.ndarray, max_iter: int) -> np.ndarray:
    """How many times z = z² + c runs from 0 while |z| ≤ 2, at most `max_iter` (int64)."""
    cr = np.asarray(x, dtype=np.float64).ravel()
    ci = np.broadcast_to(np.asarray(y, dtype=np.float64), np.shape(x)).ravel()
    counts = np.full(cr.size, max_iter, dtype=np.int64)
    idx = np.arange(cr.size)
    zr = np.zeros(cr.size)
    zi = np.zeros(cr.size)
    for n in range(max_iter):
        rr, ii = zr * zr, zi * zi
        out = rr + ii > 4.0
        if out.any():
            counts[idx[out]] = n
            keep = ~out
            idx, cr, ci = idx[keep], cr[keep], ci[keep]
            zr, zi, rr, ii = zr[keep], zi[keep], rr[keep], ii[keep]
            if idx.size == 0:
                break
        zi = 2.0 * zr * zi + ci
        zr = rr - ii + cr
    return counts


def zeros(x: np.ndarray) -> np.ndarray:
    return np.zeros(np.shape(x), dtype=np.int64)


def record(tag: str, ns: int, points: int) -> None:
    """Append one kernel call to this process's log (if LD2_BENCH_KERNEL_LOG is set)."""
    folder = os.environ.get(LOG_ENV)
    if not folder:
        return
    pid = os.getpid()
    fd = _log.get(pid)
    if fd is None:
        path = os.path.join(folder, f"kernel-{pid}.log")
        fd = _log[pid] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"{tag or '-'} {ns} {points}\n".encode())


def read_logs(folder: str) -> dict[str, dict[str, int]]:
    """Per tag: calls, kernel ns and points, summed over every process's log in `folder`."""
    totals: dict[str, dict[str, int]] = {}
    for name in os.listdir(folder):
        if not (name.startswith("kernel-") and name.endswith(".log")):
            continue
        with open(os.path.join(folder, name)) as f:
            for line in f:
                parts = line.split()
                if len(parts) != 3:
                    continue
                t = totals.setdefault(parts[0], {"calls": 0, "ns": 0, "points": 0})
                t["calls"] += 1
                t["ns"] += int(parts[1])
                t["points"] += int(parts[2])
    return totals


try:
    import ld2
except ImportError:  # a baseline without ld2 imports this module for the kernels alone
    ld2 = None  # type: ignore[assignment]

if ld2 is not None:

    @ld2.runner("bench-np", vectorized=True)
    def bench_np(y: np.ndarray, x: np.ndarray, max_iter: int = 255, tag: str = "") -> np.ndarray:
        t0 = time.perf_counter_ns()
        out = mandelbrot(y, x, int(max_iter))
        record(tag, time.perf_counter_ns() - t0, out.size)
        return out

    @ld2.runner("bench-trivial", vectorized=True)
    def bench_trivial(
        y: np.ndarray, x: np.ndarray, max_iter: int = 255, tag: str = ""
    ) -> np.ndarray:
        t0 = time.perf_counter_ns()
        out = zeros(x)
        record(tag, time.perf_counter_ns() - t0, out.size)
        return out
