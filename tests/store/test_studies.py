"""Study-level behaviour: strategies, ordering, capacities, control, results and progress."""

import asyncio

import numpy as np
import pytest

from ld2.core.errors import NotFound, TrialRejected
from ld2.core.planning import Permutation, Tiling, plan_count
from ld2.store.redis import RedisTable
from tests.conftest import make_table
from tests.store.helpers import all_results, int_axis, registry, run_all, square


async def test_find_exact_hit_stops_every_lease(table: RedisTable) -> None:
    target = 7**2 + 0  # square() of x=7 on a 1-axis study
    sid = await table.register_study(
        registry([int_axis("x", 100)], strategy="find_exact", target=hex(target))
    )
    a = await table.reserve([], 5, "a")  # [0, 5)
    b = await table.reserve([], 5, "b")  # [5, 10) holds x=7
    c = await table.reserve([], 5, "c")
    assert await table.register(b, square(b)) == "ok"
    state = await table.get_study(sid)
    assert state.status == "done" and state.hit_flat == 7
    assert await table.heartbeat(a.trial_id, "a") == "stop"
    assert await table.heartbeat(c.trial_id, "c") == "stop"
    ignored = "ignored"  # answered without error
    assert await table.register(c, square(c)) == ignored
    assert await table.reserve([], 5, "d") is None
    assert (await table.get_study(sid)).done == 5


async def test_find_exact_compares_values_and_exhausts(table: RedisTable) -> None:
    sid = await table.register_study(
        registry([int_axis("x", 10)], strategy="find_exact", target="0xFFFF")
    )
    await run_all(table, 4)
    state = await table.get_study(sid)
    assert state.status == "done" and state.hit_flat is None and state.done == 10
    sid2 = await table.register_study(
        registry([int_axis("x", 10)], strategy="find_exact", target="0X31")  # 49 = 7²
    )
    await run_all(table, 4)
    assert (await table.get_study(sid2)).hit_flat == 7


async def test_find_exact_on_an_infinite_axis(table: RedisTable) -> None:
    sid = await table.register_study(
        registry([int_axis("x", None, 1000)], strategy="find_exact", target=hex(1234**2))
    )
    await run_all(table, 64)
    state = await table.get_study(sid)
    assert state.status == "done" and state.hit_flat == 234 and state.total is None


async def test_minimize_keeps_lowest_and_first_on_ties(table: RedisTable) -> None:
    sid = await table.register_study(registry([int_axis("x", 21, -10)], strategy="minimize"))
    # square() is lowest (0) at x=0 (flat 10); make a tie at flats 4 and 16 by registering later
    res = [await table.reserve([], 7, "w") for _ in range(3)]
    for r in reversed(res):
        await table.register(r, square(r))
    state = await table.get_study(sid)
    assert state.status == "done" and state.best_flat == 10
    sid2 = await table.register_study(registry([int_axis("x", 6)], strategy="minimize"))
    a = await table.reserve([], 3, "w")
    b = await table.reserve([], 3, "w")
    await table.register(b, np.array([5, 1, 9]))
    await table.register(a, np.array([4, 1, 1]))
    assert (await table.get_study(sid2)).best_flat == 1  # the tie at 1 keeps the lowest flat index


async def test_no_head_of_line_blocking(table: RedisTable) -> None:
    busy = await table.register_study(registry([int_axis("x", 5)], name="busy"))
    other = await table.register_study(registry([int_axis("x", 5)], name="other"))
    held = await table.reserve([], 5, "w1")
    assert held is not None and held.study_id == busy
    nxt = await table.reserve([], 5, "w2")
    assert nxt is not None and nxt.study_id == other


