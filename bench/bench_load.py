"""Load benchmark: many simulated workers cycling empty 1-point trials, and reserve cost against
the number of studies waiting for a capacity the worker does not have.

Run by hand (starts its own servers on free loopback ports and stops them at the end):

    uv run python bench/bench_load.py                          # defaults: about 2.5 minutes
    uv run python bench/bench_load.py --seconds 5 --setups direct --studies 0,1000
    uv run python bench/bench_load.py --json load.json         # every number, as JSON
    mkdir /tmp/before && git archive HEAD ld2 | tar -x -C /tmp/before   # an older ld2:
    uv run python bench/bench_load.py --repo /tmp/before --setups '' --studies 0,1000,10000

Part 1, for each setup of ``--setups direct,cluster,api``: ``--workers`` (1,000) simulated
workers, asyncio tasks split over ``--procs`` (2) client processes, each reserve one trial
(warm-up, not timed) and then run a worker's steady state for ``--seconds`` (20):
``register_and_reserve`` of an empty 1-point trial (``max_size=1``, the study's int zero), one
request id per logical call and a 30 s lease, retried as ``ld2 worker`` retries (an
unreachable backend with backoff, the same request id). The setups:

- ``direct``: a private redis-server. Each client process has one `RedisTable` (one index
  cache, like one ``ld2 worker --processes N``) over one connection pool as large as its
  workers, so every call in flight has its own connection (1,000 workers: up to 1,000 Redis
  connections). ``--workers-per-table N`` gives every N workers their own table and pool
  instead (N=1: the index cache of 1,000 separate worker processes).
- ``cluster``: the same on a local 3-master Redis Cluster (``tests/cluster.py``) with redis-py's
  async ``RedisCluster`` client (pool per node as large as the process's workers). Also says
  which client ``RedisTable.from_url`` settles on for a cluster node.
- ``api``: ``--apis`` (2) ``ld2 api`` processes on the private redis-server; each worker is its
  own `HttpTable` (its own kept-alive connection), workers alternating between the APIs. Their
  Redis URL carries ``?max_connections=`` (``--api-pool``, default workers + 16): redis-py's
  default pool of 100 refuses the 101st concurrent call, which the API answers with 503.

Measured per setup: cycles/s (trials registered per second); the latency of every reserve and
``register_and_reserve`` call, retries included (mean, p50, p90, p99, max); overlap, which must
be zero: trial ids handed to two workers, points leased while an earlier lease of them was live
(a point leased again after its lease expired is counted apart), points the study registered
twice (its ``done`` zset), the study's ``done`` against the registrations the workers saw, and
leases left after the workers release their last trial; how evenly trials spread over workers
(min / median / max per worker, coefficient of variation); errors; CPU of Redis (INFO cpu), the
API processes and the client processes (/proc), per cycle and in % of one core, and the whole
machine's, with what other processes took ("others": the machine may be shared).

Part 2, on a private redis-server: with N of ``--studies 0,1000,10000`` studies waiting that
require another capacity, ``--probe-workers`` (50) workers in one client process cycle for
``--probe-seconds`` (8) on the one study they match. Prints cycles/s, reserve latency (mean,
p50, p99, max) and their ratio to the first N (reserve cost must not grow with studies a worker
cannot take), the time to register the studies (concurrent ``register_study`` calls,
``asyncio.gather`` in chunks of ``--chunk``), and the first reserve of a fresh process (cold).

Each setup prints a plain table; ``--json PATH`` writes every number; ``--keep DIR`` keeps the
work directory (API logs, cluster nodes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import itertools
import json
import os
import random
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
if os.environ.get("LD2_BENCH_REPO"):  # --repo: ld2 from another tree (tests/cluster.py from ours)
    sys.path.insert(0, os.environ["LD2_BENCH_REPO"])

LEASE = 30.0  # ld2 worker's own lease; a worker slower than that loses its trial to another
STUDY_POINTS = 10**9  # far more than any run registers: the study never runs out
SETUP_TIMEOUT = 180.0  # seconds a client process may take to build its tables and warm up


# ---------------------------------------------------------------------------------------------
# client process: simulated workers
# ---------------------------------------------------------------------------------------------


def _redis_client(url: str, cluster: bool, connections: int) -> Any:
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url, max_connections=connections)
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(url, max_connections=connections)


async def _child(cfg: dict[str, Any]) -> None:
    """One client process: build its workers' tables, warm up, wait for GO, cycle, report."""
    from ld2.core.errors import BackendUnavailable, NotFound, TrialRejected
    from ld2.store.http import HttpTable
    from ld2.store.redis import RedisTable

    REFUSALS = (TrialRejected, NotFound)  # answers: the trial is not this worker's any more
    kind: str = cfg["kind"]
    ids: list[int] = cfg["workers"]
    caps: list[str] = cfg["capacities"]
    per_table: int = cfg["per_table"] or len(ids)
    zero = np.zeros(1, dtype=np.int64)

    tables: list[Any] = []  # per worker
    owned: list[Any] = []  # to close
    if kind == "api":
        for g in ids:
            t = HttpTable(cfg["urls"][g % len(cfg["urls"])])
            tables.append(t)
            owned.append(t)
    else:
        for k in range(0, len(ids), per_table):
            group = ids[k : k + per_table]
            client = _redis_client(cfg["urls"][0], kind == "cluster", len(group) + 8)
            t = RedisTable(client, prefix=cfg["prefix"], url=cfg["urls"][0])
            owned.append(t)
            tables.extend([t] * len(group))

    names = [f"w{g}" for g in ids]
    held: list[Any] = [None] * len(ids)
    first_ms: list[float] = []
    errors: Counter[str] = Counter()
    unexpected = [0]

    def note(err: BaseException) -> None:
        errors[f"{type(err).__name__}: {str(err)[:160]}"] += 1

    async def call(fn: Any, *a: Any, **kw: Any) -> Any:
        """`fn` with one request id for all attempts, retried as `ld2 worker` retries: an
        unreachable backend (BackendUnavailable) with backoff and jitter; errors a real worker
        would not survive (anything but a refusal) are counted and retried after 50 ms."""
        delay = 0.2
        while True:
            try:
                return await fn(*a, **kw)
            except REFUSALS:
                raise
            except BackendUnavailable as err:
                note(err)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 10.0)
            except Exception as err:
                note(err)
                unexpected[0] += 1
                await asyncio.sleep(0.05)

    def lease(res: Any) -> list[Any]:
        return [res.trial_id, res.start, _ms(res.reserved_at), _ms(res.deadline), res.worker_id]

    async def warm(i: int) -> None:
        t0 = time.perf_counter()
        rid = uuid.uuid4().hex
        held[i] = await call(
            tables[i].reserve, caps, 1, names[i], names[i], lease=LEASE, request_id=rid
        )
        first_ms.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(warm(i) for i in range(len(ids))))
    handed: list[list[Any]] = [[] for _ in ids]  # per worker: trial id, start, leased, deadline
    for i, res in enumerate(held):
        if res is not None:
            handed[i].append(lease(res))
    warm_errors = sum(errors.values())

    print("READY", flush=True)
    if (await asyncio.to_thread(sys.stdin.readline)).strip() != "GO":
        return
    cpu0 = os.times()
    t_go = time.perf_counter()
    stop = t_go + cfg["seconds"]
    counts = [0] * len(ids)
    lat: list[float] = []

    async def run(i: int) -> None:
        table, wid, res = tables[i], names[i], held[i]
        while time.perf_counter() < stop:
            rid = uuid.uuid4().hex
            t0 = time.perf_counter()
            try:
                if res is None:
                    res = await call(table.reserve, caps, 1, wid, wid, lease=LEASE, request_id=rid)
                else:
                    outcome, res = await call(
                        table.register_and_reserve, res, zero, caps, 1, wid, lease=LEASE,
                        request_id=rid,
                    )  # fmt: skip
                    if outcome == "ok":
                        counts[i] += 1
            except REFUSALS as err:  # the lease expired and its range went to another worker
                note(err)
                res = None
                continue
            lat.append((time.perf_counter() - t0) * 1000)
            if res is not None:
                handed[i].append(lease(res))
            else:
                await asyncio.sleep(0.05)  # nothing to reserve (does not happen here)
        held[i] = res

    await asyncio.gather(*(run(i) for i in range(len(ids))))
    elapsed = time.perf_counter() - t_go
    cpu1 = os.times()
    print("DONE", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # every process is done: no lease is released
    # while another process's workers still cycle (see `_releases`)

    async def release(i: int) -> None:  # a stopping worker hands its trial back
        if held[i] is not None:
            handed[i][-1].append(int(time.time() * 1000))  # the lease ends here
            with contextlib.suppress(Exception):
                await tables[i].fail(held[i].trial_id, names[i], "bench end", mode="release")

    await asyncio.gather(*(release(i) for i in range(len(ids))))
    for t in owned:
        with contextlib.suppress(Exception):
            await t.close()
    report = {
        "workers": ids,
        "counts": counts,
        "unexpected": unexpected[0],
        "lat_ms": [round(x, 3) for x in lat],
        "first_ms": [round(x, 3) for x in first_ms],
        "handed": handed,
        "elapsed": elapsed,
        "cpu": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        "errors": dict(errors),
        "warm_errors": warm_errors,
    }
    Path(cfg["out"]).write_text(json.dumps(report))


def _ms(when: Any) -> int:
    return int(when.timestamp() * 1000)


def child_main() -> None:
    cfg = json.loads(sys.stdin.readline())
    try:
        asyncio.run(_child(cfg))
    except BaseException:
        traceback.print_exc()
        raise


# ---------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------


def _read_line(proc: subprocess.Popen[bytes], deadline: float, what: str) -> str:
    assert proc.stdout is not None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"client process {proc.pid}: no {what} in time")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
        if ready:
            line = proc.stdout.readline().decode().strip()
            if not line:
                raise RuntimeError(f"client process {proc.pid} ended before {what}")
            if line == what:
                return line
        elif proc.poll() is not None:
            raise RuntimeError(f"client process {proc.pid} ended (status {proc.returncode})")


