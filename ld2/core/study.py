"""A study as ld2 understands it: the registry checked once, decoded, and normalised.

Everything a later step would trip over (an infinite space with ``all_calculation``, a NaN
target, an unimplemented strategy, a zero-size axis) is refused here, at the door, with the
field named, so nothing invalid is ever stored.
"""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from dataclasses import dataclass
from typing import Literal

from ld2.core import portable
from ld2.core.errors import InvalidInput
from ld2.core.models import (
    LineSegmentModel,
    LineSegmentRegistry,
    ScalarValue,
    StudyRegistry,
    VectorValue,
)
from ld2.core.planning import uses_jagged
from ld2.core.portable import Scalar
from ld2.core.space import Space
from ld2.core.subspace import space_from_wire, space_to_wire

StrategyName = Literal["all_calculation", "find_exact", "minimize"]
OrderName = Literal["sequential", "random"]

_REGISTRY_FIELD = "study"


@dataclass(frozen=True)
class StudySpec:
    """A validated study: the normalised registry plus what it decodes to."""

    registry: StudyRegistry
    space: Space
    target: tuple[Scalar, ...] | None  # find_exact only; one item for a scalar result
    trial_limit: float | None = None  # seconds a trial may compute (an ld2 study setting)

    @property
    def name(self) -> str | None:
        return self.registry.name

    @property
    def strategy(self) -> StrategyName:
        return self.registry.study_strategy.type

    @property
    def order(self) -> OrderName:
        kind = self.registry.suggest_strategy.type
        assert kind != "designated"
        return kind

    @property
    def jagged(self) -> bool:
        strict = self.registry.suggest_strategy.suggest_strategy_param.strict_aligned
        return uses_jagged(self.space, strict)

    @property
    def capacities(self) -> frozenset[str]:
        return frozenset(self.registry.required_capacity)

    @property
    def vector(self) -> bool:
        return self.registry.result_type == "vector"

    @property
    def value_type(self) -> portable.ValueType:
        return self.registry.result_value_type

    @property
    def total(self) -> int | None:
        return self.space.total


def _target(reg: StudyRegistry) -> tuple[Scalar, ...] | None:
    param = reg.study_strategy.study_strategy_param
    where = "study_strategy.study_strategy_param"
    if reg.study_strategy.type != "find_exact":
        return None
    if param is None:
        raise InvalidInput(where, "find_exact needs a target_value")
    tv = param.target_value
    where += ".target_value"
    if tv.value_type != reg.result_value_type:
        raise InvalidInput(
            f"{where}.value_type",
            f"is {tv.value_type!r} but the study's result_value_type is {reg.result_value_type!r}",
        )
    if (tv.type == "vector") != (reg.result_type == "vector"):
        raise InvalidInput(
            f"{where}.type", f"is {tv.type!r} but the study's result_type is {reg.result_type!r}"
        )
    raw = [tv.value] if isinstance(tv, ScalarValue) else tv.values
    if isinstance(tv, VectorValue) and not raw:
        raise InvalidInput(f"{where}.values", "a vector target needs at least one value")
    values = tuple(portable.decode(v, tv.value_type, where) for v in raw)
    if any(isinstance(v, float) and math.isnan(v) for v in values):
        raise InvalidInput(where, "a NaN target can never be found (NaN equals nothing)")
    return values


MAX_NAME = 200
"""Longest study name, in characters: a name travels in URLs, headers and file names."""


def check_name(name: str) -> None:
    """A study name is any Unicode text of 1 to 200 characters without control characters
    (they would garble terminals, break HTTP headers and file names) or lone surrogates."""
    if not name.strip():
        raise InvalidInput("name", "must not be blank (use null for no name)")
    if len(name) > MAX_NAME:
        raise InvalidInput("name", f"at most {MAX_NAME} characters, got {len(name)}")
    for c in name:
        kind = unicodedata.category(c)
        if kind == "Cc":
            raise InvalidInput("name", f"control characters are not allowed (found {c!r})")
        if kind == "Cs":
            raise InvalidInput("name", "lone surrogates are not allowed (not valid Unicode text)")


def parse_study(reg: StudyRegistry) -> StudySpec:
    """Validate a registry and return the normalised study, or raise InvalidInput."""
    try:
        space = space_from_wire(reg.parameter_space)
        strategy = reg.study_strategy.type
        if space.infinite and strategy != "find_exact":
            raise InvalidInput(
                "study_strategy.type",
                f"{strategy} needs a finite space, but axis 0 is infinite (size null); "
                "use find_exact or give the axis a size",
            )
        if strategy == "minimize" and reg.result_type != "scalar":
            raise InvalidInput("result_type", "minimize needs scalar results")
        suggest = reg.suggest_strategy.type
        if suggest == "designated":
            raise InvalidInput(
                "suggest_strategy.type", "'designated' is not supported; use sequential or random"
            )
        if suggest == "random" and space.infinite:
            raise InvalidInput("suggest_strategy.type", "random order needs a finite space")
        if reg.name is not None:
            check_name(reg.name)
        target = _target(reg)
        normalised = reg.model_copy(
            update={
                "parameter_space": reg.parameter_space.model_copy(
                    update={"axes": [_registry_axis(s) for s in space_to_wire(space).axes]}
                ),
                "required_capacity": sorted(set(reg.required_capacity)),
            }
        )
    except InvalidInput as err:
        raise err.under(_REGISTRY_FIELD) from None
    return StudySpec(registry=normalised, space=space, target=target)


def _registry_axis(seg: LineSegmentModel) -> LineSegmentRegistry:
    return LineSegmentRegistry(
        name=seg.name, type=seg.type, size=seg.size, step=seg.step, start=seg.start
    )


def with_limit(spec: StudySpec, trial_limit: float | None) -> StudySpec:
    """The spec with the study's trial limit (seconds a trial may compute), checked."""
    if trial_limit is None:
        return spec
    if not 0 < trial_limit <= 7 * 86_400:
        raise InvalidInput(
            "trial_limit_seconds", f"must be above 0 and at most 7 days, got {trial_limit}"
        )
    return dataclasses.replace(spec, trial_limit=float(trial_limit))