async def test_capacities_and_priority(table: RedisTable) -> None:
    gpu = await table.register_study(registry([int_axis("x", 5)], capacity=["gpu"]))
    assert await table.reserve([], 5, "cpu-only") is None
    assert await table.reserve(["cpu"], 5, "cpu-only") is None
    res = await table.reserve(["cpu", "gpu"], 5, "both")
    assert res is not None and res.study_id == gpu
    low = await table.register_study(registry([int_axis("x", 5)]), priority=-1)
    high = await table.register_study(registry([int_axis("x", 5)]), priority=5)
    first = await table.reserve([], 1, "w")
    assert first is not None and first.study_id == high
    await run_all(table, 10)
    assert (await table.get_study(low)).status == "done"


async def test_running_studies_before_waiting_ones(table: RedisTable) -> None:
    a = await table.register_study(registry([int_axis("x", 10)]))
    b = await table.register_study(registry([int_axis("x", 10)]), priority=3)
    first = await table.reserve([], 1, "w")
    assert first is not None and first.study_id == b
    await table.pause(b)
    second = await table.reserve([], 1, "w")
    assert second is not None and second.study_id == a
    await table.resume(b)
    # both running now: priority decides again
    third = await table.reserve([], 1, "w")
    assert third is not None and third.study_id == b


async def test_pause_and_resume(table: RedisTable) -> None:
    sid = await table.register_study(registry([int_axis("x", 10)]))
    held = await table.reserve([], 5, "w")
    await table.pause(sid)
    state = await table.get_study(sid)
    assert state.status == "paused" and state.wire_status == "running"
    assert await table.reserve([], 5, "w") is None
    assert await table.heartbeat(held.trial_id, "w") == "ok"  # work in flight may finish
    assert await table.register(held, square(held)) == "ok"
    await table.resume(sid)
    assert (await table.get_study(sid)).status == "running"
    await run_all(table, 5)
    assert (await table.get_study(sid)).status == "done"
    with pytest.raises(NotFound):
        await table.pause(sid)


async def test_cancel_removes_everything_and_frees_the_name(table: RedisTable) -> None:
    sid = await table.register_study(registry([int_axis("x", 10)], name="gone"))
    held = await table.reserve([], 5, "w")
    await table.cancel(sid)
    assert await table.heartbeat(held.trial_id, "w") == "stop"
    with pytest.raises(NotFound):
        await table.register(held, square(held))
    with pytest.raises(NotFound):
        await table.get_study(sid)
    with pytest.raises(NotFound):
        await table.cancel(sid)
    if isinstance(table, RedisTable):
        assert [k async for k in table.client.scan_iter(match=f"{table.prefix}:{{{sid}}}*")] == []
    again = await table.register_study(registry([int_axis("x", 10)], name="gone"))
    assert again != sid


async def test_duplicate_name_is_refused_and_done_names_stay_taken(table: RedisTable) -> None:
    from ld2.core.errors import InvalidInput

    await table.register_study(registry([int_axis("x", 2)], name="n"))
    with pytest.raises(InvalidInput, match=r"study\.name"):
        await table.register_study(registry([int_axis("x", 2)], name="n"))
    await run_all(table, 2)
    with pytest.raises(InvalidInput, match="already registered"):
        await table.register_study(registry([int_axis("x", 2)], name="n"))


@pytest.mark.parametrize("strict", [True, False])
async def test_random_order_matches_the_core_permutation(table: RedisTable, strict: bool) -> None:
    reg = registry([int_axis("x", 7), int_axis("y", 11, -5)], order="random", strict=strict)
    sid = await table.register_study(reg)
    spec = (await table.get_study(sid)).spec
    got = []
    while (res := await table.reserve([], 6, "w")) is not None:
        got.append((res.start, res.count))
        await table.register(res, square(res))
    tiling = Tiling(spec.space, 6, spec.jagged)
    seed = int(sid.replace("-", ""), 16) & 0xFFFFFFFF
    perm = Permutation(tiling.count, seed)
    assert got == [tiling.chunk(perm(i)) for i in range(tiling.count)]
    assert got != sorted(got)
    flats, _values = await all_results(table, sid)
    assert flats == list(range(77))


