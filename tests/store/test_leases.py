"""Leases: expiry, reissue, late results, heartbeats, failures and quarantine."""

import asyncio

import numpy as np
import pytest

from ld2.core.errors import NotFound, TrialRejected
from tests.conftest import make_table
from tests.store.helpers import all_results, int_axis, registry, run_all, square

TIMEOUT = 0.3


async def _expire() -> None:
    await asyncio.sleep(TIMEOUT + 0.15)


async def test_expired_range_at_index_0_is_reissued(
    request: pytest.FixtureRequest, backend: str
) -> None:
    async with make_table(request, backend, trial_timeout=TIMEOUT) as table:
        sid = await table.register_study(registry([int_axis("x", 20)]))
        first = await table.reserve([], 5, "crashed")
        assert first is not None and first.start == 0
        await _expire()
        again = await table.reserve([], 5, "w2")
        assert again is not None and (again.start, again.count) == (0, 5)
        assert again.trial_id != first.trial_id  # ids are never reused
        assert again.attempt == 1
        await table.register(again, square(again))
        await run_all(table, 5, "w2")
        state = await table.get_study(sid)
        assert state.status == "done" and state.done == 20
        flats, _ = await all_results(table, sid)
        assert flats == list(range(20))


async def test_late_result_is_salvaged_while_not_reissued(
    request: pytest.FixtureRequest, backend: str
) -> None:
    async with make_table(request, backend, trial_timeout=TIMEOUT) as table:
        sid = await table.register_study(registry([int_axis("x", 10)]))
        slow = await table.reserve([], 4, "slow")
        assert slow is not None
        await _expire()
        assert await table.reap() == 1
        assert (await table.get_study(sid)).reserved == 0
        assert await table.register(slow, square(slow)) == "ok"
        state = await table.get_study(sid)
        assert state.done == 4
        nxt = await table.reserve([], 100, "w2")
        assert nxt is not None and (nxt.start, nxt.count) == (
            4,
            6,
        )  # the salvaged range is not reissued


async def test_late_result_after_reissue_is_refused(
    request: pytest.FixtureRequest, backend: str
) -> None:
    async with make_table(request, backend, trial_timeout=TIMEOUT) as table:
        sid = await table.register_study(registry([int_axis("x", 10)]))
        slow = await table.reserve([], 4, "slow")
        assert slow is not None
        await _expire()
        redo = await table.reserve([], 4, "fast")
        assert redo is not None and redo.start == 0
        with pytest.raises(TrialRejected) as err:
            await table.register(slow, square(slow))
        assert err.value.reason in ("unknown", "reissued")
        assert await table.heartbeat(slow.trial_id, "slow") == "stop"
        await table.register(redo, square(redo))
        assert (await table.get_study(sid)).done == 4


async def test_partial_reissue_also_refuses_the_late_result(
    request: pytest.FixtureRequest, backend: str
) -> None:
    async with make_table(request, backend, trial_timeout=TIMEOUT) as table:
        sid = await table.register_study(registry([int_axis("x", 10)]))
        slow = await table.reserve([], 6, "slow")
        assert slow is not None
        await _expire()
        part = await table.reserve([], 2, "fast")  # takes [0, 2), hands [2, 6) back
        assert part is not None and (part.start, part.count) == (0, 2)
        with pytest.raises(TrialRejected):
            await table.register(slow, square(slow))
        await table.register(part, square(part))
        await run_all(table, 3, "fast")
        state = await table.get_study(sid)
        assert state.done == 10 and state.status == "done"


async def test_duplicate_registration_does_not_double_count(table) -> None:  # type: ignore[no-untyped-def]
    sid = await table.register_study(registry([int_axis("x", 10)]))
    res = await table.reserve([], 5, "w")
    await table.register(res, square(res))
    with pytest.raises(TrialRejected) as err:
        await table.register(res, square(res))
    assert err.value.reason == "duplicate"
    assert (await table.get_study(sid)).done == 5


async def test_wrong_worker_and_wrong_range(table) -> None:  # type: ignore[no-untyped-def]
    await table.register_study(registry([int_axis("x", 10)]))
    res = await table.reserve([], 5, "w")
    from dataclasses import replace

    with pytest.raises(TrialRejected) as err:
        await table.register(replace(res, worker_id="intruder"), square(res))
    assert err.value.reason == "wrong_worker"
    with pytest.raises(TrialRejected) as err:
        await table.register(replace(res, start=1), square(res))
    assert err.value.reason == "mismatch"
    assert await table.heartbeat(res.trial_id, "intruder") == "stop"


