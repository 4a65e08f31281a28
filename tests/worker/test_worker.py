"""The worker loop over a real table, in-process (the pool is real)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ld2.core import models as m
from ld2.core.errors import InvalidInput
from ld2.core.study import parse_study
from ld2.worker import runners
from ld2.worker.builtins import mandelbrot
from ld2.worker.loop import Worker, WorkerConfig
from tests.conftest import make_table, wire_json
from tests.store.helpers import all_results, int_axis, registry

MANDEL = m.StudyRegisterParam.model_validate(
    wire_json("10-study-register-mandelbrot.request.json")
).study


@pytest.fixture(params=["valkey", "http"])
async def wtable(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    async with make_table(request, request.param, trial_timeout=5.0) as t:
        yield t


async def test_mandelbrot_equals_a_direct_computation(wtable) -> None:  # type: ignore[no-untyped-def]
    sid = await wtable.register_study(MANDEL)
    worker = _worker(wtable, ["mandelbrot"], processes=2, max_size=7)
    stats = await worker.run()
    assert stats.points == 100 and max(stats.sizes) <= 7
    flats, values = await all_results(wtable, sid)
    assert flats == list(range(100))
    space = parse_study(MANDEL).space
    x, y = space.arrays(0, 100)
    assert values == mandelbrot(x, y, max_iter=255, abs_threshold=2.0).tolist()
    assert (await wtable.get_study(sid)).status == "done"


def _worker(table, capacities: list[str], *, mod: str | None = None, **settings: object) -> Worker:  # type: ignore[no-untyped-def]
    """A worker over `table`, quick to call idle (what most of these tests want)."""
    imports = [mod] if mod else []
    defaults: dict[str, object] = {"exit_when_idle": 0.3, "idle_wait": 0.05}
    config = WorkerConfig(capacities, imports=imports, **(defaults | settings))  # type: ignore[arg-type]
    return Worker(table, runners.load(imports), config)


def _square_module(tmp_path, monkeypatch, body: str) -> str:  # type: ignore[no-untyped-def]
    """A runner module of the user's, importable under a name of its own."""
    name = f"userrunners_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


async def test_runner_errors_become_failures_and_quarantine(tmp_path, monkeypatch, request) -> None:  # type: ignore[no-untyped-def]
    mod = _square_module(
        tmp_path,
        monkeypatch,
        (
            "from ld2.worker.runners import runner\n"
            "@runner('fragile')\n"
            "def fragile(x):\n"
            "    if x == 3:\n"
            "        raise ValueError('three is bad')\n"
            "    return x * x\n"
        ),
    )
    async with make_table(request, "valkey", max_attempts=2) as table:
        sid = await table.register_study(registry([int_axis("x", 10)], capacity=["fragile"]))
        worker = _worker(table, ["fragile"], mod=mod, max_size=2)
        stats = await worker.run()
        # [2, 4) fails and is halved; [3] then fails its 2 attempts and is quarantined alone
        assert stats.failures == 3
        state = await table.get_study(sid)
        assert state.status == "done" and state.failed == 1 and state.done == 9
        (failure,) = await table.failures(sid)
        assert (failure.start, failure.count) == (3, 1) and "three is bad" in failure.error
        flats, values = await all_results(table, sid)
        assert flats == [0, 1, 2, 4, 5, 6, 7, 8, 9] and values == [x * x for x in flats]


async def test_wrong_result_type_is_a_clear_failure(tmp_path, monkeypatch, request) -> None:  # type: ignore[no-untyped-def]
    mod = _square_module(
        tmp_path,
        monkeypatch,
        (
            "from ld2.worker.runners import runner\n"
            "@runner('halves')\n"
            "def halves(x):\n"
            "    return x / 2\n"
        ),
    )
    async with make_table(request, "valkey", max_attempts=1) as table:
        sid = await table.register_study(registry([int_axis("x", 4)], capacity=["halves"]))
        worker = _worker(table, ["halves"], mod=mod, max_size=4, exit_when_idle=0.2)
        await worker.run()
        failures = await table.failures(sid)
        assert [(f.start, f.count) for f in failures] == [(0, 1), (1, 1), (2, 1), (3, 1)]
        for failure in failures:
            assert "expected int values" in failure.error and "halves" in failure.error