async def test_random_order_with_smaller_max_size_later(table: RedisTable) -> None:
    sid = await table.register_study(registry([int_axis("x", 40)], order="random"))
    first = await table.reserve([], 10, "w")
    await table.register(first, square(first))
    sizes = []
    while (res := await table.reserve([], 3, "w")) is not None:
        assert res.count <= 3
        sizes.append(res.count)
        await table.register(res, square(res))
    assert (await table.get_study(sid)).done == 40


async def test_lua_planning_matches_python(table: RedisTable) -> None:
    axes = [int_axis("a", 3), int_axis("b", 4, -2), int_axis("c", 5, 7, -3)]
    sid = await table.register_study(registry(axes))
    space = (await table.get_study(sid)).spec.space
    cursor = 0
    for max_size in [1, 7, 3, 12, 45, 2, 5, 19, 60]:
        res = await table.reserve([], max_size, "w")
        if res is None:
            break
        assert (res.start, res.count) == (cursor, plan_count(space, cursor, max_size, False))
        cursor += res.count


async def test_results_stream_while_running_and_progress(
    request: pytest.FixtureRequest, backend: str
) -> None:
    async with make_table(request, backend) as table:
        sid = await table.register_study(registry([int_axis("x", 100)], name="prog"))
        a = await table.reserve([], 10, "w-a", "alice")
        b = await table.reserve([], 30, "w-b", "bob")
        await table.register(b, square(b))
        flats, _ = await all_results(table, sid)
        assert flats == list(range(10, 40))  # partial results, grid order
        await asyncio.sleep(0.05)
        prog = await table.progress(60)
        (p,) = prog.studies
        assert p.name == "prog" and p.done == 30 and p.total == 100
        assert [e.worker_name for e in p.workers] == ["bob"]
        # the window is the study's real age (well under 60 s), not the cutoff
        assert p.velocity > 30 / 60 * 5
        assert p.eta is not None
        await table.register(a, square(a))
        empty = await table.progress(0)
        assert empty.studies[0].eta is None


async def test_list_studies_order_and_summary(table: RedisTable) -> None:
    first = await table.register_study(registry([int_axis("x", 3)], name="first"))
    second = await table.register_study(registry([int_axis("x", 3)]))
    while (res := await table.reserve([], 3, "w")) is not None:
        await table.register(res, square(res))
        break
    states = await table.list_studies()
    assert [s.study_id for s in states] == [first, second]  # done ones first
    summary = states[1].summary()
    assert summary.name is None and summary.status == "wait" and summary.total_grids == 3
    assert states[1].label == second


async def test_vector_results_and_length_check(table: RedisTable) -> None:
    sid = await table.register_study(
        registry([int_axis("x", 6)], result_type="vector", value_type="float")
    )
    a = await table.reserve([], 3, "w")
    await table.register(a, np.ones((3, 2)))
    b = await table.reserve([], 3, "w")
    with pytest.raises(TrialRejected) as err:
        await table.register(b, np.ones((3, 4)))
    assert err.value.reason == "vector_length"
    await table.register(b, np.zeros((3, 2)))
    _, values = await all_results(table, sid)
    assert values == [[1.0, 1.0]] * 3 + [[0.0, 0.0]] * 3


async def test_backlog(table: RedisTable) -> None:
    empty = await table.backlog()
    assert (empty.points_waiting, empty.active_studies) == (0, 0)
    await table.register_study(registry([int_axis("x", 100)]))
    a = await table.reserve([], 10, "w1")
    await table.reserve([], 20, "w2")
    await table.fail(a.trial_id, "w1", "boom", mode="retry")
    log = await table.backlog()
    assert log.points_waiting == 80 and log.points_in_flight == 20
    assert (log.ranges_waiting, log.trials_in_flight, log.active_studies, log.workers_seen) == (
        1,
        1,
        1,
        2,
    )
    await table.register_study(registry([int_axis("n", None)], strategy="find_exact", target="0x1"))
    assert (await table.backlog()).points_waiting is None
