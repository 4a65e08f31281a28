"""ld2.colormap: the table is perceptual, and values map to it by the documented rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ld2 import colormap
from ld2.colormap import LUT, MISSING, as_json, rgb, suits_log, to_float


def _lightness(colours: np.ndarray) -> np.ndarray:
    """CIE L* (D65) of 8-bit sRGB colours, shape (..., 3) → (...)."""
    c = colours.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = linear @ np.array([0.2126, 0.7152, 0.0722])
    f = np.where(y > (6 / 29) ** 3, np.cbrt(y), y / (3 * (6 / 29) ** 2) + 4 / 29)
    return 116 * f - 16


def test_the_table_has_256_colours_of_monotonic_lightness() -> None:
    assert len(LUT) == 256
    assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in LUT)
    lightness = _lightness(np.array(LUT))
    assert (np.diff(lightness) >= 0).all()  # never darker further along
    assert lightness[0] < 20 and lightness[-1] > 85  # from dark to light, the whole way
    assert (np.diff(lightness[::8]) > 0).all()  # and it keeps climbing
    r, g, b = LUT[0]
    assert b > r > g  # dark blue-purple ...
    r, g, b = LUT[128]
    assert g > r and b > r  # ... through teal / green ...
    r, g, b = LUT[-1]
    assert r > 200 and g > 200 and b < 80  # ... to yellow


def test_the_table_is_viridis_as_the_docstring_says() -> None:
    colormaps = pytest.importorskip("matplotlib").colormaps
    published = np.round(np.asarray(colormaps["viridis"].colors) * 255).astype(int)
    ours = np.array(LUT)
    differ = np.flatnonzero((ours != published).any(axis=1))
    assert differ.tolist() == [95, 145]  # the two nudges the docstring names
    assert np.abs(ours - published).max() == 1


def test_missing_is_a_neutral_grey_the_map_never_shows() -> None:
    assert MISSING[0] == MISSING[1] == MISSING[2]
    assert MISSING not in LUT
    got = rgb(np.array([1.0, np.nan, 3.0]))
    assert got.dtype == np.uint8 and got.shape == (3, 3)
    assert got.tolist() == [list(LUT[0]), list(MISSING), list(LUT[-1])]


def test_values_fill_256_equal_bins_between_lo_and_hi() -> None:
    assert rgb(np.linspace(0.0, 1.0, 256)).tolist() == [list(c) for c in LUT]
    assert rgb(np.linspace(-5.0, 5.0, 256)).tolist() == [list(c) for c in LUT]
    got = rgb(np.array([0.0, 0.5, 1.0, 2.0, -7.0, np.inf, -np.inf]), lo=0.0, hi=1.0)
    assert got.tolist() == [list(LUT[i]) for i in (0, 128, 255, 255, 0, 255, 0)]
    assert rgb(np.array([0.0, 1.0]), lo=1.0, hi=0.0).tolist() == [list(LUT[255]), list(LUT[0])]


def test_a_constant_array_takes_the_middle_colour() -> None:
    assert rgb(np.full(4, 7.5)).tolist() == [list(LUT[128])] * 4
    assert rgb(np.array([3, 3, np.nan])).tolist() == [list(LUT[128])] * 2 + [list(MISSING)]
    assert rgb(np.array([np.inf, 2.0, -np.inf])).tolist() == [
        list(LUT[255]),
        list(LUT[128]),
        list(LUT[0]),
    ]
    assert rgb(np.array([np.nan, np.nan])).tolist() == [list(MISSING)] * 2


def test_booleans_are_the_two_ends_ints_and_grids_keep_their_shape() -> None:
    assert rgb(np.array([False, True, True])).tolist() == [list(LUT[0])] + [list(LUT[255])] * 2
    assert rgb(np.array([True, True])).tolist() == [list(LUT[255])] * 2  # not "constant"
    ints = np.arange(12, dtype=np.int64).reshape(3, 4)
    got = rgb(ints)
    assert got.shape == (3, 4, 3) and got.dtype == np.uint8
    assert got[0, 0].tolist() == list(LUT[0]) and got[2, 3].tolist() == list(LUT[255])
    assert (got == rgb(ints.astype(np.float64))).all()


def test_objects_none_huge_ints_and_masks() -> None:
    values = np.array([None, 2**2000, -(2**2000), 1, 3], dtype=object)
    got = rgb(values)
    assert got.tolist() == [list(c) for c in (MISSING, LUT[255], LUT[0], LUT[0], LUT[255])]
    assert to_float(values)[1:].tolist() == [np.inf, -np.inf, 1.0, 3.0]
    masked = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    assert rgb(masked).tolist() == [list(LUT[0]), list(MISSING), list(LUT[255])]


def test_vector_results_are_coloured_by_their_first_component() -> None:
    vectors = np.array([[0.0, 99.0], [1.0, -5.0], [np.nan, 1.0]])
    assert rgb(vectors, vector=True).tolist() == [list(LUT[0]), list(LUT[255]), list(MISSING)]
    assert rgb(vectors.reshape(1, 3, 2), vector=True).shape == (1, 3, 3)


def test_a_log_scale_and_when_pictures_choose_it() -> None:
    got = rgb(np.array([1.0, 10.0, 100.0, 0.0, -3.0, np.nan]), log=True)
    assert got.tolist() == [list(c) for c in (LUT[0], LUT[128], LUT[255], LUT[0], LUT[0], MISSING)]
    with pytest.raises(ValueError, match="above 0"):
        rgb(np.array([1.0, 2.0]), lo=0.0, hi=2.0, log=True)
    with pytest.raises(ValueError, match="finite"):
        rgb(np.array([1.0, 2.0]), lo=np.nan)
    counts = np.array([1, 1, 2, 2, 3, 3, 4, 8, 255, 255])  # escape-time counts
    assert suits_log(counts)
    assert not suits_log(np.linspace(1, 1000, 50))  # spread evenly: linear
    assert not suits_log(np.array([0, 1, 1, 1, 500]))  # not all positive
    assert not suits_log(np.array([1, 1, 1, 50]))  # less than two decades
    assert not suits_log(np.array([True, False]))
    assert not suits_log(np.array([np.nan]))


def test_as_json_is_what_a_browser_needs() -> None:
    data = json.loads(json.dumps(as_json()))
    assert set(data) == {"lut", "missing"}
    assert data["lut"] == [list(c) for c in LUT] and data["missing"] == list(MISSING)


def test_the_orientation_is_documented() -> None:
    assert colormap.FIRST_AXIS_IS_ROWS is True
    assert colormap.FIRST_AXIS_START_AT_TOP is True
    doc = colormap.__doc__ or ""
    assert "row 0, the top, is the first axis's ``start``" in doc
    assert "viridis" in doc and "CC0" in doc
