"""The built-in runners give lite_dist2 0.6.7's numbers: every value its own Worker registered in
the captured session (tests/fixtures/wire) is reproduced exactly."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ld2.core import models as m
from ld2.core import portable
from ld2.core.study import StudySpec, parse_study
from ld2.worker import runners
from ld2.worker.builtins import mandelbrot, mandelbrot_point, md5_preimage
from tests.conftest import wire_json

MANDEL_DONE = "45-study-get-mandelbrot-done.response.json"
MANDEL_REGISTERS = [
    "36-trial-register-mandelbrot.request.json",
    "41-worker-mandelbrot-first-register.request.json",
    "41-worker-mandelbrot-last-register.request.json",
]
MD5_REGISTERS = [
    "63-worker-md5-hit-register.request.json",
    "72-trial-register-infinite.request.json",
]
MD5_DONE = [
    "65-study-get-md5-finite-done.response.json",
    "75-study-get-md5-infinite-done.response.json",
]


def _study(request_file: str) -> StudySpec:
    return parse_study(m.StudyRegisterParam.model_validate(wire_json(request_file)).study)


def _registered(request_file: str) -> list[tuple[dict[str, Any], Any]]:
    """(params by axis name, result) of every row of a captured /trial/register body."""
    out = []
    for row in wire_json(request_file)["trial"]["results"]:
        params = {p["name"]: portable.decode(p["value"], p["value_type"]) for p in row["params"]}
        result = row["result"]
        out.append((params, portable.decode(result["value"], result["value_type"])))
    return out


def _done_rows(response_file: str) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    rows = wire_json(response_file)["result"]["results"]["values"]
    xs = np.array([portable.decode(r[0], "float") for r in rows])
    ys = np.array([portable.decode(r[1], "float") for r in rows])
    return xs, ys, [portable.decode(r[2], "int") for r in rows]


# -- mandelbrot -----------------------------------------------------------------------------------


def test_mandelbrot_reproduces_all_100_captured_values() -> None:
    xs, ys, theirs = _done_rows(MANDEL_DONE)
    assert len(theirs) == 100
    assert mandelbrot(xs, ys, max_iter=255, abs_threshold=2.0).tolist() == theirs
    assert [mandelbrot_point(x, y, 255, 2.0) for x, y in zip(xs, ys, strict=True)] == theirs
    assert 1 in theirs  # points with |c| > 2 count one iteration, as lite_dist2's loop does


def test_compute_over_the_captured_study_matches_lite_dist2_point_by_point() -> None:
    """The study lite_dist2 ran, computed through ld2's axis values and binding. lite_dist2's
    Worker computed y from each trial's own start, so its y at index 9 is one ulp above ld2's
    canonical ``start + 9*step`` (SPEC Part A); on those 10 points the values differ and (1.6 is
    on |c| = 2 for x = -1.2) so may the count. Every bit-identical point must agree."""
    spec = _study("10-study-register-mandelbrot.request.json")
    gx, gy = spec.space.arrays(0, 100)
    xs, ys, theirs = _done_rows(MANDEL_DONE)
    expected = {
        spec.space.flat_of_point([x, y]): (x, y, v) for x, y, v in zip(xs, ys, theirs, strict=True)
    }
    assert sorted(expected) == list(range(100))
    same = [f for f, (x, y, _) in expected.items() if (x, y) == (gx[f], gy[f])]
    assert len(same) == 90
    for name in ("mandelbrot", "mandelbrot-scalar"):
        ours = runners.compute(runners.load()[name], spec, 0, 100).tolist()
        assert [ours[f] for f in same] == [expected[f][2] for f in same], name
        assert ours == mandelbrot(gx, gy).tolist(), name


@pytest.mark.parametrize("request_file", MANDEL_REGISTERS)
def test_mandelbrot_reproduces_registered_trials(request_file: str) -> None:
    rows = _registered(request_file)
    assert rows
    xs = np.array([p["x"] for p, _ in rows])
    ys = np.array([p["y"] for p, _ in rows])
    theirs = [r for _, r in rows]
    assert mandelbrot(xs, ys, max_iter=255, abs_threshold=2.0).tolist() == theirs
    assert [mandelbrot_point(p["x"], p["y"]) for p, _ in rows] == theirs


def test_mandelbrot_edge_counts_follow_the_while_loop() -> None:
    one = np.array([3.0, -2.5, 0.0, -2.0])
    zero = np.array([0.0, 0.0, 3.0, 0.0])
    assert mandelbrot(one, zero, max_iter=50).tolist() == [1, 1, 1, 50]
    assert mandelbrot(one, zero, max_iter=0).tolist() == [0, 0, 0, 0]
    assert mandelbrot(one, zero, max_iter=5, abs_threshold=-1.0).tolist() == [0, 0, 0, 0]
    assert [mandelbrot_point(3.0, 0.0), mandelbrot_point(0.0, 0.0, 0)] == [1, 0]
    assert [mandelbrot_point(0.0, 0.0, 5, -1.0)] == [0]
    grid = mandelbrot(np.zeros((2, 3)), np.zeros((2, 3)), max_iter=7)
    assert grid.shape == (2, 3) and grid.dtype == np.int64 and (grid == 7).all()


def _near_circle(radius: float) -> st.SearchStrategy[tuple[float, float]]:
    """Points c whose orbit passes close to |z| = radius (where |z|² and |z| may disagree)."""
    return st.tuples(st.floats(-np.pi, np.pi), st.integers(-4, 4), st.floats(0.0, 1.0)).map(
        lambda t: (
            float(np.nextafter(radius * np.cos(t[0]), 10.0 * t[1])),
            float(radius * np.sin(t[0]) * (1.0 + t[2] * 1e-15)),
        )
    )


@settings(max_examples=300, deadline=None)
@given(
    points=st.lists(
        st.one_of(
            st.tuples(st.floats(-2.5, 1.0), st.floats(-1.5, 1.5)),
            _near_circle(2.0),
            _near_circle(1.5),
        ),
        min_size=1,
        max_size=40,
    ),
    max_iter=st.integers(0, 120),
    threshold=st.sampled_from([2.0, 1.5, 4.0, 0.0]),
)
def test_vectorised_equals_python_loop(
    points: list[tuple[float, float]], max_iter: int, threshold: float
) -> None:
    """Each point 60 times, so the numpy path (not only the plain-Python tail) decides them."""
    xs = np.repeat([p[0] for p in points], 60)
    ys = np.repeat([p[1] for p in points], 60)
    expected = [mandelbrot_point(x, y, max_iter, threshold) for x, y in points]
    assert mandelbrot(xs, ys, max_iter, threshold).tolist() == np.repeat(expected, 60).tolist()


def test_vectorised_equals_python_loop_on_a_random_cloud() -> None:
    rng = np.random.default_rng(11)
    xs, ys = rng.uniform(-2.2, 0.8, 4000), rng.uniform(-1.3, 1.3, 4000)
    expected = [mandelbrot_point(x, y, 200) for x, y in zip(xs.tolist(), ys.tolist(), strict=True)]
    assert mandelbrot(xs, ys, max_iter=200).tolist() == expected


def test_escape_test_is_pythons_abs_not_the_square() -> None:
    """On the circle |z| = 2, |z|² > 4 and abs(z) > 2 disagree for many points; the kernel
    must side with abs (hypot), which is what lite_dist2's loop uses."""
    rng = np.random.default_rng(7)
    a = rng.uniform(-2.0, 2.0, 20_000)
    b = np.sqrt(4.0 - a * a) + rng.integers(-2, 3, a.size) * np.spacing(2.0)
    py = np.array([abs(complex(p, q)) > 2.0 for p, q in zip(a.tolist(), b.tolist(), strict=True)])
    assert ((a * a + b * b > 4.0) != py).any()  # the square would be wrong here
    assert (~(np.hypot(a, b) <= 2.0) == py).all()
    # and for the kernel: c on the circle escapes at step 1 exactly when abs(c) > 2
    assert (mandelbrot(a, b, max_iter=1_000) == 1).tolist() == py.tolist()


