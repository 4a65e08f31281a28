"""DESIGN §5's invariants against real engines: concurrency, exactly-once, laziness, safety."""

import asyncio
import contextlib
import json
import random
from typing import Any

import numpy as np
import pytest
from redis.crc import key_slot

from ld2.core import models as m
from ld2.core.errors import InvalidInput, NotFound, TrialRejected
from ld2.core.upload import check_upload
from ld2.store.base import TrialRef
from ld2.store.redis import RedisTable
from tests.conftest import make_table, wire_json
from tests.store.helpers import all_results, int_axis, registry, square


@pytest.fixture
def table(redis_table: RedisTable) -> RedisTable:
    """These tests look at Redis keys and memory: RedisTable on each engine only."""
    return redis_table


async def _keys(table: RedisTable) -> set[bytes]:
    return {k async for k in table.client.scan_iter(match=f"{table.prefix}:*", count=1000)}


async def test_concurrent_workers_cover_every_point_exactly_once(
    request: pytest.FixtureRequest, real_backend: str
) -> None:
    """32 concurrent reservers on 10⁵ points, some abandoning leases, 1 s leases."""
    async with make_table(request, real_backend, trial_timeout=1.0, max_attempts=100) as table:
        total = 100_000
        sid = await table.register_study(registry([int_axis("x", 250), int_axis("y", 400)]))
        # start, count, and a time span surely inside the lease (loop time; a lease surely exists
        # once reserve returned, and surely still until register is called, or for a crashed
        # one until 1 s after reserve was called): overlapping spans of one point are a bug
        leases: list[tuple[int, int, float, float]] = []
        loop = asyncio.get_running_loop()
        rng = random.Random(7)

        async def worker(n: int) -> None:
            wid = f"w{n}"
            while True:
                asked = loop.time()
                res = await table.reserve([], rng.choice([97, 400, 1200, 3000]), wid)
                if res is None:
                    state = await table.get_study(sid)
                    if state.status == "done":
                        return
                    await asyncio.sleep(0.05)
                    continue
                got = loop.time()
                if rng.random() < 0.03:  # a simulated crash: the lease is abandoned
                    leases.append((res.start, res.count, got, asked + 1.0))
                    continue
                values = square(res)
                leases.append((res.start, res.count, got, loop.time()))
                with contextlib.suppress(TrialRejected):
                    await table.register(res, values)

        await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(32))), timeout=120)
        state = await table.get_study(sid)
        assert state.status == "done" and state.done == total and state.failed == 0
        flats, values = await all_results(table, sid)
        assert flats == list(range(total))
        assert values == [(f // 400) ** 2 + (f % 400) ** 2 for f in range(total)]
        # no point was leased twice at once: sweep the ranges, compare overlapping ones' times
        leases.sort()
        for i, (s1, c1, a1, b1) in enumerate(leases):
            for s2, _c2, a2, b2 in leases[i + 1 :]:
                if s2 >= s1 + c1:
                    break
                assert b1 <= a2 or b2 <= a1, (s1, c1, s2)


async def test_many_reapers_at_once(request: pytest.FixtureRequest, backend: str) -> None:
    async with make_table(request, backend, trial_timeout=0.2) as table:
        sid = await table.register_study(registry([int_axis("x", 50)]))
        for _ in range(10):
            await table.reserve([], 5, "crash")
        await asyncio.sleep(0.35)
        counts = await asyncio.gather(*(table.reap() for _ in range(8)))
        assert sum(counts) == 10
        state = await table.get_study(sid)
        assert state.reserved == 0


async def test_invalid_input_writes_nothing(table: RedisTable) -> None:
    before = await _keys(table)
    bad = [
        registry([int_axis("x", None)]),  # infinite + all_calculation
        registry([int_axis("x", 2**27), int_axis("y", 2**27)]),  # 2**54 points
        registry([int_axis("x", 4)], strategy="find_exact"),  # no target
    ]
    fields = []
    for reg in bad:
        with pytest.raises(InvalidInput) as err:
            await table.register_study(reg)
        fields.append(err.value.field)
    assert fields == [
        "study.study_strategy.type",
        "study.parameter_space",
        "study.study_strategy.study_strategy_param",
    ]
    with pytest.raises(InvalidInput, match="max_size"):
        await table.reserve([], 0, "w")
    with pytest.raises(InvalidInput, match="max_size"):
        await table.reserve([], -3, "w")
    assert await _keys(table) == before
    sid = await table.register_study(registry([int_axis("x", 4)]))
    res = await table.reserve([], 4, "w")
    before = await _keys(table)
    snapshot = await table.client.hgetall(table.study_keys(sid).s)
    for values in (np.array([1.5, 2, 3, 4]), np.array([1, 2, 3]), np.array(["a", "b", "c", "d"])):
        with pytest.raises(InvalidInput):
            await table.register(res, values)
    assert await _keys(table) == before
    assert await table.client.hgetall(table.study_keys(sid).s) == snapshot


def _wire_trial(res: Any, values: list[int]) -> dict[str, Any]:
    from ld2.core import results

    trial = res.to_wire()
    arr = results.coerce(values, "int", False, res.count)
    trial.results = results.to_mappings(res.spec.space, res.start, arr, "int")
    return json.loads(trial.model_dump_json())


async def test_wire_registration_checks_space_and_results(table: RedisTable) -> None:
    sid = await table.register_study(registry([int_axis("x", 6), int_axis("y", 5)]))
    res = await table.reserve([], 10, "w")
    assert res is not None
    good = _wire_trial(res, list(range(10)))
    before = await _keys(table)
    forged_count = json.loads(json.dumps(good))
    forged_count["results"] = forged_count["results"][:1]
    forged_point = json.loads(json.dumps(good))
    forged_point["results"][0]["params"][0]["value"] = "0x5"
    forged_type = json.loads(json.dumps(good))
    forged_type["results"][0]["result"] = {
        "type": "scalar",
        "value_type": "float",
        "value": "0x1.0p+0",
    }
    forged_space = json.loads(json.dumps(good))
    forged_space["parameter_space"]["axes"][0]["ambient_index"] = "0x3"
    forged_space["parameter_space"]["axes"][0]["start"] = "0x3"
    for body, where in [
        (forged_count, "trial.results"),
        (forged_point, "trial.results[0].params"),
        (forged_type, "trial.results[0].result.value_type"),
    ]:
        with pytest.raises(InvalidInput) as err:
            await _register_upload(table, m.TrialModel.model_validate(body))
        assert err.value.field == where
    with pytest.raises(InvalidInput, match="not part of the trial"):
        await _register_upload(table, m.TrialModel.model_validate(forged_space))
    wrong_worker = dict(good, worker_node_id="other")
    with pytest.raises(TrialRejected, match="another worker"):
        await _register_upload(table, m.TrialModel.model_validate(wrong_worker))
    with pytest.raises(NotFound):
        await _register_upload(table, m.TrialModel.model_validate(dict(good, study_id="nope")))
    assert await _keys(table) == before
    assert await _register_upload(table, m.TrialModel.model_validate(good)) == "ok"
    assert (await table.get_study(sid)).done == 10


async def test_all_keys_of_a_study_share_one_cluster_slot(table: RedisTable) -> None:
    sid = await table.register_study(registry([int_axis("x", 10)], name="slot"))
    res = await table.reserve([], 5, "w")
    await table.register(res, square(res))
    await table.reserve([], 2, "w")
    keys = [k for k in await _keys(table) if f"{{{sid}}}".encode() in k]
    assert len(keys) >= 5
    assert {key_slot(k) for k in keys} == {key_slot(table.study_keys(sid).s.encode())}
    assert {key_slot(k) for k in await _keys(table) if k not in keys} == {key_slot(b"{g}")}


async def test_huge_and_infinite_studies_are_lazy(table: RedisTable) -> None:
    before = await table.client.info("memory") if table.url != "fakeredis" else None
    big = await table.register_study(
        registry([int_axis("x", 10**5), int_axis("y", 10**5), int_axis("z", 10**5)])
    )
    inf = await table.register_study(
        registry([int_axis("n", None)], strategy="find_exact", target="-0x1")
    )
    for _ in range(3):
        await table.reserve([], 1000, "w")
    state = await table.get_study(big)
    assert state.total == 10**15 and state.reserved == 3000
    assert (await table.get_study(inf)).total is None
    for sid in (big, inf):
        for key in table.study_keys(sid).all():
            kind = (await table.client.type(key)).decode()
            if kind in ("zset", "hash"):
                n = await (table.client.zcard(key) if kind == "zset" else table.client.hlen(key))
                assert n <= 40, key
    if before is not None:
        after = await table.client.info("memory")
        assert after["used_memory"] - before["used_memory"] < 2_000_000


async def test_flat_indices_up_to_2_53_are_exact(table: RedisTable) -> None:
    sid = await table.register_study(registry([int_axis("x", 2**53, -5)], strategy="minimize"))
    await table.client.hset(table.study_keys(sid).s, "cursor", str(2**53 - 7))  # jump to the end
    got = []
    while (res := await table.reserve([], 3, "w")) is not None:
        got.append((res.start, res.count))
        assert res.arrays()[0].tolist() == [-5 + f for f in range(res.start, res.start + res.count)]
    assert got == [(2**53 - 7, 3), (2**53 - 4, 3), (2**53 - 1, 1)]
    with pytest.raises(InvalidInput, match="2\\*\\*53"):
        await table.register_study(registry([int_axis("x", 2**53 + 1)]))


async def test_scripts_reload_after_a_script_flush(real_table: RedisTable) -> None:
    await real_table.register_study(registry([int_axis("x", 10)]))
    await real_table.client.script_flush()
    res = await real_table.reserve([], 5, "w")
    assert res is not None
    await real_table.client.script_flush()
    assert await real_table.register(res, square(res)) == "ok"


async def test_snapshot_round_trip(request: pytest.FixtureRequest, backend: str) -> None:
    async with make_table(request, backend) as src, make_table(request, backend) as dst:
        done = await src.register_study(registry([int_axis("x", 6)], name="done"))
        while (res := await src.reserve([], 4, "w")) is not None:
            await src.register(res, square(res))
        half = await src.register_study(
            registry([int_axis("x", 10)], name="half", strategy="minimize")
        )
        r1 = await src.reserve([], 4, "w")
        await src.register(r1, square(r1))
        await src.reserve([], 3, "w")  # in flight: handed back on import
        await src.fail((await src.reserve([], 1, "w")).trial_id, "w", "flaky")
        snap = json.loads(json.dumps(await src.export_snapshot()))
        assert sorted(await dst.import_snapshot(snap)) == sorted([done, half])
        assert await dst.import_snapshot(snap) == []  # idempotent
        assert (await dst.get_study(name="done")).status == "done"
        assert (await all_results(dst, done)) == (await all_results(src, done))
        state = await dst.get_study(half)
        assert state.done == 4 and state.reserved == 0 and state.status == "running"
        while (res := await dst.reserve([], 4, "w2")) is not None:
            await dst.register(res, square(res))
        final = await dst.get_study(half)
        assert final.status == "done" and final.done == 10 and final.best_flat == 0
        flats, _ = await all_results(dst, half)
        assert flats == list(range(10))


async def test_lite_dist2_curriculum_import(table: RedisTable) -> None:
    data = wire_json("99d-curriculum.snapshot-final.json")
    ids = await table.import_snapshot(data)
    names = {(await table.get_study(sid)).spec.name for sid in ids}
    assert {"mandelbrot", "md5-finite", "md5-infinite", "needs-gpu"} <= names
    mandel = await table.get_study(name="mandelbrot")
    assert mandel.status == "done" and mandel.done == 100
    flats, values = await all_results(table, mandel.study_id)
    assert flats == list(range(100))
    theirs = wire_json("45-study-get-mandelbrot-done.response.json")["result"]["results"]["values"]
    space = mandel.spec.space
    expected = {
        space.flat_of_point([float.fromhex(r[0]), float.fromhex(r[1])]): int(r[2], 16)
        for r in theirs
    }
    assert values == [expected[f] for f in range(100)]
    md5 = await table.get_study(name="md5-finite")
    assert md5.status == "done" and md5.hit_flat == 777
    gpu = await table.get_study(name="needs-gpu")
    assert gpu.status == "wait" and gpu.spec.capacities == {"gpu"}
    with pytest.raises(InvalidInput, match="already registered"):
        await table.import_snapshot(data)


async def _register_upload(table: Any, trial: m.TrialModel) -> str:
    """What the API does with a lite_dist2 upload: check it against its study, register it."""
    start, count, typed = check_upload(await table.study_spec(trial.study_id), trial)
    ref = TrialRef(trial.study_id, trial.trial_id, trial.worker_node_id, start, count)
    return str(await table.register(ref, typed))
