"""Built-in runners: ``mandelbrot`` (vectorised escape time) and ``md5-preimage``."""

from __future__ import annotations

import hashlib

import numpy as np

from ld2.worker.runners import runner


@runner("mandelbrot", vectorized=True)
def mandelbrot(
    x: np.ndarray, y: np.ndarray, max_iter: int = 255, abs_threshold: float = 2.0
) -> np.ndarray:
    """Escape-time count of c = x + iy: iterations before |z| exceeds `abs_threshold`
    (`max_iter` when it never does). Points that escaped stop being iterated."""
    c = x.astype(np.float64) + 1j * y.astype(np.float64)
    z = np.zeros_like(c)
    counts = np.full(c.shape, max_iter, dtype=np.int64)
    alive = np.arange(c.size)
    limit = abs_threshold * abs_threshold
    zc, cc = z.copy(), c.copy()
    for i in range(max_iter):
        zc = zc * zc + cc
        escaped = (zc.real * zc.real + zc.imag * zc.imag) > limit
        if escaped.any():
            counts[alive[escaped]] = i
            keep = ~escaped
            alive, zc, cc = alive[keep], zc[keep], cc[keep]
            if alive.size == 0:
                break
    return counts


def mandelbrot_point(x: float, y: float, max_iter: int = 255, abs_threshold: float = 2.0) -> int:
    """The same count for one point in plain Python (the scalar kernel, for comparison)."""
    c = complex(x, y)
    z = 0j
    limit = abs_threshold * abs_threshold
    for i in range(max_iter):
        z = z * z + c
        if z.real * z.real + z.imag * z.imag > limit:
            return i
    return max_iter


runner("mandelbrot-scalar")(mandelbrot_point)


@runner("md5-preimage")
def md5_preimage(x: int) -> int:
    """The md5 digest of the decimal text of `x`, as a 128-bit int (find_exact's target)."""
    return int.from_bytes(hashlib.md5(str(x).encode()).digest(), "big")
