"""The Python client (`ld2.Client`, `ld2.AsyncClient`, `Study`) and `ld2.sweep`, on real
backends: a private redis-server, the embedded Valkey, the HTTP API; never the shared 6379."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ld2
from ld2.client import AsyncClient, Client, StudyFailed, _plan
from ld2.core.errors import InvalidInput, NotFound, RunnerMismatch, StudyConflict
from ld2.core.models import StudyRegistry
from ld2.core.studyfile import study_from_json
from ld2.export import npy_dtype
from ld2.store.redis import RedisTable
from tests.conftest import backend_url, make_table

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CONNECTION_ENV = ("REDIS_URL", "LD2_REDIS_URL", "LD2_API_URL", "LD2_API_TOKEN", "LD2_PREFIX")


@pytest.fixture(autouse=True)
def _private_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches a Redis or API from the environment; the embedded backend's state
    directory is the test's own."""
    for name in CONNECTION_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LD2_STATE_DIR", str(tmp_path / "state"))


# -- runners of these tests (module level: a remote `ld2 worker --import tests.test_client`) ------


@ld2.runner("ld2test-cube")
def cube(x: int, power: int = 3) -> int:
    return int(x**power)


def rosen(x: float, y: float, a: float = 1.0, b: float = 100.0) -> float:
    return (a - x) ** 2 + b * (y - x * x) ** 2


def fragile(x: int) -> float:
    if x == 2:
        raise ValueError("two is not allowed")
    return x / 2


# -- studies given as dicts -------------------------------------------------------------------


def grid_study(name: str, capacity: str = "ld2test-grid", **changes: Any) -> dict[str, Any]:
    """A 3 x 4 int grid, minimize, plain numbers (as a study file may give them)."""
    data: dict[str, Any] = {
        "name": name,
        "required_capacity": [capacity],
        "study_strategy": {"type": "minimize", "study_strategy_param": None},
        "result_type": "scalar",
        "result_value_type": "int",
        "parameter_space": {
            "type": "aligned",
            "axes": [
                {"name": "x", "type": "int", "size": 3, "start": 0, "step": 1},
                {"name": "y", "type": "int", "size": 4, "start": 0, "step": 1},
            ],
        },
    }
    data.update(changes)
    return data


async def work(
    table: RedisTable, capacity: str, *, trials: int | None = None, fail: int | None = None
) -> int:
    """Compute one point at a time as a worker would: (x - 1)^2 + (y - 2)^2; the point at
    flat index `fail` is quarantined instead. Returns the trials handled."""
    n = 0
    while trials is None or n < trials:
        res = await table.reserve([capacity], 1, "test-worker")
        if res is None:
            break
        if res.start == fail:
            await table.fail(res.trial_id, res.worker_id, "ValueError: boom", mode="quarantine")
        else:
            x, y = res.arrays()
            await table.register(res, ((x - 1) ** 2 + (y - 2) ** 2).astype(np.int64))
        n += 1
    return n


@pytest.fixture
async def shared(request: pytest.FixtureRequest, real_backend: str) -> AsyncIterator[Any]:
    """A table under a fresh prefix on a real engine, and a `Client` on the same keys."""
    async with make_table(request, real_backend) as table:
        url = backend_url(request, real_backend)
        assert url is not None
        with Client(redis=url, prefix=table.prefix) as client:
            yield table, client, url


# -- submitting, finding, controlling ------------------------------------------------------------


