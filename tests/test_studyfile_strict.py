"""Study files are read strictly: unknown keys, one path spelling, clear file and JSON errors.

The HTTP API stays lenient (lite_dist2 ignores unknown keys); only the file reader is strict.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ld2.api import create_app
from ld2.config import TableConfig, read_json_file
from ld2.core import models as m
from ld2.core.errors import InvalidInput
from ld2.core.studyfile import load_study_file
from tests.conftest import WIRE, make_table

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MANDELBROT = json.loads((EXAMPLES / "mandelbrot.json").read_text())
MD5 = json.loads((EXAMPLES / "md5.json").read_text())

Mutate = Callable[[dict[str, Any]], object]


def _write(tmp_path: Path, data: Any, name: str = "study.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=2))
    return path


def _study(base: dict[str, Any], mutate: Mutate, wrap: bool = False) -> dict[str, Any]:
    study = copy.deepcopy(base)
    mutate(study)
    return {"study": study} if wrap else study


def _error(path: Path) -> InvalidInput:
    with pytest.raises(InvalidInput) as err:
        load_study_file(path)
    return err.value


# -- unknown keys ---------------------------------------------------------------------------------

UNKNOWN_KEYS: list[tuple[str, dict[str, Any], Mutate, bool, str]] = [
    (
        "top level",
        MANDELBROT,
        lambda s: s.update(const_params={"consts": []}),
        False,
        "const_params: unknown field; did you mean const_param?",
    ),
    (
        "top level, misspelt capacity",
        MANDELBROT,
        lambda s: s.update(requred_capacity=["mandelbrot"]),
        False,
        "requred_capacity: unknown field; did you mean required_capacity?",
    ),
    (
        "inside the study wrapper",
        MANDELBROT,
        lambda s: s.update(const_params={"consts": []}),
        True,
        "const_params: unknown field; did you mean const_param?",
    ),
    (
        "in an axis",
        MANDELBROT,
        lambda s: s["parameter_space"]["axes"][1].update(sise=3),
        False,
        "parameter_space.axes[1].sise: unknown field; did you mean size?",
    ),
    (
        "in an axis, wrapped",
        MANDELBROT,
        lambda s: s["parameter_space"]["axes"][1].update(sise=3),
        True,
        "parameter_space.axes[1].sise: unknown field; did you mean size?",
    ),
    (
        "in the parameter space",
        MANDELBROT,
        lambda s: s["parameter_space"].update(axis=[]),
        False,
        "parameter_space.axis: unknown field; did you mean axes?",
    ),
    (
        "in a const",
        MANDELBROT,
        lambda s: s["const_param"]["consts"][1].update(kye="x"),
        False,
        "const_param.consts[1].kye: unknown field; did you mean key?",
    ),
    (
        "in the suggest strategy param",
        MANDELBROT,
        lambda s: s["suggest_strategy"]["suggest_strategy_param"].update(strict_align=False),
        False,
        "suggest_strategy.suggest_strategy_param.strict_align: unknown field; "
        "did you mean strict_aligned?",
    ),
    (
        "in the study strategy",
        MANDELBROT,
        lambda s: s["study_strategy"].update(study_strategy_params=None),
        False,
        "study_strategy.study_strategy_params: unknown field; did you mean study_strategy_param?",
    ),
    (
        "in a scalar target value",
        MD5,
        lambda s: s["study_strategy"]["study_strategy_param"]["target_value"].update(vale="0x1"),
        False,
        "study_strategy.study_strategy_param.target_value.vale: unknown field; did you mean value?",
    ),
    (
        "a scalar's key in a vector target value (the tag picks the model)",
        MD5,
        lambda s: s["study_strategy"]["study_strategy_param"]["target_value"].update(
            type="vector", values=["0x1"]
        ),
        False,
        "study_strategy.study_strategy_param.target_value.value: unknown field; "
        "did you mean values?",
    ),
    (
        "nothing close at the top level",
        MANDELBROT,
        lambda s: s.update(zzz=1),
        False,
        "zzz: unknown field; expected one of name, required_capacity, study_strategy, "
        "suggest_strategy, const_param, result_type, result_value_type, parameter_space, "
        "trial_repository_type",
    ),
    (
        "nothing close in an axis",
        MANDELBROT,
        lambda s: s["parameter_space"]["axes"][0].update(colour="red"),
        False,
        "parameter_space.axes[0].colour: unknown field; "
        "expected one of name, type, size, step, start",
    ),
    (
        "a misspelt wrapper",
        MANDELBROT,
        lambda s: s.update(stdy={}),
        False,
        "stdy: unknown field; did you mean study?",
    ),
]


@pytest.mark.parametrize(
    ("base", "mutate", "wrap", "message"),
    [case[1:] for case in UNKNOWN_KEYS],
    ids=[case[0] for case in UNKNOWN_KEYS],
)
def test_unknown_keys_are_named_with_the_closest_known_name(
    tmp_path: Path, base: dict[str, Any], mutate: Mutate, wrap: bool, message: str
) -> None:
    path = _write(tmp_path, _study(base, mutate, wrap))
    err = _error(path)
    assert str(err) == f"{path}: {message}"
    assert err.field == f"{path}: {message.split(': ')[0]}"


def test_unknown_key_in_the_wrapper_itself(tmp_path: Path) -> None:
    path = _write(tmp_path, {"study": MANDELBROT, "priorty": 5})
    assert str(_error(path)) == f"{path}: priorty: unknown field; did you mean priority?"
    path = _write(tmp_path, {"study": MANDELBROT, "other": 5})
    assert str(_error(path)) == f"{path}: other: unknown field; expected one of study"
    # the API's register extras are command-line settings, never silently dropped
    path = _write(tmp_path, {"study": MANDELBROT, "priority": 5})
    assert (
        str(_error(path))
        == f"{path}: priority: a study file does not set it; use `ld2 submit --priority`"
    )
    path = _write(tmp_path, {"study": MANDELBROT, "trial_limit_seconds": 0.001})
    assert "use `ld2 submit --trial-limit`" in str(_error(path))


def test_did_you_mean_only_when_something_is_close(tmp_path: Path) -> None:
    close = str(_error(_write(tmp_path, _study(MANDELBROT, lambda s: s.update(nmae="x")))))
    far = str(_error(_write(tmp_path, _study(MANDELBROT, lambda s: s.update(qqqqqq="x")))))
    assert close.endswith("nmae: unknown field; did you mean name?")
    assert "did you mean" not in far
    assert far.endswith("qqqqqq: unknown field; expected one of name, required_capacity, "
                        "study_strategy, suggest_strategy, const_param, result_type, "
                        "result_value_type, parameter_space, trial_repository_type")  # fmt: skip


def test_the_first_unknown_key_in_document_order_is_reported(tmp_path: Path) -> None:
    study = copy.deepcopy(MANDELBROT)
    study["parameter_space"]["axes"][1]["sise"] = 3
    first = {"const_params": None, **study}  # before parameter_space in the text
    last = {**study, "const_params": None}  # after it
    assert str(_error(_write(tmp_path, first))).endswith(
        "const_params: unknown field; did you mean const_param?"
    )
    assert str(_error(_write(tmp_path, last))).endswith(
        "parameter_space.axes[1].sise: unknown field; did you mean size?"
    )


def test_an_unknown_key_is_refused_even_when_the_rest_is_valid(tmp_path: Path) -> None:
    # before: "const_params" was dropped and the study ran without its constants
    data = _study(MANDELBROT, lambda s: s.update(const_params=s.pop("const_param")))
    with pytest.raises(
        InvalidInput, match=r"const_params: unknown field; did you mean const_param\?"
    ):
        load_study_file(_write(tmp_path, data))


# -- the HTTP side stays lenient -----------------------------------------------------------------


async def test_the_wire_models_and_the_api_still_ignore_unknown_keys(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    wire = json.loads((WIRE / "10-study-register-mandelbrot.request.json").read_text())
    wire["study"]["const_params"] = {"consts": []}
    wire["study"]["parameter_space"]["axes"][1]["sise"] = "0x3"
    wire["unheard_of"] = True
    # the file reader refuses the document …
    with pytest.raises(InvalidInput, match=r"axes\[1\]\.sise: unknown field"):
        load_study_file(_write(tmp_path, wire))
    # … while the wire models, and the API built on them, accept it as lite_dist2 does
    reg = m.StudyRegisterParam.model_validate(wire).study
    assert reg.const_param is not None and len(reg.const_param.consts) == 2
    assert m.StudyRegistry.model_validate(wire["study"]).name == "mandelbrot"
    async with make_table(request, "fake") as table:
        app = create_app(table, curriculum_path=tmp_path / "curriculum.json")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ld2.test") as http:
            resp = await http.post("/study/register", json=wire)
    assert resp.status_code == 200, resp.text
    assert resp.json()["study_id"]


# -- valid files still load -----------------------------------------------------------------------


def _objects(value: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every JSON object in `value` with its study path (a wrapper adds nothing to the path)."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(value, dict):
        found.append((path, value))
        for key, item in value.items():
            inner = path if (key == "study" and not path) else f"{path}.{key}".lstrip(".")
            found += _objects(item, inner)
    elif isinstance(value, list):
        for k, item in enumerate(value):
            found += _objects(item, f"{path}[{k}]")
    return found


def _refuses_an_extra_key_anywhere(tmp_path: Path, data: Any) -> None:
    for k in range(len(_objects(data))):
        copied = copy.deepcopy(data)
        where, obj = _objects(copied)[k]
        obj["bogus_key"] = 1
        path = _write(tmp_path, copied, "extra.json")
        field = f"{where}.bogus_key".lstrip(".")
        assert _error(path).field == f"{path}: {field}"


@pytest.mark.parametrize(
    "path",
    [
        *sorted(EXAMPLES.glob("*.json")),
        *sorted((EXAMPLES / "custom").glob("*.json")),
        *sorted((ROOT / "ld2" / "examples").glob("*.json")),
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_example_files_load_and_an_extra_key_anywhere_is_refused(
    tmp_path: Path, path: Path
) -> None:
    reg = load_study_file(path)
    assert reg.name == path.stem
    _refuses_an_extra_key_anywhere(tmp_path, json.loads(path.read_text()))


def test_lite_dist2_requests_pass_the_key_check(tmp_path: Path) -> None:
    """Every captured lite_dist2 study registration passes the key check (a few break other
    rules); one more key anywhere in those that load is refused."""
    requests = sorted(WIRE.glob("*study-register*.request.json"))
    loaded = []
    for path in requests:
        try:
            load_study_file(path)
            loaded.append(path)
        except InvalidInput as err:
            assert "unknown field" not in str(err), str(err)
    assert len(loaded) >= 10
    for path in loaded:
        _refuses_an_extra_key_anywhere(tmp_path, json.loads(path.read_text()))


def test_plain_numbers_and_defaults(tmp_path: Path) -> None:
    reg = load_study_file(_write(tmp_path, _study(MANDELBROT, lambda s: s.pop("name"))))
    assert reg.name is None  # the caller names it after the file
    y = reg.parameter_space.axes[0]
    assert (y.size, y.step, y.start) == ("0x100", (0.01171875).hex(), (-1.5).hex())
    assert reg.const_param is not None
    assert [(c.key, c.value) for c in reg.const_param.consts] == [
        ("max_iter", "0xff"),
        ("abs_threshold", (2.0).hex()),
    ]
    md5 = load_study_file(_write(tmp_path, {"study": MD5}))
    assert md5.required_capacity == ["md5-preimage"] and md5.const_param is None
    assert md5.suggest_strategy.type == "sequential"
    assert md5.suggest_strategy.suggest_strategy_param.strict_aligned is True
    axis = md5.parameter_space.axes[0]
    assert (axis.size, axis.step, axis.start) == (None, "0x1", "0x0")

    def vector_target(s: dict[str, Any]) -> None:
        s["result_type"] = "vector"
        s["result_value_type"] = "float"
        s["study_strategy"]["study_strategy_param"]["target_value"] = {
            "type": "vector",
            "value_type": "float",
            "values": [1, 0.5, "0x1.8p+1"],
        }

    reg = load_study_file(_write(tmp_path, _study(MD5, vector_target)))
    param = reg.study_strategy.study_strategy_param
    assert param is not None and isinstance(param.target_value, m.VectorValue)
    assert param.target_value.values == [(1.0).hex(), (0.5).hex(), "0x1.8p+1"]


# -- one path spelling ----------------------------------------------------------------------------

PATHS: list[tuple[str, dict[str, Any], Mutate, str]] = [
    (
        "wrong type (the model)",
        MANDELBROT,
        lambda s: s["parameter_space"]["axes"][1].update(size=True),
        "parameter_space.axes[1].size",
    ),
    (
        "not an integer (the number conversion)",
        MANDELBROT,
        lambda s: s["parameter_space"]["axes"][1].update(size=2.5),
        "parameter_space.axes[1].size",
    ),
    (
        "zero size (parse_study)",
        MANDELBROT,
        lambda s: s["parameter_space"]["axes"][1].update(size=0),
        "parameter_space.axes[1].size",
    ),
    (
        "not hex (a validator)",
        MANDELBROT,
        lambda s: s["parameter_space"]["axes"][1].update(start="0.1"),
        "parameter_space.axes[1].start",
    ),
    (
        "missing",
        MANDELBROT,
        lambda s: s["const_param"]["consts"][0].pop("key"),
        "const_param.consts[0].key",
    ),
    (
        "not an object",
        MANDELBROT,
        lambda s: s["parameter_space"]["axes"].append(7),
        "parameter_space.axes[2]",
    ),
    (
        "a union's tag is no part of the path",
        MD5,
        lambda s: s["study_strategy"]["study_strategy_param"]["target_value"].update(value="12"),
        "study_strategy.study_strategy_param.target_value.value",
    ),
    (
        "an item of a vector target",
        MD5,
        lambda s: s["study_strategy"]["study_strategy_param"].update(
            target_value={"type": "vector", "value_type": "int", "values": ["0x1", "12"]}
        ),
        "study_strategy.study_strategy_param.target_value.values[1]",
    ),
    (
        "a non-integral target (the number conversion)",
        MD5,
        lambda s: s["study_strategy"]["study_strategy_param"]["target_value"].update(value=2.5),
        "study_strategy.study_strategy_param.target_value.value",
    ),
    (
        "a target of the wrong type (parse_study)",
        MD5,
        lambda s: s["study_strategy"]["study_strategy_param"]["target_value"].update(
            value_type="float", value="0x1.0p+0"
        ),
        "study_strategy.study_strategy_param.target_value.value_type",
    ),
    ("blank name (parse_study)", MANDELBROT, lambda s: s.update(name=" "), "name"),
]


@pytest.mark.parametrize("wrap", [False, True], ids=["bare", "wrapped"])
@pytest.mark.parametrize(
    ("base", "mutate", "where"), [c[1:] for c in PATHS], ids=[c[0] for c in PATHS]
)
def test_every_error_spells_the_path_one_way(
    tmp_path: Path, base: dict[str, Any], mutate: Mutate, where: str, wrap: bool
) -> None:
    path = _write(tmp_path, _study(base, mutate, wrap))
    err = _error(path)
    assert err.field == f"{path}: {where}"
    assert str(err).startswith(f"{path}: {where}: ")
    assert "Value error" not in err.problem and not err.field.startswith(f"{path}: study.")


def test_wrong_type_in_axes_1_size_is_spelled_exactly(tmp_path: Path) -> None:
    data = _study(MANDELBROT, lambda s: s["parameter_space"]["axes"][1].update(size=True), True)
    path = _write(tmp_path, data)
    assert _error(path).field == f"{path}: parameter_space.axes[1].size"


def test_whole_document_problems(tmp_path: Path) -> None:
    path = _write(tmp_path, [MANDELBROT])
    assert str(_error(path)) == f"{path}: a study file holds a JSON object, not an array"
    path = _write(tmp_path, {"study": 3})
    assert str(_error(path)) == f"{path}: study: must be a JSON object, not a number"


# -- the file itself ------------------------------------------------------------------------------


def test_json_syntax_errors_give_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "name": [1\n    2]\n}\n')
    expected = f"{path}: not valid JSON: Expecting ',' delimiter at line 3, column 5"
    assert str(_error(path)) == expected
    with pytest.raises(InvalidInput) as err:  # the settings and snapshot reader says the same
        read_json_file(path)
    assert str(err.value) == expected
    with pytest.raises(InvalidInput) as err:
        TableConfig.load(path)
    assert str(err.value) == expected


def test_missing_directory_and_not_utf8(tmp_path: Path) -> None:
    assert str(_error(tmp_path / "nope.json")) == f"{tmp_path / 'nope.json'}: no such file"
    assert str(_error(tmp_path)) == f"{tmp_path}: is a directory, not a file"
    latin = tmp_path / "latin1.json"
    latin.write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    assert str(_error(latin)) == f"{latin}: not UTF-8 text (byte 0xe9 at offset 13)"
    with_bom = tmp_path / "bom.json"
    with_bom.write_bytes(b"\xef\xbb\xbf" + (EXAMPLES / "md5.json").read_bytes())
    assert load_study_file(with_bom).name == "md5"


# -- through the real command line ----------------------------------------------------------------


def _ld2(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "LD2_REDIS_URL", "LD2_API_URL")
    }
    return subprocess.run(
        [sys.executable, "-m", "ld2", *args],
        env={**env, "LD2_STATE_DIR": str(tmp_path / "state")},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def _cli_cases(tmp_path: Path) -> list[tuple[Path, str]]:
    unknown = _write(tmp_path, _study(MANDELBROT, lambda s: s.update(const_params=None)), "a.json")
    wrong = _write(
        tmp_path,
        _study(MANDELBROT, lambda s: s["parameter_space"]["axes"][1].update(size=True), True),
        "b.json",
    )
    broken = tmp_path / "c.json"
    broken.write_text('{\n  "name": [1\n    2]\n}\n')
    return [
        (unknown, f"{unknown}: const_params: unknown field; did you mean const_param?"),
        (wrong, f"{wrong}: parameter_space.axes[1].size: Input should be a valid string"),
        (broken, f"{broken}: not valid JSON: Expecting ',' delimiter at line 3, column 5"),
        (tmp_path / "missing.json", f"{tmp_path / 'missing.json'}: no such file"),
        (tmp_path, f"{tmp_path}: is a directory, not a file"),
    ]


def test_submit_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    for path, message in _cli_cases(tmp_path):
        out = _ld2("submit", str(path), "--redis", "redis://127.0.0.1:1/0", tmp_path=tmp_path)
        assert out.returncode == 2, out.stderr
        assert out.stderr == f"ld2: {message}\n"
        assert "Traceback" not in out.stderr + out.stdout


def test_run_exits_2_before_starting_anything(tmp_path: Path) -> None:
    path, message = _cli_cases(tmp_path)[0]
    out = _ld2("run", str(path), tmp_path=tmp_path)
    assert out.returncode == 2 and out.stderr == f"ld2: {message}\n"
    assert "Traceback" not in out.stderr and not (tmp_path / "state").exists()