async def test_a_runner_failing_everywhere_is_quarantined_without_a_flood(  # type: ignore[no-untyped-def]
    tmp_path, monkeypatch, request
) -> None:
    mod = _square_module(
        tmp_path,
        monkeypatch,
        (
            "from ld2.worker.runners import runner\n"
            "@runner('broken')\n"
            "def broken(x):\n"
            "    raise RuntimeError('bug')\n"
        ),
    )
    async with make_table(request, "valkey") as table:
        sid = await table.register_study(registry([int_axis("x", 20_000)], capacity=["broken"]))
        worker = _worker(table, ["broken"], mod=mod, max_size=1000, exit_when_idle=0.5)
        stats = await worker.run()
        state = await table.get_study(sid)
        assert state.status == "done" and state.failed == 20_000 and state.done == 0
        # halving stops once 32 trials failed with none succeeding; then each trial (about 20
        # of 1,000 points, and the halves already handed back) fails once: not ~60,000 trials
        assert stats.failures < 100
        assert all("RuntimeError: bug" in f.error for f in await table.failures(sid))


async def test_find_exact_over_an_infinite_axis_finds_the_hit(request) -> None:  # type: ignore[no-untyped-def]
    async with make_table(request, "valkey", trial_timeout=5.0) as table:
        target = runners.load()["md5-preimage"].func(4242)
        sid = await table.register_study(
            registry(
                [int_axis("x", None)],
                strategy="find_exact",
                target=hex(target),
                capacity=["md5-preimage"],
            )
        )
        worker = _worker(table, ["md5-preimage"], processes=2, max_size=500)
        await asyncio.wait_for(worker.run(), 60)
        state = await table.get_study(sid)
        assert state.status == "done" and state.hit_flat == 4242


async def test_stop_hands_the_trial_back(tmp_path, monkeypatch, request) -> None:  # type: ignore[no-untyped-def]
    mod = _square_module(
        tmp_path,
        monkeypatch,
        (
            "import time\n"
            "from ld2.worker.runners import runner\n"
            "@runner('slow')\n"
            "def slow(x):\n"
            "    time.sleep(0.2)\n"
            "    return x\n"
        ),
    )
    async with make_table(request, "valkey", trial_timeout=30.0) as table:
        sid = await table.register_study(registry([int_axis("x", 100)], capacity=["slow"]))
        worker = _worker(table, ["slow"], mod=mod, max_size=50, exit_when_idle=None)
        task = asyncio.create_task(worker.run())
        while (await table.get_study(sid)).reserved == 0:  # mid-trial, however slow the start
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        worker.stop()
        stats = await asyncio.wait_for(task, 10)
        assert stats.handed_back == 1
        state = await table.get_study(sid)
        assert state.reserved == 0 and state.done == 0
        res = await table.reserve(["slow"], 100, "other")
        assert res is not None and res.start == 0 and res.attempt == 0


async def test_auto_max_size_grows_toward_the_target(request) -> None:  # type: ignore[no-untyped-def]
    async with make_table(request, "valkey") as table:
        await table.register_study(registry([int_axis("x", 200_000)], capacity=["md5-preimage"]))
        worker = _worker(table, ["md5-preimage"], trial_seconds=0.05, exit_when_idle=0.2)
        stats = await worker.run()
        assert stats.sizes[0] == 16 and max(stats.sizes) > 1000


