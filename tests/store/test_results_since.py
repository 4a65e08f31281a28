"""`results_since`: what landed after a cursor, for live views — never a gap, at most a repeat."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ld2.core.errors import InvalidInput, NotFound
from ld2.store.redis import RedisTable
from tests.store.helpers import int_axis, registry, square


async def test_a_cursor_gets_exactly_what_landed_after_it(table: Any) -> None:
    sid = await table.register_study(registry([int_axis("x", 40)], name="live"))
    first = await table.results_since(sid)
    assert first.reset and first.blocks == []
    a = await table.reserve([], 10, "w")
    b = await table.reserve([], 10, "w")
    await table.register(b, square(b))
    await table.register(a, square(a))
    got = await table.results_since(sid, first.cursor)
    assert not got.reset
    assert [(x.start, x.values.tolist()) for x in got.blocks] == [
        (b.start, square(b).tolist()),
        (a.start, square(a).tolist()),
    ]  # in the order they landed
    again = await table.results_since(sid, got.cursor)
    assert not again.reset and again.blocks == [] and again.cursor == got.cursor
    everything = await table.results_since(sid)
    assert everything.reset and sorted(x.start for x in everything.blocks) == [0, 10]
    with pytest.raises(InvalidInput):
        await table.results_since(sid, "not-a-cursor")
    with pytest.raises(NotFound):
        await table.results_since("no-such-study")


async def test_a_cursor_older_than_the_stream_resets(redis_table: RedisTable) -> None:
    table = redis_table
    sid = await table.register_study(registry([int_axis("x", 30)]))
    cursor = (await table.results_since(sid)).cursor
    for _ in range(3):
        got = await table.reserve([], 10, "w")
        await table.register(got, np.asarray(square(got)))
    await table.client.xtrim(table.study_keys(sid).events, maxlen=1, approximate=False)
    late = await table.results_since(sid, cursor)
    assert late.reset and sorted(x.start for x in late.blocks) == [0, 10, 20]
