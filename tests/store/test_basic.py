"""The table's main path on every backend."""

from ld2.core.space import Axis, Space
from ld2.store.redis import RedisTable
from tests.store.helpers import all_results, int_axis, registry, run_all, square


async def test_all_calculation_completes_in_grid_order(table: RedisTable) -> None:
    sid = await table.register_study(
        registry([int_axis("x", 7, -3), int_axis("y", 9, 2, 3)], name="sq")
    )
    state = await table.get_study(sid)
    assert state.status == "wait" and state.total == 63 and state.done == 0
    assert (await table.get_study(name="sq")).study_id == sid
    trials = await run_all(table, 10)
    assert trials == 7  # one row of 9 points a trial: two rows would exceed 10
    state = await table.get_study(sid)
    assert state.status == "done" and state.done == 63 and state.reserved == 0
    flats, values = await all_results(table, sid)
    assert flats == list(range(63))
    space = Space((Axis("int", -3, 1, 7), Axis("int", 2, 3, 9)))
    assert values == [sum(v * v for v in space.point(f)) for f in range(63)]


async def test_register_and_reserve_in_one_round_trip(table: RedisTable) -> None:
    sid = await table.register_study(registry([int_axis("x", 50)]))
    res = await table.reserve([], 7, "w")
    seen = []
    while res is not None:
        seen.append((res.start, res.count))
        outcome, res = await table.register_and_reserve(res, square(res), [], 7)
        assert outcome == "ok"
    assert seen == [(k, min(7, 50 - k)) for k in range(0, 50, 7)]
    flats, values = await all_results(table, sid)
    assert flats == list(range(50)) and values == [x * x for x in range(50)]
    assert (await table.get_study(sid)).status == "done"


async def test_register_and_reserve_moves_on_when_its_study_should_not_go_on(
    table: RedisTable,
) -> None:
    first = await table.register_study(registry([int_axis("x", 50)]))
    res = await table.reserve([], 5, "w")
    assert res is not None and res.study_id == first
    other = await table.register_study(registry([int_axis("x", 5)]))
    await table.pause(first)
    _, nxt = await table.register_and_reserve(res, square(res), [], 5)
    assert nxt is not None and nxt.study_id == other
    await table.resume(first)
    _, after = await table.register_and_reserve(nxt, square(nxt), [], 5)
    assert after is not None and after.study_id == first  # `other` is finished
