"""How a study's axes and constants reach a runner (by name, else by position), `check_call`,
and ``--import`` of a module in the current directory."""

from __future__ import annotations

import json
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ld2.core import models as m
from ld2.core.errors import InvalidInput, LD2Error, RunnerMismatch
from ld2.core.study import StudySpec, parse_study
from ld2.core.studyfile import study_from_json
from ld2.worker import runners
from ld2.worker.builtins import mandelbrot
from ld2.worker.runners import Runner, check_call, compute
from tests.conftest import wire_json
from tests.store.helpers import int_axis, registry

ROOT = Path(__file__).resolve().parents[2]


def _spec(axes: list[str | None], sizes: list[int] | None = None, **consts: Any) -> StudySpec:
    """A study over int axes (axis k counts from 10**k, so each axis has its own values)."""
    sizes = sizes or [3] * len(axes)
    wire_axes = []
    for k, (name, size) in enumerate(zip(axes, sizes, strict=True)):
        axis = int_axis(name or "", size, start=10**k)
        axis["name"] = name
        wire_axes.append(axis)
    reg = registry(wire_axes)
    if consts:
        elements = [
            {"type": "float", "key": k, "value": v.hex()}
            if isinstance(v, float)
            else {"type": "int", "key": k, "value": hex(v)}
            for k, v in consts.items()
        ]
        reg = reg.model_copy(
            update={"const_param": m.ConstParam.model_validate({"consts": elements})}
        )
    return parse_study(reg)


def _run(func: Any, vectorized: bool = True, name: str = "f") -> Runner:
    return Runner(name, func, vectorized)


def _mismatch(run: Runner, spec: StudySpec) -> str:
    with pytest.raises(RunnerMismatch) as err:
        check_call(run, spec)
    with pytest.raises(RunnerMismatch) as again:  # compute() refuses with the same words
        compute(run, spec, 0, 1)
    assert str(again.value) == str(err.value)
    assert err.value.runner == run.name
    return str(err.value)


# -- binding --------------------------------------------------------------------------------------


