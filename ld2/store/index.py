"""The global index of studies: where workers look for work. Only a hint — a study's own hash is
the truth, and every script checks it — so it is kept up to date with plain commands outside
the study scripts, and repaired whenever a reader finds it stale.

Keys (all tagged ``{g}``, so one slot of a Redis Cluster holds them):

- ``studies``: every study, scored by registration sequence (listing, snapshots);
- ``active``: studies not done, scored by priority then sequence (reaper, backlog);
- ``cap:<set>``: studies that may hand out work (waiting or running, not paused) needing exactly
  the capacity set ``<set>`` (a JSON list), scored like ``active``; ``caps`` lists the sets.

A worker reads only the sets its capacities cover, so a reserve costs the same whatever the
number of studies other workers' capacities serve.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable
from typing import Any

CANDIDATES = 512
"""At most this many studies (of the best scores) are considered per refresh of a worker's list."""


def capacity_set(capacities: Iterable[str]) -> str:
    """The canonical name of a study's required capacities (the ``cap:`` key's suffix)."""
    return json.dumps(sorted(set(capacities)), separators=(",", ":"))


def score(priority: int, seq: int) -> int:
    """Higher priority first, then the order of registration."""
    return -priority * 2**32 + seq


class StudyIndex:
    """The index keys of one prefix, and a per-process cache of each worker's candidates
    (refreshed when older than `ttl` seconds)."""

    def __init__(self, client: Any, prefix: str, ttl: float) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl
        self._cache: dict[frozenset[str], tuple[float, list[str]]] = {}

    def key(self, name: str) -> str:
        return f"{self.prefix}:{{g}}:{name}"

    def invalidate(self) -> None:
        self._cache.clear()

    # -- upkeep ---------------------------------------------------------------------------------
    async def add(
        self, sid: str, capacities: Collection[str], priority: int, seq: int, *, workable: bool
    ) -> None:
        """Index a study that is not done; `workable` unless it is paused."""
        caps = capacity_set(capacities)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(self.key("studies"), {sid: seq})
            pipe.zadd(self.key("active"), {sid: score(priority, seq)})
            if workable:
                pipe.sadd(self.key("caps"), caps)
                pipe.zadd(self.key(f"cap:{caps}"), {sid: score(priority, seq)})
            await pipe.execute()
        self.invalidate()

    async def add_done(self, sid: str, seq: int) -> None:
        await self.client.zadd(self.key("studies"), {sid: seq})

    async def park(self, sid: str, capacities: Collection[str]) -> None:
        """A paused study hands out nothing: out of its capacity set until resumed."""
        await self.client.zrem(self.key(f"cap:{capacity_set(capacities)}"), sid)
        self.invalidate()

    async def finish(self, *sids: str, forget: bool = False) -> None:
        """Studies done, cancelled or gone: out of the work index (and, with `forget`, out of
        the list of studies too)."""
        if not sids:
            return
        sets = await self.client.smembers(self.key("caps"))
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zrem(self.key("active"), *sids)
            for caps in sets:
                pipe.zrem(self.key(f"cap:{_text(caps)}"), *sids)
            if forget:
                pipe.zrem(self.key("studies"), *sids)
            await pipe.execute()
        for _, cached in self._cache.values():
            cached[:] = [s for s in cached if s not in sids]

    # -- reading --------------------------------------------------------------------------------
    async def studies(self) -> list[str]:
        return [_text(x) for x in await self.client.zrange(self.key("studies"), 0, -1)]

    async def active(self) -> list[str]:
        return [_text(x) for x in await self.client.zrange(self.key("active"), 0, -1)]

    def cached(self, capacities: frozenset[str]) -> list[str] | None:
        """The cached candidates of `capacities` if fresh enough, else None."""
        entry = self._cache.get(capacities)
        if entry is None or time.monotonic() - entry[0] > self.ttl:
            return None
        return entry[1]

    async def candidates(self, capacities: frozenset[str]) -> list[str]:
        """Studies a worker with `capacities` may reserve in, best first: running ones, then
        waiting ones, each by priority and age. Read afresh from Redis."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.smembers(self.key("caps"))
            pipe.zcard(self.key("active"))
            sets, active = await pipe.execute()
        if not sets and active:
            await self._rebuild()  # an index written before capacity sets existed
            sets = await self.client.smembers(self.key("caps"))
        names = [_text(x) for x in sets]
        mine = [n for n in names if frozenset(json.loads(n)) <= capacities]
        scored: list[tuple[float, str]] = []
        if mine:
            async with self.client.pipeline(transaction=False) as pipe:
                for name in mine:
                    pipe.zrange(self.key(f"cap:{name}"), 0, CANDIDATES - 1, withscores=True)
                for rows in await pipe.execute():
                    scored.extend((sc, _text(sid)) for sid, sc in rows)
        scored.sort()
        sids = [sid for _, sid in scored[:CANDIDATES]]
        out = await self._by_status(sids)
        self._cache[capacities] = (time.monotonic(), out)
        return out

    async def _by_status(self, sids: list[str]) -> list[str]:
        """Running studies first, then waiting ones; the others leave the index."""
        if not sids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hget(self._study_key(sid), "status")
            statuses = await pipe.execute()
        running: list[str] = []
        waiting: list[str] = []
        done: list[str] = []
        paused: list[str] = []
        for sid, status in zip(sids, statuses, strict=True):
            {b"running": running, b"wait": waiting, b"paused": paused}.get(status, done).append(sid)
        if done:
            await self.finish(*done)
        if paused:  # paused by an older ld2 (which did not park it): park it now
            sets = await self.client.smembers(self.key("caps"))
            async with self.client.pipeline(transaction=False) as pipe:
                for caps in sets:
                    pipe.zrem(self.key(f"cap:{_text(caps)}"), *paused)
                await pipe.execute()
        return running + waiting

    def _study_key(self, sid: str) -> str:
        return f"{self.prefix}:{{{sid}}}:s"

    async def _rebuild(self) -> None:
        """Fill the capacity sets from ``active`` and the studies' own hashes."""
        from ld2.core import models as m  # only on the upgrade path

        sids = await self.active()
        async with self.client.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hmget(self._study_key(sid), "spec", "status", "priority", "seq")
            rows = await pipe.execute()
        for sid, (spec, status, priority, seq) in zip(sids, rows, strict=True):
            if spec is None or status == b"done":
                await self.finish(sid)
                continue
            caps = m.StudyRegistry.model_validate_json(spec).required_capacity
            await self.add(
                sid, caps, int(priority or 0), int(seq or 0), workable=status != b"paused"
            )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
