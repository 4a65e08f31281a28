"""Small builders for store tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from ld2.core import models as m
from ld2.store.base import Reservation, Table


def int_axis(name: str, size: int | None, start: int = 0, step: int = 1) -> dict[str, Any]:
    return {
        "name": name,
        "type": "int",
        "size": None if size is None else hex(size),
        "step": hex(step),
        "start": hex(start),
    }


def registry(
    axes: list[dict[str, Any]],
    *,
    name: str | None = None,
    strategy: str = "all_calculation",
    target: Any = None,
    capacity: list[str] | None = None,
    strict: bool = True,
    order: str = "sequential",
    result_type: str = "scalar",
    value_type: str = "int",
) -> m.StudyRegistry:
    param = None
    if target is not None:
        if isinstance(target, list):
            param = {"target_value": {"type": "vector", "value_type": value_type, "values": target}}
        else:
            param = {"target_value": {"type": "scalar", "value_type": value_type, "value": target}}
    return m.StudyRegistry.model_validate(
        {
            "name": name,
            "required_capacity": capacity or [],
            "study_strategy": {"type": strategy, "study_strategy_param": param},
            "suggest_strategy": {
                "type": order,
                "suggest_strategy_param": {"strict_aligned": strict},
            },
            "const_param": None,
            "result_type": result_type,
            "result_value_type": value_type,
            "parameter_space": {"type": "aligned", "axes": axes},
        }
    )


def square(res: Reservation) -> np.ndarray:
    """A deterministic computation: the sum of squares of the point's int coordinates."""
    total = np.zeros(res.count, dtype=np.int64)
    for arr in res.arrays():
        total += arr.astype(np.int64) ** 2
    return total


async def run_all(table: Table, max_size: int, worker: str = "w1") -> int:
    """Reserve and register until nothing is left; returns the number of trials."""
    n = 0
    while (res := await table.reserve([], max_size, worker)) is not None:
        await table.register(res, square(res))
        n += 1
    return n


async def all_results(table: Table, sid: str) -> tuple[list[int], list[Any]]:
    flats: list[int] = []
    values: list[Any] = []
    async for block in table.iter_results(sid):
        flats.extend(range(block.start, block.start + block.count))
        values.extend(block.values.tolist())
    return flats, values
