"""ld2 study files: lite_dist2's ``StudyRegistry`` JSON, plus plain JSON numbers as a convenience.

Wherever lite_dist2 wants a portable string (an axis's ``size``/``start``/``step``, a constant's
value, a target value) an ld2 study file may give a JSON number instead; it is converted
exactly by the slot's declared type (an int slot needs an integral number). A file may wrap the
study in ``{"study": …}`` or not, and may leave out ``required_capacity`` (``[]``),
``const_param`` (null) and ``suggest_strategy`` (sequential, strict_aligned).
"""

from __future__ import annotations

import copy
from typing import Any

from ld2.core.errors import InvalidInput
from ld2.core.models import StudyRegistry

_DEFAULTS: dict[str, Any] = {
    "required_capacity": [],
    "const_param": None,
    "suggest_strategy": {"type": "sequential", "suggest_strategy_param": {"strict_aligned": True}},
}


def _portable(value: Any, kind: Any, where: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value  # strings and bools are checked strictly by the wire models
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise InvalidInput(where, f"{value!r} is not an integer")
        return hex(int(value))
    if kind == "float":
        return float(value).hex()
    raise InvalidInput(where, f"a JSON number cannot be a {kind!r} value")


def study_from_json(data: Any) -> StudyRegistry:
    """Validate a study file's JSON (raises InvalidInput / pydantic's ValidationError)."""
    if not isinstance(data, dict):
        raise InvalidInput("study", "a study file holds a JSON object")
    study = copy.deepcopy(data.get("study", data))
    if not isinstance(study, dict):
        raise InvalidInput("study", "must be a JSON object")
    for key, default in _DEFAULTS.items():
        study.setdefault(key, copy.deepcopy(default))
    axes = (study.get("parameter_space") or {}).get("axes") or []
    for k, axis in enumerate(axes if isinstance(axes, list) else []):
        if not isinstance(axis, dict):
            continue
        where = f"study.parameter_space.axes[{k}]"
        if "size" in axis:
            axis["size"] = _portable(axis["size"], "int", f"{where}.size")
        for slot in ("start", "step"):
            if slot in axis:
                axis[slot] = _portable(axis[slot], axis.get("type"), f"{where}.{slot}")
    consts = (study.get("const_param") or {}).get("consts") or []
    for k, const in enumerate(consts if isinstance(consts, list) else []):
        if isinstance(const, dict) and "value" in const and const.get("type") != "str":
            const["value"] = _portable(
                const["value"], const.get("type"), f"study.const_param.consts[{k}].value"
            )
    param = (study.get("study_strategy") or {}).get("study_strategy_param") or {}
    target = param.get("target_value") if isinstance(param, dict) else None
    if isinstance(target, dict):
        where = "study.study_strategy.study_strategy_param.target_value"
        kind = target.get("value_type")
        if "value" in target:
            target["value"] = _portable(target["value"], kind, f"{where}.value")
        if isinstance(target.get("values"), list):
            target["values"] = [_portable(v, kind, f"{where}.values") for v in target["values"]]
    return StudyRegistry.model_validate(study)