def test_axes_bind_by_name_whatever_their_order() -> None:
    spec = _spec(["y", "x"])  # y = 1, 2, 3 (rows); x = 10, 20, 30

    def f(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x * 1000 + y

    ys, xs = spec.space.arrays(0, 9)
    expected = (xs * 1000 + ys).tolist()
    assert compute(_run(f), spec, 0, 9).tolist() == expected
    assert compute(_run(f, vectorized=False), spec, 0, 9).tolist() == expected
    check_call(_run(f), spec)


def test_keyword_only_and_shuffled_parameters_bind_by_name() -> None:
    spec = _spec(["a", "b", "c"], scale=7)

    def kw(scale: int, *, c: Any, a: Any, b: Any) -> Any:
        return scale * (a * 10000 + b * 100 + c)

    def shuffled(c: Any, a: Any, b: Any, scale: int = 1) -> Any:
        return scale * (a * 10000 + b * 100 + c)

    a, b, c = spec.space.arrays(0, 27)
    expected = (7 * (a * 10000 + b * 100 + c)).tolist()
    for func in (kw, shuffled):
        for vectorized in (True, False):
            assert compute(_run(func, vectorized), spec, 0, 27).tolist() == expected


def test_axes_bind_by_position_unless_every_axis_is_named() -> None:
    def f(first: Any, second: Any) -> Any:
        return first * 1000 + second

    def g(x: Any, other: Any) -> Any:  # names one axis only: positional
        return x * 1000 + other

    for spec in (_spec(["y", "x"]), _spec([None, None]), _spec(["x", "z"])):
        p, q = spec.space.arrays(0, 9)
        for func in (f, g):
            for vectorized in (True, False):
                got = compute(_run(func, vectorized), spec, 0, 9).tolist()
                assert got == (p * 1000 + q).tolist()


def test_var_positional_takes_any_number_of_axes_and_var_keyword_any_constant() -> None:
    def total(*axes: Any, **consts: Any) -> Any:
        return sum(axes) + sum(consts.values())

    spec = _spec(["a", "b", "c"], anything=5, other=1)
    a, b, c = spec.space.arrays(0, 27)
    check_call(_run(total), spec)
    assert compute(_run(total), spec, 0, 27).tolist() == (a + b + c + 6).tolist()


def test_mandelbrot_of_the_y_x_example_is_upright() -> None:
    """examples/mandelbrot.json lists y before x: rows are y, columns x, and the picture is the
    Mandelbrot set the right way up (symmetric in y; x = -2 and the cardioid inside)."""
    data = json.loads((ROOT / "examples" / "mandelbrot.json").read_text())
    assert data == json.loads((ROOT / "ld2" / "examples" / "mandelbrot.json").read_text())
    spec = parse_study(study_from_json(data))
    assert [a.name for a in spec.space.axes] == ["y", "x"]
    ny, nx = (a.size for a in spec.space.axes)
    assert ny is not None and nx is not None
    image = compute(runners.load()["mandelbrot"], spec, 0, ny * nx).reshape(ny, nx)
    ys, xs = (a.values(np.arange(a.size or 0)) for a in spec.space.axes)
    assert (image == mandelbrot(xs[None, :], ys[:, None])).all()
    zero = int(np.flatnonzero(ys == 0.0)[0])
    assert np.array_equal(image[1:], image[1:][::-1])  # y_k = -y_(256-k): mirror rows
    assert image[zero, 0] == 255 and xs[0] == -2.0  # c = -2 is in the set
    assert image[zero, np.flatnonzero(xs == -0.5)[0]] == 255  # the main cardioid
    assert (image[:, xs > 0.5] < 255).all()  # nothing of the set right of x = 0.5 ...
    assert (image[np.abs(ys - 0.9) < 0.01] == 255).any()  # ... but some at y = 0.9


# -- check_call -----------------------------------------------------------------------------------


def test_unknown_constant_names_the_closest_parameter() -> None:
    spec = _spec(["x", "y"], max_iters=10)
    message = _mismatch(runners.load()["mandelbrot"], spec)
    assert message == (
        "runner 'mandelbrot' has no parameter 'max_iters' for const_param 'max_iters' "
        "(did you mean 'max_iter'?)"
    )

    def plain(x: Any, y: Any) -> Any:
        return x

    assert "(it takes no constants)" in _mismatch(_run(plain), spec)


def test_too_many_axes_for_positional_parameters() -> None:
    def one(v: Any) -> Any:
        return v

    message = _mismatch(_run(one), _spec(["a", "b"]))
    assert message.startswith("runner 'f' takes 1 positional parameter(s) (v)")
    assert "the study has 2 axes (a, b)" in message


def test_too_few_axes_and_missing_required_parameters() -> None:
    def three(p: Any, q: Any, r: Any) -> Any:
        return p

    message = _mismatch(_run(three), _spec(["a", "b"]))
    assert message == (
        "runner 'f' needs 3 axes for its positional parameters (p, q, r) but the study has 2 (a, b)"
    )

    def scaled(x: Any, *, scale: float) -> Any:
        return x * scale

    message = _mismatch(_run(scaled), _spec(["x"]))
    assert message == (
        "runner 'f' needs parameter 'scale', which neither an axis nor const_param gives"
    )
    check_call(_run(scaled), _spec(["x"], scale=2.0))


def test_a_constant_may_not_repeat_an_axis() -> None:
    def f(x: Any, y: Any) -> Any:
        return x

    assert "const_param 'x' would give it again" in _mismatch(_run(f), _spec(["x", "y"], x=1))
    assert "const_param 'a' would give it again" in _mismatch(
        _run(lambda a, b: a), _spec(["p", "q"], a=1)
    )


def test_every_problem_in_one_message() -> None:
    def f(x: Any, y: Any, *, scale: float) -> Any:
        return x

    message = _mismatch(_run(f), _spec(["x", "y"], scael=2.0))
    assert message.count("runner 'f'") == 1
    assert "'scael' (did you mean 'scale'?)" in message and "needs parameter 'scale'" in message


def test_builtins_accept_the_captured_and_example_studies() -> None:
    loaded = runners.load()
    mandel = parse_study(
        m.StudyRegisterParam.model_validate(
            wire_json("10-study-register-mandelbrot.request.json")
        ).study
    )
    md5 = parse_study(
        m.StudyRegisterParam.model_validate(
            wire_json("60-study-register-md5-finite.request.json")
        ).study
    )
    check_call(loaded["mandelbrot"], mandel)
    check_call(loaded["mandelbrot-scalar"], mandel)
    check_call(loaded["md5-preimage"], md5)
    for name in ("mandelbrot", "md5"):
        data = json.loads((ROOT / "examples" / f"{name}.json").read_text())
        spec = parse_study(study_from_json(data))
        check_call(loaded[data["required_capacity"][0]], spec)


def test_runner_mismatch_is_an_ld2_error_that_pickles() -> None:
    err = RunnerMismatch("f", "runner 'f' needs parameter 'z'")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, LD2Error) and isinstance(back, TypeError)
    assert (back.runner, str(back)) == ("f", "runner 'f' needs parameter 'z'")


