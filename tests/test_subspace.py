"""Trial sub-spaces on the wire: identical to lite_dist2's, and read back strictly."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ld2.core import models as m
from ld2.core.errors import InvalidInput
from ld2.core.planning import plan_count, uses_jagged
from ld2.core.space import Space
from ld2.core.study import parse_study
from ld2.core.subspace import space_to_wire, trial_range, trial_space
from tests.conftest import wire_json
from tests.strategies_hyp import spaces


def _study(request_file: str) -> Space:
    return parse_study(m.StudyRegisterParam.model_validate(wire_json(request_file)).study).space


@pytest.mark.parametrize(
    ("study_file", "trial_file", "jagged"),
    [
        (
            "10-study-register-mandelbrot.request.json",
            "30-trial-reserve-mandelbrot.response.json",
            False,
        ),
        (
            "59a-study-register-jagged-vector.request.json",
            "59b-trial-reserve-jagged.response.json",
            True,
        ),
        (
            "50-study-register-jagged-float.request.json",
            "51-trial-reserve-jagged-float.response.json",
            True,
        ),
        (
            "55-study-register-jagged-negint.request.json",
            "56-trial-reserve-jagged-negint.response.json",
            True,
        ),
        (
            "70-study-register-md5-infinite.request.json",
            "71-trial-reserve-infinite.response.json",
            False,
        ),
        (
            "60-study-register-md5-finite.request.json",
            "61-trial-reserve-md5-held.response.json",
            False,
        ),
    ],
)
def test_first_trial_space_is_lite_dist2s(study_file: str, trial_file: str, jagged: bool) -> None:
    space = _study(study_file)
    theirs = wire_json(trial_file)["trial"]["parameter_space"]
    max_size = wire_json(trial_file.replace(".response.", ".request."))["max_size"]
    ours = trial_space(space, 0, plan_count(space, 0, max_size, jagged), jagged)
    assert json.loads(ours.model_dump_json()) == theirs
    parsed = m.TrialModel.model_validate(wire_json(trial_file)["trial"]).parameter_space
    assert trial_range(space, parsed) == (0, ours_count(ours))


def ours_count(model: m.ParameterAlignedSpaceModel | m.ParameterJaggedSpaceModel) -> int:
    if isinstance(model, m.ParameterJaggedSpaceModel):
        return len(model.parameters)
    n = 1
    for axis in model.axes:
        n *= int(axis.size or "0x0", 16)
    return n


def test_study_level_space_is_normalised() -> None:
    space = _study("10-study-register-mandelbrot.request.json")
    theirs = wire_json("21-status-one-waiting.response.json")["summaries"][0]["parameter_space"]
    assert json.loads(space_to_wire(space).model_dump_json()) == theirs


@settings(max_examples=150, deadline=None)
@given(spaces(), st.integers(1, 40), st.booleans(), st.data())
def test_trial_space_round_trip(
    space: Space, max_size: int, strict: bool, data: st.DataObject
) -> None:
    jagged = uses_jagged(space, strict)
    hi = space.total if space.total is not None else 10**6
    start = data.draw(st.integers(0, hi - 1))
    count = plan_count(space, start, max_size, jagged)
    model = trial_space(space, start, count, jagged)
    wire = json.loads(model.model_dump_json())
    back = (m.ParameterJaggedSpaceModel if jagged else m.ParameterAlignedSpaceModel).model_validate(
        wire
    )
    assert trial_range(space, back) == (start, count)


def _mandelbrot_trial() -> tuple[Space, dict]:
    space = _study("10-study-register-mandelbrot.request.json")
    return space, wire_json("30-trial-reserve-mandelbrot.response.json")["trial"]["parameter_space"]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s["axes"][1].update(ambient_size="0xb"), "parameter_space.axes[1].ambient_size"),
        (lambda s: s["axes"][1].update(start="0x0.0p+0"), "parameter_space.axes[1].start"),
        (lambda s: s["axes"][1].update(step="0x1.0p+0"), "parameter_space.axes[1].step"),
        (lambda s: s["axes"][1].update(name="z"), "parameter_space.axes[1].name"),
        (
            lambda s: s["axes"][1].update(type="int", start="0x0", step="0x1"),
            "parameter_space.axes[1].type",
        ),
        (lambda s: s["axes"][1].update(size="0xb"), "parameter_space.axes[1]"),
        (lambda s: s["axes"].pop(), "parameter_space.axes"),
        # 2 rows of 3 at columns 0..2 is not a lower-filling box
        (
            lambda s: (s["axes"][0].update(size="0x2"), s["axes"][1].update(size="0x3")),
            "parameter_space",
        ),
    ],
)
def test_forged_aligned_spaces_are_refused(mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    space, theirs = _mandelbrot_trial()
    mutate(theirs)
    model = m.ParameterAlignedSpaceModel.model_validate(theirs)
    with pytest.raises(InvalidInput) as err:
        trial_range(space, model)
    assert err.value.field == field, str(err.value)


def test_one_ulp_off_start_is_accepted() -> None:
    space, theirs = _mandelbrot_trial()
    theirs["axes"][0].update(ambient_index="0x9", start="0x1.999999999999bp+0")
    assert trial_range(space, m.ParameterAlignedSpaceModel.model_validate(theirs)) == (90, 7)


def test_forged_jagged_spaces_are_refused() -> None:
    space = _study("59a-study-register-jagged-vector.request.json")
    theirs = wire_json("59b-trial-reserve-jagged.response.json")["trial"]["parameter_space"]
    bad = json.loads(json.dumps(theirs))
    bad["parameters"][2][1] = "0x3"
    with pytest.raises(InvalidInput, match=r"parameters\[2\]"):
        trial_range(space, m.ParameterJaggedSpaceModel.model_validate(bad))
    gap = json.loads(json.dumps(theirs))
    del gap["parameters"][3], gap["ambient_indices"][3]
    with pytest.raises(InvalidInput, match="consecutive"):
        trial_range(space, m.ParameterJaggedSpaceModel.model_validate(gap))
    outside = json.loads(json.dumps(theirs))
    outside["parameters"][0] = ["0x9", "0x0"]
    outside["ambient_indices"][0] = ["0x9", "0x0"]
    with pytest.raises(InvalidInput):
        trial_range(space, m.ParameterJaggedSpaceModel.model_validate(outside))
