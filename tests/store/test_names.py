"""Study names: unique under concurrency, safe characters, safe in headers and terminals."""

from __future__ import annotations

import asyncio

import pytest

from ld2.core.errors import InvalidInput, NameTaken
from ld2.store.base import Table
from ld2.store.redis import STALE_CLAIM_MS, RedisTable
from ld2.summary import safe
from tests.store.helpers import int_axis, registry


async def test_32_concurrent_registrations_of_one_name_accept_exactly_one(table: Table) -> None:
    reg = registry([int_axis("x", 10)], name="contested")
    for _round in range(3):
        got = await asyncio.gather(
            *(table.register_study(reg) for _ in range(32)), return_exceptions=True
        )
        accepted = [g for g in got if isinstance(g, str)]
        assert len(accepted) == 1, got
        assert all(isinstance(g, NameTaken) for g in got if not isinstance(g, str))
        state = await table.get_study(name="contested")
        assert state.study_id == accepted[0]
        await table.delete(accepted[0])


async def test_a_claim_left_by_a_dead_registration_goes_stale(redis_table: RedisTable) -> None:
    names = redis_table._g("names")
    now_ms = int((await redis_table.server_time()).timestamp() * 1000)
    await redis_table.client.hset(names, "orphan", f"no-such-study|{now_ms}")
    reg = registry([int_axis("x", 4)], name="orphan")
    with pytest.raises(NameTaken):  # fresh: perhaps still being registered
        await redis_table.register_study(reg)
    await redis_table.client.hset(names, "orphan", f"no-such-study|{now_ms - STALE_CLAIM_MS - 1}")
    sid = await redis_table.register_study(reg)
    assert (await redis_table.get_study(name="orphan")).study_id == sid


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("bad\nname", "control characters are not allowed"),
        ("esc\x1b[2Jx", "control characters are not allowed"),
        ("nul\x00", "control characters are not allowed"),
        ("x" * 201, "at most 200 characters, got 201"),
        ("   ", "must not be blank"),
    ],
)
async def test_names_with_control_characters_or_too_long_are_refused(
    table: Table, name: str, words: str
) -> None:
    with pytest.raises(InvalidInput, match=words) as err:
        await table.register_study(registry([int_axis("x", 4)], name=name))
    assert err.value.field == "study.name"
    assert await table.list_studies() == []


async def test_any_other_unicode_name_is_accepted(table: Table) -> None:
    for name in ("résumé-日本", 'quote"and;semi', "x" * 200, "emoji 🚀 name"):
        sid = await table.register_study(registry([int_axis("x", 4)], name=name))
        assert (await table.get_study(name=name)).study_id == sid


def test_terminal_text_never_holds_control_characters() -> None:
    assert safe("plain name") == "plain name"
    assert safe("a\x1b[2Jb\nc") == "a\\x1b[2Jb\\nc"
    assert safe("résumé-日本") == "résumé-日本"
