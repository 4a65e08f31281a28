"""A study's identity: its name *and* its content.

Submitting a study under a name that exists is only a resume (or a no-op) when the two specs
describe the same computation. `differences` names what differs in the user's own terms
(``const max_iter: 255 -> 7``), so the command line can say why it refuses.
"""

from __future__ import annotations

from typing import Any

from ld2.core.study import StudySpec


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, frozenset, set)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def describe(spec: StudySpec) -> dict[str, Any]:
    """What makes a study the study it is, as readable keys and decoded values."""
    reg = spec.registry
    out: dict[str, Any] = {
        "strategy": spec.strategy,
        "target": spec.target,
        "result_type": reg.result_type,
        "result_value_type": reg.result_value_type,
        "required_capacity": sorted(spec.capacities),
        "order": spec.order,
        "strict_aligned": reg.suggest_strategy.suggest_strategy_param.strict_aligned,
        "axes": [a.name for a in spec.space.axes],
    }
    for k, axis in enumerate(spec.space.axes):
        label = axis.name if axis.name is not None else f"#{k}"
        for part in ("kind", "size", "start", "step"):
            out[f"axis {label} {'type' if part == 'kind' else part}"] = getattr(axis, part)
    consts = reg.const_param.to_dict() if reg.const_param else {}
    for key, value in consts.items():
        out[f"const {key}"] = value
    return out


def differences(old: StudySpec, new: StudySpec) -> list[str]:
    """``key: old -> new`` for everything that differs (empty: the same study)."""
    a, b = describe(old), describe(new)
    out = []
    for key in list(a) + [k for k in b if k not in a]:
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if va is _MISSING:
            out.append(f"{key}: (absent) -> {_show(vb)}")
        elif vb is _MISSING:
            out.append(f"{key}: {_show(va)} -> (absent)")
        elif not _same(va, vb):
            out.append(f"{key}: {_show(va)} -> {_show(vb)}")
    return out


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b) and not (isinstance(a, list | tuple) and isinstance(b, list | tuple)):
        return False  # 1 and 1.0 and True are different constants to a runner
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and a != a:
        return bool(b != b)  # NaN is the same NaN here
    return bool(a == b)


_MISSING = object()
