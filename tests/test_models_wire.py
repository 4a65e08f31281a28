"""Every lite_dist2 capture parses into ld2's wire models, and responses serialise back."""

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from ld2.core import models as m
from ld2.core.errors import InvalidInput
from ld2.core.study import parse_study
from tests.conftest import WIRE, wire_json

REQUESTS: dict[tuple[str, str], type[BaseModel]] = {
    ("POST", "/study/register"): m.StudyRegisterParam,
    ("POST", "/trial/reserve"): m.TrialReserveParam,
    ("POST", "/trial/register"): m.TrialRegisterParam,
}
RESPONSES: dict[tuple[str, str], type[BaseModel]] = {
    ("POST", "/study/register"): m.StudyRegisteredResponse,
    ("POST", "/trial/reserve"): m.TrialReserveResponse,
    ("POST", "/trial/register"): m.OkResponse,
    ("GET", "/study"): m.StudyResponse,
    ("GET", "/status"): m.CurriculumSummaryResponse,
    ("GET", "/status/progress"): m.ProgressSummaryResponse,
    ("GET", "/ping"): m.OkResponse,
    ("GET", "/save"): m.OkResponse,
    ("DELETE", "/study"): m.OkResponse,
}
# Requests lite_dist2 accepted (or crashed on) that ld2 refuses on purpose (SPEC Part A).
REFUSED = {
    "04-trial-reserve-bad-body.request.json": "max_size",
    "12-study-register-bad-body.request.json": "study_strategy",
    "15-study-register-bool-axis-hex-step.request.json": "step",
    "38-trial-register-bad-body.request.json": "study_id",
}

# Parsed, then refused by the domain with 400 (as lite_dist2 does).
DOMAIN_REFUSED = {
    "13-study-register-infinite-all-calculation.request.json": "study.study_strategy.type",
}


def _index() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name in ("_index-main.json", "_index-timeout.json", "_index-restart.json"):
        out += wire_json(name)
    return out


INDEX = _index()
REQUEST_CASES = [e for e in INDEX if (e.get("request_file") or "").endswith(".json")]
RESPONSE_CASES = [
    e for e in INDEX if (e.get("response_file") or "").endswith(".json") and e["status"] < 300
]


@pytest.mark.parametrize("entry", REQUEST_CASES, ids=[e["request_file"] for e in REQUEST_CASES])
def test_requests_parse_or_are_refused_on_purpose(entry: dict[str, Any]) -> None:
    model = REQUESTS[(entry["method"], entry["path"])]
    body = wire_json(entry["request_file"])
    if entry["request_file"] in REFUSED:
        with pytest.raises(ValidationError) as err:
            model.model_validate(body)
        assert REFUSED[entry["request_file"]] in str(err.value)
        return
    parsed = model.model_validate(body)
    if not isinstance(parsed, m.StudyRegisterParam):
        return
    if entry["request_file"] in DOMAIN_REFUSED:
        with pytest.raises(InvalidInput) as refused:
            parse_study(parsed.study)
        assert refused.value.field == DOMAIN_REFUSED[entry["request_file"]]
    else:
        parse_study(parsed.study)  # and the domain accepts it (name null included)


@pytest.mark.parametrize("entry", RESPONSE_CASES, ids=[e["response_file"] for e in RESPONSE_CASES])
def test_responses_round_trip(entry: dict[str, Any]) -> None:
    model = RESPONSES[(entry["method"], entry["path"])]
    body = wire_json(entry["response_file"])
    parsed = model.model_validate(body)
    assert json.loads(parsed.model_dump_json()) == body


@pytest.mark.parametrize(
    "name",
    ["44-curriculum.snapshot-after-mandelbrot.json", "43-trial-repository-file.example.json"],
)
def test_persisted_models_use_the_same_trial_model(name: str) -> None:
    body = wire_json(name)
    trials = (
        body["studies"][0]["trial_table"]["trials"]
        if body.get("studies")
        else ([body] if "trial_id" in body else [])
    )
    for t in trials:
        assert json.loads(m.TrialModel.model_validate(t).model_dump_json()) == t


E_CASES = {e["case"]: e for e in wire_json("E-edge-cases.captured.json")}


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("E01 second axis infinite (find_exact)", "study.parameter_space.axes[1].size"),
        ("E02 find_exact without target", "study.study_strategy.study_strategy_param"),
        ("E05 negative axis size", "study.parameter_space.axes[0].size"),
        ("E10 zero-size axis", "study.parameter_space.axes[0].size"),
        ("E11 empty axes list", "study.parameter_space.axes"),
    ],
)
def test_edge_studies_refused_by_the_domain(case: str, field: str) -> None:
    reg = m.StudyRegisterParam.model_validate(E_CASES[case]["request"]).study
    with pytest.raises(InvalidInput) as err:
        parse_study(reg)
    assert err.value.field == field, str(err.value)


@pytest.mark.parametrize(
    ("case", "where"),
    [
        ("E06 decimal-looking float step '0.1'", "step"),
        ("E07 int start '10' without 0x", "start"),
    ],
)
def test_ambiguous_portables_are_422(case: str, where: str) -> None:
    with pytest.raises(ValidationError) as err:
        m.StudyRegisterParam.model_validate(E_CASES[case]["request"])
    errors = [e for e in err.value.errors() if e["loc"][-1] == where]
    assert errors and "0x" in errors[0]["msg"]


def test_accepted_edges() -> None:
    for case in (
        "E08 unknown extra field accepted",
        "E09 bool axis with JSON true step + bool/str consts",
    ):
        parse_study(m.StudyRegisterParam.model_validate(E_CASES[case]["request"]).study)
    spec = parse_study(
        m.StudyRegisterParam.model_validate(E_CASES["E03 study_strategy minimize"]["request"]).study
    )
    assert spec.strategy == "minimize"
    spec = parse_study(
        m.StudyRegisterParam.model_validate(E_CASES["E04 suggest_strategy random"]["request"]).study
    )
    assert spec.order == "random"


def test_find_exact_compares_values_not_spelling() -> None:
    reg = m.StudyRegisterParam.model_validate(
        E_CASES["E14 find_exact target in upper-case hex"]["request"]
    ).study
    spec = parse_study(reg)
    assert spec.target == (int(reg.study_strategy.study_strategy_param.target_value.value, 16),)  # type: ignore[union-attr]


def test_json_numbers_in_portable_slots_are_refused() -> None:
    body = wire_json("10-study-register-mandelbrot.request.json")
    body["study"]["parameter_space"]["axes"][0]["start"] = -2.0
    with pytest.raises(ValidationError) as err:
        m.StudyRegisterParam.model_validate(body)
    assert any(e["loc"][-1] == "start" for e in err.value.errors())
    body = wire_json("10-study-register-mandelbrot.request.json")
    body["study"]["parameter_space"]["axes"][0]["size"] = 10
    with pytest.raises(ValidationError) as err:
        m.StudyRegisterParam.model_validate(body)
    assert any(e["loc"][-1] == "size" for e in err.value.errors())
    body = wire_json("30-trial-reserve-mandelbrot.request.json")
    body["max_size"] = "7"
    with pytest.raises(ValidationError, match="max_size"):
        m.TrialReserveParam.model_validate(body)


def test_wire_files_exist() -> None:
    assert Path(WIRE, "00-ping.response.json").exists()