def _proc_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants (0 if gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                kids.setdefault(int(stat[1]), []).append(int(entry.name))
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(stat[11]) + int(stat[12])) / tick
        todo.extend(kids.get(p, []))
    return total


def _machine() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


def _redis_cpu(urls: list[str]) -> list[float]:
    """CPU seconds each Redis server says it used (INFO cpu: user + sys, main and children)."""
    import redis

    out = []
    for url in urls:
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            info = client.info("cpu")
        finally:
            client.close()
        out.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return out


def _redis_memory_mb(urls: list[str]) -> float:
    """Memory the Redis servers use (INFO memory: used_memory), MB."""
    import redis

    total = 0
    for url in urls:
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            total += int(client.info("memory")["used_memory"])
        finally:
            client.close()
    return round(total / 1e6, 1)


def drive(
    kind: str,
    urls: list[str],
    *,
    workers: int,
    procs: int,
    per_table: int,
    seconds: float,
    capacities: list[str],
    prefix: str,
    redis_nodes: list[str],
    api_pids: list[int],
    workdir: Path,
) -> dict[str, Any]:
    """Run `workers` simulated workers in `procs` client processes; the raw numbers."""
    procs = max(1, min(procs, workers))
    split = [list(range(k, workers, procs)) for k in range(procs)]  # round robin
    children: list[subprocess.Popen[bytes]] = []
    outs = [workdir / f"{kind}-{k}-{uuid.uuid4().hex[:6]}.json" for k in range(procs)]
    try:
        for k in range(procs):
            child = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(ROOT),
            )  # fmt: skip
            children.append(child)
            cfg = {
                "kind": kind, "urls": urls, "workers": split[k], "capacities": capacities,
                "prefix": prefix, "seconds": seconds, "per_table": per_table,
                "out": str(outs[k]),
            }  # fmt: skip
            assert child.stdin is not None
            child.stdin.write((json.dumps(cfg) + "\n").encode())
            child.stdin.flush()
        t_setup = time.monotonic()
        for child in children:
            _read_line(child, t_setup + SETUP_TIMEOUT, "READY")
        setup_s = time.monotonic() - t_setup
        m0, r0 = _machine(), _redis_cpu(redis_nodes)
        a0 = sum(_proc_cpu(p) for p in api_pids)
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"GO\n")
            child.stdin.flush()
        t0 = time.monotonic()
        for child in children:
            _read_line(child, t0 + seconds + 120, "DONE")
        wall = time.monotonic() - t0
        m1, r1 = _machine(), _redis_cpu(redis_nodes)
        a1 = sum(_proc_cpu(p) for p in api_pids)
        memory = _redis_memory_mb(redis_nodes)
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"END\n")
            child.stdin.flush()
        for child in children:
            child.wait(120)
            if child.returncode != 0:
                raise RuntimeError(f"client process {child.pid} exited {child.returncode}")
        reports = [json.loads(p.read_text()) for p in outs]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        for p in outs:
            p.unlink(missing_ok=True)
    return {
        "reports": reports,
        "setup_s": setup_s,
        "wall": wall,
        "redis_memory_mb": memory,
        "cpu_redis": sum(r1) - sum(r0),
        "cpu_redis_nodes": [b - a for a, b in zip(r0, r1, strict=True)],
        "cpu_api": a1 - a0,
        "cpu_machine": (m1[0] - m0[0], m1[1] - m0[1]),
    }


