"""Many reapers at once never hand an expired lease back twice.

Store level: N `RedisTable`s on their own connections reap the same expired leases
concurrently; the counts they return add up to exactly the leases that expired, each range is
back once with one more attempt, and everything can be leased again and computed exactly once.
Process level: three ``ld2 reaper`` processes while a ``ld2 worker`` is SIGKILLed holding a
trial; a fresh worker finishes the study and no point is registered or counted twice.

Leases expire on Redis's clock: the tests poll Redis ``TIME`` until it has passed the
deadlines the reservations were given, they never sleep a fixed time instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from ld2.core.errors import NotFound
from ld2.store.base import Failure, Reservation
from ld2.store.redis import RedisTable
from tests.conftest import backend_url, make_table
from tests.store.helpers import all_results, int_axis, registry, square

REAPERS = 8
SHORT = 0.4  # seconds: a lease that the test lets expire
LONG = 600.0  # seconds: a lease that must survive every reaper


async def _reapers(request: pytest.FixtureRequest, backend: str, prefix: str) -> list[RedisTable]:
    """`REAPERS` tables on the owner's keys, each with a connection of its own."""
    url = backend_url(request, backend)
    assert url is not None
    tables = [RedisTable.from_url(url, prefix=prefix, index_ttl=0.0) for _ in range(REAPERS)]
    for t in tables:
        await t.ping()  # connected before the race starts
    return tables


async def _close(tables: list[RedisTable]) -> None:
    for t in tables:
        await t.close()


async def _wait_past(table: RedisTable, deadline: datetime, limit: float = 120.0) -> None:
    """Poll Redis's clock until it is past `deadline` (a lease deadline Redis gave)."""
    give_up = time.monotonic() + limit
    while await table.server_time() <= deadline:
        assert time.monotonic() < give_up, f"Redis's clock never passed {deadline}"
        await asyncio.sleep(0.02)


async def _reap_together(tables: list[RedisTable], passes: int = 3) -> list[int]:
    """Every table reaps `passes` times, all of them started at the same moment; returns
    every count any `reap()` returned."""
    go = asyncio.Event()

    async def one(t: RedisTable) -> list[int]:
        await go.wait()
        return [await t.reap() for _ in range(passes)]

    tasks = [asyncio.create_task(one(t)) for t in tables]
    await asyncio.sleep(0)  # every task is waiting on the event
    go.set()
    return [n for counts in await asyncio.gather(*tasks) for n in counts]


async def _back(table: RedisTable, sid: str) -> list[tuple[int, int, int, str]]:
    """The study's handed-back ranges (start, count, attempts, trial id) — store.md's
    ``P:{sid}:back`` members ``start:count:attempts:trial``."""
    out = []
    for member in await table.client.zrange(table.study_keys(sid).back, 0, -1):
        start, count, attempts, tid = member.decode().split(":")
        out.append((int(start), int(count), int(attempts), tid))
    return out


async def _leases(table: RedisTable, sid: str) -> dict[str, float]:
    """trial id → lease deadline (ms, Redis time) of every lease the study holds."""
    rows = await table.client.zrange(table.study_keys(sid).leases, 0, -1, withscores=True)
    return {tid.decode(): score for tid, score in rows}


