"""`Table.register_batch`: several computed trials registered and several leased in one call
(one request over HTTP, ``/trial/packed/batch``; one pipeline on Redis in the steady state,
see test_batch_pipeline.py). Each trial is answered on its own, a retry is answered as the
first attempt was, and only the first lease of a batch may be more than a prefetch."""

from __future__ import annotations

from typing import Any

import pytest

from ld2.core.errors import NotFound, TrialRejected
from ld2.store.base import Reservation, part_id
from tests.store.helpers import all_results, int_axis, registry, square


async def _leases(table: Any, n: int, size: int = 10, caps: list[str] | None = None) -> list[Any]:
    got = [await table.reserve(caps or [], size, "w", lease=60) for _ in range(n)]
    assert all(r is not None for r in got)
    return got


def _ranges(leased: list[Reservation]) -> list[tuple[int, int]]:
    return sorted((r.start, r.count) for r in leased)


async def test_a_batch_registers_each_trial_and_leases_up_to_its_count(table: Any) -> None:
    sid = await table.register_study(registry([int_axis("x", 200)]))
    held = await _leases(table, 3)
    settled, leased = await table.register_batch(
        [(r, square(r)) for r in held], [], 10, "w", lease=60, request_id="b1", lease_count=4
    )
    assert settled == ["ok", "ok", "ok"]
    assert _ranges(leased) == [(30, 10), (40, 10), (50, 10), (60, 10)]
    assert all(r.worker_id == "w" and r.study_id == sid for r in leased)
    state = await table.get_study(sid)
    assert (state.done, state.reserved) == (30, 40)
    settled, more = await table.register_batch(
        [(r, square(r)) for r in leased], [], 10, "w", lease_count=0
    )
    assert settled == ["ok"] * 4 and more == []
    flats, _ = await all_results(table, sid)
    assert flats == list(range(70))


async def test_a_refused_trial_is_answered_in_its_place_and_the_others_go_on(table: Any) -> None:
    sid = await table.register_study(registry([int_axis("x", 100)]))
    first, lost, last = await _leases(table, 3)
    await table.fail(lost.trial_id, "w", "handed back", mode="release")
    settled, leased = await table.register_batch(
        [(r, square(r)) for r in (first, lost, last)], [], 10, "w", lease_count=2
    )
    assert settled[0] == "ok" and settled[2] == "ok"
    assert isinstance(settled[1], TrialRejected)
    assert len(leased) == 1  # the refused trial's part leases nothing (it registers first)
    state = await table.get_study(sid)
    assert (state.done, state.reserved) == (20, 10)


async def test_a_trial_of_a_deleted_study_is_not_found_and_the_others_go_on(table: Any) -> None:
    gone = await table.register_study(registry([int_axis("x", 20)], capacity=["a"]))
    kept = await table.register_study(registry([int_axis("x", 20)], capacity=["b"]))
    (a,) = await _leases(table, 1, caps=["a"])
    (b,) = await _leases(table, 1, caps=["b"])
    await table.delete(gone)
    settled, leased = await table.register_batch(
        [(a, square(a)), (b, square(b))], ["b"], 10, "w", lease_count=1
    )
    assert isinstance(settled[0], NotFound) and settled[1] == "ok"
    assert _ranges(leased) == [(10, 10)] and leased[0].study_id == kept


async def test_a_retried_batch_is_answered_as_the_first_was(table: Any) -> None:
    """The same request id again (the first reply lost): the same leases, nothing twice."""
    sid = await table.register_study(registry([int_axis("x", 100)]))
    held = await _leases(table, 2)
    finished = [(r, square(r)) for r in held]
    first = await table.register_batch(finished, [], 10, "w", request_id="again", lease_count=3)
    again = await table.register_batch(finished, [], 10, "w", request_id="again", lease_count=3)
    assert first[0] == again[0] == ["ok", "ok"]
    assert [r.trial_id for r in first[1]] == [r.trial_id for r in again[1]]
    assert len(first[1]) == 3
    state = await table.get_study(sid)
    assert (state.done, state.reserved) == (20, 30)


async def test_a_lease_only_batch_takes_no_more_than_a_prefetch_may(table: Any) -> None:
    """30 points, trials of 10: the first lease is taken, the next ones are prefetches and the
    study has too few points waiting for them (an idle worker must get them)."""
    sid = await table.register_study(registry([int_axis("x", 30)]))
    settled, leased = await table.register_batch([], [], 10, "w", lease_count=3)
    assert settled == [] and _ranges(leased) == [(0, 10)]
    assert (await table.get_study(sid)).reserved == 10


async def test_a_batch_leases_nothing_more_once_one_finds_nothing(table: Any) -> None:
    sid = await table.register_study(registry([int_axis("x", 20)]))
    held = await _leases(table, 2)
    settled, leased = await table.register_batch(
        [(r, square(r)) for r in held], [], 10, "w", lease_count=5
    )
    assert settled == ["ok", "ok"] and leased == []
    assert (await table.get_study(sid)).status == "done"


async def test_a_retry_replays_every_lease_still_held_whatever_the_others_answer(
    table: Any,
) -> None:
    """The first attempt leased one trial in A (for the registered trial's part) and one in B
    (the part after it); its reply is lost. Then A is cancelled and another worker takes all
    that B has waiting: the retry's first part finds nothing, and the second part's lease,
    still held, is answered again rather than left to expire."""
    a = await table.register_study(registry([int_axis("x", 30)]), priority=10)
    b = await table.register_study(registry([int_axis("x", 100)]))
    (first,) = await _leases(table, 1)
    assert first.study_id == a
    finished = [(first, square(first))]
    _, leased = await table.register_batch(finished, [], 10, "w", request_id="R", lease_count=2)
    assert [r.study_id for r in leased] == [a, b]
    await table.cancel(a)
    while await table.reserve([], 10, "other") is not None:
        pass
    settled, again = await table.register_batch(
        finished, [], 10, "w", request_id="R", lease_count=2
    )
    assert isinstance(settled[0], NotFound)
    assert [r.trial_id for r in again] == [leased[1].trial_id]
    assert (await table.get_study(b)).reserved == 100


@pytest.mark.parametrize("given", ["x", "y" * 128])
@pytest.mark.parametrize("part", ["0", "r1", "a trial id with spaces", "é", "z" * 200])
def test_a_part_id_is_a_valid_request_id_and_its_own(given: str, part: str) -> None:
    ids = {part_id(given, p) for p in (part, "r0", f"{part}x")}
    assert len(ids) == 3
    assert all(
        i is not None and 0 < len(i) <= 128 and i.isascii() and i.isprintable() and " " not in i
        for i in ids
    )
    assert part_id(None, "0") is None