# -- md5-preimage ---------------------------------------------------------------------------------


def test_md5_of_minimal_big_endian_bytes() -> None:
    assert md5_preimage(0) == 0x93B885ADFE0DA089CDF634904FD59F71  # md5(b"\x00")
    assert md5_preimage(777) == int.from_bytes(hashlib.md5(b"\x03\x09").digest(), "big")
    assert md5_preimage(255) == int.from_bytes(hashlib.md5(b"\xff").digest(), "big")
    assert md5_preimage(256) == int.from_bytes(hashlib.md5(b"\x01\x00").digest(), "big")
    assert md5_preimage(np.int64(1)) == md5_preimage(1)
    with pytest.raises(ValueError, match="non-negative"):
        md5_preimage(-1)


@pytest.mark.parametrize("request_file", MD5_REGISTERS)
def test_md5_reproduces_every_registered_row(request_file: str) -> None:
    rows = _registered(request_file)
    assert len(rows) >= 50
    assert [md5_preimage(p["x"]) for p, _ in rows] == [r for _, r in rows]


@pytest.mark.parametrize("response_file", MD5_DONE)
def test_md5_reproduces_the_final_answers(response_file: str) -> None:
    rows = wire_json(response_file)["result"]["results"]["values"]
    assert rows
    for x, result in rows:
        assert md5_preimage(portable.decode_int(x)) == portable.decode_int(result)


@pytest.mark.parametrize(
    ("request_file", "hit"),
    [
        ("60-study-register-md5-finite.request.json", 777),
        ("70-study-register-md5-infinite.request.json", 300),
    ],
)
def test_find_exact_targets_resolve_to_lite_dist2s_hits(request_file: str, hit: int) -> None:
    spec = _study(request_file)
    assert spec.target is not None
    values = runners.compute(runners.load()["md5-preimage"], spec, 0, 1000)
    found = [int(i) for i, v in enumerate(values.tolist()) if v == spec.target[0]]
    assert found == [hit]
