"""Runners: functions registered under a capacity name, and how a trial is computed with one.

A vectorised runner gets the per-axis numpy arrays of a whole trial and returns an array (or a
2-D array for vector results); a scalar runner gets one point's values. Study constants
(``const_param``) arrive as keyword arguments. The output is checked against the study's
declared type and shape: a float from an int study is an error, not a silently cast value.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import numpy as np

from ld2.core import results
from ld2.core.errors import InvalidInput
from ld2.core.study import StudySpec

ENTRY_POINT_GROUP = "ld2.runners"


@dataclass(frozen=True)
class Runner:
    name: str
    func: Callable[..., Any]
    vectorized: bool


REGISTRY: dict[str, Runner] = {}


def runner(
    name: str, *, vectorized: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as the computation of capacity `name`."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        REGISTRY[name] = Runner(name, func, vectorized)
        return func

    return register


def load(
    imports: Iterable[str] = (), *, builtins: bool = True, plugins: bool = True
) -> dict[str, Runner]:
    """Import runner modules (``--import``), the built-ins and the ``ld2.runners`` entry points."""
    if builtins:
        importlib.import_module("ld2.worker.builtins")
    for name in imports:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise InvalidInput("--import", f"cannot import {name!r}: {err}") from None
    if plugins:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()
    return dict(REGISTRY)


def compute(run: Runner, spec: StudySpec, start: int, count: int) -> np.ndarray:
    """The results of the flat range ``[start, start+count)``, typed and shape-checked."""
    consts = spec.registry.const_param.to_dict() if spec.registry.const_param else {}
    arrays = spec.space.arrays(start, count)
    if run.vectorized:
        raw = run.func(*arrays, **consts)
    else:
        columns = [a.tolist() for a in arrays]
        raw = [run.func(*point, **consts) for point in zip(*columns, strict=True)]
        if spec.vector:
            raw = [list(r) for r in raw]
    where = f"runner {run.name!r}"
    return results.coerce(raw, spec.value_type, spec.vector, count, where)
