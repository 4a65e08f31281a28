"""Built-in runners: ``mandelbrot`` (vectorised escape time) and ``md5-preimage``.

Both give lite_dist2 0.6.7's example numbers, so studies run on either system agree:
``mandelbrot`` counts the iterations of lite_dist2's loop
``while abs(z) <= abs_threshold and n < max_iter: z = z*z + c; n += 1`` (a point with
|c| > `abs_threshold` counts 1), and ``md5-preimage`` hashes the value's minimal big-endian bytes.
"""

from __future__ import annotations

import hashlib
import operator

import numpy as np

from ld2.worker.runners import runner

_TAIL = 48
"""At most this many points left: finish them in plain Python (numpy's per-call cost would
dominate; the arithmetic is the same, so the counts are too)."""
_BAND = 1e-12
"""|z|² within this relative distance of abs_threshold² is decided by ``hypot`` itself: outside
it, |z|² (a few ulps off) and ``hypot`` (within an ulp) cannot disagree about the threshold."""


@runner("mandelbrot", vectorized=True)
def mandelbrot(
    x: np.ndarray, y: np.ndarray, max_iter: int = 255, abs_threshold: float = 2.0
) -> np.ndarray:
    """Escape-time count of c = x + iy: how many times ``z = z*z + c`` runs from z = 0 while
    ``abs(z) <= abs_threshold``, at most `max_iter` (lite_dist2's loop, point for point).

    The arithmetic is CPython's complex product done on the real and imaginary parts one
    rounding at a time, and the escape test is Python's ``abs`` (``hypot``) wherever |z|² is too
    close to the threshold to tell, so every count equals `mandelbrot_point`'s. Only points still
    inside are iterated: an escaped point is parked at the fixed point z = c = 0 and the arrays
    are compacted once a quarter of them are parked; the last few points finish in Python.
    """
    bx, by = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    shape = bx.shape
    cr, ci = bx.ravel().copy(), by.ravel().copy()
    limit = float(abs_threshold)
    steps = int(max_iter)
    if steps <= 0 or not limit >= 0.0:  # abs(0) <= limit fails at once, or no step allowed
        return np.zeros(shape, dtype=np.int64)
    size = cr.size
    counts = np.full(size, steps, dtype=np.int64)
    if 1e-100 < limit < 1e100:  # squares neither overflow nor underflow near the threshold
        lo, hi = limit * limit * (1.0 - _BAND), limit * limit * (1.0 + _BAND)
    else:
        lo, hi = -1.0, float("inf")  # hypot decides every point
    alive = np.arange(size)  # the original index of each slot
    zr, zi, rr, ii = (np.zeros(size) for _ in range(4))  # z and its squared parts
    tmp, mag = np.empty(size), np.empty(size)
    inside, gone = np.empty(size, dtype=bool), np.zeros(size, dtype=bool)
    parked = 0
    with np.errstate(over="ignore", invalid="ignore"):
        for n in range(1, steps + 1):
            if alive.size - parked <= _TAIL:
                live = np.flatnonzero(~gone)
                points = zip(
                    alive[live].tolist(),
                    zr[live].tolist(),
                    zi[live].tolist(),
                    cr[live].tolist(),
                    ci[live].tolist(),
                    strict=True,
                )
                for k, re, im, c_re, c_im in points:
                    counts[k] = _finish(complex(re, im), complex(c_re, c_im), n - 1, steps, limit)
                break
            # z*z + c as CPython computes it: real (zr*zr - zi*zi) + cr, imaginary
            # (zr*zi + zi*zr) + ci, where zr*zi + zi*zr is exactly 2*(zr*zi).
            np.multiply(zr, zi, out=tmp)
            tmp *= 2.0
            tmp += ci
            np.subtract(rr, ii, out=zr)
            zr += cr
            zi, tmp = tmp, zi
            np.multiply(zr, zr, out=rr)
            np.multiply(zi, zi, out=ii)
            np.add(rr, ii, out=mag)
            np.less(mag, lo, out=inside)
            if inside.all():
                continue
            out = np.flatnonzero(~inside)
            unsure = out[mag[out] <= hi]  # NaN is not unsure: it is out, as abs(z) <= t is False
            if unsure.size:
                inside[unsure[np.hypot(zr[unsure], zi[unsure]) <= limit]] = True
                out = np.flatnonzero(~inside)
                if out.size == 0:
                    continue
            counts[alive[out]] = n
            gone[out] = True
            parked += out.size
            if 4 * parked < alive.size:
                for arr in (zr, zi, rr, ii, cr, ci):
                    arr[out] = 0.0
                continue
            keep = ~gone
            alive = alive[keep]
            if alive.size == 0:
                break
            zr, zi, rr, ii, cr, ci = zr[keep], zi[keep], rr[keep], ii[keep], cr[keep], ci[keep]
            tmp, mag = np.empty(alive.size), np.empty(alive.size)
            inside, gone = np.empty(alive.size, dtype=bool), np.zeros(alive.size, dtype=bool)
            parked = 0
    return counts.reshape(shape)


def _finish(z: complex, c: complex, n: int, max_iter: int, abs_threshold: float) -> int:
    """lite_dist2's loop, resumed at `z` after `n` iterations."""
    while abs(z) <= abs_threshold and n < max_iter:
        z = z * z + c
        n += 1
    return n


def mandelbrot_point(x: float, y: float, max_iter: int = 255, abs_threshold: float = 2.0) -> int:
    """The same count for one point in plain Python: lite_dist2's example loop."""
    return _finish(0j, complex(x, y), 0, max_iter, abs_threshold)


runner("mandelbrot-scalar")(mandelbrot_point)


@runner("md5-preimage")
def md5_preimage(x: int) -> int:
    """The md5 digest of `x`'s minimal big-endian bytes (b"\\x00" for 0), as a 128-bit int:
    lite_dist2's example, so its find_exact targets work unchanged. `x` must be >= 0."""
    value = operator.index(x)
    if value < 0:
        raise ValueError(f"md5-preimage hashes non-negative ints only, got {value}")
    data = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    return int.from_bytes(hashlib.md5(data).digest(), "big")
