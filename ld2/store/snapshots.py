"""Snapshots of a `RedisTable`: every study out as one JSON document, and back in; and
lite_dist2's ``curriculum.json`` in. The formats are checked in ``ld2.core.snapshot`` and
``ld2.core.curriculum`` before anything is written; this module only reads and writes keys.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from ld2.core import results
from ld2.core.curriculum import FinishedStudy, parse_curriculum
from ld2.core.errors import InvalidInput
from ld2.core.snapshot import parse_snapshot

if TYPE_CHECKING:
    from ld2.store.redis import RedisTable


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def export_snapshot(table: RedisTable) -> dict[str, Any]:
    """Every study as it is at one instant (each study's keys read in one MULTI, so a reserve
    or register cannot fall between them). Leased trials become waiting ranges; an expired
    lease (state X) is already in `back` or `failed` and is not added again."""
    studies = []
    for sid in await table.index.studies():
        keys = table.study_keys(sid)
        async with table.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(keys.s)
            pipe.hgetall(keys.trials)
            pipe.zrange(keys.back, 0, -1)
            pipe.zrange(keys.failed, 0, -1)
            pipe.zrange(keys.best, 0, -1)
            pipe.zrange(keys.done, 0, -1, withscores=True)
            pipe.hgetall(keys.res)
            h, trials, back_members, failed, best, done, payloads = await pipe.execute()
        if not h:
            continue
        back = [[int(x) for x in _text(mm).split(":")[:3]] for mm in back_members]
        for rec in trials.values():
            start, count, attempt, _reserved, state, *_ = rec.decode().split("\t")
            if state == "L":
                back.append([int(start), int(count), int(attempt)])
        blocks = [
            [_text(tid), int(score), base64.b64encode(payloads[tid]).decode()]
            for tid, score in done
            if tid in payloads
        ]
        studies.append(
            {
                "hash": {k.decode(): v.decode() for k, v in h.items()},
                "back": back,
                "failed": [_text(x) for x in failed],
                "best": [_text(x) for x in best],
                "results": blocks,
            }
        )
    return {"format": "ld2-snapshot", "version": 1, "studies": studies}


async def import_snapshot(table: RedisTable, data: dict[str, Any]) -> list[str]:
    """An ld2 snapshot (studies that exist already are left alone) or a lite_dist2
    curriculum; the ids of the studies written."""
    if data.get("format") != "ld2-snapshot":
        if "studies" in data and "storages" in data:
            return await import_curriculum(table, data)
        raise InvalidInput("snapshot", "neither an ld2 snapshot nor a lite_dist2 curriculum.json")
    out = []
    for study, spec, payloads in parse_snapshot(data):  # all checked before any write
        h = dict(study.hash)
        sid = h["id"]
        keys = table.study_keys(sid)
        if await table.client.exists(keys.s):
            continue
        if spec.name is not None:
            await table.claim_name(spec.name, sid)
        h["reserved"] = "0"
        async with table.client.pipeline(transaction=True) as pipe:
            pipe.hset(keys.s, mapping=h)
            for start, count, attempts in sorted(set(study.back)):
                pipe.zadd(keys.back, {f"{start}:{count}:{attempts}:-": start})
            for member in study.failed:
                pipe.zadd(keys.failed, {member: int(member.split(":")[0])})
            for member in study.best:
                pipe.zadd(keys.best, {member: 0})
            for (tid, start, _), payload in zip(study.results, payloads, strict=True):
                pipe.hset(keys.res, tid, payload)
                pipe.zadd(keys.done, {tid: start})
            await pipe.execute()
        await table.index_study(sid, spec, h)
        out.append(sid)
    return out


async def import_curriculum(table: RedisTable, data: dict[str, Any]) -> list[str]:
    """lite_dist2's finished studies with their results, and its active ones registered afresh
    (lite_dist2 keeps their partial results in trial files, not in the curriculum)."""
    finished, fresh = parse_curriculum(data)
    for spec in [f.spec for f in finished] + fresh:  # every name checked before any write
        if spec.name is not None:
            try:
                await table.get_study(name=spec.name)
            except LookupError:
                continue
            raise InvalidInput("study.name", f"the name {spec.name!r} is already registered")
    out = [await store_finished(table, study) for study in finished]
    for spec in fresh:
        out.append(await table.register_study(spec.registry))
    return out


async def store_finished(table: RedisTable, study: FinishedStudy) -> str:
    """A finished study with its results (no script: the study is new, nobody else sees it)."""
    spec, blocks = study.spec, study.blocks
    sid, seq = await table.new_study_id(spec)
    keys = table.study_keys(sid)
    h = table.study_fields(spec, sid, seq, 0) | {
        "status": "done",
        "done": str(sum(len(v) for _, v in blocks)),
        "tseq": str(len(blocks)),
        "registered_ms": str(study.registered_ms),
        "started_ms": str(study.registered_ms),
        "finished_ms": str(study.finished_ms),
    }
    if study.hit_flat is not None:
        h["hit_flat"] = str(study.hit_flat)
    if spec.vector and blocks:
        h["vlen"] = str(blocks[0][1].shape[1])
    async with table.client.pipeline(transaction=True) as pipe:
        pipe.hset(keys.s, mapping=h)
        for n, (start, values) in enumerate(blocks):
            tid = f"{sid}-{n:#x}"
            pipe.hset(keys.res, tid, results.pack(values))
            pipe.zadd(keys.done, {tid: start})
        await pipe.execute()
    await table.index_study(sid, spec, h)
    return sid