def summarize(raw: dict[str, Any], workers: int, state0: Any, state1: Any) -> dict[str, Any]:
    """Throughput, latency, overlap, spread and CPU from the client reports and the study."""
    reports = raw["reports"]
    counts = [c for r in reports for c in r["counts"]]
    lat = np.array([x for r in reports for x in r["lat_ms"]], dtype=float)
    first = np.array([x for r in reports for x in r["first_ms"]], dtype=float)
    handed = [h for r in reports for per in r["handed"] for h in per]
    window = max(r["elapsed"] for r in reports)
    registered = sum(counts)
    unexpected = sum(r["unexpected"] for r in reports)
    errors: Counter[str] = Counter()
    for r in reports:
        errors.update(r["errors"])
    ids = [h[0] for h in handed]
    live_twice, after_expiry, examples = _releases(handed)
    done = state1.done - state0.done
    mean = statistics.fmean(counts) if counts else 0.0
    busy, total = raw["cpu_machine"]
    cores = os.cpu_count() or 1
    return {
        "workers": workers,
        "client_processes": len(reports),
        "seconds": round(window, 2),
        "setup_seconds": round(raw["setup_s"], 1),
        "cycles_per_s": round(registered / window, 1),
        "calls_timed": int(lat.size),
        "latency_ms": {
            "mean": round(float(lat.mean()), 2) if lat.size else None,
            "p50": _pct(lat, 50),
            "p90": _pct(lat, 90),
            "p99": _pct(lat, 99),
            "max": _pct(lat, 100),
        },
        "first_reserve_ms": {"p50": _pct(first, 50), "max": _pct(first, 100)},
        "overlap": {
            "leases_handed_out": len(handed),
            "duplicate_trial_ids": len(ids) - len(set(ids)),
            "points_leased_while_leased": live_twice,
            "points_released_after_expiry": after_expiry,
            "overlap_examples": examples,
            "registered_seen_by_workers": registered,
            "study_done_delta": done,
            "done_matches": registered == done,
            "points_registered_twice": state1.__dict__.get("registered_twice"),
            "left_reserved": state1.reserved,
        },
        "spread": {
            "min": min(counts) if counts else 0,
            "median": statistics.median(counts) if counts else 0,
            "max": max(counts) if counts else 0,
            "cv": round(statistics.pstdev(counts) / mean, 3) if mean else None,
            "idle_workers": sum(1 for c in counts if c == 0),
        },
        "errors": dict(errors.most_common(8)),
        "redis_memory_mb_after": raw["redis_memory_mb"],
        "error_count": sum(errors.values()),
        "unexpected_errors": unexpected,
        "warmup_errors": sum(r["warm_errors"] for r in reports),
        "cpu_us_per_cycle": {
            "redis": _per(raw["cpu_redis"], registered, window, raw["wall"]),
            "api": _per(raw["cpu_api"], registered, window, raw["wall"]),
            "clients": _per(sum(r["cpu"] for r in reports), registered, window, window),
        },
        "cpu_percent_of_one_core": {
            "redis": round(100 * raw["cpu_redis"] / raw["wall"], 1),
            "redis_nodes": [round(100 * c / raw["wall"], 1) for c in raw["cpu_redis_nodes"]],
            "api": round(100 * raw["cpu_api"] / raw["wall"], 1),
            "clients": round(100 * sum(r["cpu"] for r in reports) / raw["wall"], 1),
            "machine": round(100 * busy / total * cores, 1),
            "others": round(
                100 * busy / total * cores
                - 100
                * (raw["cpu_redis"] + raw["cpu_api"] + sum(r["cpu"] for r in reports))
                / raw["wall"],
                1,
            ),
            "machine_cores": cores,
        },
    }


