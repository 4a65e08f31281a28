"""RedisTable on a local 3-master Redis Cluster: found from a plain URL, studies spread over the
masters, every key of a study in its study's slot. (The behaviour suite runs on the cluster as
the engine ``cluster``; these tests check what is particular to it.)"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

import numpy as np
import pytest

from ld2.core import models as m
from ld2.store.redis import RedisTable
from tests.cluster import LocalCluster
from tests.cluster import available as cluster_available
from tests.store.helpers import int_axis, registry

pytestmark = pytest.mark.skipif(
    not cluster_available(), reason="redis-server and redis-cli are needed for a local cluster"
)


def study(name: str) -> m.StudyRegistry:
    return registry([int_axis("x", 64)], name=name, capacity=["grid"])


async def test_a_plain_url_of_any_node_finds_the_cluster(local_cluster: LocalCluster) -> None:
    for i in range(3):
        table = RedisTable.from_url(local_cluster.node_url(i), prefix=f"t{uuid.uuid4().hex[:8]}")
        try:
            assert table.is_cluster is None  # not asked yet
            await table.ping()
            assert table.is_cluster is True
        finally:
            await table.close()


async def test_a_single_server_is_not_taken_for_a_cluster(private_redis_url: str | None) -> None:
    if private_redis_url is None:
        pytest.skip("redis-server is needed")
    table = RedisTable.from_url(private_redis_url, prefix=f"t{uuid.uuid4().hex[:8]}")
    try:
        await table.ping()
        assert table.is_cluster is False
    finally:
        await table.close()


async def test_studies_spread_over_masters_and_keep_their_keys_in_one_slot(
    local_cluster: LocalCluster,
) -> None:
    prefix = f"spread{uuid.uuid4().hex[:8]}"
    table = RedisTable.from_url(local_cluster.url, prefix=prefix, index_ttl=0.0)
    try:
        sids = [await table.register_study(study(f"s{n}")) for n in range(12)]
        for _ in sids:  # each study reserved whole and registered: results, events, trials
            got = await table.reserve(["grid"], 64, "w1")
            assert got is not None and got.count == 64
            await table.register(got, np.arange(got.count))
        assert {(await table.get_study(sid)).status for sid in sids} == {"done"}
        masters = {local_cluster.master_of(table.study_keys(sid).s) for sid in sids}
        assert len(masters) > 1, "12 studies all landed on one master"

        keys = [k async for k in table.client.scan_iter(match=f"{prefix}:*", count=1000)]
        by_tag: dict[str, set[int]] = defaultdict(set)
        for key in keys:
            text = key.decode()
            tag = text[text.index("{") + 1 : text.index("}")]
            by_tag[tag].add(int(await table.client.cluster_keyslot(text)))
        assert set(sids) <= set(by_tag)
        assert all(len(slots) == 1 for slots in by_tag.values()), by_tag
        assert "g" in by_tag  # the global index: one slot of its own
    finally:
        keys = [k async for k in table.client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await table.client.delete(*keys)
        await table.close()


async def test_many_first_calls_at_once_on_a_fresh_table(
    local_cluster: LocalCluster, private_redis_url: str | None
) -> None:
    """1,000 workers starting together: a fresh cluster client learns its slots once before
    any command, and a single server's pool makes calls past its size wait, not fail."""
    urls = [local_cluster.url] + ([private_redis_url] if private_redis_url else [])
    for url in urls:
        table = RedisTable.from_url(url, prefix=f"t{uuid.uuid4().hex[:8]}")
        try:
            sid = await table.register_study(study(f"burst{uuid.uuid4().hex[:6]}"))
            states = await asyncio.gather(*(table.get_study(sid) for _ in range(600)))
            assert {s.study_id for s in states} == {sid}
        finally:
            keys = [k async for k in table.client.scan_iter(match=f"{table.prefix}:*")]
            if keys:
                await table.client.delete(*keys)
            await table.close()
