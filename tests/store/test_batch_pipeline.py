"""`RedisTable.register_batch` in a worker's steady state: the registrations of a batch go in one
pipeline (one round trip, not one per trial), and what a pipeline can meet on the way — scripts
the server no longer has, a server that refuses writes — ends as a batch part by part would."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ld2.core.errors import BackendUnavailable
from ld2.store.redis import _SOURCES, RedisTable
from tests.conftest import REAL_BACKENDS, make_table
from tests.store.helpers import all_results, int_axis, registry, square


async def _held(table: RedisTable, n: int) -> list[Any]:
    got = [await table.reserve([], 10, "w", lease=60) for _ in range(n)]
    assert all(r is not None for r in got)
    return got


class _RoundTrips:
    """Counts the client's commands sent alone and its pipelines."""

    def __init__(self, table: RedisTable, monkeypatch: pytest.MonkeyPatch) -> None:
        self.alone: list[str] = []
        self.pipelines = 0
        client = table.client
        command, pipeline = client.execute_command, client.pipeline

        async def counted_command(*args: Any, **kwargs: Any) -> Any:
            self.alone.append(str(args[0]))
            return await command(*args, **kwargs)

        def counted_pipeline(*args: Any, **kwargs: Any) -> Any:
            self.pipelines += 1
            return pipeline(*args, **kwargs)

        monkeypatch.setattr(client, "execute_command", counted_command)
        monkeypatch.setattr(client, "pipeline", counted_pipeline)


async def test_a_steady_batch_is_one_round_trip(
    redis_table: RedisTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = redis_table
    sid = await table.register_study(registry([int_axis("x", 200)]))
    warm = await _held(table, 2)
    _, held = await table.register_batch(
        [(r, square(r)) for r in warm], [], 10, "w", lease=60, request_id="warm", lease_count=4
    )  # (the scripts are loaded by now)
    assert len(held) == 4
    table.index.ttl = 60.0  # the list of studies cached, as between a worker's index reads
    assert await table.reserve([], 10, "w", lease=60) is not None  # (60: read, and cached)
    trips = _RoundTrips(table, monkeypatch)
    settled, leased = await table.register_batch(
        [(r, square(r)) for r in held], [], 10, "w", lease=60, request_id="b", lease_count=4
    )
    assert (trips.alone, trips.pipelines) == ([], 1)
    assert settled == ["ok"] * 4
    assert [r.start for r in leased] == [70, 80, 90, 100]  # in part order
    state = await table.get_study(sid)
    assert (state.done, state.reserved) == (60, 50)


async def test_a_batch_after_the_server_forgot_its_scripts_still_goes_through(
    redis_table: RedisTable,
) -> None:
    """A restarted server (or SCRIPT FLUSH) has none of the scripts: each part that met
    NOSCRIPT is sent again on its own, which loads the script."""
    table = redis_table
    sid = await table.register_study(registry([int_axis("x", 100)]))
    held = await _held(table, 3)
    await table.client.script_flush()
    settled, leased = await table.register_batch(
        [(r, square(r)) for r in held], [], 10, "w", lease=60, request_id="f", lease_count=3
    )
    assert settled == ["ok"] * 3
    assert sorted(r.start for r in leased) == [30, 40, 50]
    state = await table.get_study(sid)
    assert (state.done, state.reserved) == (30, 30)


@pytest.mark.parametrize("engine", [b for b in REAL_BACKENDS if b in ("redis", "valkey")])
async def test_a_batch_a_full_server_refused_is_retried_whole(
    request: pytest.FixtureRequest, engine: str
) -> None:
    """maxmemory reached under noeviction: the batch is "not now" (BackendUnavailable, which
    every caller retries), and its retry with the same request id stores each trial once."""
    async with make_table(request, engine) as table:
        sid = await table.register_study(registry([int_axis("x", 100)]))
        held = await _held(table, 3)
        finished = [(r, square(r)) for r in held]
        before = (await table.client.config_get("maxmemory"))["maxmemory"]
        await table.client.config_set("maxmemory", "1")
        try:
            with pytest.raises(BackendUnavailable, match="full"):
                await table.register_batch(
                    finished, [], 10, "w", lease=60, request_id="oom", lease_count=3
                )
        finally:
            await table.client.config_set("maxmemory", before)
        settled, leased = await table.register_batch(
            finished, [], 10, "w", lease=60, request_id="oom", lease_count=3
        )
        assert settled == ["ok"] * 3
        assert sorted(r.start for r in leased) == [30, 40, 50]
        state = await table.get_study(sid)
        assert (state.done, state.reserved) == (30, 30)
        flats, _ = await all_results(table, sid)
        assert flats == list(range(30))


async def test_registrations_land_in_trial_order_when_only_some_scripts_were_lost(
    redis_table: RedisTable,
) -> None:
    """The server lost its scripts and another client has loaded register.lua since: the
    batch's cycle part meets NOSCRIPT, its plain register part would not. The first trial
    must still land first (find_exact: its hit is the answer, the second trial's ignored)."""
    table = redis_table
    sid = await table.register_study(registry([int_axis("x", 100)], strategy="find_exact",
                                              target="0x7"))  # fmt: skip
    held = await _held(table, 2)
    first, second = (np.zeros(10, dtype=np.int64) for _ in held)
    first[3] = second[2] = 7
    await table.client.script_flush()
    await table.client.script_load(_SOURCES["register"])
    settled, _ = await table.register_batch(
        list(zip(held, (first, second), strict=True)), [], 10, "w", lease=60, request_id="s",
        lease_count=1,
    )  # fmt: skip
    assert settled == ["ok", "ignored"]
    state = await table.get_study(sid)
    assert state.hit_flat == 3
    assert [block.start async for block in table.iter_results(sid)] == [0]


async def test_a_part_that_leased_nothing_asks_around_before_the_later_trials_land(
    redis_table: RedisTable,
) -> None:
    """Part 0's prefetch is refused near study A's end ('later': few points left beside the
    leases held); it then asks through every study — before trials 1 and 2 are registered,
    as part by part — and leases in study B, not in A."""
    table = redis_table
    a = await table.register_study(registry([int_axis("x", 60)]), priority=5)
    b = await table.register_study(registry([int_axis("y", 300)]))
    held = await _held(table, 3)
    assert await table.reserve([], 10, "other", lease=60) is not None
    settled, leased = await table.register_batch(
        [(r, square(r)) for r in held], [], 5, "w", lease=60, request_id="d", prefetch=True,
        lease_count=1,
    )  # fmt: skip
    assert settled == ["ok"] * 3
    assert [(r.study_id, r.start) for r in leased] == [(b, 0)]
    assert (await table.get_study(a)).reserved == 10
