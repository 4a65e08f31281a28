"""Runners: functions registered under a capacity name, and how a trial is computed with one.

A vectorised runner gets the per-axis numpy arrays of a whole trial and returns an array (or a
2-D array for vector results); a scalar runner gets one point's values. Axes bind by name when
the runner's parameters name every axis of the study (``def f(x, y)`` gets the axis named
``x`` as ``x`` whatever the axes' order), else by position in the study's axis order. Study
constants (``const_param``) arrive as keyword arguments. `check_call` says, before any trial,
whether a runner can be called for a study at all; `compute` binds in the same way. The output
is checked against the study's declared type and shape: a float from an int study is an error,
not a silently cast value.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import numpy as np

from ld2.core import results
from ld2.core.errors import InvalidInput, RunnerMismatch
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
    """Import runner modules (``--import``), the built-ins and the ``ld2.runners`` entry points.

    ``--import`` modules are looked up in the current directory first, as ``python -m`` does.
    """
    if builtins:
        importlib.import_module("ld2.worker.builtins")
    imports = list(imports)
    if imports:
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        importlib.invalidate_caches()  # a module written since the last import is seen
    for name in imports:
        _import_runner_module(name)
    if plugins:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()
    return dict(REGISTRY)


def by_reference(name: str) -> Runner | None:
    """The function a capacity named ``module:qualname`` points at (how `ld2.sweep` names an
    undecorated function for remote workers), imported and registered as a per-point runner;
    None for any other name, or when there is no such function."""
    module, sep, qualname = name.partition(":")
    if not (sep and module and qualname):
        return None
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        found: Any = importlib.import_module(module)
    except ImportError:
        return None
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if not callable(found):
        return None
    REGISTRY[name] = Runner(name, found, False)
    return REGISTRY[name]


def _import_runner_module(name: str) -> None:
    where = "--import"
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        missing = err.name or name
        if missing == name or name.startswith(missing + "."):
            hint = (
                f"pass a module name such as {_module_name_of(name)!r}, not a file path"
                if _module_name_of(name) != name
                else "run from the folder that holds it, or add that folder to PYTHONPATH"
            )
            raise InvalidInput(
                where,
                f"cannot import {name!r}: no module {missing!r} in the current directory "
                f"({os.getcwd()}) or on sys.path; {hint}",
            ) from None
        raise InvalidInput(
            where,
            f"cannot import {name!r}: it imports {missing!r}, which is not installed "
            "in this environment",
        ) from None
    except ImportError as err:
        raise InvalidInput(where, f"cannot import {name!r}: {err}") from None
    except SyntaxError as err:
        raise InvalidInput(
            where,
            f"cannot import {name!r}: syntax error in {err.filename}, line {err.lineno}: {err.msg}",
        ) from None
    except Exception as err:
        raise InvalidInput(
            where,
            f"cannot import {name!r}: importing it raised {type(err).__name__}: {err}",
        ) from None


def _module_name_of(name: str) -> str:
    """``myrunners`` for ``myrunners.py`` or ``./myrunners.py`` (what the user meant)."""
    base = os.path.basename(name.rstrip("/\\"))
    return base[:-3] if base.endswith(".py") else base


# -- binding axes and constants to a runner's parameters ----------------------------------------

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


@dataclass(frozen=True)
class _Binding:
    """How a study's axes reach a runner: by position (``order``: the axis indices, in the
    order of the runner's positional parameters) or by name (``names``: one keyword per axis,
    in axis order). ``problem`` says why the runner cannot be called, if it cannot."""

    order: tuple[int, ...] = ()
    names: tuple[str, ...] | None = None
    problem: str | None = None

    def call(self, func: Callable[..., Any], values: Sequence[Any], consts: dict[str, Any]) -> Any:
        if self.names is not None:
            return func(**dict(zip(self.names, values, strict=True)), **consts)
        return func(*[values[i] for i in self.order], **consts)


def _describe(names: Iterable[str | None]) -> str:
    return ", ".join(n if n is not None else "(unnamed)" for n in names) or "none"


@functools.lru_cache(maxsize=512)
def _bind(run: Runner, axes: tuple[str | None, ...], consts: tuple[str, ...]) -> _Binding:
    """The binding of a study with these axis names and constant keys to `run` (pure)."""
    n = len(axes)
    try:
        params = list(inspect.signature(run.func).parameters.values())
    except (TypeError, ValueError):  # no inspectable signature: positional, unchecked
        return _Binding(order=tuple(range(n)))
    positional = [p for p in params if p.kind in _POSITIONAL]
    keyword = {p.name: p for p in params if p.kind in _KEYWORD}
    var_positional = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    problems: list[str] = []

    by_name = n > 0 and all(a is not None and a in keyword for a in axes)
    names: tuple[str, ...] | None = None
    if by_name:
        named = tuple(a for a in axes if a is not None)
        filled = {a: f"the axis named {a!r}" for a in named}
        head = positional[:n]
        if {p.name for p in head} == set(named) and all(p.kind in _KEYWORD for p in head):
            order = tuple(named.index(p.name) for p in head)  # same call, without keywords
        else:
            order, names = (), named
    else:
        order = tuple(range(n))
        if n > len(positional) and not var_positional:
            problems.append(
                f"takes {len(positional)} positional parameter(s) "
                f"({_describe(p.name for p in positional)}) but the study has {n} axes "
                f"({_describe(axes)}); name the parameters after the axes, or accept *args"
            )
        filled = {
            p.name: f"axis {k} ({_describe([axes[k]])})" for k, p in enumerate(positional[:n])
        }

    for key in consts:
        if key in filled:
            problems.append(
                f"gets parameter {key!r} from {filled[key]}, and const_param {key!r} "
                "would give it again"
            )
        elif key in keyword:
            filled[key] = f"const_param {key!r}"
        elif not var_keyword:
            choices = [k for k in keyword if k not in filled]
            close = difflib.get_close_matches(key, choices, n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else f"its constants can be: {_describe(choices)}"
                if choices
                else "it takes no constants"
            )
            problems.append(f"has no parameter {key!r} for const_param {key!r} ({hint})")

    missing = [
        p
        for p in params
        if p.kind not in _VARIADIC and p.default is inspect.Parameter.empty and p.name not in filled
    ]
    short = [p for p in missing if not by_name and p in positional[n:]]
    if short:
        needed = positional.index(short[-1]) + 1
        problems.append(
            f"needs {needed} axes for its positional parameters "
            f"({_describe(p.name for p in positional[:needed])}) but the study has {n} "
            f"({_describe(axes)})"
        )
    for p in missing:
        if p not in short:
            problems.append(
                f"needs parameter {p.name!r}, which neither an axis nor const_param gives"
            )
    problem = f"runner {run.name!r} " + "; ".join(problems) if problems else None
    return _Binding(order=order, names=names, problem=problem)


def _binding(run: Runner, spec: StudySpec, consts: Iterable[str]) -> _Binding:
    """`_bind`, cached per runner, axis names and constant keys (compute runs it per trial)."""
    axes, keys = tuple(a.name for a in spec.space.axes), tuple(consts)
    try:
        return _bind(run, axes, keys)
    except TypeError:  # an unhashable callable object as the runner: bind without the cache
        return _bind.__wrapped__(run, axes, keys)


def _consts(spec: StudySpec) -> dict[str, Any]:
    return spec.registry.const_param.to_dict() if spec.registry.const_param else {}


def check_call(run: Runner, spec: StudySpec) -> None:
    """Raise `RunnerMismatch` (one message naming every problem) when `run` cannot be called
    for `spec`: a constant it has no parameter for, more axes than its positional parameters
    (no ``*args``), or a required parameter that neither an axis nor a constant gives."""
    binding = _binding(run, spec, _consts(spec))
    if binding.problem is not None:
        raise RunnerMismatch(run.name, binding.problem)


def compute(run: Runner, spec: StudySpec, start: int, count: int) -> np.ndarray:
    """The results of the flat range ``[start, start+count)``, typed and shape-checked."""
    consts = _consts(spec)
    binding = _binding(run, spec, consts)
    if binding.problem is not None:
        raise RunnerMismatch(run.name, binding.problem)
    arrays = spec.space.arrays(start, count)
    if run.vectorized:
        raw = binding.call(run.func, arrays, consts)
    else:
        columns = [a.tolist() for a in arrays]
        points = zip(*columns, strict=True)
        func = run.func
        if binding.names is not None:
            names = binding.names
            raw = [func(**dict(zip(names, point, strict=True)), **consts) for point in points]
        elif binding.order == tuple(range(len(arrays))):
            raw = [func(*point, **consts) for point in points]
        else:
            order = binding.order
            raw = [func(*[point[i] for i in order], **consts) for point in points]
        if spec.vector:
            raw = [list(r) for r in raw]
    where = f"runner {run.name!r}"
    return results.coerce(raw, spec.value_type, spec.vector, count, where)