async def test_heartbeat_keeps_a_long_trial(request: pytest.FixtureRequest, backend: str) -> None:
    async with make_table(request, backend, trial_timeout=1.0) as table:
        await table.register_study(registry([int_axis("x", 10)]))
        long = await table.reserve([], 5, "long")
        assert long is not None
        for _ in range(4):  # 1.2 s in all, under a 1 s lease
            await asyncio.sleep(0.3)
            assert await table.heartbeat(long.trial_id, "long") == "ok"
        assert await table.reap() == 0
        other = await table.reserve([], 5, "other")
        assert other is not None and other.start == 5
        assert await table.register(long, square(long)) == "ok"


async def test_heartbeat_revives_an_expired_but_unissued_lease(
    request: pytest.FixtureRequest, backend: str
) -> None:
    async with make_table(request, backend, trial_timeout=TIMEOUT) as table:
        sid = await table.register_study(registry([int_axis("x", 10)]))
        res = await table.reserve([], 5, "w")
        await _expire()
        await table.reap()
        assert await table.heartbeat(res.trial_id, "w") == "ok"
        assert (await table.get_study(sid)).reserved == 5
        nxt = await table.reserve([], 10, "w2")
        assert nxt is not None and nxt.start == 5


async def test_failures_are_retried_then_quarantined(
    request: pytest.FixtureRequest, backend: str
) -> None:
    async with make_table(request, backend, max_attempts=3) as table:
        sid = await table.register_study(registry([int_axis("x", 10)]))
        attempts = []
        for _ in range(3):
            bad = await table.reserve([], 4, "w")
            assert bad is not None and bad.start == 0
            attempts.append(bad.attempt)
            await table.fail(bad.trial_id, "w", "ZeroDivisionError: boom", mode="retry")
        assert attempts == [0, 1, 2]
        await run_all(table, 4, "w")
        state = await table.get_study(sid)
        assert state.status == "done" and state.done == 6 and state.failed == 4
        (failure,) = await table.failures(sid)
        assert (failure.start, failure.count, failure.attempts) == (0, 4, 3)
        assert "boom" in failure.error
        flats, _ = await all_results(table, sid)
        assert flats == list(range(4, 10))


async def test_hand_back_on_shutdown_does_not_count_an_attempt(table) -> None:  # type: ignore[no-untyped-def]
    await table.register_study(registry([int_axis("x", 10)]))
    res = await table.reserve([], 4, "w")
    await table.fail(res.trial_id, "w", "SIGTERM", mode="release")
    again = await table.reserve([], 4, "w2")
    assert again is not None and again.start == 0 and again.attempt == 0
    with pytest.raises(TrialRejected):
        await table.fail(res.trial_id, "w", "again")


async def test_expiry_counts_as_an_attempt_and_quarantines(
    request: pytest.FixtureRequest, backend: str
) -> None:
    async with make_table(request, backend, trial_timeout=0.15, max_attempts=2) as table:
        sid = await table.register_study(registry([int_axis("x", 4)]))
        for _ in range(2):
            assert await table.reserve([], 4, "crashy") is not None
            await asyncio.sleep(0.3)
        assert await table.reap() == 1
        state = await table.get_study(sid)
        assert state.status == "done" and state.failed == 4 and state.done == 0
        assert (await table.failures(sid))[0].error == "lease expired"


async def test_heartbeat_and_fail_of_unknown_study(table) -> None:  # type: ignore[no-untyped-def]
    assert await table.heartbeat("no-such-study-0x0", "w") == "stop"
    with pytest.raises(NotFound):
        await table.fail("no-such-study-0x0", "w", "x")
    with pytest.raises(NotFound):
        await table.register_study(registry([int_axis("x", 4)])) and await table.get_study("nope")


async def test_reserve_reaps_without_a_reaper(request: pytest.FixtureRequest, backend: str) -> None:
    async with make_table(request, backend, trial_timeout=TIMEOUT) as table:
        await table.register_study(registry([int_axis("x", 3)]))
        assert await table.reserve([], 3, "a") is not None
        assert await table.reserve([], 3, "b") is None
        await _expire()
        res = await table.reserve([], 3, "b")
        assert res is not None and res.start == 0
        vals = np.array([1, 2, 3])
        assert await table.register(res, vals) == "ok"