def test_uninspectable_runners_are_called_by_position() -> None:
    spec = _spec(["x", "y"])
    x, y = spec.space.arrays(0, 9)
    check_call(_run(max, vectorized=False), spec)  # inspect.signature(max) fails
    assert compute(_run(max, vectorized=False), spec, 0, 9).tolist() == np.maximum(x, y).tolist()


# -- --import from the current directory ----------------------------------------------------------


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """tmp_path as the current directory, with sys.path, sys.modules and the registry restored."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.setattr(runners, "REGISTRY", dict(runners.REGISTRY))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_import_finds_a_module_in_the_current_directory(in_tmp: Path) -> None:
    (in_tmp / "ld2_test_here_runners.py").write_text(
        "import ld2\n\n"
        "@ld2.runner('here-double', vectorized=True)\n"
        "def double(x):\n"
        "    return x * 2\n"
    )
    loaded = runners.load(["ld2_test_here_runners"], plugins=False)
    assert "here-double" in loaded
    assert sys.path[0] == str(in_tmp)
    spec = _spec(["x"])
    assert compute(loaded["here-double"], spec, 0, 3).tolist() == [2, 4, 6]
    runners.load(["ld2_test_here_runners"], plugins=False)
    assert sys.path.count(str(in_tmp)) == 1


def test_import_failures_say_what_to_do(in_tmp: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot import 'ld2_test_nowhere'") as err:
        runners.load(["ld2_test_nowhere"], plugins=False)
    assert str(in_tmp) in str(err.value) and "PYTHONPATH" in str(err.value)
    with pytest.raises(InvalidInput, match="module name such as 'ld2_test_file'"):
        runners.load(["ld2_test_file.py"], plugins=False)
    (in_tmp / "ld2_test_needs.py").write_text("import ld2_test_not_installed_dep\n")
    with pytest.raises(InvalidInput, match="it imports 'ld2_test_not_installed_dep'"):
        runners.load(["ld2_test_needs"], plugins=False)
    (in_tmp / "ld2_test_broken.py").write_text("def f(:\n")
    with pytest.raises(InvalidInput, match=r"syntax error in .*ld2_test_broken\.py, line 1"):
        runners.load(["ld2_test_broken"], plugins=False)
    (in_tmp / "ld2_test_raises.py").write_text("raise RuntimeError('no GPU here')\n")
    with pytest.raises(InvalidInput, match="raised RuntimeError: no GPU here"):
        runners.load(["ld2_test_raises"], plugins=False)