async def test_eight_reapers_count_each_expiry_once_until_quarantine(
    request: pytest.FixtureRequest, real_backend: str
) -> None:
    """Three rounds of lease → expire → 8 concurrent reapers. One trial per study and round
    (each study has a capacity of its own), so no reserve can reap a lease before the reapers
    do, however slow the machine: every count is exact. The first two expiries send the range
    back with 1 and then 2 attempts; the third (max_attempts 3) quarantines it once."""
    studies, points, size = 10, 20, 10
    async with make_table(request, real_backend) as owner:
        reapers = await _reapers(request, real_backend, owner.prefix)
        try:
            sids = []
            for k in range(studies):
                reg = registry([int_axis("x", points, start=100 * k)], name=f"r{k}",
                               capacity=[f"c{k}"])  # fmt: skip
                sids.append(await owner.register_study(reg))
            keep_sid = await owner.register_study(
                registry([int_axis("x", size)], name="keep", capacity=["keep"])
            )
            keep = await owner.reserve(["keep"], size, "keeper", lease=LONG)
            assert keep is not None

            for rnd in (1, 2, 3):
                leased: list[Reservation] = []
                for k, sid in enumerate(sids):
                    res = await owner.reserve([f"c{k}"], size, f"w{rnd}-{k}", lease=SHORT)
                    assert res is not None and res.study_id == sid
                    assert (res.start, res.count) == (0, size)  # the handed-back range first
                    assert res.attempt == rnd - 1  # each earlier expiry counted exactly once
                    leased.append(res)
                await _wait_past(owner, max(r.deadline for r in leased))

                counts = await _reap_together(reapers)
                assert sum(counts) == studies, counts  # every expired lease, each once
                assert await _reap_together(reapers, passes=1) == [0] * REAPERS

                backlog = await owner.backlog()
                assert backlog.trials_in_flight == 1  # the long lease only
                assert backlog.points_in_flight == size
                for res in leased:
                    state = await owner.get_study(res.study_id)
                    assert state.reserved == 0  # (no heartbeat here: it would revive the lease)
                    back = await _back(owner, res.study_id)
                    failures = await owner.failures(res.study_id)
                    if rnd < 3:
                        assert back == [(0, size, rnd, res.trial_id)]
                        assert failures == [] and state.failed == 0
                    else:
                        assert back == []
                        assert failures == [Failure(0, size, 3, "lease expired")]
                        assert state.failed == size
                assert backlog.ranges_waiting == (studies if rnd < 3 else 0)

            assert await owner.heartbeat(keep.trial_id, "keeper") == "ok"  # never reaped
            assert await owner.register(keep, square(keep)) == "ok"
            # the fresh half of every study: leased once, registered once
            for k, sid in enumerate(sids):
                res = await owner.reserve([f"c{k}"], points, f"last-{k}", lease=LONG)
                assert res is not None and res.study_id == sid
                assert (res.start, res.count, res.attempt) == (size, size, 0)
                assert await owner.register(res, square(res)) == "ok"
                assert await owner.reserve([f"c{k}"], points, f"more-{k}") is None
            for k, sid in enumerate(sids):
                state = await owner.get_study(sid)
                assert (state.status, state.done, state.failed) == ("done", size, size)
                flats, values = await all_results(owner, sid)
                assert flats == list(range(size, points))
                assert values == [(100 * k + f) ** 2 for f in flats]
            keep_state = await owner.get_study(keep_sid)
            assert (keep_state.status, keep_state.done, keep_state.failed) == ("done", size, 0)
        finally:
            await _close(reapers)


async def test_eight_reapers_on_one_study_with_many_expired_leases(
    request: pytest.FixtureRequest, real_backend: str
) -> None:
    """One study, many short leases, eight reapers. What expired is read from Redis itself
    (a reserve also reaps its study, so on a slow machine one may have beaten the reapers):
    the reapers' counts add up to exactly those leases, each range is back once with one more
    attempt than its lease had, and leasing everything again covers every point once."""
    points, size, trials = 400, 10, 30
    async with make_table(request, real_backend) as owner:
        reapers = await _reapers(request, real_backend, owner.prefix)
        try:
            sid = await owner.register_study(registry([int_axis("x", points)], name="one"))
            issued: dict[str, Reservation] = {}
            for i in range(trials):
                res = await owner.reserve([], size, f"w{i}", lease=SHORT)
                assert res is not None
                issued[res.trial_id] = res
            held = await _leases(owner, sid)
            assert held and set(held) <= set(issued)
            await _wait_past(owner, max(r.deadline for r in issued.values()))

            counts = await _reap_together(reapers)
            assert sum(counts) == len(held), counts
            assert await _leases(owner, sid) == {}
            back = await _back(owner, sid)
            assert sorted(tid for *_, tid in back) == sorted(held)  # each expired range once
            for start, count, attempts, tid in back:
                res = issued[tid]
                assert (start, count, attempts) == (res.start, res.count, res.attempt + 1)
            # the ranges handed back are exactly the points issued so far, each once
            spans = sorted((start, count) for start, count, *_ in back)
            assert spans[0][0] == 0
            assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(spans))
            issued_end = spans[-1][0] + spans[-1][1]
            backlog = await owner.backlog()
            assert (backlog.ranges_waiting, backlog.trials_in_flight) == (len(back), 0)
            assert await owner.failures(sid) == []

            # lease everything again (the handed-back ranges come first, whole) and compute it
            attempts_of = {start: attempts for start, _, attempts, _ in back}
            seen = np.zeros(points, dtype=np.int64)
            while (res := await owner.reserve([], points, "finisher", lease=LONG)) is not None:
                if res.start < issued_end:
                    assert res.attempt == attempts_of.pop(res.start)
                else:
                    assert res.attempt == 0
                seen[res.start : res.start + res.count] += 1
                assert await owner.register(res, square(res)) == "ok"
            assert attempts_of == {}
            assert seen.tolist() == [1] * points
            state = await owner.get_study(sid)
            assert (state.status, state.done, state.failed) == ("done", points, 0)
            flats, values = await all_results(owner, sid)
            assert flats == list(range(points))
            assert values == [f * f for f in flats]
        finally:
            await _close(reapers)


# -- real processes ------------------------------------------------------------------------------

NAP_RUNNER = """
import os
import time
from pathlib import Path

import ld2


@ld2.runner("napsq")
def napsq(x: int) -> int:
    Path(os.environ["NAP_MARKER"]).touch()
    time.sleep(float(os.environ.get("NAP_SECONDS", "0")))
    return x * x
"""