def _per(cpu: float, cycles: int, window: float, measured: float) -> float | None:
    """CPU microseconds per registered trial (`cpu` measured over `measured` seconds)."""
    if not cycles or not cpu:
        return None
    return round(cpu / measured * window / cycles * 1e6, 1)


def _releases(handed: list[list[Any]]) -> tuple[int, int, list[Any]]:
    """Points leased again while an earlier lease of them was live (an overlap: must be 0), and
    points leased again after an earlier lease expired (a worker too slow; allowed); with the
    first few overlapping pairs of leases (trial id, point, leased ms, deadline ms, worker, and
    for a trial its worker released at the end, when). Server and client clocks are one here."""
    by_point: dict[int, list[list[Any]]] = {}
    for h in handed:
        by_point.setdefault(h[1], []).append(h)
    live = expired = 0
    examples: list[Any] = []
    for leases in by_point.values():
        if len(leases) < 2:
            continue
        leases.sort(key=lambda h: h[2])
        for first, then in itertools.pairwise(leases):
            ended = first[3] if len(first) < 6 else min(first[3], first[5])  # released at the end
            if then[2] < ended:
                live += 1
                if len(examples) < 5:
                    examples.append([first, then])
            else:
                expired += 1
    return live, expired, examples


def _pct(values: np.ndarray, q: float) -> float | None:
    return None if values.size == 0 else round(float(np.percentile(values, q)), 2)