async def test_submit_is_idempotent_and_a_conflict_is_refused(shared: Any, tmp_path: Path) -> None:
    # (an async test: every sync call below runs while this test's event loop is running)
    _, client, _ = shared
    study = client.submit(grid_study("grid"))
    assert not study.existed and study.name == "grid" and study.status().status == "wait"
    again = client.submit(grid_study("grid"))
    assert again.existed and again.id == study.id
    with pytest.raises(StudyConflict) as conflict:
        client.submit(grid_study("grid", result_value_type="float"))
    assert conflict.value.study_id == study.id and conflict.value.differences

    assert client.study("grid").id == study.id and client.study(study.id).name == "grid"
    assert [s.id for s in client.studies()] == [study.id]
    with pytest.raises(NotFound, match="no study with id or name 'nope'"):
        client.study("nope")

    path = tmp_path / "from-file.json"
    path.write_text(json.dumps({k: v for k, v in grid_study("x").items() if k != "name"}))
    assert client.submit(path).name == "from-file"  # a file without a name: its stem
    assert client.submit(str(path), name="renamed").name == "renamed"
    example = json.loads((EXAMPLES / "mandelbrot.json").read_text())
    example["parameter_space"]["axes"] = [
        {"name": "y", "type": "float", "size": 2, "step": 0.5, "start": -1.0},
        {"name": "x", "type": "float", "size": 1, "step": 0.5, "start": -1.0},
    ]
    registry = study_from_json(example)
    assert isinstance(registry, StudyRegistry)
    assert client.submit(registry).status().total == 2

    with pytest.raises(
        InvalidInput, match=r"study_strategy\.typo: unknown field; did you mean type\?"
    ):
        client.submit(grid_study("bad") | {"study_strategy": {"type": "minimize", "typo": 1}})
    with pytest.raises(InvalidInput, match=r"^parameter_space.axes\[0\].size: must be at least 1"):
        bad = grid_study("bad")
        bad["parameter_space"]["axes"][0]["size"] = 0
        client.submit(bad)
    with pytest.raises(InvalidInput, match=r"no-such\.json: no such file"):
        client.submit(tmp_path / "no-such.json")

    study.pause()
    assert study.status().status == "paused"
    study.resume()
    assert study.status().status == "wait"
    study.cancel()
    with pytest.raises(NotFound, match="no longer exists"):
        study.status()
    gone = client.study("from-file").delete()
    assert gone.name == "from-file" and gone.done == 0
    assert sorted(s.label for s in client.studies()) == ["mandelbrot", "renamed"]