SCRUBBED = ("REDIS_URL", "LD2_REDIS_URL", "LD2_API_URL", "LD2_API_TOKEN", "LD2_PREFIX")


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "ld2", *args],
            env={**base, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@contextlib.contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            _stop(p)


HANDED_BACK = re.compile(r"handed back (\d+) expired trial")


def _reaped_by(logs: list[Path]) -> int:
    """Expired trials the reaper processes said they handed back, all of them together."""
    return sum(int(n) for log in logs for n in HANDED_BACK.findall(log.read_text(errors="replace")))


async def _poll(what: str, check: object, procs: list[subprocess.Popen[bytes]],
                limit: float = 180.0) -> None:  # fmt: skip
    """Wait for an async `check()` to be true; the processes in `procs` must stay alive."""
    give_up = time.monotonic() + limit
    while not await check():  # type: ignore[operator]
        for p in procs:
            assert p.poll() is None, f"{p.args} ended with {p.returncode} while waiting: {what}"
        assert time.monotonic() < give_up, f"gave up waiting: {what}"
        await asyncio.sleep(0.05)


async def test_three_reaper_processes_and_a_killed_worker(
    private_redis_url: str | None, tmp_path: Path
) -> None:
    if private_redis_url is None:
        print("skipped: no redis-server binary for a private Redis")
        pytest.skip("needs the redis-server binary (a private Redis for real processes)")
    url = private_redis_url
    prefix = f"reapers-{uuid.uuid4().hex[:10]}"
    points, size = 60, 5
    (tmp_path / "napmod.py").write_text(NAP_RUNNER)
    marker = tmp_path / "computing"
    env = {"LD2_PREFIX": prefix, "PYTHONPATH": str(tmp_path), "NAP_MARKER": str(marker)}
    # max_attempts 2: a range reaped twice would be quarantined, and show as failed
    table = RedisTable.from_url(url, prefix=prefix, max_attempts=2, index_ttl=0.0)
    worker_args = ["worker", "--redis", url, "--import", "napmod", "--capacity", "napsq",
                   "--processes", "1", "--max-size", str(size), "--lease", "2"]  # fmt: skip
    logs = [tmp_path / f"reaper{k}.log" for k in range(3)]
    sid: str | None = None
    try:
        sid = await table.register_study(
            registry([int_axis("x", points)], name="killed", capacity=["napsq"])
        )
        with _processes() as procs:
            reapers = [
                _start(["reaper", "--redis", url, "--interval", "0.2"], env, log) for log in logs
            ]
            procs.extend(reapers)
            victim = _start(worker_args, {**env, "NAP_SECONDS": "120"}, tmp_path / "victim.log")
            procs.append(victim)

            async def computing() -> bool:
                return marker.exists() and bool(await _leases(table, sid))

            await _poll("the victim computing a trial", computing, procs)
            held = await _leases(table, sid)  # it computes one point for 120 s: it holds these
            victim.kill()  # SIGKILL: nothing handed back; its compute process dies with it
            victim.wait(30)
            procs.remove(victim)

            async def handed_back() -> bool:
                back = await _back(table, sid)
                twice = [b for b in back if b[2] > 1] or await table.failures(sid)
                assert not twice, f"reaped more than once: {twice}"  # fail at once, not at 180 s
                return not await _leases(table, sid) and len(back) == len(held)

            await _poll("the reapers handing the killed worker's trials back", handed_back, reapers)
            back = await _back(table, sid)
            assert sorted(tid for *_, tid in back) == sorted(held)
            assert all(attempts == 1 for _, _, attempts, _ in back)  # counted once
            assert await table.failures(sid) == []

            async def logged() -> bool:
                return _reaped_by(logs) >= len(held)

            await _poll("the reapers' log lines", logged, reapers)

            rescuer = _start([*worker_args, "--exit-when-idle", "3"], env, tmp_path / "rescuer.log")
            procs.append(rescuer)

            async def finished() -> bool:
                return (await table.get_study(sid)).status == "done"

            await _poll("the fresh worker finishing the study", finished, reapers)
            assert rescuer.wait(120) == 0, (tmp_path / "rescuer.log").read_text()
            for p in reapers:
                assert p.poll() is None, f"a reaper died: {p.args}"

        state = await table.get_study(sid)
        assert (state.status, state.done, state.failed, state.reserved) == ("done", points, 0, 0)
        assert await table.failures(sid) == []
        flats, values = await all_results(table, sid)
        assert flats == list(range(points))  # every point registered exactly once
        assert values == [x * x for x in range(points)]
        # the reapers together handed back exactly what the killed worker held, nothing twice
        assert _reaped_by(logs) == len(held), [log.read_text() for log in logs]
    finally:
        if sid is not None:
            with contextlib.suppress(NotFound):
                await table.delete(sid)
        keys = [k async for k in table.client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await table.client.delete(*keys)
        await table.close()