def _study(name: str, capacity: str) -> Any:
    from common import registry

    return registry(STUDY_POINTS, name).model_copy(update={"required_capacity": [capacity]})


async def _register(url: str, prefix: str, name: str, capacity: str, cluster: bool) -> str:
    from ld2.store.redis import RedisTable

    table = RedisTable(_redis_client(url, cluster, 16), prefix=prefix, url=url)
    try:
        return await table.register_study(_study(name, capacity))
    finally:
        await table.close()


async def _state(url: str, prefix: str, sid: str, cluster: bool) -> Any:
    """The study's state, with `registered_twice`: points among its registered trials (the
    ``done`` zset, trial id by start) that more than one trial covers (must be 0)."""
    from ld2.store.redis import RedisTable

    table = RedisTable(_redis_client(url, cluster, 16), prefix=prefix, url=url)
    try:
        state = await table.get_study(sid)
        done_key = f"{prefix}:{{{sid}}}:done"  # docs/store.md, "Data model"
        rows = await table.client.zrange(done_key, 0, -1, withscores=True)
        starts = [int(score) for _, score in rows]
        state.__dict__["registered_twice"] = len(starts) - len(set(starts))
        return state
    finally:
        await table.close()


async def _from_url_client(url: str) -> str:
    """Which client `RedisTable.from_url` picks for this URL (a cluster node here)."""
    from ld2.store.redis import RedisTable

    table: Any = RedisTable.from_url(url, prefix="load-probe")
    if inspect.isawaitable(table):
        table = await table
    try:
        await table.ping()  # a table may settle what the URL points at on its first call
        kind = f"{type(table.client).__module__}.{type(table.client).__name__}"
        return f"{kind} (is_cluster={getattr(table, 'is_cluster', 'n/a')})"
    finally:
        await table.close()


def _start_api(port: int, url: str, prefix: str, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if os.environ.get("LD2_BENCH_REPO"):
        env["PYTHONPATH"] = os.pathsep.join(
            x for x in (os.environ["LD2_BENCH_REPO"], env.get("PYTHONPATH")) if x
        )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ld2", "api", "--host", "127.0.0.1", "--port", str(port),
             "--redis", url, "--prefix", prefix],
            stdout=out, stderr=out, cwd=str(log.parent), env=env,
        )  # fmt: skip


