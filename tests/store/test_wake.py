"""Idle workers wake up instead of polling: `reserve(wait=...)` blocks on the wake-up stream and
returns a trial as soon as work appears; `prefetch` leases stop near a study's end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from ld2.core.errors import InvalidInput
from ld2.store.base import Reservation
from ld2.store.redis import MAX_WAIT, RedisTable
from tests.conftest import BACKENDS, make_table
from tests.store.helpers import int_axis, registry, square

BOUND = 30.0
"""How long a test lets a woken reserve take: far below the 60 s wait it asked for, so an
answer within it came from a wake-up, not from the wait running out."""


def _twin(table: RedisTable) -> RedisTable:
    """A second table (another process, as it were) on the same server and prefix."""
    return RedisTable(table.client, prefix=table.prefix, url=table.url, index_ttl=0.0)


async def _woken_by(
    table: RedisTable, act: Callable[[], Awaitable[Any]], caps: tuple[str, ...] = ()
) -> Reservation | None:
    """Start a reserve that waits (up to MAX_WAIT), wait until it is blocked on the stream,
    run `act` from another table, and return what the reserve got."""
    blocked = asyncio.Event()
    real = table.client.xread

    async def xread(*args: Any, **kwargs: Any) -> Any:
        blocked.set()
        return await real(*args, **kwargs)

    table.client.xread = xread  # type: ignore[method-assign]
    try:
        with anyio.fail_after(BOUND):
            waiting = asyncio.create_task(table.reserve(caps, 5, "idle", wait=MAX_WAIT))
            await blocked.wait()
            await act()
            return await waiting
    finally:
        table.client.xread = real  # type: ignore[method-assign]


async def test_a_waiting_reserve_gets_a_study_registered_meanwhile(
    redis_table: RedisTable,
) -> None:
    other = _twin(redis_table)
    sids: list[str] = []

    async def register() -> None:
        sids.append(await other.register_study(registry([int_axis("x", 20)])))

    got = await _woken_by(redis_table, register)
    assert got is not None and got.study_id == sids[0] and (got.start, got.count) == (0, 5)


async def test_a_waiting_reserve_gets_a_range_handed_back(redis_table: RedisTable) -> None:
    other = _twin(redis_table)
    await other.register_study(registry([int_axis("x", 5)]))
    held = await other.reserve([], 5, "busy")
    assert held is not None
    assert await redis_table.reserve([], 5, "idle") is None  # all of it is leased

    async def hand_back() -> None:
        await other.fail(held.trial_id, "busy", "worker stopped", mode="release")

    got = await _woken_by(redis_table, hand_back)
    assert got is not None and (got.start, got.count) == (0, 5) and got.attempt == 0


async def test_a_waiting_reserve_gets_a_resumed_study(redis_table: RedisTable) -> None:
    other = _twin(redis_table)
    sid = await other.register_study(registry([int_axis("x", 5)]))
    await other.pause(sid)
    assert await redis_table.reserve([], 5, "idle") is None
    got = await _woken_by(redis_table, lambda: other.resume(sid))
    assert got is not None and got.study_id == sid


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_waiting_reserve_gets_a_reaped_range(
    request: pytest.FixtureRequest, backend: str
) -> None:
    async with make_table(request, backend, trial_timeout=0.2) as table:
        other = RedisTable(table.client, prefix=table.prefix, url=table.url, index_ttl=0.0)
        await table.register_study(registry([int_axis("x", 5)]))  # leases of 0.2 s
        held = await other.reserve([], 5, "crashed")
        assert held is not None

        async def reap() -> None:
            with anyio.fail_after(BOUND):
                while not await other.reap():  # until the lease has expired
                    await asyncio.sleep(0.05)

        got = await _woken_by(table, reap)
        assert got is not None and got.start == 0 and got.attempt == 1


async def test_a_wait_without_a_wake_up_ends_empty(redis_table: RedisTable) -> None:
    assert await redis_table.reserve([], 5, "idle", wait=0.05) is None


async def test_a_study_there_before_the_wait_is_leased_at_once(redis_table: RedisTable) -> None:
    await redis_table.register_study(registry([int_axis("x", 5)]))
    with anyio.fail_after(BOUND):
        got = await redis_table.reserve([], 5, "w", wait=MAX_WAIT)
    assert got is not None and got.start == 0


async def test_wake_ups_for_other_capacities_do_not_end_the_wait(
    redis_table: RedisTable,
) -> None:
    """A wake-up that brings no trial for this worker sends it back to waiting."""
    other = _twin(redis_table)

    async def register_elsewhere_then_here() -> None:
        await other.register_study(registry([int_axis("x", 5)], capacity=["other"]))
        await other.register_study(registry([int_axis("x", 5)], capacity=["mine"]))

    got = await _woken_by(redis_table, register_elsewhere_then_here, ("mine",))
    assert got is not None and got.spec.capacities == frozenset({"mine"})


async def test_wait_is_bounded(redis_table: RedisTable) -> None:
    with pytest.raises(InvalidInput, match="wait"):
        await redis_table.reserve([], 5, "w", wait=MAX_WAIT + 1)
    with pytest.raises(InvalidInput, match="wait"):
        await redis_table.reserve([], 5, "w", wait=-1)


async def test_prefetch_stops_while_another_worker_could_still_use_the_points(
    redis_table: RedisTable,
) -> None:
    """A prefetch lease needs room for every trial in flight to be followed by one more;
    plain reserves take everything."""
    sid = await redis_table.register_study(registry([int_axis("x", 100)]))
    held = []
    while (got := await redis_table.reserve([], 10, f"w{len(held)}", prefetch=True)) is not None:
        held.append(got)
    # waiting after n leases: 100 - 10n; refused once 100 - 10n < 10 (n + 2): n = 5
    assert len(held) == 5
    rest = []
    while (got := await redis_table.reserve([], 10, "plain")) is not None:
        rest.append(got)
    assert sum(r.count for r in held + rest) == 100
    for res in held + rest:
        await redis_table.register(res, square(res))
    assert (await redis_table.get_study(sid)).status == "done"


async def test_prefetch_after_a_registration_in_one_call(redis_table: RedisTable) -> None:
    await redis_table.register_study(registry([int_axis("x", 40)]))
    first = await redis_table.reserve([], 10, "w")
    assert first is not None
    outcome, nxt = await redis_table.register_and_reserve(
        first, square(first), [], 10, prefetch=True
    )
    assert outcome == "ok" and nxt is not None and nxt.start == 10  # 30 waiting >= 10 * 2
    outcome, nxt = await redis_table.register_and_reserve(nxt, square(nxt), [], 10, prefetch=True)
    assert outcome == "ok" and nxt is not None and nxt.start == 20  # 20 waiting >= 10 * 2
    outcome, later = await redis_table.register_and_reserve(nxt, square(nxt), [], 10, prefetch=True)
    assert outcome == "ok" and later is None  # 10 waiting, none in flight: < 10 * 2
    last = await redis_table.reserve([], 10, "w")
    assert last is not None and last.start == 30


async def test_an_infinite_study_always_prefetches(redis_table: RedisTable) -> None:
    await redis_table.register_study(
        registry([int_axis("x", None)], strategy="find_exact", target="-0x1")
    )
    for n in range(8):
        assert await redis_table.reserve([], 10, f"w{n}", prefetch=True) is not None


async def test_a_wait_longer_than_the_socket_timeout_is_no_outage(
    private_redis_url: str | None,
) -> None:
    """redis-py gives up on a read after its socket timeout, blocking commands included: a
    waiting reserve blocks in steps well inside it."""
    if private_redis_url is None:
        pytest.skip("redis-server is not installed")
    table = RedisTable.from_url(f"{private_redis_url}?socket_timeout=0.3", prefix="short")
    try:
        assert await table.reserve([], 5, "idle", wait=1.0) is None
    finally:
        await table.close()


@pytest.mark.parametrize("engine", [b for b in BACKENDS if b in ("redis", "valkey")])
async def test_waiting_reserves_share_one_blocked_connection(
    request: pytest.FixtureRequest, engine: str
) -> None:
    """Twenty idle workers (or API long polls) of one process wait on one XREAD, not twenty
    connections blocked; a study registered then wakes every one of them."""
    async with make_table(request, engine) as table:
        waiting = [
            asyncio.create_task(table.reserve([], 1, f"idle{k}", wait=MAX_WAIT)) for k in range(20)
        ]
        try:
            with anyio.fail_after(BOUND):
                while table.waking.waiters < 20 or not await _blocked_xreads(table):
                    await asyncio.sleep(0.01)
            assert await _blocked_xreads(table) == 1
            await _twin(table).register_study(registry([int_axis("x", 40)]))
            with anyio.fail_after(BOUND):
                got = await asyncio.gather(*waiting)
        finally:
            for task in waiting:
                task.cancel()
        assert all(r is not None for r in got)
        assert len({r.trial_id for r in got if r is not None}) == 20


async def _blocked_xreads(table: RedisTable) -> int:
    """Connections blocked in XREAD now (flag b; its last command stays "xread" after)."""
    found = await table.client.client_list()
    return sum(1 for c in found if c.get("cmd") == "xread" and "b" in c["flags"])


async def test_a_failed_wake_read_reaches_every_waiter_and_the_next_wait_reads_again(
    redis_table: RedisTable,
) -> None:
    """The shared XREAD failing (Redis gone) ends each waiting reserve with the "not now"
    error every caller retries — none is left waiting on a reader that is no more — and a
    reserve waiting afterwards starts a new read."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from ld2.core.errors import BackendUnavailable

    table = redis_table
    real = table.client.xread
    reads: list[int] = []

    async def failing(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        if len(reads) == 1:
            while table.waking.waiters < 3:
                await asyncio.sleep(0.005)
            raise RedisConnectionError("connection lost")
        return await real(*args, **kwargs)

    table.client.xread = failing  # type: ignore[method-assign]
    try:
        with anyio.fail_after(BOUND):
            outcomes = await asyncio.gather(
                *(table.reserve([], 1, f"idle{k}", wait=MAX_WAIT) for k in range(3)),
                return_exceptions=True,
            )
        assert all(isinstance(o, BackendUnavailable) for o in outcomes), outcomes
        assert await table.reserve([], 1, "later", wait=0.2) is None  # read again, timed out
        assert len(reads) >= 2
    finally:
        table.client.xread = real  # type: ignore[method-assign]
