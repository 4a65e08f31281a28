"""The lean trial loop: a slot leases its next trial while it computes one (prefetch), and an
idle slot waits on the store's wake-up. A prefetched trial is handed back on stop and never
lost when its worker dies; without wake-ups an idle worker still finds work (its wait times out
and it looks again)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from ld2.store.redis import RedisTable
from ld2.worker import runners
from ld2.worker.loop import LONGEST_WAIT, Worker, WorkerConfig
from tests.conftest import make_table
from tests.store.helpers import all_results, int_axis, registry

BOUND = 60.0
"""How long a test waits for a state before it fails (never reached when things work)."""

SLOW = """\
import time
from ld2.worker.runners import runner

@runner("slow", vectorized=True)
def slow(x):
    time.sleep({seconds})
    return x * x
"""


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seconds: float) -> str:
    name = f"slowrunner_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(SLOW.format(seconds=seconds))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _worker(table: Any, module: str, **settings: Any) -> Worker:
    config = WorkerConfig(["slow"], imports=[module], **settings)
    return Worker(table, runners.load([module]), config)


async def _until(what: str, check: Any) -> None:
    """Wait for a state (`check()` true), failing with `what` after BOUND seconds."""
    try:
        with anyio.fail_after(BOUND):
            while not await check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"never reached: {what} (after {BOUND:g} s)")


async def _trials_held(table: RedisTable, sid: str) -> int:
    return int(await table.client.zcard(table.study_keys(sid).leases))


async def _held_two(table: RedisTable, sid: str) -> bool:
    return await _trials_held(table, sid) == 2


async def test_a_slot_holds_the_next_trial_while_it_computes_and_hands_both_back_on_stop(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _module(tmp_path, monkeypatch, seconds=30.0)  # computing until stopped
    async with make_table(request, "valkey") as table:
        sid = await table.register_study(registry([int_axis("x", 100)], capacity=["slow"]))
        worker = _worker(table, module, max_size=10, exit_when_idle=None)
        task = asyncio.create_task(worker.run())
        await _until("the prefetch", lambda: _held_two(table, sid))
        worker.stop()
        with anyio.fail_after(BOUND):
            stats = await task
        assert stats.handed_back == 2 and stats.trials == 0 and stats.failures == 0
        state = await table.get_study(sid)
        assert (state.reserved, state.done, state.failed) == (0, 0, 0)
        # both ranges are back, first, without an attempt counted
        again = [await table.reserve(["slow"], 10, "other") for _ in range(2)]
        assert sorted((r.start, r.count, r.attempt) for r in again if r) == [
            (0, 10, 0),
            (10, 10, 0),
        ]


async def test_prefetched_trials_complete_a_study_exactly_once(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two slots prefetching over a study whose end refuses prefetches: every point once."""
    module = _module(tmp_path, monkeypatch, seconds=0.0)
    async with make_table(request, "valkey") as table:
        sid = await table.register_study(registry([int_axis("x", 997)], capacity=["slow"]))
        worker = _worker(table, module, processes=2, max_size=10, exit_when_idle=0.5,
                         idle_wait=0.05)  # fmt: skip
        with anyio.fail_after(BOUND):
            stats = await worker.run()
        assert stats.points == 997 and stats.handed_back == 0
        flats, values = await all_results(table, sid)
        assert flats == list(range(997)) and values == [x * x for x in flats]


WORKER = """\
import asyncio, sys
from ld2.store.redis import RedisTable
from ld2.worker import runners
from ld2.worker.loop import LONGEST_WAIT, Worker, WorkerConfig

async def main():
    table = RedisTable.from_url(sys.argv[1], prefix=sys.argv[2])
    config = WorkerConfig(["slow"], max_size=10, lease=1.0, heartbeat_every=0.2,
                          imports=[sys.argv[3]])
    await Worker(table, runners.load([sys.argv[3]]), config).run()

asyncio.run(main())
"""


