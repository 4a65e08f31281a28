"""A heartbeating client's own short lease; lite_dist2's clients keep the study's timeout."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from tests.conftest import make_table
from tests.store.helpers import int_axis, registry, square


async def test_a_reservation_can_ask_for_its_own_lease(
    request: pytest.FixtureRequest, backend: str
) -> None:
    async with make_table(request, backend, trial_timeout=600) as table:
        await table.register_study(registry([int_axis("x", 100)], name="lease"))
        plain = await table.reserve([], 10, "lite")
        short = await table.reserve([], 10, "ld2", lease=1.0)
        assert plain is not None and short is not None
        if backend != "http":  # over lite_dist2's wire a lease without an ld2 extra is assumed
            assert (plain.deadline - plain.reserved_at).total_seconds() == pytest.approx(600)
        assert (short.deadline - short.reserved_at).total_seconds() == pytest.approx(1.0)
        # the cycle hands out the next trial with the same short lease
        _, nxt = await table.register_and_reserve(short, square(short), [], 10, lease=1.0)
        assert nxt is not None
        assert (nxt.deadline - nxt.reserved_at).total_seconds() == pytest.approx(1.0)
        # a heartbeat renews by the trial's own lease, not the study's 600 s
        assert await table.heartbeat(nxt.trial_id, "ld2") == "ok"
        deadline = time.monotonic() + 30
        while True:  # the worker "died": its range comes back within about a second
            again = await table.reserve([], 10, "other", lease=5.0)
            if again is not None and again.start == nxt.start:
                break
            if again is not None:
                await table.register(again, np.zeros(again.count, dtype=np.int64))
            assert time.monotonic() < deadline, "the short lease never expired"
            await asyncio.sleep(0.05)
        state = await table.get_study(name="lease")
        assert state.reserved >= plain.count  # lite_dist2's lease is still held


async def test_a_lease_out_of_range_is_refused(
    request: pytest.FixtureRequest, backend: str
) -> None:
    from ld2.core.errors import InvalidInput

    async with make_table(request, backend) as table:
        await table.register_study(registry([int_axis("x", 10)]))
        with pytest.raises(InvalidInput, match="lease_seconds"):
            await table.reserve([], 5, "w", lease=0.0)
