"""Batches: on trials shorter than a call to the store, a slot registers and leases several
trials per call and computes them in turn.

Over the real API a sweep is done in batches with every point once; a stop while a slot holds
a batch and the batch ahead hands every trial back at once (no attempt counted, none lost);
results waiting for the rest of their batch are heartbeaten; and a "stop" answer for any trial
a slot holds ends, skips or drops exactly that trial."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from ld2.store.redis import RedisTable
from ld2.worker import runners
from ld2.worker.loop import BATCH_MAX, Worker, WorkerConfig, _Hold
from tests.conftest import make_table
from tests.store.helpers import all_results, int_axis, registry
from tests.worker.test_prefetch import BOUND, _until

GATED = """\
import time
from ld2.worker.runners import runner

@runner("gated", vectorized=True)
def gated(x):
    if {slow_from} <= x.max() and x.min() < {slow_to}:
        time.sleep({seconds})
    return x * x
"""


def _module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_from: int, slow_to: int, seconds: float
) -> str:
    """A runner computing x*x at once, but sleeping `seconds` on points in [slow_from, slow_to)."""
    name = f"gatedrunner_{tmp_path.name.replace('-', '_')}"
    text = GATED.format(slow_from=slow_from, slow_to=slow_to, seconds=seconds)
    (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _worker(table: Any, module: str, **settings: Any) -> Worker:
    config = WorkerConfig(["gated"], imports=[module], batch_seconds=3600.0, **settings)
    return Worker(table, runners.load([module]), config)


def _spy_batches(table: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Each register_batch call's (trials registered, leases asked for), as it is made."""
    calls: list[tuple[int, int]] = []
    real = table.register_batch

    async def spy(finished: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((len(finished), kwargs.get("lease_count", 1)))
        return await real(finished, *args, **kwargs)

    monkeypatch.setattr(table, "register_batch", spy)
    return calls


async def test_a_sweep_over_the_api_goes_in_batches_with_every_point_once(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _module(tmp_path, monkeypatch, 0, 0, 0.0)
    async with make_table(request, "http") as table:
        assert table.batches
        sid = await table.register_study(registry([int_axis("x", 2000)], capacity=["gated"]))
        calls = _spy_batches(table, monkeypatch)
        worker = _worker(table, module, processes=2, max_size=10, exit_when_idle=0.5,
                         idle_wait=0.05)  # fmt: skip
        with anyio.fail_after(BOUND):
            stats = await worker.run()
        assert stats.points == 2000 and stats.handed_back == 0 and stats.failures == 0
        assert max(n for n, _ in calls) == BATCH_MAX  # full batches registered...
        assert max(k for _, k in calls) == BATCH_MAX  # ...and leased
        assert len(calls) < 200 / 2  # far fewer calls than trials
        flats, values = await all_results(table, sid)
        assert flats == list(range(2000)) and values == [x * x for x in flats]


async def _stuck_holding(table: RedisTable, sid: str, worker: Worker, held: int) -> bool:
    """Every fast trial computed (not all registered: some wait for their batch), and at
    least `held` trials leased."""
    leases = int(await table.client.zcard(table.study_keys(sid).leases))
    return worker.stats.points == 200 and leases >= held


async def test_a_stop_hands_back_the_batch_in_hand_and_the_batch_ahead(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trials from point 200 on compute until the stop: the slot holds a batch (one computing,
    the rest waiting) and the batch leased ahead. The stop registers what was computed and
    hands every other trial back at once, without an attempt counted."""
    module = _module(tmp_path, monkeypatch, 200, 10**9, 30.0)
    async with make_table(request, "valkey") as table:
        sid = await table.register_study(registry([int_axis("x", 2000)], capacity=["gated"]))
        worker = _worker(table, module, max_size=10, exit_when_idle=None)
        task = asyncio.create_task(worker.run())
        await _until(
            "a batch and the batch ahead held", lambda: _stuck_holding(table, sid, worker, 10)
        )
        worker.stop()
        with anyio.fail_after(BOUND):
            stats = await task
        assert stats.handed_back >= 10 and stats.failures == 0
        state = await table.get_study(sid)
        assert state.reserved == 0 and state.done == stats.points == 200
        back = []
        while (res := await table.reserve(["gated"], 10, "other")) is not None:
            back.append(res)
        assert {r.attempt for r in back} == {0}
        assert sorted(r.start for r in back) == list(range(200, 2000, 10))


async def test_results_waiting_for_their_batch_are_heartbeaten(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leases of 0.6 s; one trial computes for 2 s while the trials computed before it in its
    batch wait: their leases are kept, so their results are taken and nothing is recomputed."""
    module = _module(tmp_path, monkeypatch, 300, 310, 2.0)
    async with make_table(request, "valkey") as table:
        sid = await table.register_study(registry([int_axis("x", 800)], capacity=["gated"]))
        worker = _worker(table, module, max_size=10, lease=0.6, heartbeat_every=0.2,
                         exit_when_idle=0.5, idle_wait=0.05)  # fmt: skip
        with anyio.fail_after(BOUND):
            stats = await worker.run()
        assert stats.points == 800 and stats.failures == 0  # nothing computed twice
        flats, _ = await all_results(table, sid)
        assert flats == list(range(800))


def _res(name: str) -> Any:
    return type("Res", (), {"trial_id": name})()


async def test_a_stop_answer_ends_skips_or_drops_exactly_its_trial() -> None:
    computing, queued, ahead, done = (_res(n) for n in ("computing", "queued", "ahead", "done"))
    scope = anyio.CancelScope()
    hold = _Hold(current=[computing, queued], ahead=[ahead], computing=scope)
    hold.finished = [(done, np.zeros(1))]
    hold.told_to_stop(queued)  # not started: skipped when its turn comes
    assert not scope.cancel_called and hold.current == [computing, queued]
    assert hold.abandon(queued) and not hold.abandon(queued)  # answered once
    hold.told_to_stop(computing)  # computing: its computation ends
    assert scope.cancel_called and hold.abandon(computing)
    hold.told_to_stop(ahead)  # leased ahead: dropped
    assert hold.ahead == []
    hold.told_to_stop(done)  # computed, not registered: dropped
    assert hold.finished == [] and hold.held() == [computing, queued]
