"""Result checking, packing and conversion to lite_dist2 mappings."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ld2.core import models as m
from ld2.core import results
from ld2.core.errors import InvalidInput
from ld2.core.space import Axis, Space
from ld2.core.study import parse_study
from ld2.core.subspace import trial_range
from tests.conftest import wire_json


def _study(request_file: str):  # type: ignore[no-untyped-def]
    return parse_study(m.StudyRegisterParam.model_validate(wire_json(request_file)).study)


def _register(file: str) -> m.TrialModel:
    return m.TrialRegisterParam.model_validate(wire_json(file)).trial


def test_mandelbrot_upload_from_lite_dist2_worker() -> None:
    spec = _study("10-study-register-mandelbrot.request.json")
    trial = _register("41-worker-mandelbrot-last-register.request.json")
    start, count = trial_range(spec.space, trial.parameter_space)
    assert trial.results is not None
    values = results.from_mappings(spec.space, start, count, trial.results, "int", vector=False)
    assert values.dtype == np.int64 and len(values) == count
    by_point = {
        tuple(p.value for p in mp.params): int(mp.result.value, 16)  # type: ignore[union-attr, arg-type]
        for mp in trial.results
    }
    assert sorted(values.tolist()) == sorted(by_point.values())


def test_jagged_vector_upload_with_inf_and_negative_zero() -> None:
    spec = _study("59a-study-register-jagged-vector.request.json")
    trial = _register("59c-trial-register-jagged.request.json")
    start, count = trial_range(spec.space, trial.parameter_space)
    assert trial.results is not None
    values = results.from_mappings(spec.space, start, count, trial.results, "float", vector=True)
    assert values.shape[0] == count and values.dtype == np.float64
    back = results.unpack(results.pack(values))
    assert np.array_equal(back, values, equal_nan=True)
    assert np.array_equal(np.signbit(back), np.signbit(values))


def test_results_rows_match_lite_dist2_storage() -> None:
    """45-…: the final /study rows, keyed by point, equal ld2's rows built from flat indices."""
    spec = _study("10-study-register-mandelbrot.request.json")
    body = wire_json("45-study-get-mandelbrot-done.response.json")["result"]["results"]
    storage = m.MappingsStorage.model_validate(body)
    values = np.zeros(100, dtype=np.int64)
    for row in storage.values:
        flat = spec.space.flat_of_point([float.fromhex(row[0]), float.fromhex(row[1])])  # type: ignore[arg-type]
        assert flat is not None
        values[flat] = int(row[2], 16)  # type: ignore[arg-type]
    ours = list(results.rows(spec.space, 0, values, "int"))
    assert len(ours) == 100
    theirs = {
        (spec.space.flat_of_point([float.fromhex(r[0]), float.fromhex(r[1])])): r[2]
        for r in storage.values
    }  # type: ignore[arg-type]
    for flat, row in enumerate(ours):
        assert row[2] == theirs[flat]
        assert row[:2] == [results.portable.encode(v, "float") for v in spec.space.point(flat)]
    params_info, result_info = results.info_templates(spec.space, "int", None)
    assert [json.loads(p.model_dump_json()) for p in params_info] == body["params_info"]
    assert json.loads(result_info.model_dump_json()) == body["result_info"]


def _mappings(space: Space, start: int, count: int, vals: list) -> list[m.Mapping]:  # type: ignore[type-arg]
    return results.to_mappings(space, start, results.coerce(vals, "int", False, count), "int")


SPACE = Space((Axis("int", -3, 2, 4, "a"), Axis("float", 0.5, 0.25, 5, "b")))


def test_mappings_round_trip() -> None:
    maps = _mappings(SPACE, 5, 5, [1, 2, 3, 4, 5])
    assert results.from_mappings(SPACE, 5, 5, maps, "int", False).tolist() == [1, 2, 3, 4, 5]
    shuffled = maps[::-1]  # upload order does not matter; flat order comes back
    assert results.from_mappings(SPACE, 5, 5, shuffled, "int", False).tolist() == [1, 2, 3, 4, 5]


