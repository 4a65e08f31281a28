"""ld2 study files: lite_dist2's ``StudyRegistry`` JSON, plus plain JSON numbers as a convenience.

Wherever lite_dist2 wants a portable string (an axis's ``size``/``start``/``step``, a constant's
value, a target value) an ld2 study file may give a JSON number instead; it is converted
exactly by the slot's declared type (an int slot needs an integral number). A file may wrap the
study in ``{"study": …}`` or not, and may leave out ``name`` (null), ``required_capacity``
(``[]``), ``const_param`` (null) and ``suggest_strategy`` (sequential, strict_aligned).

A study file is read strictly, unlike the HTTP API (whose models ignore unknown keys, as
lite_dist2 does): a key that no model knows is an error naming it and the closest known name.
Every problem is reported as an ``InvalidInput`` whose field is the study's path spelled one way,
``parameter_space.axes[1].size`` (no leading ``study.``, wrapped in ``{"study": …}`` or not).
"""

from __future__ import annotations

import copy
import difflib
import json
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from ld2.core.errors import InvalidInput
from ld2.core.models import StudyRegistry
from ld2.core.study import parse_study

_DEFAULTS: dict[str, Any] = {
    "name": None,  # the command line then names the study after the file
    "required_capacity": [],
    "const_param": None,
    "suggest_strategy": {"type": "sequential", "suggest_strategy_param": {"strict_aligned": True}},
}
_WRAPPER = "study"  # StudyRegisterParam's field that holds the study


# -- reading -----------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    """A JSON file's content; any reason it cannot be read is one InvalidInput naming the file.

    A syntax error gives its line and column: ``not valid JSON: Expecting ',' delimiter at
    line 3, column 5``.
    """
    where = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise InvalidInput(where, "no such file") from None
    except IsADirectoryError:
        raise InvalidInput(where, "is a directory, not a file") from None
    except PermissionError:
        raise InvalidInput(where, "permission denied") from None
    except OSError as err:
        raise InvalidInput(where, f"cannot be read ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark is tolerated
    except UnicodeDecodeError as err:
        raise InvalidInput(
            where, f"not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidInput(
            where, f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None
    except RecursionError:
        raise InvalidInput(where, "not valid JSON: nested too deeply") from None


def load_study_file(path: Path) -> StudyRegistry:
    """Read, check and validate a study file (what ``ld2 run``/``ld2 submit`` are given).

    Returns the registry as written (``name`` stays None when the file has none); the study is
    also checked with `parse_study`, so a returned registry is one the store accepts. Raises
    InvalidInput with ``field`` = ``"<path>: <study path>"`` (or just ``"<path>"`` for a
    problem with the whole file), e.g. ``examples/x.json: parameter_space.axes[1].size``.
    """
    data = read_json(path)
    try:
        registry = study_from_json(data)
        try:
            parse_study(registry)
        except InvalidInput as err:
            raise InvalidInput(_without_wrapper(err.field), err.problem) from None
    except InvalidInput as err:
        raise InvalidInput(
            f"{path}: {err.field}" if err.field else str(path), err.problem
        ) from None
    return registry


# -- validation ----------------------------------------------------------------------------------


def study_from_json(data: Any) -> StudyRegistry:
    """Check and validate a study file's JSON: unknown keys, plain numbers, the wire model.

    Raises InvalidInput only; its field is the study path (``""`` for the whole document).
    """
    if not isinstance(data, dict):
        raise InvalidInput("", f"a study file holds a JSON object, not {_json_kind(data)}")
    _check_keys(data)
    study = copy.deepcopy(data.get(_WRAPPER, data))
    if not isinstance(study, dict):
        raise InvalidInput(_WRAPPER, f"must be a JSON object, not {_json_kind(study)}")
    for key, default in _DEFAULTS.items():
        study.setdefault(key, copy.deepcopy(default))
    _convert_numbers(study)
    try:
        return StudyRegistry.model_validate(study)
    except ValidationError as err:
        raise _from_pydantic(err) from None


def _without_wrapper(field: str) -> str:
    """`parse_study` names fields under ``study.``; a study file's paths never do."""
    if field == _WRAPPER:
        return ""
    return field.removeprefix(f"{_WRAPPER}.")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# -- plain numbers -------------------------------------------------------------------------------


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


