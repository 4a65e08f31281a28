"""Every validation rule of a study registration, with the field it names."""

import copy
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from ld2.core import models as m
from ld2.core.errors import InvalidInput
from ld2.core.study import parse_study
from tests.conftest import wire_json

BASE = wire_json("60-study-register-md5-finite.request.json")  # find_exact, 1 int axis


def _body(mutate: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    mutate(body["study"])
    return body


def _axis(**kw: Any) -> dict[str, Any]:
    return {"name": "b", "type": "int", "size": "0x3", "step": "0x1", "start": "0x0"} | kw


DOMAIN_CASES = [
    (
        lambda s: s["parameter_space"]["axes"][0].update(size="0x0"),
        "study.parameter_space.axes[0].size",
    ),
    (
        lambda s: s["parameter_space"]["axes"][0].update(size="-0x2"),
        "study.parameter_space.axes[0].size",
    ),
    (
        lambda s: s["parameter_space"]["axes"][0].update(step="0x0"),
        "study.parameter_space.axes[0].step",
    ),
    (lambda s: s["parameter_space"].update(axes=[]), "study.parameter_space.axes"),
    (
        lambda s: s["parameter_space"]["axes"].append(_axis(size=None)),
        "study.parameter_space.axes[1].size",
    ),
    (
        lambda s: s["parameter_space"]["axes"].append(_axis(name="x")),
        "study.parameter_space.axes[1].name",
    ),
    (
        lambda s: s["parameter_space"]["axes"].append(
            _axis(type="bool", size="0x3", step=True, start=False)
        ),
        "study.parameter_space.axes[1].size",
    ),
    (
        lambda s: s["parameter_space"]["axes"].append(
            _axis(type="float", step="0x0.0p+0", start="0x0.0p+0")
        ),
        "study.parameter_space.axes[1].step",
    ),
    (
        lambda s: s["parameter_space"]["axes"].append(
            _axis(type="float", step="0x1p0", start="inf")
        ),
        "study.parameter_space.axes[1].start",
    ),
    (
        lambda s: (
            s["study_strategy"].update(type="all_calculation")
            or s["parameter_space"]["axes"][0].update(size=None)
        ),
        "study.study_strategy.type",
    ),
    (
        lambda s: (
            s["parameter_space"]["axes"][0].update(size=None)
            or s["study_strategy"].update(type="minimize")
        ),
        "study.study_strategy.type",
    ),
    (
        lambda s: s["study_strategy"].update(study_strategy_param=None),
        "study.study_strategy.study_strategy_param",
    ),
    (
        lambda s: s["study_strategy"]["study_strategy_param"]["target_value"].update(
            value_type="float", value="nan"
        ),
        "study.study_strategy.study_strategy_param.target_value.value_type",
    ),
    (
        lambda s: (
            s.update(result_value_type="float")
            or s["study_strategy"]["study_strategy_param"]["target_value"].update(
                value_type="float", value="nan"
            )
        ),
        "study.study_strategy.study_strategy_param.target_value",
    ),
    (
        lambda s: s["study_strategy"]["study_strategy_param"].update(
            target_value={"type": "vector", "value_type": "int", "values": ["0x1"]}
        ),
        "study.study_strategy.study_strategy_param.target_value.type",
    ),
    (lambda s: s["suggest_strategy"].update(type="designated"), "study.suggest_strategy.type"),
    (
        lambda s: (
            s["parameter_space"]["axes"][0].update(size=None)
            or s["suggest_strategy"].update(type="random")
        ),
        "study.suggest_strategy.type",
    ),
    (
        lambda s: s.update(
            result_type="vector", study_strategy={"type": "minimize", "study_strategy_param": None}
        ),
        "study.result_type",
    ),
    (lambda s: s.update(name="  "), "study.name"),
]


@pytest.mark.parametrize(("mutate", "field"), DOMAIN_CASES)
def test_domain_rules_name_the_field(
    mutate: Callable[[dict[str, Any]], object], field: str
) -> None:
    reg = m.StudyRegisterParam.model_validate(_body(mutate)).study
    with pytest.raises(InvalidInput) as err:
        parse_study(reg)
    assert err.value.field == field, str(err.value)
    assert str(err.value).startswith(field)


SCHEMA_CASES = [
    (
        lambda s: s["parameter_space"]["axes"][0].update(size="10"),
        ("parameter_space", "axes", 0, "size"),
    ),
    (
        lambda s: s["parameter_space"]["axes"][0].update(start=0),
        ("parameter_space", "axes", 0, "start"),
    ),
    (
        lambda s: s["parameter_space"]["axes"][0].update(type="complex"),
        ("parameter_space", "axes", 0, "type"),
    ),
    (
        lambda s: s["study_strategy"]["study_strategy_param"]["target_value"].update(value="123"),
        ("target_value", "scalar", "value"),
    ),
    (
        lambda s: s.update(const_param={"consts": [{"type": "int", "key": "k", "value": "7"}]}),
        ("consts", 0, "value"),
    ),
    (
        lambda s: s.update(const_param={"consts": [{"type": "bool", "key": "k", "value": "true"}]}),
        ("consts", 0, "value"),
    ),
    (
        lambda s: s.update(const_param={"consts": [{"type": "str", "key": "k", "value": True}]}),
        ("consts", 0, "value"),
    ),
    (
        lambda s: s["suggest_strategy"]["suggest_strategy_param"].update(strict_aligned=1),
        ("strict_aligned",),
    ),
    (lambda s: s.pop("const_param"), ("study", "const_param")),
]


@pytest.mark.parametrize(("mutate", "loc_tail"), SCHEMA_CASES)
def test_schema_rules_name_the_field(
    mutate: Callable[[dict[str, Any]], object], loc_tail: tuple
) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValidationError) as err:
        m.StudyRegisterParam.model_validate(_body(mutate))
    locs = [tuple(e["loc"]) for e in err.value.errors()]
    assert any(loc[-len(loc_tail) :] == loc_tail for loc in locs), locs


def test_normalisation_and_name_null() -> None:
    def mutate(s: dict[str, Any]) -> None:
        s["name"] = None
        s["required_capacity"] = ["b", "a", "b"]
        s["parameter_space"]["axes"][0].update(size="0X3E8", start="0x00")

    spec = parse_study(m.StudyRegisterParam.model_validate(_body(mutate)).study)
    assert spec.name is None
    assert spec.registry.required_capacity == ["a", "b"]
    axis = spec.registry.parameter_space.axes[0]
    assert (axis.size, axis.start) == ("0x3e8", "0x0")
    assert spec.total == 1000 and spec.capacities == {"a", "b"}


def test_const_params_decode() -> None:
    body = _body(
        lambda s: s.update(
            const_param={
                "consts": [
                    {"type": "int", "key": "n", "value": "0xff"},
                    {"type": "float", "key": "t", "value": "0x1.0000000000000p+1"},
                    {"type": "bool", "key": "b", "value": True},
                    {"type": "str", "key": "s", "value": "hello"},
                ]
            }
        )
    )
    reg = m.StudyRegisterParam.model_validate(body).study
    assert reg.const_param is not None
    assert reg.const_param.to_dict() == {"n": 255, "t": 2.0, "b": True, "s": "hello"}
