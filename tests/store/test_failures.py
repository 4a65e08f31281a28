"""Failed trials: split until the failing points are isolated, quarantine, retry, delete,
and a study's identity (name and content) on submit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ld2.core import models as m
from ld2.core.errors import NotFound, StudyConflict
from ld2.store.base import Table
from tests.store.helpers import all_results, int_axis, registry, square


async def _sweep(table: Table, sid: str, bad: set[int], max_size: int) -> tuple[int, int]:
    """A worker whose runner raises on any trial holding a point of `bad`.

    Returns (trials computed, trials failed)."""
    computed = failed = 0
    while (res := await table.reserve([], max_size, "w")) is not None:
        computed += 1
        if bad & set(range(res.start, res.start + res.count)):
            failed += 1
            await table.fail(res.trial_id, "w", "ValueError: bad point", mode="split")
        else:
            await table.register(res, square(res))
    return computed, failed


async def test_one_bad_point_of_1024_costs_only_that_point(table: Table) -> None:
    sid = await table.register_study(registry([int_axis("x", 1024)], name="split"))
    _, failed = await _sweep(table, sid, {500}, max_size=1024)
    state = await table.get_study(sid)
    assert (state.status, state.done, state.failed) == ("done", 1023, 1)
    [failure] = await table.failures(sid)
    assert (failure.start, failure.count, failure.attempts) == (500, 1, 3)
    assert "ValueError: bad point" in failure.error
    flats, values = await all_results(table, sid)
    assert flats == [x for x in range(1024) if x != 500]
    assert values == [x * x for x in flats]
    # 10 halvings down to the point, then its 3 attempts
    assert failed == 10 + 3


async def test_quarantine_and_release_modes(table: Table) -> None:
    sid = await table.register_study(registry([int_axis("x", 10)], name="modes"))
    res = await table.reserve([], 10, "w")
    assert res is not None
    await table.fail(res.trial_id, "w", "worker stopped", mode="release")
    again = await table.reserve([], 10, "w")
    assert again is not None and (again.start, again.count, again.attempt) == (0, 10, 0)
    await table.fail(again.trial_id, "w", "RunnerMismatch: no such constant", mode="quarantine")
    state = await table.get_study(sid)
    assert (state.status, state.failed) == ("done", 10)
    [failure] = await table.failures(sid)
    assert (failure.start, failure.count) == (0, 10)
    assert "RunnerMismatch" in failure.error


async def test_retry_requeues_quarantined_points_and_reopens_the_study(table: Table) -> None:
    sid = await table.register_study(registry([int_axis("x", 64)], name="retry"))
    await _sweep(table, sid, {7, 40}, max_size=64)
    state = await table.get_study(sid)
    assert (state.status, state.done, state.failed) == ("done", 62, 2)
    assert await table.retry_failures(sid) == 2
    state = await table.get_study(sid)
    assert (state.status, state.failed) == ("running", 0)
    await _sweep(table, sid, set(), max_size=64)  # the runner was fixed
    state = await table.get_study(sid)
    assert (state.status, state.done, state.failed) == ("done", 64, 0)
    flats, values = await all_results(table, sid)
    assert flats == list(range(64)) and values == [x * x for x in range(64)]
    assert await table.retry_failures(sid) == 0


async def test_retry_of_a_solved_find_exact_requeues_nothing(table: Table) -> None:
    sid = await table.register_study(
        registry([int_axis("x", 100)], name="fx", strategy="find_exact", target=hex(90 * 90))
    )
    await _sweep(table, sid, {3}, max_size=10)
    state = await table.get_study(sid)
    assert state.status == "done" and state.hit_flat == 90
    assert await table.retry_failures(sid) == 0


async def test_delete_forgets_a_finished_study_and_frees_its_name(table: Table) -> None:
    reg = registry([int_axis("x", 20)], name="forget")
    sid = await table.register_study(reg)
    await _sweep(table, sid, {5}, max_size=20)
    gone = await table.delete(sid)
    assert (gone.study_id, gone.name, gone.status, gone.done, gone.failed) == (
        sid, "forget", "done", 19, 1,
    )  # fmt: skip
    with pytest.raises(NotFound):
        await table.get_study(sid)
    with pytest.raises(NotFound):
        await table.get_study(name="forget")
    assert sid not in {s.study_id for s in await table.list_studies()}
    again = await table.register_study(reg)
    assert again != sid
    with pytest.raises(NotFound):
        await table.delete(sid)


def _with_const(reg: m.StudyRegistry, **consts: Any) -> m.StudyRegistry:
    items = [{"type": "int", "key": k, "value": hex(v)} for k, v in consts.items()]
    return m.StudyRegistry.model_validate(
        reg.model_dump(mode="json") | {"const_param": {"consts": items}}
    )


async def test_submit_is_idempotent_for_the_same_study(table: Table) -> None:
    reg = _with_const(registry([int_axis("x", 20)], name="same"), max_iter=255)
    sid, existed = await table.submit_study(reg)
    assert not existed
    assert await table.submit_study(reg) == (sid, True)
    assert len([s for s in await table.list_studies() if s.spec.name == "same"]) == 1


async def test_submit_of_another_study_under_a_taken_name_names_the_differences(
    table: Table,
) -> None:
    reg = _with_const(registry([int_axis("x", 20)], name="diff"), max_iter=255)
    sid, _ = await table.submit_study(reg)
    with pytest.raises(StudyConflict) as err:
        await table.submit_study(_with_const(reg, max_iter=7))
    assert err.value.differences == ["const max_iter: 255 -> 7"]
    assert err.value.study_id == sid
    wider = _with_const(registry([int_axis("x", 30)], name="diff"), max_iter=255)
    with pytest.raises(StudyConflict) as err:
        await table.submit_study(wider)
    assert err.value.differences == ["axis x size: 20 -> 30"]


async def test_fair_share_caps_a_trial_at_the_points_left_over_twice_the_workers(
    request: pytest.FixtureRequest, real_backend: str
) -> None:
    from tests.conftest import make_table

    async with make_table(request, real_backend, fair_share=True) as table:
        assert await table.reserve([], 1, "w2") is None  # a second worker is seen
        sid = await table.register_study(registry([int_axis("x", 2000)], name="fair"))
        res = await table.reserve([], 10**6, "w1")
        assert res is not None and res.study_id == sid
        assert res.count == 500  # 2000 left / (2 × 2 workers)
        await table.register(res, np.zeros(res.count, dtype=np.int64))
        nxt = await table.reserve([], 10**6, "w1")
        assert nxt is not None and nxt.count == 375  # 1500 / 4


async def test_live_workers_are_those_holding_an_unexpired_lease(
    request: pytest.FixtureRequest, backend: str
) -> None:
    import asyncio
    import time

    from tests.conftest import make_table

    async with make_table(request, backend, trial_timeout=0.5) as table:
        sid = await table.register_study(registry([int_axis("x", 100)], name="live"))
        assert (await table.get_study(sid)).live_workers == 0
        a = await table.reserve([], 10, "w1")
        await table.reserve([], 10, "w2")
        await table.reserve([], 10, "w2")
        assert a is not None
        assert (await table.get_study(sid)).live_workers == 2
        assert [s.live_workers for s in await table.list_studies()] == [2]
        deadline = time.monotonic() + 30
        while (await table.get_study(sid)).live_workers != 0:  # both die: their leases expire
            assert time.monotonic() < deadline, "leases never expired"
            await asyncio.sleep(0.05)


async def test_a_snapshot_with_an_expired_lease_loses_and_doubles_nothing(
    request: pytest.FixtureRequest, real_backend: str
) -> None:
    import asyncio

    from tests.conftest import make_table

    async with make_table(request, real_backend, trial_timeout=0.2) as src:
        sid = await src.register_study(registry([int_axis("x", 200)], name="snap"))
        held = await src.reserve([], 10, "w1")  # this worker dies: its lease expires
        other = await src.reserve([], 10, "w2")
        assert held is not None and other is not None
        await src.register(other, square(other))
        live = await src.reserve([], 10, "w3", lease=60.0)  # still leased at export time
        assert live is not None
        await asyncio.sleep(0.3)
        assert await src.reap() == 1
        snapshot = await src.export_snapshot()
        async with make_table(request, real_backend) as dst:
            [new] = await dst.import_snapshot(snapshot)
            await _sweep(dst, new, set(), max_size=10)
            state = await dst.get_study(new)
            assert (state.status, state.done, state.failed) == ("done", 200, 0)
            flats, values = await all_results(dst, new)
            assert flats == list(range(200)) and values == [x * x for x in range(200)]
        assert sid
