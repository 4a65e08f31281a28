"""A study's own trial limit reaches every worker, on every engine."""

from __future__ import annotations

import pytest

from ld2.core.errors import InvalidInput
from ld2.store.base import Table
from tests.store.helpers import int_axis, registry


async def test_the_study_limit_travels_with_the_reservation(table: Table) -> None:
    sid = await table.register_study(registry([int_axis("x", 10)], name="lim"), trial_limit=2.5)
    res = await table.reserve([], 5, "w")
    assert res is not None and res.spec.trial_limit == 2.5
    assert (await table.get_study(sid)).spec.trial_limit == 2.5
    plain = await table.register_study(registry([int_axis("x", 10)], name="nolim"))
    assert (await table.get_study(plain)).spec.trial_limit is None


async def test_a_limit_out_of_range_is_refused(table: Table) -> None:
    with pytest.raises(InvalidInput, match="trial_limit_seconds"):
        await table.register_study(registry([int_axis("x", 10)]), trial_limit=0.0)
    assert await table.list_studies() == []