async def test_auto_max_size_is_per_study(request, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A fast study must not set the trial size of the next one."""
    mod = _square_module(
        tmp_path,
        monkeypatch,
        (
            "import time\n"
            "from ld2.worker.runners import runner\n"
            "@runner('fast', vectorized=True)\n"
            "def fast(x):\n"
            "    return x\n"
            "@runner('slow')\n"
            "def slow(x):\n"
            "    time.sleep(0.001)\n"
            "    return x\n"
        ),
    )
    async with make_table(request, "valkey") as table:
        fast = await table.register_study(registry([int_axis("x", 300_000)], capacity=["fast"]))
        worker = _worker(table, ["fast", "slow"], mod=mod, trial_seconds=0.05, exit_when_idle=0.2)
        stats = await worker.run()
        while (await table.get_study(fast)).status != "done":  # a loaded machine idles longer
            stats = await worker.run()
        grown = len(stats.sizes)
        assert max(stats.sizes) > 1000
        sid = await table.register_study(registry([int_axis("x", 400)], capacity=["slow"]))
        stats = await worker.run()
        assert stats.sizes[grown] == 16  # the slow study starts small again
        assert max(stats.sizes[grown:]) <= 4 * 16 * 4  # and grows from there, not from the fast one
        assert (await table.get_study(sid)).done == 400


def test_unknown_import_is_refused() -> None:
    with pytest.raises(InvalidInput, match="cannot import 'no_such_module_xyz'"):
        runners.load(["no_such_module_xyz"])


def test_scalar_and_vectorised_kernels_agree() -> None:
    spec = parse_study(MANDEL)
    vec = runners.compute(runners.load()["mandelbrot"], spec, 0, 100)
    scalar = runners.compute(runners.load()["mandelbrot-scalar"], spec, 0, 100)
    assert np.array_equal(vec, scalar)


def test_entry_point_runners_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = []

    class EntryPoint:
        def load(self) -> None:
            runners.runner("from-plugin")(lambda x: x)
            loaded.append(True)

    monkeypatch.setattr(
        runners, "entry_points", lambda group: [EntryPoint()] if group == "ld2.runners" else []
    )
    assert "from-plugin" in runners.load() and loaded == [True]
    runners.REGISTRY.pop("from-plugin")


async def test_short_leases_are_kept_alive_by_heartbeats(tmp_path, monkeypatch, request) -> None:  # type: ignore[no-untyped-def]
    mod = _square_module(
        tmp_path,
        monkeypatch,
        (
            "import time\nfrom ld2.worker.runners import runner\n"
            "@runner('sleepy')\n"
            "def sleepy(x):\n    time.sleep(0.3)\n    return x\n"
        ),
    )
    async with make_table(request, "valkey", trial_timeout=0.6) as table:
        sid = await table.register_study(registry([int_axis("x", 4)], capacity=["sleepy"]))
        worker = _worker(table, ["sleepy"], mod=mod, max_size=4, lease=0.6)
        stats = await worker.run()  # one trial of 1.2 s under its own 0.6 s lease
        assert stats.trials == 1 and stats.abandoned == 0
        state = await table.get_study(sid)
        assert state.done == 4 and state.status == "done"


async def test_a_study_naming_no_runner_is_handed_back_not_failed(request) -> None:  # type: ignore[no-untyped-def]
    async with make_table(request, "valkey") as table:
        sid = await table.register_study(registry([int_axis("x", 4)]))
        worker = _worker(table, ["mandelbrot", "md5-preimage"], max_size=4)
        stats = await asyncio.wait_for(worker.run(), 20)
        assert stats.trials == 0
        state = await table.get_study(sid)
        assert state.failed == 0 and state.reserved == 0 and state.status == "running"
        one = _worker(table, ["md5-preimage"], max_size=4)
        await one.run()
        assert (await table.get_study(sid)).status == "done"


async def test_a_stop_answer_abandons_the_trial_at_once(tmp_path, monkeypatch, request) -> None:  # type: ignore[no-untyped-def]
    mod = _square_module(
        tmp_path,
        monkeypatch,
        (
            "import time\nfrom ld2.worker.runners import runner\n"
            "@runner('slow-head', vectorized=True)\n"
            "def slow_head(x):\n"
            "    if x.min() < 100:\n"
            "        time.sleep(5)\n"
            "    return x * x\n"
        ),
    )
    async with make_table(request, "valkey", trial_timeout=0.9) as table:
        await table.register_study(
            registry(
                [int_axis("x", None)],
                strategy="find_exact",
                target=hex(150 * 150),
                capacity=["slow-head"],
            )
        )
        worker = _worker(table, ["slow-head"], mod=mod, processes=2, max_size=100, lease=0.9)
        t0 = asyncio.get_running_loop().time()
        stats = await asyncio.wait_for(worker.run(), 30)
        # the first trial, [0, 100), is slow; the second holds the hit: the first is dropped
        assert stats.abandoned >= 1
        assert asyncio.get_running_loop().time() - t0 < 4.5  # well before its 5 s computation


async def test_a_study_trial_limit_ends_a_hung_runner(tmp_path, monkeypatch, request) -> None:  # type: ignore[no-untyped-def]
    mod = _square_module(
        tmp_path,
        monkeypatch,
        (
            "import time\nfrom ld2.worker.runners import runner\n"
            "@runner('hangs-on-3')\n"
            "def hangs(x):\n"
            "    if x == 3:\n"
            "        time.sleep(3600)\n"
            "    return x * x\n"
        ),
    )
    async with make_table(request, "valkey", max_attempts=1) as table:
        reg = registry([int_axis("x", 6)], capacity=["hangs-on-3"])
        sid = await table.register_study(reg, trial_limit=1.0)  # the study's own setting
        worker = _worker(table, ["hangs-on-3"], mod=mod, max_size=1, exit_when_idle=2.0)
        await asyncio.wait_for(worker.run(), 60)
        state = await table.get_study(sid)
        assert (state.status, state.done, state.failed) == ("done", 5, 1)
        (failure,) = await table.failures(sid)
        assert failure.start == 3 and "TrialTimeout" in failure.error and "1.0 s" in failure.error