def test_forged_results_are_refused() -> None:
    maps = _mappings(SPACE, 5, 5, [1, 2, 3, 4, 5])
    with pytest.raises(InvalidInput, match="expected 5 mappings"):
        results.from_mappings(SPACE, 5, 5, maps[:1], "int", False)
    dup = [*maps[:4], maps[0]]
    with pytest.raises(InvalidInput, match=r"results\[4\].params: this point appears twice"):
        results.from_mappings(SPACE, 5, 5, dup, "int", False)
    outside = _mappings(SPACE, 10, 5, [1, 2, 3, 4, 5])
    with pytest.raises(InvalidInput, match="not part of the trial"):
        results.from_mappings(SPACE, 5, 5, outside, "int", False)
    with pytest.raises(InvalidInput, match=r"results\[0\].result.value_type"):
        results.from_mappings(SPACE, 5, 5, maps, "float", False)
    with pytest.raises(InvalidInput, match=r"results\[0\].result.type"):
        results.from_mappings(SPACE, 5, 5, maps, "int", True)
    wrong_param_type = json.loads(json.dumps([mp.model_dump() for mp in maps]))
    wrong_param_type[0]["params"][0] = {
        "type": "scalar",
        "value_type": "float",
        "value": "0x0.0p+0",
    }
    with pytest.raises(InvalidInput, match=r"results\[0\].params\[0\].value_type"):
        results.from_mappings(
            SPACE, 5, 5, [m.Mapping.model_validate(x) for x in wrong_param_type], "int", False
        )


def test_vector_length_must_be_consistent() -> None:
    vals = results.coerce([[1.0, 2.0], [3.0, 4.0]], "float", True, 2)
    maps = results.to_mappings(SPACE, 0, vals, "float")
    with pytest.raises(InvalidInput, match="expected 3 values"):
        results.from_mappings(SPACE, 0, 2, maps, "float", True, vector_len=3)
    maps[1].result.values.append("0x0.0p+0")  # type: ignore[union-attr]
    with pytest.raises(InvalidInput, match="expected 2 values"):
        results.from_mappings(SPACE, 0, 2, maps, "float", True)


@pytest.mark.parametrize(
    ("raw", "vt", "vector", "match"),
    [
        ([1.5, 2.0], "int", False, "expected int values"),
        (np.array([1.5, 2.0]), "int", False, "expected int values"),
        ([1, 2], "float", False, "expected float values"),
        ([True, 2], "bool", False, "expected bool values"),
        ([1, 2, 3], "int", False, "expected 2 results"),
        (np.zeros((2, 2)), "float", False, "1-D"),
        ([[1.0], [2.0, 3.0]], "float", True, "different lengths"),
    ],
)
def test_coerce_checks_types_and_shapes(raw, vt, vector, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match=match):
        results.coerce(raw, vt, vector, 2)


@pytest.mark.parametrize(
    ("values", "per_point"),
    [
        (np.arange(1000) % 256, 1),
        (np.arange(1000) * 1000, 4),
        (np.arange(1000, dtype=np.int64) * 2**40, 8),
        (np.ones(1000, dtype=bool), 1),
        (np.linspace(0, 1, 1000), 8),
    ],
)
def test_packing_is_compact(values: np.ndarray, per_point: int) -> None:
    packed = results.pack(
        results.coerce(
            values, {"b": "bool", "f": "float"}.get(values.dtype.kind, "int"), False, 1000
        )
    )  # type: ignore[arg-type]
    assert len(packed) <= 1000 * per_point + 16
    assert np.array_equal(results.unpack(packed), values)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-(2**130), 2**130), min_size=1, max_size=50))
def test_big_ints_pack_exactly(ints: list[int]) -> None:
    arr = results.coerce(ints, "int", False, len(ints))
    back = results.unpack(results.pack(arr))
    assert [int(v) for v in back.tolist()] == ints


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=50))
def test_floats_pack_bit_exactly(floats: list[float]) -> None:
    arr = results.coerce(floats, "float", False, len(floats))
    back = results.unpack(results.pack(arr))
    assert [math.copysign(1, v) for v in back.tolist()] == [math.copysign(1, v) for v in floats]
    assert np.array_equal(back, arr, equal_nan=True)


def test_vector_packing_keeps_shape() -> None:
    arr = results.coerce([[1, 2, 3], [4, 5, 2**70]], "int", True, 2)
    assert results.unpack(results.pack(arr)).tolist() == [[1, 2, 3], [4, 5, 2**70]]
    arr = results.coerce(np.arange(6).reshape(3, 2), "int", True, 3)
    assert results.unpack(results.pack(arr)).shape == (3, 2)


def test_empty_vectors_are_refused_not_stored_unreadable() -> None:
    import numpy as np
    import pytest

    from ld2.core import results
    from ld2.core.errors import InvalidInput

    with pytest.raises(InvalidInput, match="at least one value"):
        results.coerce(np.zeros((3, 0), dtype=np.int64), "int", True, 3)
    with pytest.raises(InvalidInput, match="at least one value"):
        results.coerce([[], [], []], "int", True, 3)
