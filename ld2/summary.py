"""What a person is told when a study ends: its answer and its failures, in plain decimal.

Shared by `ld2 run`, `ld2 submit --wait`, `ld2 status NAME`, `ld2 result` and `ld2 failures`
(the same words everywhere). Values are shown as Python shows them (``repr`` of floats: the
shortest text that reads back exactly), never as lite_dist2's hex.
"""

from __future__ import annotations

from typing import Any

from ld2.core.portable import Scalar
from ld2.export import column_names
from ld2.store.base import Failure, StudyState, Table

SHOWN_FAILURES = 5


def safe(text: str) -> str:
    """Text fit for a terminal: control characters shown as escapes, never sent raw (a study
    name from an old snapshot could hold ESC sequences that clear or retitle the screen)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def point_text(state: StudyState, flat: int) -> str:
    """``x = 1.5, y = 2`` for the point at flat index `flat`."""
    names = column_names(state.spec.space)
    values: tuple[Scalar, ...] = state.spec.space.point(flat)
    return ", ".join(f"{n} = {show(v)}" for n, v in zip(names, values, strict=True))


def failure_text(state: StudyState, failure: Failure) -> str:
    if failure.count == 1:
        where = point_text(state, failure.start)
    else:
        last = failure.start + failure.count - 1
        where = (
            f"{failure.count:,} points from {point_text(state, failure.start)} "
            f"to {point_text(state, last)}"
        )
    return f"{where}: {failure.error} ({failure.attempts} attempts)"


async def value_at(table: Table, state: StudyState, flat: int) -> Any:
    async for block in table.iter_results(state.study_id):
        if block.start <= flat < block.start + block.count:
            return block.values[flat - block.start : flat - block.start + 1].tolist()[0]
    return None


async def answer(table: Table, state: StudyState) -> str | None:
    """``found x = 777`` / ``minimum 0.0 at x = 1.0, y = 1.0`` / ``not found …``; None for
    all_calculation studies (their answer is the whole result)."""
    strategy = state.spec.strategy
    if strategy == "find_exact":
        if state.hit_flat is not None:
            return f"found {point_text(state, state.hit_flat)}"
        if state.status == "done":
            return "not found: no point of the space gives the target value"
        return None
    if strategy == "minimize" and state.best_flat is not None:
        value = await value_at(table, state, state.best_flat)
        prefix = "minimum" if state.status == "done" else "minimum so far"
        return f"{prefix} {show(value)} at {point_text(state, state.best_flat)}"
    return None


async def failure_report(table: Table, state: StudyState, limit: int = SHOWN_FAILURES) -> list[str]:
    """A few lines on the failed points: how many, and the first errors with their values."""
    if not state.failed:
        return []
    failures = await table.failures(state.study_id)
    lines = [f"{state.failed:,} of {state.total or 0:,} points failed:"]
    lines += ["  " + failure_text(state, f) for f in failures[:limit]]
    if len(failures) > limit:
        lines.append(f"  … and {len(failures) - limit} more (ld2 failures {safe(state.label)})")
    return lines


def complete(state: StudyState) -> bool:
    """Whether the study's answer is whole: done, with no failed point left out (a solved
    find_exact is whole whatever failed elsewhere)."""
    if state.status != "done":
        return False
    if state.spec.strategy == "find_exact" and state.hit_flat is not None:
        return True
    return state.failed == 0