def _convert_numbers(study: dict[str, Any]) -> None:
    """Plain JSON numbers in portable slots become lite_dist2's hex strings, in place."""
    space = study.get("parameter_space")
    axes = space.get("axes") if isinstance(space, dict) else None
    for k, axis in enumerate(axes if isinstance(axes, list) else []):
        if not isinstance(axis, dict):
            continue
        where = f"parameter_space.axes[{k}]"
        if "size" in axis:
            axis["size"] = _portable(axis["size"], "int", f"{where}.size")
        for slot in ("start", "step"):
            if slot in axis:
                axis[slot] = _portable(axis[slot], axis.get("type"), f"{where}.{slot}")
    const_param = study.get("const_param")
    consts = const_param.get("consts") if isinstance(const_param, dict) else None
    for k, const in enumerate(consts if isinstance(consts, list) else []):
        if isinstance(const, dict) and "value" in const and const.get("type") != "str":
            const["value"] = _portable(
                const["value"], const.get("type"), f"const_param.consts[{k}].value"
            )
    strategy = study.get("study_strategy")
    param = strategy.get("study_strategy_param") if isinstance(strategy, dict) else None
    target = param.get("target_value") if isinstance(param, dict) else None
    if isinstance(target, dict):
        where = "study_strategy.study_strategy_param.target_value"
        kind = target.get("value_type")
        if "value" in target:
            target["value"] = _portable(target["value"], kind, f"{where}.value")
        if isinstance(target.get("values"), list):
            target["values"] = [
                _portable(v, kind, f"{where}.values[{i}]") for i, v in enumerate(target["values"])
            ]


# -- the models' shape ---------------------------------------------------------------------------
# A type annotation is walked as the models declare it: Annotated[...] (whose FieldInfo may name
# a union's discriminator), X | None, unions of models told apart by a Literal tag, list[X],
# and models. Anything else is a leaf whose value the models check themselves.


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _field_type(info: FieldInfo) -> Any:
    """A model field's annotation, with its discriminator (kept by pydantic in the FieldInfo)."""
    if isinstance(info.discriminator, str):
        return Annotated[info.annotation, info]
    return info.annotation


def _unwrap(tp: Any) -> tuple[Any, str | None]:
    """`tp` without Annotated and without ``| None``, and the discriminator it was given."""
    discriminator = None
    while True:
        if get_origin(tp) is Annotated:
            tp, *meta = get_args(tp)
            for item in meta:
                found = getattr(item, "discriminator", None)
                if isinstance(found, str):
                    discriminator = found
        elif _is_union(tp):
            options = [a for a in get_args(tp) if a is not type(None)]
            if len(options) != 1:
                return tp, discriminator
            tp = options[0]
        else:
            return tp, discriminator


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _union_models(tp: Any) -> list[type[BaseModel]]:
    """The members of a union of models (empty when `tp` is not one)."""
    if not _is_union(tp):
        return []
    options = [_unwrap(a)[0] for a in get_args(tp) if a is not type(None)]
    return options if all(_is_model(o) for o in options) else []


def _tags(model: type[BaseModel], key: str) -> tuple[Any, ...]:
    info = model.model_fields.get(key)
    if info is None or get_origin(info.annotation) is not Literal:
        return ()
    return get_args(info.annotation)


def _member(members: list[type[BaseModel]], key: str | None, tag: Any) -> type[BaseModel] | None:
    """The member of a discriminated union that `tag` picks (None when it picks none)."""
    if key is None:
        return None
    return next((m for m in members if isinstance(tag, str) and tag in _tags(m, key)), None)