def _wait_ping(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(
                f"ld2 api at {base} exited with {proc.returncode}: {' | '.join(tail)}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/ping", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"ld2 api at {base}: no /ping in {timeout:.0f} s")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(15)


def run_setup(name: str, args: argparse.Namespace, redis_url: str, work: Path) -> dict[str, Any]:
    """One setup of part 1: its servers, its study, the run, the checks."""
    from common import free_port

    prefix = f"load-{name}"
    started: list[subprocess.Popen[bytes]] = []
    cluster_obj = None
    extra: dict[str, Any] = {}
    try:
        if name == "cluster":
            from tests.cluster import LocalCluster

            cluster_obj = LocalCluster(work / "cluster")
            t0 = time.monotonic()
            cluster_obj.start()
            extra["cluster_start_seconds"] = round(time.monotonic() - t0, 1)
            url = cluster_obj.url
            nodes = [cluster_obj.node_url(i) for i in range(len(cluster_obj.ports))]
            try:
                extra["from_url_client"] = asyncio.run(_from_url_client(url))
            except Exception as err:
                extra["from_url_client"] = f"error: {type(err).__name__}: {err}"
            urls, api_pids = [url], []
        else:
            url, nodes = redis_url, [redis_url]
            urls, api_pids = [url], []
        is_cluster = name == "cluster"
        sid = asyncio.run(_register(url, prefix, "load", "load", is_cluster))
        if name == "api":
            urls = []
            pool = args.api_pool if args.api_pool >= 0 else args.workers + 16
            api_redis = f"{redis_url}?max_connections={pool}" if pool else redis_url
            extra["api_redis_url"] = api_redis
            for k in range(args.apis):
                log = work / f"api{k}.log"
                for attempt in range(3):  # a free port can be taken before the API binds it
                    port = free_port()
                    proc = _start_api(port, api_redis, prefix, log)
                    started.append(proc)
                    try:
                        _wait_ping(f"http://127.0.0.1:{port}", proc, log)
                        break
                    except RuntimeError as err:
                        if attempt == 2 or proc.poll() is None:
                            raise
                        print(f"  (retrying the API start: {err})", file=sys.stderr)
                urls.append(f"http://127.0.0.1:{port}")
            api_pids = [p.pid for p in started if p.poll() is None]
        state0 = asyncio.run(_state(url, prefix, sid, is_cluster))
        raw = drive(
            "api" if name == "api" else "redis" if name == "direct" else "cluster",
            urls,
            workers=args.workers, procs=args.procs, per_table=args.workers_per_table,
            seconds=args.seconds, capacities=["load"], prefix=prefix, redis_nodes=nodes,
            api_pids=api_pids, workdir=work,
        )  # fmt: skip
        state1 = asyncio.run(_state(url, prefix, sid, is_cluster))
        out = summarize(raw, args.workers, state0, state1) | extra
        if name == "api":
            out["api_processes"] = len(started)
            out["api_503_responses"] = sum(
                (work / f"api{k}.log").read_text(errors="replace").count('" 503')
                for k in range(len(started))
            )
        return out
    except Exception as err:
        traceback.print_exc()
        return {"error": f"{type(err).__name__}: {err}"} | extra
    finally:
        _stop(started)
        if cluster_obj is not None:
            cluster_obj.stop()


async def _register_many(url: str, prefix: str, first: int, n: int, chunk: int) -> float:
    """Register studies other-<first>..other-<first+n-1> (capacity "other"); seconds taken."""
    from ld2.store.redis import RedisTable

    table = RedisTable(_redis_client(url, False, chunk + 8), prefix=prefix, url=url)
    regs = [_study(f"other-{k:06d}", "other") for k in range(first, first + n)]
    try:
        t0 = time.perf_counter()
        for k in range(0, n, chunk):
            await asyncio.gather(*(table.register_study(r) for r in regs[k : k + chunk]))
        return time.perf_counter() - t0
    finally:
        await table.close()


def run_studies(args: argparse.Namespace, redis_url: str, work: Path) -> list[dict[str, Any]]:
    """Part 2: reserve cost on a matching study against N waiting non-matching studies."""
    prefix = "load-scan"
    sid = asyncio.run(_register(redis_url, prefix, "probe", "probe", False))
    have = 0
    rows: list[dict[str, Any]] = []
    for n in sorted(args.studies):
        row: dict[str, Any] = {"studies_waiting": n}
        try:
            took = asyncio.run(_register_many(redis_url, prefix, have, n - have, args.chunk))
            row["registered_now"] = n - have
            row["register_seconds"] = round(took, 2)
            row["register_per_s"] = round((n - have) / took, 1) if n > have else None
            have = n
            state0 = asyncio.run(_state(redis_url, prefix, sid, False))
            raw = drive(
                "redis", [redis_url], workers=args.probe_workers, procs=1,
                per_table=args.workers_per_table, seconds=args.probe_seconds,
                capacities=["probe"], prefix=prefix, redis_nodes=[redis_url], api_pids=[],
                workdir=work,
            )  # fmt: skip
            state1 = asyncio.run(_state(redis_url, prefix, sid, False))
            row |= summarize(raw, args.probe_workers, state0, state1)
        except Exception as err:
            traceback.print_exc()
            row["error"] = f"{type(err).__name__}: {err}"
        rows.append(row)
        print_studies_row(row, rows[0], args.probe_workers)
    return rows


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------

TITLES = {
    "direct": "direct: one private redis-server",
    "cluster": "cluster: local Redis Cluster, 3 masters",
    "api": "api: 2 `ld2 api` processes on the private redis-server, HttpTable workers",
}


def _f(x: Any, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def print_setup(name: str, r: dict[str, Any]) -> None:
    print(f"\n== {TITLES.get(name, name)} ==")
    if "from_url_client" in r:
        print(f"  {'RedisTable.from_url(cluster node) client':40} {r['from_url_client']}")
    if "api_redis_url" in r:
        print(f"  {'--redis of the ld2 api processes':40} {r['api_redis_url']}")
    if "error" in r:
        print(f"  {'ERROR':40} {r['error']}")
        return
    lat, ov, sp, cpu = r["latency_ms"], r["overlap"], r["spread"], r["cpu_percent_of_one_core"]
    rows = [
        ("workers / client processes", f"{r['workers']:,} / {r['client_processes']}"),
        ("window (s) / setup before it (s)", f"{r['seconds']} / {r['setup_seconds']}"),
        ("cycles/s (trials registered per s)", _f(r["cycles_per_s"])),
        ("calls timed", _f(r["calls_timed"])),
        ("latency mean / p50 / p90 / p99 / max (ms)",
         " / ".join(_f(lat[k], ".1f") for k in ("mean", "p50", "p90", "p99", "max"))),
        ("first reserve p50 / max (ms, warm-up)",
         f"{_f(r['first_reserve_ms']['p50'], '.1f')} / {_f(r['first_reserve_ms']['max'], '.1f')}"),
        ("leases handed out", _f(ov["leases_handed_out"])),
        ("duplicate trial ids", str(ov["duplicate_trial_ids"])),
        ("points leased while leased (overlap)", str(ov["points_leased_while_leased"])),
        ("points leased again after expiry", str(ov["points_released_after_expiry"])),
        ("study done (delta) / registered seen",
         f"{ov['study_done_delta']:,} / {ov['registered_seen_by_workers']:,}"
         f"  ({'ok' if ov['done_matches'] else 'MISMATCH'})"),
        ("points registered twice (done zset)", str(ov["points_registered_twice"])),
        ("left reserved after release", str(ov["left_reserved"])),
        ("trials per worker min / median / max",
         f"{sp['min']} / {sp['median']:g} / {sp['max']}  (CV {_f(sp['cv'], '.3f')},"
         f" {sp['idle_workers']} idle)"),
        ("errors, retried (in warm-up; unexpected)",
         f"{r['error_count']} ({r['warmup_errors']}; {r['unexpected_errors']})"),
        ("CPU % of one core: redis / api / clients",
         f"{cpu['redis']:.0f} / {cpu['api']:.0f} / {cpu['clients']:.0f}"),
        ("Redis used_memory after the window (MB)", _f(r["redis_memory_mb_after"], ".1f")),
        ("CPU µs per cycle: redis / api / clients",
         " / ".join(_f(r["cpu_us_per_cycle"][k], ".0f") for k in ("redis", "api", "clients"))),
        ("CPU % of one core: machine (others)",
         f"{cpu['machine']:.0f} of {cpu['machine_cores'] * 100} ({cpu['others']:.0f})"),
    ]  # fmt: skip
    if len(cpu["redis_nodes"]) > 1:
        nodes = " / ".join(f"{c:.0f}" for c in cpu["redis_nodes"])
        rows.append(("CPU % of one core: each Redis node", nodes))
    if "cluster_start_seconds" in r:
        rows.append(("cluster start (s)", str(r["cluster_start_seconds"])))
    if "api_503_responses" in r:
        rows.append(("API 503 answers (access logs)", _f(r["api_503_responses"])))
    for label, value in rows:
        print(f"  {label:40} {value}")
    for msg, n in r["errors"].items():
        print(f"  error x{n}: {msg}")
    for first, then in ov["overlap_examples"]:
        print(f"  OVERLAP: {first} then {then}")


def print_studies_header(workers: int, seconds: float) -> None:
    print(
        f"\n== reserve cost vs. waiting non-matching studies"
        f" ({workers} workers, {seconds:g} s each, direct redis) =="
    )
    print(
        f"  {'studies':>8} {'register s':>10} {'reg/s':>7} {'cycles/s':>9} {'mean ms':>8}"
        f" {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'cold 1st ms':>11} {'x cyc':>6} {'x p50':>6} {'x p99':>6}"
        f" {'dup':>4} {'done ok':>7} {'µs/cyc r/c':>10} {'others %':>8}"
    )


def print_studies_row(row: dict[str, Any], base: dict[str, Any], workers: int) -> None:
    if "error" in row:
        print(f"  {row['studies_waiting']:>8,} ERROR {row['error']}")
        return

    def ratio(a: Any, b: Any) -> str:
        return "-" if not a or not b else f"{a / b:.2f}"

    lat, blat = row["latency_ms"], base.get("latency_ms", {})
    ov, cpu, per = row["overlap"], row["cpu_percent_of_one_core"], row["cpu_us_per_cycle"]
    dup = (
        ov["duplicate_trial_ids"]
        + ov["points_leased_while_leased"]
        + (ov["points_registered_twice"] or 0)
    )
    print(
        f"  {row['studies_waiting']:>8,} {row['register_seconds']:>10.1f}"
        f" {_f(row['register_per_s']):>7} {row['cycles_per_s']:>9,.0f}"
        f" {_f(lat['mean'], '.1f'):>8} {_f(lat['p50'], '.1f'):>8} {_f(lat['p99'], '.1f'):>8}"
        f" {_f(lat['max'], '.0f'):>8} {_f(row['first_reserve_ms']['max'], '.0f'):>11}"
        f" {ratio(row['cycles_per_s'], base.get('cycles_per_s')):>6}"
        f" {ratio(lat['p50'], blat.get('p50')):>6} {ratio(lat['p99'], blat.get('p99')):>6}"
        f" {dup:>4} {'yes' if ov['done_matches'] else 'NO':>7}"
        f" {_f(per['redis']):>4}/{_f(per['clients']):<5} {cpu['others']:>8.0f}",
        flush=True,
    )
    if row["error_count"]:
        for msg, n in row["errors"].items():
            print(f"           error x{n}: {msg}")


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="part 1 window per setup")
    parser.add_argument("--workers", type=int, default=1000, help="simulated workers, part 1")
    parser.add_argument("--procs", type=int, default=2, help="client processes, part 1")
    parser.add_argument(
        "--workers-per-table", type=int, default=0,
        help="workers sharing one RedisTable and pool (0: all of a client process)",
    )  # fmt: skip
    parser.add_argument("--setups", default="direct,cluster,api", help="direct,cluster,api")
    parser.add_argument("--apis", type=int, default=2, help="ld2 api processes (setup api)")
    parser.add_argument(
        "--api-pool", type=int, default=-1,
        help="the APIs' Redis pool (?max_connections= in their URL); -1: workers + 16, "
        "0: redis-py's default (100; more concurrent calls fail: 503)",
    )  # fmt: skip
    parser.add_argument(
        "--repo", type=Path,
        help="a directory holding the ld2 package to measure instead of this tree's "
        "(e.g. `git archive HEAD ld2 | tar -x -C /tmp/before`)",
    )  # fmt: skip
    parser.add_argument(
        "--studies", default="0,1000,10000",
        help="part 2: waiting non-matching study counts ('' skips part 2)",
    )  # fmt: skip
    parser.add_argument("--probe-workers", type=int, default=50, help="part 2 workers")
    parser.add_argument("--probe-seconds", type=float, default=8.0, help="part 2 window per N")
    parser.add_argument("--chunk", type=int, default=200, help="concurrent register_study calls")
    parser.add_argument("--json", type=Path, help="write every number to this file")
    parser.add_argument(
        "--keep", type=Path, help="work in this directory and keep it (API logs, cluster nodes)"
    )
    args = parser.parse_args()
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    unknown = set(setups) - set(TITLES)
    if unknown:
        parser.error(f"unknown setups: {', '.join(sorted(unknown))}")
    args.studies = sorted({int(s) for s in args.studies.split(",") if s.strip()})
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is needed for this benchmark")
    if args.repo is not None:
        os.environ["LD2_BENCH_REPO"] = str(args.repo.resolve())
        sys.path.insert(0, str(args.repo.resolve()))

    from common import private_redis

    t_all = time.monotonic()
    out: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cores": os.cpu_count(), "redis_server": _redis_version()},
        "code": _code_state(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "setups": {},
        "studies": [],
    }
    code = out["code"]
    print(
        f"bench_load: {os.cpu_count()} cores, {out['machine']['redis_server']};"
        f" {args.workers:,} workers in {args.procs} client processes, {args.seconds:g} s per setup"
        f"\nld2 from {code['ld2']} (store/redis.py sha1 {code['redis_py_sha1']},"
        f" per-capacity index: {'yes' if code['capacity_index'] else 'no'})",
        flush=True,
    )
    with contextlib.ExitStack() as stack:
        if args.keep is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ld2-load-")))
        else:
            work = args.keep
            work.mkdir(parents=True, exist_ok=True)
        for name in setups:
            servers = private_redis() if name != "cluster" else contextlib.nullcontext("")
            with servers as redis_url:
                result = run_setup(name, args, redis_url, work)
            out["setups"][name] = result
            print_setup(name, result)
            sys.stdout.flush()
        if args.studies:
            print_studies_header(args.probe_workers, args.probe_seconds)
            with private_redis() as redis_url:
                out["studies"] = run_studies(args, redis_url, work)
    out["total_seconds"] = round(time.monotonic() - t_all, 1)
    print(f"\ntotal {out['total_seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


def _code_state() -> dict[str, Any]:
    """Which ld2 this run measures (the tree changes while people work on it)."""
    import hashlib

    import ld2.store.redis

    store = Path(ld2.store.redis.__file__).parent
    return {
        "ld2": str(store.parent.parent),
        "redis_py_sha1": hashlib.sha1((store / "redis.py").read_bytes()).hexdigest()[:12],
        "capacity_index": (store / "index.py").exists(),
    }


def _redis_version() -> str:
    try:
        text = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "redis-server ?"
    return text.split(" sha=")[0].strip()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child_main()
    else:
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        main()
