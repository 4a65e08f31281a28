"""ld2's colour map: one perceptual ramp for every picture of a study (PNG, figures, dashboard).

The table is **viridis** (Stéfan van der Walt and Nathaniel Smith, 2015; released under CC0,
public domain), transcribed as its 256 published sRGB entries rounded to 8 bits, with two of
them then nudged by one unit in one channel so that the rounding leaves no dip in lightness:
entry 95 ``2c718e`` → ``2c718f`` (blue 142.24 rounded up) and entry 145 ``1fa188`` →
``1fa088`` (green 160.52 rounded down). It goes from dark blue-purple through teal and green to
yellow, its lightness (CIE L*) never decreases along the table (tests/test_colormap.py checks
it), and it stays readable in grey and for the common colour-vision deficiencies.

Mapping a value ``v`` (what :func:`rgb` does, and what a browser given :func:`as_json` must do):

* ``t = (v - lo) / (hi - lo)``, with ``lo`` / ``hi`` the smallest / largest finite value unless
  given; the colour is ``LUT[clip(floor(t * 256), 0, 255)]`` — 256 equal bins, values outside
  ``[lo, hi]`` (and ``±inf``) take the end colours;
* ``lo == hi`` (a constant array): every finite value takes the middle entry, ``LUT[128]``;
* NaN, ``None`` and masked entries are missing: :data:`MISSING`, a neutral mid grey that the
  map itself never shows;
* booleans: false is ``LUT[0]``, true is ``LUT[255]`` (``lo = 0``, ``hi = 1`` unless given);
* vector results (``vector=True``, components on the last axis) are coloured by their first
  component;
* ``log=True``: the same with ``log10`` of the values, lo and hi (lo defaults to the smallest
  positive finite value; values at or below zero take the first colour). ld2's pictures choose
  it by :func:`suits_log`: positive values spanning two decades or more that crowd at the low
  end (an escape-time count, a run time), which a linear map would paint almost all one colour.

Orientation of a 2-D study's picture (:data:`FIRST_AXIS_IS_ROWS`, :data:`FIRST_AXIS_START_AT_TOP`):
the study's first axis runs down the image and the second across, as the results are stored
(row-major, flat index ``i * size_1 + j``). Pixel ``(row i, column j)`` is the point with index
``i`` on the first axis and ``j`` on the second: row 0, the top, is the first axis's ``start``
(its smallest value when its step is positive: the values grow downwards), column 0, the left, is
the second axis's ``start``. examples/mandelbrot.json (axes ``[y, x]``) draws the set upright with
``x = -2`` on the left; since the set is symmetric in ``y``, it also reads the same either way up.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FIRST_AXIS_IS_ROWS = True
"""A 2-D study's first axis gives the image's rows (it runs down), the second its columns."""

FIRST_AXIS_START_AT_TOP = True
"""Row 0 (the top) is index 0 of the first axis (its ``start``); column 0 (the left) is index 0
of the second axis. With positive steps, values grow downwards and rightwards."""

MISSING: tuple[int, int, int] = (128, 128, 128)
"""The colour of a missing value (NaN, None, masked, or not computed yet): neutral mid grey."""

_VIRIDIS_HEX = (
    "440154 440256 450457 450559 46075a 46085c 460a5d 460b5e 470d60 470e61 471063 471164 471365 "
    "481467 481668 481769 48186a 481a6c 481b6d 481c6e 481d6f 481f70 482071 482173 482374 482475 "
    "482576 482677 482878 482979 472a7a 472c7a 472d7b 472e7c 472f7d 46307e 46327e 46337f 463480 "
    "453581 453781 453882 443983 443a83 443b84 433d84 433e85 423f85 424086 424186 414287 414487 "
    "404588 404688 3f4788 3f4889 3e4989 3e4a89 3e4c8a 3d4d8a 3d4e8a 3c4f8a 3c508b 3b518b 3b528b "
    "3a538b 3a548c 39558c 39568c 38588c 38598c 375a8c 375b8d 365c8d 365d8d 355e8d 355f8d 34608d "
    "34618d 33628d 33638d 32648e 32658e 31668e 31678e 31688e 30698e 306a8e 2f6b8e 2f6c8e 2e6d8e "
    "2e6e8e 2e6f8e 2d708e 2d718e 2c718f 2c728e 2c738e 2b748e 2b758e 2a768e 2a778e 2a788e 29798e "
    "297a8e 297b8e 287c8e 287d8e 277e8e 277f8e 27808e 26818e 26828e 26828e 25838e 25848e 25858e "
    "24868e 24878e 23888e 23898e 238a8d 228b8d 228c8d 228d8d 218e8d 218f8d 21908d 21918c 20928c "
    "20928c 20938c 1f948c 1f958b 1f968b 1f978b 1f988b 1f998a 1f9a8a 1e9b8a 1e9c89 1e9d89 1f9e89 "
    "1f9f88 1fa088 1fa088 1fa187 1fa287 20a386 20a486 21a585 21a685 22a785 22a884 23a983 24aa83 "
    "25ab82 25ac82 26ad81 27ad81 28ae80 29af7f 2ab07f 2cb17e 2db27d 2eb37c 2fb47c 31b57b 32b67a "
    "34b679 35b779 37b878 38b977 3aba76 3bbb75 3dbc74 3fbc73 40bd72 42be71 44bf70 46c06f 48c16e "
    "4ac16d 4cc26c 4ec36b 50c46a 52c569 54c568 56c667 58c765 5ac864 5cc863 5ec962 60ca60 63cb5f "
    "65cb5e 67cc5c 69cd5b 6ccd5a 6ece58 70cf57 73d056 75d054 77d153 7ad151 7cd250 7fd34e 81d34d "
    "84d44b 86d549 89d548 8bd646 8ed645 90d743 93d741 95d840 98d83e 9bd93c 9dd93b a0da39 a2da37 "
    "a5db36 a8db34 aadc32 addc30 b0dd2f b2dd2d b5de2b b8de29 bade28 bddf26 c0df25 c2df23 c5e021 "
    "c8e020 cae11f cde11d d0e11c d2e21b d5e21a d8e219 dae319 dde318 dfe318 e2e418 e5e419 e7e419 "
    "eae51a ece51b efe51c f1e51d f4e61e f6e620 f8e621 fbe723 fde725 "
)

LUT: tuple[tuple[int, int, int], ...] = tuple(
    (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)) for h in _VIRIDIS_HEX.split()
)
"""256 ``(r, g, b)`` sRGB triples, dark (index 0, low values) to light (index 255, high values)."""

_TABLE = np.array(LUT, dtype=np.uint8)
_MISSING = np.array(MISSING, dtype=np.uint8)
_MIDDLE = len(LUT) // 2


def to_float(values: Any) -> np.ndarray:
    """`values` as a float64 array, NaN where missing (NaN, None, masked): what :func:`rgb`
    colours. Booleans become 0 / 1; ints beyond the float range become ``±inf``."""
    return _as_float(values)[0]


def _as_float(values: Any) -> tuple[np.ndarray, bool]:
    """``values`` as float64 with NaN where missing; also whether they were booleans."""
    if isinstance(values, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(values)
        floats, is_bool = _as_float(np.ma.getdata(values))
        return np.where(mask, np.nan, floats), is_bool
    arr = np.asarray(values)
    if arr.dtype == np.bool_:
        return arr.astype(np.float64), True
    if arr.dtype == object:  # None, or ints beyond int64 (beyond the float range: ±inf)
        flat = [_object_float(v) for v in arr.ravel().tolist()]
        return np.array(flat, dtype=np.float64).reshape(arr.shape), False
    return arr.astype(np.float64), False


def _object_float(v: Any) -> float:
    if v is None:
        return float("nan")
    try:
        return float(v)
    except OverflowError:
        return float("inf") if v > 0 else float("-inf")


def rgb(
    values: np.ndarray,
    lo: float | None = None,
    hi: float | None = None,
    *,
    vector: bool = False,
    log: bool = False,
) -> np.ndarray:
    """The colours of `values`: a uint8 array of shape ``values.shape + (3,)``.

    `lo` / `hi` (default: the finite minimum / maximum; 0 / 1 for booleans) are the values
    given the first and last colours. With ``vector=True`` the last axis of `values` holds a
    vector result's components and the colour is the first component's (the shape is then
    ``values.shape[:-1] + (3,)``). With ``log=True`` the scale is logarithmic (`lo` and `hi`
    must then be above 0). See the module's docstring for the rule.
    """
    floats, is_bool = _as_float(values)
    if vector:
        floats = floats[..., 0]
    finite = np.isfinite(floats)
    if log:
        finite &= floats > 0
    if is_bool:
        lo = 0.0 if lo is None else lo
        hi = 1.0 if hi is None else hi
    if lo is None or hi is None:
        seen = floats[finite]
        empty = (1.0, 10.0) if log else (0.0, 1.0)
        lo = (float(seen.min()) if seen.size else empty[0]) if lo is None else lo
        hi = (float(seen.max()) if seen.size else empty[1]) if hi is None else hi
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"lo and hi must be finite (got {lo}, {hi})")
    if log:
        if lo <= 0 or hi <= 0:
            raise ValueError(f"a log scale needs lo and hi above 0 (got {lo}, {hi})")
        positive = floats > 0  # NaN stays missing; zero and below go to the first colour
        logs = np.log10(np.where(positive, floats, 1.0))
        floats = np.where(positive, logs, np.where(np.isnan(floats), np.nan, -np.inf))
        lo, hi = float(np.log10(lo)), float(np.log10(hi))
    index = np.full(floats.shape, _MIDDLE, dtype=np.int64)
    if hi != lo:
        with np.errstate(invalid="ignore", over="ignore"):
            t = (floats - lo) / (hi - lo)
            scaled = np.clip(np.nan_to_num(t, nan=0.0) * len(LUT), 0, len(LUT) - 1)
        index = scaled.astype(np.int64)
    else:
        index[np.isposinf(floats)] = len(LUT) - 1
        index[np.isneginf(floats)] = 0
    out = _TABLE[index]
    out[np.isnan(floats)] = _MISSING
    return out


def suits_log(values: Any) -> bool:
    """Whether a log scale shows `values` better than a linear one (what ld2's pictures use):
    every finite value is above 0, the largest is at least 100 times the smallest, and the
    median lies in the lowest tenth of the range (most values would share the darkest colours).
    Never for booleans."""
    floats, is_bool = _as_float(values)
    seen = floats[np.isfinite(floats)]
    if is_bool or not seen.size:
        return False
    lo, hi = float(seen.min()), float(seen.max())
    if lo <= 0 or hi < 100 * lo:
        return False
    return float(np.median(seen)) - lo < 0.1 * (hi - lo)


def as_json() -> dict[str, Any]:
    """The map for a browser: ``{"lut": [[r, g, b], ... 256], "missing": [r, g, b]}``.

    Index the table as :func:`rgb` does: ``lut[min(255, max(0, floor(t * 256)))]``, ``t`` the
    value scaled so that ``lo`` is 0 and ``hi`` is 1 (constant data: ``lut[128]``)."""
    return {"lut": [list(c) for c in LUT], "missing": list(MISSING)}