def _names(model: type[BaseModel]) -> dict[str, str]:
    """The keys a model reads (field names and aliases) -> field name."""
    names: dict[str, str] = {}
    for name, info in model.model_fields.items():
        names[name] = name
        for alias in (info.alias, info.validation_alias):
            if isinstance(alias, str):
                names[alias] = name
    return names


# -- unknown keys --------------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _unknown(path: str, key: str, known: list[str], hints: list[str]) -> InvalidInput:
    close = difflib.get_close_matches(key, known + hints, n=1)
    if close:
        return InvalidInput(_join(path, key), f"unknown field; did you mean {close[0]}?")
    return InvalidInput(_join(path, key), f"unknown field; expected one of {', '.join(known)}")


def _check_keys(data: dict[str, Any]) -> None:
    """Raise InvalidInput for the first key (in document order) that no model reads."""
    if _WRAPPER in data:
        settings = {"priority": "--priority", "trial_limit_seconds": "--trial-limit"}
        for key, value in data.items():
            if key == _WRAPPER:
                _check(StudyRegistry, value, "")  # a wrapped study's paths start at its fields
            elif key in settings:  # the API's register extras: set on the command line
                raise InvalidInput(
                    key, f"a study file does not set it; use `ld2 submit {settings[key]}`"
                )
            else:
                raise _unknown("", key, [_WRAPPER], list(settings))
    else:
        _check(StudyRegistry, data, "", hints=[_WRAPPER])


def _check(tp: Any, value: Any, path: str, hints: list[str] | None = None) -> None:
    tp, discriminator = _unwrap(tp)
    members = _union_models(tp)
    if members:
        if not isinstance(value, dict) or discriminator is None:
            return
        model = _member(members, discriminator, value.get(discriminator))
        if model is None:
            return  # no member to check against: the model reports the tag itself
        tp = model
    if _is_model(tp):
        if not isinstance(value, dict):
            return
        known = _names(tp)
        for key, item in value.items():
            if key not in known:
                raise _unknown(path, key, list(tp.model_fields), hints or [])
            _check(_field_type(tp.model_fields[known[key]]), item, _join(path, key))
    elif get_origin(tp) is list and isinstance(value, list):
        (item_type,) = get_args(tp)
        for k, item in enumerate(value):
            _check(item_type, item, f"{path}[{k}]")


# -- pydantic's errors ---------------------------------------------------------------------------


def _loc_path(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """A pydantic loc as a study path: ``parameter_space.axes[1].size``, union tags left out."""
    tp: Any = model
    path = ""
    for part in loc:
        tp, discriminator = _unwrap(tp)
        members = _union_models(tp)
        if members:
            tp = _member(members, discriminator, part)
            if tp is not None:
                continue  # a discriminated union's tag: not part of the path
        if _is_model(tp) and isinstance(part, str) and part in _names(tp):
            name = _names(tp)[part]
            path = _join(path, name)
            tp = _field_type(tp.model_fields[name])
        elif get_origin(tp) is list and isinstance(part, int):
            path += f"[{part}]"
            tp = get_args(tp)[0]
        else:
            path = f"{path}[{part}]" if isinstance(part, int) else _join(path, str(part))
            tp = None
    return path


def _from_pydantic(err: ValidationError) -> InvalidInput:
    """The first of pydantic's errors as an InvalidInput with the study path of the fault."""
    first = err.errors()[0]
    path = _loc_path(StudyRegistry, tuple(first["loc"]))
    inner = (first.get("ctx") or {}).get("error")
    if isinstance(inner, InvalidInput):
        # a validator's own InvalidInput names the slot (``values[2]``); keep the finer name
        last = path.rsplit(".", 1)[-1]
        if inner.field.startswith(f"{last}["):
            path = path.removesuffix(last) + inner.field
        return InvalidInput(path, inner.problem)
    kind = first["type"]
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        problem = f"must be a JSON object, not {_json_kind(first['input'])}"
    elif kind == "list_type":
        problem = f"must be a JSON array, not {_json_kind(first['input'])}"
    else:
        problem = first["msg"].removeprefix("Value error, ")
    return InvalidInput(path, problem)