async def test_results_failures_answer_and_wait(
    shared: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    table, client, _ = shared
    study = client.submit(grid_study("grid"))
    assert await work(table, "ld2test-grid", trials=5) == 5  # points 0-4 of 12

    records = study.results()
    assert records.dtype == npy_dtype(study.state.spec.space, "int", None)
    assert records["x"].tolist() == [0, 0, 0, 0, 1] and records["y"].tolist() == [0, 1, 2, 3, 0]
    assert records["result"].tolist() == [5, 2, 1, 2, 4]
    partial = study.to_xarray()
    assert partial.dims == ("x", "y") and partial.shape == (3, 4)
    assert partial.coords["x"].values.tolist() == [0, 1, 2]
    assert partial.values[0].tolist() == [5.0, 2.0, 1.0, 2.0]
    assert int(np.isnan(partial.values).sum()) == 7 and partial.attrs["done"] == 5
    assert study.answer is not None and not study.answer.final  # the minimum so far
    with pytest.raises(
        TimeoutError, match=r"grid is not done after 0\.2 s: running, 5 of 12 points"
    ):
        study.wait(timeout=0.2, progress=False)

    await work(table, "ld2test-grid", fail=11)  # the last point (x = 2, y = 3) fails
    with pytest.raises(StudyFailed) as failed:
        study.wait(progress=False)
    text = str(failed.value)
    assert text.startswith("grid: 1 of 12 points failed:")
    assert "x = 2, y = 3: ValueError: boom" in text
    assert failed.value.state.failed == 1 and failed.value.failures[0].point == {"x": 2, "y": 3}
    state = study.wait(check=False)  # a progress bar, then the state: no exception
    assert state.status == "done" and state.done == 11

    [failure] = study.failures()
    assert (failure.start, failure.count, failure.point) == (11, 1, {"x": 2, "y": 3})
    assert "boom" in failure.error and str(failure) == failure.text
    answer = study.answer
    assert answer is not None and answer.found and answer.final
    assert (answer.point, answer.value) == ({"x": 1, "y": 2}, 0)
    assert str(answer) == "minimum 0 at x = 1, y = 2"

    grid = study.to_xarray()
    assert grid.sel(x=1, y=2).item() == 0 and math.isnan(grid.sel(x=2, y=3).item())
    frame = study.to_pandas()
    assert list(frame.columns) == ["x", "y", "result"] and len(frame) == 11
    assert frame.attrs["failed"] == 1

    monkeypatch.setitem(sys.modules, "xarray", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install 'ld2\[xarray\]'"):
        study.to_xarray()
    with pytest.raises(ImportError, match=r"pip install 'ld2\[pandas\]'"):
        study.to_pandas()

    assert study.retry() == 1 and study.status().status != "done"
    await work(table, "ld2test-grid")
    assert study.wait(progress=False).failed == 0  # whole now: no exception


async def test_async_client(shared: Any) -> None:
    table, _, url = shared
    async with AsyncClient(redis=url, prefix=table.prefix) as client:
        study = await client.submit(grid_study("async"))
        assert (await client.study("async")).id == study.id
        waiting = asyncio.create_task(study.wait(progress=False))
        await work(table, "ld2test-grid")
        state = await waiting
        assert state.status == "done" and state.done == 12
        assert (await study.results())["result"].tolist()[:4] == [5, 2, 1, 2]
        assert str(await study.answer()) == "minimum 0 at x = 1, y = 2"
        assert (await study.to_xarray()).shape == (3, 4)
        assert (await study.delete()).done == 12


def test_the_api_and_the_connection_rules(
    private_redis_url: str | None, embedded_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.api.test_processes import api_process

    redis_url = private_redis_url or embedded_url
    prefix = f"ld2test-{uuid.uuid4().hex[:12]}"
    with api_process(redis_url, "--prefix", prefix, "--token", "s3cret") as api:
        with Client(api=api, token="s3cret") as client:
            study = client.submit(grid_study("over-http"))
            assert client.submit(grid_study("over-http")).existed
            with pytest.raises(StudyConflict):
                client.submit(grid_study("over-http", result_value_type="float"))

        async def compute() -> None:
            async with RedisTable.from_url(redis_url, prefix=prefix) as table:
                await work(table, "ld2test-grid")

        asyncio.run(compute())
        monkeypatch.setenv("LD2_API_URL", api)
        monkeypatch.setenv("LD2_API_TOKEN", "s3cret")
        with Client() as client:  # the environment's API
            study = client.study("over-http")
            assert study.wait(progress=False).done == 12
            assert study.results()["result"].tolist()[:4] == [5, 2, 1, 2]
            assert study.answer is not None and study.answer.point == {"x": 1, "y": 2}
        with Client(redis=redis_url, prefix=prefix) as client:  # an explicit Redis wins
            assert client.study("over-http").id == study.id
            assert type(client._call(client._async.table())).__name__ == "RedisTable"
        monkeypatch.setenv("LD2_API_TOKEN", "wrong")
        with Client() as client, pytest.raises(Exception, match=r"HTTP 401"):
            client.studies()


def test_the_embedded_backend_by_default(tmp_path: Path) -> None:
    with Client() as client:  # $LD2_STATE_DIR: the test's own
        client.submit(grid_study("here"))
    with Client(state_dir=tmp_path / "state") as client:
        assert [s.label for s in client.studies()] == ["here"]
    with Client(state_dir=tmp_path / "elsewhere") as client:
        assert client.studies() == []
    with pytest.raises(InvalidInput, match="redis: not a Redis URL"), Client("http://x") as c:
        c.studies()


def test_import_ld2_is_light() -> None:
    code = (
        "import sys, ld2; "
        "print(sorted(m for m in ('numpy', 'redis', 'rich', 'ld2.client') if m in sys.modules)); "
        "print(callable(ld2.sweep), 'numpy' in sys.modules, sorted(ld2.__all__))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "[]", out.stdout
    assert lines[1].startswith("True True") and "'Client'" in lines[1] and "'arange'" in lines[1]


# -- axes ----------------------------------------------------------------------------------------


def test_axes() -> None:
    assert ld2.linspace(0, 1, 5).values().tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert ld2.linspace(2, 2, 1).values().tolist() == [2.0]
    assert ld2.arange(5).values().tolist() == [0, 1, 2, 3, 4]
    assert ld2.arange(10, 0, -3).values().tolist() == [10, 7, 4, 1]
    assert ld2.arange(0, 1, 0.25).kind == "float" and len(ld2.arange(0, 1, 0.25)) == 4
    assert ld2.arange(2**70, 2**70 + 2).values().tolist() == [2**70, 2**70 + 1]
    with pytest.raises(InvalidInput, match="holds no value"):
        ld2.arange(3, 3)
    with pytest.raises(InvalidInput, match="step: must not be 0"):
        ld2.arange(0, 3, 0)
    with pytest.raises(InvalidInput, match="num: must be a whole number"):
        ld2.linspace(0, 1, 0)
    with pytest.raises(InvalidInput, match="start: must be finite"):
        ld2.linspace(float("nan"), 1, 3)
    with pytest.raises(InvalidInput, match="a constant is a keyword"):
        ld2.linspace(1, 1, 3)

    def f(x: Any, flag: bool = False, label: str = "") -> float:
        return 0.0

    with pytest.raises(InvalidInput, match="no axis"):
        ld2.sweep(f, x=1.5)
    with pytest.raises(InvalidInput, match=r"x: an axis is ld2\.linspace"):
        ld2.sweep(f, x=[1, 2, 3])
    with pytest.raises(InvalidInput, match="label: a constant is a bool, int, float or str"):
        ld2.sweep(f, x=range(3), label=object())
    with pytest.raises(RunnerMismatch, match="has no parameter 'sigma'"):
        ld2.sweep(f, x=range(3), sigma=1.0)
    with pytest.raises(InvalidInput, match="returned str"):
        ld2.sweep(lambda x: "text", x=range(3))
    with pytest.raises(ZeroDivisionError) as probe:
        ld2.sweep(lambda x: 1 / x, x=range(3))
    assert "at the first point (x = 0)" in "".join(probe.value.__notes__)

    plan = _plan(rosen, {"x": ld2.linspace(0, 1, 3), "y": range(2), "b": 10.0}, {}, name=None,
                 vectorized=None, result=None, remote=False)  # fmt: skip
    reg = plan.registry
    assert reg.required_capacity == ["tests.test_client:rosen"]
    assert [(a.name, a.type) for a in reg.parameter_space.axes] == [("x", "float"), ("y", "int")]
    assert reg.result_value_type == "float" and reg.const_param is not None
    assert reg.const_param.to_dict() == {"b": 10.0}
    assert reg.name is not None and reg.name.startswith("rosen-")
    same = _plan(rosen, {"x": ld2.linspace(0, 1, 3), "y": range(2), "b": 10.0}, {}, name=None,
                 vectorized=None, result=None, remote=False)  # fmt: skip
    other = _plan(rosen, {"x": ld2.linspace(0, 1, 3), "y": range(2), "b": 11.0}, {}, name=None,
                  vectorized=None, result=None, remote=False)  # fmt: skip
    assert same.registry.name == reg.name != other.registry.name
    named = _plan(lambda x, workers: x * workers, {"x": range(2)}, {"workers": 3}, name="w",
                  vectorized=None, result=None, remote=False)  # fmt: skip
    assert named.registry.name == "w" and named.registry.const_param is not None
    assert named.registry.const_param.to_dict() == {"workers": 3}  # a constant named as an option
    assert named.registry.result_value_type == "int"
    assert _plan(cube, {"x": range(2)}, {}, name="c", vectorized=None, result="int",
                 remote=True).registry.required_capacity == ["ld2test-cube"]  # fmt: skip


# -- sweeps --------------------------------------------------------------------------------------


def test_sweep_on_this_machine() -> None:
    scale = 3  # a closure: nothing a spawned process could import

    def shifted(n: int, odd: bool, x: float, offset: int = 0) -> float:
        return scale * n + int(odd) + x + offset

    grid = ld2.sweep(
        shifted, n=ld2.arange(0, 4), odd=[False, True], x=ld2.linspace(0, 0.5, 3),
        workers=2, offset=10, progress=False,
    )  # fmt: skip
    assert grid.dims == ("n", "odd", "x") and grid.shape == (4, 2, 3)
    assert grid.coords["odd"].values.tolist() == [False, True]
    n, odd, x = np.meshgrid([0, 1, 2, 3], [0, 1], [0.0, 0.25, 0.5], indexing="ij")
    assert np.array_equal(grid.values, 3 * n + odd + x + 10)
    assert grid.attrs["status"] == "done" and grid.attrs["total"] == 24

    vectorized = ld2.sweep(
        lambda x, y: np.stack([x + y, x * y], axis=1), x=ld2.arange(0, 3), y=ld2.arange(1, 3),
        vectorized=True, workers=1, progress=False,
    )  # fmt: skip
    assert vectorized.dims == ("x", "y", "component") and vectorized.dtype == np.int64
    assert vectorized.sel(x=2, y=2).values.tolist() == [4, 4]

    big = ld2.sweep(lambda k: 2**70 + k, k=range(3), workers=1, progress=False)
    assert big.values.tolist() == [2**70, 2**70 + 1, 2**70 + 2]


def test_a_failing_sweep_raises_with_what_it_computed() -> None:
    with pytest.raises(StudyFailed) as failed:
        ld2.sweep(fragile, x=ld2.arange(0, 5), workers=2, progress=False)
    assert "1 of 5 points failed" in str(failed.value)
    assert "x = 2: ValueError: two is not allowed (3 attempts)" in str(failed.value)
    partial = failed.value.result
    assert partial.values[[0, 1, 3, 4]].tolist() == [0.0, 0.5, 1.5, 2.0]
    assert math.isnan(partial.values[2])


async def test_sweep_and_client_inside_a_running_loop(tmp_path: Path) -> None:
    # a notebook: its event loop is running while the sync API is called
    asyncio.get_running_loop()
    kept = tmp_path / "kept"
    grid = ld2.sweep(rosen, x=ld2.linspace(-1, 1, 3), y=ld2.linspace(0, 2, 3), b=10.0,
                     workers=2, state_dir=kept, progress=False)  # fmt: skip
    assert grid.sel(x=1.0, y=1.0).item() == 0.0
    again = ld2.sweep(rosen, x=ld2.linspace(-1, 1, 3), y=ld2.linspace(0, 2, 3), b=10.0,
                      workers=2, state_dir=kept, progress=False)  # fmt: skip
    assert again.attrs["study_id"] == grid.attrs["study_id"]  # found, not computed again
    with Client(state_dir=kept) as client:
        [study] = client.studies()
        assert study.label == grid.attrs["study"] and study.status().done == 9
        assert study.results()["result"].tolist() == grid.values.ravel().tolist()
        frame = study.to_pandas()
        assert frame.loc[(frame.x == 1.0) & (frame.y == 1.0), "result"].item() == 0.0


@pytest.fixture
def remote_worker(private_redis_url: str | None, embedded_url: str) -> Iterator[tuple[str, str]]:
    """`ld2 worker --import tests.test_client --capacity ld2test-cube` as its own process."""
    url = private_redis_url or embedded_url
    prefix = f"ld2test-{uuid.uuid4().hex[:12]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ld2", "worker", "--import", "tests.test_client", "--capacity",
         "ld2test-cube", "--processes", "1", "--idle-wait", "0.1", "--redis", url],
        cwd=ROOT, env={**os.environ, "LD2_PREFIX": prefix},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield url, prefix
    finally:
        proc.terminate()
        proc.wait(15)


def test_a_sweep_on_a_client_waits_for_its_workers(remote_worker: tuple[str, str]) -> None:
    url, prefix = remote_worker
    with Client(redis=url, prefix=prefix) as client:
        grid = ld2.sweep(cube, x=ld2.arange(0, 12), power=2, client=client, progress=False,
                         timeout=120)  # fmt: skip
        assert grid.values.tolist() == [x**2 for x in range(12)]
        [study] = client.studies()
        assert study.state.spec.capacities == {"ld2test-cube"} and study.state.done == 12
        with pytest.raises(InvalidInput, match="runs no local workers"):
            ld2.sweep(cube, x=range(3), client=client, workers=2)
        with pytest.raises(InvalidInput, match="no other process can import it"):
            ld2.sweep(lambda x: x, x=range(3), client=client)
        assert [s.id for s in client.studies()] == [study.id]  # nothing was submitted


def test_an_undecorated_function_is_served_by_its_module_and_name(
    private_redis_url: str | None, embedded_url: str
) -> None:
    """`sweep(rosen, client=)` names the capacity ``tests.test_client:rosen``; a worker given
    that name imports the function itself (no ``@ld2.runner``, no ``--import``)."""
    url = private_redis_url or embedded_url
    prefix = f"ld2test-{uuid.uuid4().hex[:12]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ld2", "worker", "--capacity", "tests.test_client:rosen",
         "--processes", "1", "--idle-wait", "0.1", "--redis", url],
        cwd=ROOT, env={**os.environ, "LD2_PREFIX": prefix},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with Client(redis=url, prefix=prefix) as client:
            grid = ld2.sweep(rosen, x=ld2.linspace(-1, 1, 3), y=ld2.linspace(0, 2, 3),
                             result="float", client=client, progress=False, timeout=120)  # fmt: skip
            expected = [[rosen(x, y) for y in (0.0, 1.0, 2.0)] for x in (-1.0, 0.0, 1.0)]
            assert grid.values.tolist() == expected
            [study] = client.studies()
            assert study.state.spec.capacities == {"tests.test_client:rosen"}
    finally:
        proc.terminate()
        proc.wait(15)
    bad = subprocess.run(
        [sys.executable, "-m", "ld2", "worker", "--capacity", "tests.test_client:nothing",
         "--redis", url], cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "unknown capacity 'tests.test_client:nothing'" in bad.stderr
