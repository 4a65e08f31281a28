"""`release_worker`: every trial a dead worker holds goes back at once, no attempt counted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ld2.core.errors import InvalidInput, TrialRejected
from ld2.store.http import HttpTable
from ld2.store.redis import RedisTable
from tests.conftest import make_table
from tests.store.helpers import all_results, int_axis, registry, run_all, square


async def _consistent(table: RedisTable, sid: str) -> tuple[int, list[str], dict[str, str]]:
    """`reserved` equals the points of the leased trials, and the leases zset lists exactly
    them; returns (reserved, lease ids, trial records)."""
    keys = table.study_keys(sid)
    reserved = int(await table.client.hget(keys.s, "reserved") or 0)
    leases = sorted(x.decode() for x in await table.client.zrange(keys.leases, 0, -1))
    records = {k.decode(): v.decode() for k, v in (await table.client.hgetall(keys.trials)).items()}
    leased = {tid: rec.split("\t") for tid, rec in records.items() if rec.split("\t")[4] == "L"}
    assert leases == sorted(leased)
    assert reserved == sum(int(rec[1]) for rec in leased.values())
    return reserved, leases, records


async def test_only_that_workers_trials_go_back_in_every_active_study(
    redis_table: RedisTable,
) -> None:
    table = redis_table
    a = await table.register_study(registry([int_axis("x", 40)], name="a"))
    b = await table.register_study(registry([int_axis("y", 30)], name="b"))
    dead = [await table.reserve([], 10, "dead") for _ in range(2)]  # a: 0-9, 10-19
    alive = await table.reserve([], 10, "alive")  # a: 20-29
    assert all(r is not None and r.study_id == a for r in [*dead, alive])
    await table.pause(a)  # a paused study's trials are released too
    in_b = await table.reserve([], 10, "dead")
    assert in_b is not None and in_b.study_id == b
    assert await table.release_worker("dead") == 3
    assert await table.release_worker("dead") == 0  # nothing left to hand back
    reserved, leases, records = await _consistent(table, a)
    assert (reserved, leases, list(records)) == (10, [alive.trial_id], [alive.trial_id])  # type: ignore[union-attr]
    assert await _consistent(table, b) == (0, [], {})
    back = sorted(x.decode() for x in await table.client.zrange(table.study_keys(a).back, 0, -1))
    assert back == ["0:10:0:-", "10:10:0:-"]  # as they were, no attempt counted
    # the dead worker's trials are no longer its own
    assert await table.heartbeat(dead[0].trial_id, "dead") == "stop"  # type: ignore[union-attr]
    with pytest.raises(TrialRejected):
        await table.register(dead[0], square(dead[0]))  # type: ignore[arg-type]
    await table.resume(a)
    await table.register(alive, square(alive))  # type: ignore[arg-type]
    again = await table.reserve([], 10, "next")
    assert again is not None and (again.start, again.count, again.attempt) == (0, 10, 0)
    await table.register(again, square(again))
    await run_all(table, 7, "next")
    for sid, total in ((a, 40), (b, 30)):
        state = await table.get_study(sid)
        assert (state.status, state.done, state.failed, state.reserved) == ("done", total, 0, 0)
        flats, values = await all_results(table, sid)
        assert flats == list(range(total)) and values == [x * x for x in range(total)]


async def test_attempts_are_kept_and_expired_trials_left_alone(
    request: pytest.FixtureRequest, real_backend: str
) -> None:
    async with make_table(request, real_backend, trial_timeout=0.2, max_attempts=5) as table:
        sid = await table.register_study(registry([int_axis("x", 20)]))
        first = await table.reserve([], 5, "dead")
        assert first is not None
        await table.fail(first.trial_id, "dead", "boom", mode="retry")  # attempt 1
        retried = await table.reserve([], 5, "dead")
        assert retried is not None and (retried.start, retried.attempt) == (0, 1)
        expired = await table.reserve([], 5, "dead")
        assert expired is not None and expired.start == 5
        await table.heartbeat(retried.trial_id, "dead")
        while await table.reap() == 0:  # wait until `expired`'s lease has run out
            await table.heartbeat(retried.trial_id, "dead")
            await asyncio.sleep(0.02)
        await table.heartbeat(retried.trial_id, "dead")  # revived if it expired too
        assert await table.release_worker("dead") == 1  # the expired one is back already
        back = sorted(
            x.decode() for x in await table.client.zrange(table.study_keys(sid).back, 0, -1)
        )
        assert back[0] == "0:5:1:-"  # its attempt as it was
        assert back[1].startswith("5:5:1:")  # expired: counted by the reaper, not here
        await _consistent(table, sid)
        await run_all(table, 5, "next")
        state = await table.get_study(sid)
        assert (state.status, state.done, state.reserved) == ("done", 20, 0)
        assert (await all_results(table, sid))[0] == list(range(20))


async def test_done_studies_and_bad_ids(redis_table: RedisTable) -> None:
    sid = await redis_table.register_study(registry([int_axis("x", 4)]))
    await run_all(redis_table, 4, "w")
    assert (await redis_table.get_study(sid)).status == "done"
    assert await redis_table.release_worker("w") == 0
    with pytest.raises(InvalidInput, match="worker_id"):
        await redis_table.release_worker("")


async def test_every_table_answers(table: Any) -> None:
    """RedisTable hands back; HttpTable (never used by ld2 run) refuses with a clear error."""
    await table.register_study(registry([int_axis("x", 8)]))
    res = await table.reserve([], 4, "dead")
    assert res is not None
    if isinstance(table, HttpTable):
        with pytest.raises(InvalidInput, match="not available over the API"):
            await table.release_worker("dead")
        return
    assert await table.release_worker("dead") == 1
    await run_all(table, 8, "w")
    assert (await all_results(table, res.study_id))[0] == list(range(8))