async def test_a_prefetched_trial_of_a_killed_worker_comes_back(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL while a slot holds a trial and the one ahead: both leases expire, the reaper
    requeues both, another worker computes them; every point once."""
    module = _module(tmp_path, monkeypatch, seconds=30.0)
    async with make_table(request, "redis") as table:
        sid = await table.register_study(registry([int_axis("x", 100)], capacity=["slow"]))
        script = tmp_path / "worker.py"
        script.write_text(WORKER)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
        proc = subprocess.Popen(
            [sys.executable, str(script), table.url, table.prefix, module],
            env=env, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        try:
            await _until("the prefetch", lambda: _held_two(table, sid))
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker and its compute processes
            proc.wait()
        reaped = 0

        async def reaped_both() -> bool:
            nonlocal reaped
            reaped += await table.reap()
            return reaped == 2

        await _until("both leases reaped", reaped_both)
        state = await table.get_study(sid)
        assert (state.reserved, state.done) == (0, 0)
        back = [await table.reserve(["slow"], 10, "other") for _ in range(2)]
        assert sorted((r.start, r.count, r.attempt) for r in back if r) == [(0, 10, 1), (10, 10, 1)]


async def test_without_wake_ups_an_idle_worker_still_finds_work(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wake-up is an optimisation: with none ever sent, the wait times out and the
    worker looks again."""
    module = _module(tmp_path, monkeypatch, seconds=0.0)

    async def no_wake(self: RedisTable, sid: str) -> None:
        return None

    monkeypatch.setattr(RedisTable, "_wake", no_wake)
    async with make_table(request, "valkey") as table:
        worker = _worker(table, module, max_size=10, idle_wait=0.2, exit_when_idle=None)
        task = asyncio.create_task(worker.run())
        await _until("the worker waits", lambda: _seen(table))
        sid = await table.register_study(registry([int_axis("x", 30)], capacity=["slow"]))
        await _until("the study done", lambda: _done(table, sid))
        worker.stop()
        with anyio.fail_after(BOUND):
            await task
        flats, _ = await all_results(table, sid)
        assert flats == list(range(30))


async def test_an_idle_worker_is_woken_not_left_to_its_wait(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an hour's wait, only a wake-up can bring the study to the worker."""
    module = _module(tmp_path, monkeypatch, seconds=0.0)
    async with make_table(request, "valkey") as table:
        worker = _worker(table, module, max_size=10, idle_wait=3600.0, exit_when_idle=None)
        assert worker.config.idle_wait > BOUND
        task = asyncio.create_task(worker.run())
        await _until("the worker waits", lambda: _seen(table))
        sid = await table.register_study(registry([int_axis("x", 30)], capacity=["slow"]))
        with anyio.fail_after(LONGEST_WAIT / 2):  # before a wait could have run out
            await _until("the study done", lambda: _done(table, sid))
        worker.stop()  # ends its wait at once
        with anyio.fail_after(BOUND):
            stats = await task
        assert stats.points == 30


async def _seen(table: RedisTable) -> bool:
    return bool(await table.workers(60))


async def _done(table: RedisTable, sid: str) -> bool:
    return (await table.get_study(sid)).status == "done"


async def test_a_reserve_cut_short_by_a_stop_leaves_no_lease_behind(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store leased a trial but the reply never arrived before the stop: the worker asks
    again with the same request id when it ends, gets that lease, and hands it back."""
    module = _module(tmp_path, monkeypatch, seconds=0.0)
    async with make_table(request, "valkey") as table:
        sid = await table.register_study(registry([int_axis("x", 30)], capacity=["slow"]))
        granted = asyncio.Event()
        real = table.reserve

        async def reply_lost(*args: Any, **kwargs: Any) -> Any:
            got = await real(*args, **kwargs)
            if not granted.is_set():
                granted.set()
                await anyio.sleep_forever()  # the reply never comes
            return got

        monkeypatch.setattr(table, "reserve", reply_lost)
        worker = _worker(table, module, max_size=10, exit_when_idle=None)
        task = asyncio.create_task(worker.run())
        with anyio.fail_after(BOUND):
            await granted.wait()
        assert (await table.get_study(sid)).reserved == 10
        worker.stop()
        with anyio.fail_after(BOUND):
            await task
        state = await table.get_study(sid)
        assert (state.reserved, state.done, state.failed) == (0, 0, 0)
        back = await table.reserve(["slow"], 10, "other")
        assert back is not None and (back.start, back.attempt) == (0, 0)


async def test_without_prefetch_a_slot_asks_for_a_trial_only_when_it_holds_none(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _module(tmp_path, monkeypatch, seconds=0.0)
    async with make_table(request, "valkey") as table:
        sid = await table.register_study(registry([int_axis("x", 100)], capacity=["slow"]))
        held_when_asking: list[int] = []

        def spying(real: Any) -> Any:
            async def call(*args: Any, **kwargs: Any) -> Any:
                reserved = (await table.get_study(sid)).reserved
                if real.__name__ == "register_and_reserve":  # the trial it registers
                    reserved -= args[0].count
                held_when_asking.append(reserved)
                assert not kwargs.get("prefetch")
                return await real(*args, **kwargs)

            return call

        for name in ("reserve", "register_and_reserve"):
            monkeypatch.setattr(table, name, spying(getattr(table, name)))
        worker = _worker(table, module, max_size=10, prefetch=False, exit_when_idle=0.3,
                         idle_wait=0.05)  # fmt: skip
        with anyio.fail_after(BOUND):
            stats = await worker.run()
        assert stats.points == 100 and set(held_when_asking) == {0}
        flats, _ = await all_results(table, sid)
        assert flats == list(range(100))


async def test_a_stop_during_an_outage_ends_the_worker_cleanly(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease keeper retrying heartbeats through an outage when the stop comes: the worker
    ends without an error (its retry gives up once stopping, and that is no crash)."""
    from ld2.core.errors import BackendUnavailable

    module = _module(tmp_path, monkeypatch, seconds=30.0)
    async with make_table(request, "valkey") as table:
        await table.register_study(registry([int_axis("x", 100)], capacity=["slow"]))
        failing = asyncio.Event()

        async def outage(*args: Any, **kwargs: Any) -> Any:
            failing.set()
            raise BackendUnavailable("cannot reach Redis (a test's outage)")

        monkeypatch.setattr(table, "heartbeat", outage)
        worker = _worker(table, module, max_size=10, lease=0.6, heartbeat_every=0.2,
                         exit_when_idle=None)  # fmt: skip
        task = asyncio.create_task(worker.run())
        with anyio.fail_after(BOUND):
            await failing.wait()
        worker.stop()
        with anyio.fail_after(BOUND):
            stats = await task  # no exception
        assert stats.trials == 0 and stats.handed_back >= 1
