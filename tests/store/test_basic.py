"""The table's main path on every backend."""

from ld2.core.space import Axis, Space
from ld2.store.redis import RedisTable
from tests.store.helpers import all_results, int_axis, registry, run_all


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
