"""HTTP workers against Redis workers: the same sweep through ``ld2 worker --api`` and ``--redis``.

Run by hand (never in tests): ``uv run python bench/bench_http_worker.py``. On a private
redis-server, with ``ld2 api`` (one process) on it: a Mandelbrot study (max_iter 255) submitted
over HTTP, computed by two ``ld2 worker --processes 1 --max-size 1024`` processes that already
poll, timed from the submission until the study is done. Three ways:

- ``--redis``: the workers straight on Redis;
- ``--api``: the workers through the API (ld2's packed trial endpoints);
- ``--api, JSON``: the same through an API without the packed endpoints, where the workers
  fall back to lite_dist2's JSON (hex mappings): what ``--api`` cost before them.

Sizes: 1024×1024 (1,024 trials of 1,024 points; the goal: ``--api`` within 1.2× of
``--redis``) and 256×256 (the 65,536-point study of the first report). ``--rounds N`` repeats
each measurement and prints the median. ``--repo DIR`` (repeatable) measures several
checkouts in the same run, each with its own APIs on the one redis-server, interleaved.
Besides wall time, each line gives the CPU seconds the sweep cost the workers (with their
compute processes), the API process and redis-server: on a machine whose cores are all busy
computing, every extra CPU second of the API path is wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from ld2.store.http import HttpTable
from ld2.store.redis import RedisTable

sys.path.insert(0, str(Path(__file__).parent))
from benchkit import Checkout, add_target_options, checkouts
from common import free_port, mandelbrot_registry, private_redis

CAPACITY = "mandelbrot"
TRIAL = 1024
"""Points a trial (``--max-size``); 0 leaves the worker's adaptive size (trials of ~2 s)."""
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and its live descendants; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        children = [c for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    return own + sum(cpu_seconds(int(c)) for c in children)


def redis_pid(url: str) -> int | None:
    """The redis-server serving `url` (its process title names its address)."""
    address = url.removeprefix("redis://").split("/")[0]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"redis-server" in cmdline and address.encode() in cmdline:
                return int(entry.name)
    return None


@contextmanager
def api_server(
    redis_url: str, prefix: str, *, packed: bool, python: str = sys.executable
) -> Iterator[tuple[str, int]]:
    """``ld2 api`` (of the checkout whose interpreter is `python`) on a free port; with
    ``packed=False`` the same app without the packed endpoints (this script, run as
    ``--serve-json``), as an ld2 API from before them."""
    port = free_port()
    if packed:
        cmd = [python, "-P", "-m", "ld2", "api", "--port", str(port), "--redis", redis_url,
               "--prefix", prefix]  # fmt: skip
    else:
        cmd = [python, __file__, "--serve-json", str(port), redis_url, prefix]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise SystemExit(f"the API on {url} never answered")
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(15)


def serve_json(port: int, redis_url: str, prefix: str) -> None:
    """An ld2 API without the packed endpoints (workers then speak lite_dist2's JSON)."""
    import uvicorn

    from ld2.api.server import build_app
    from ld2.config import ApiSettings

    app = build_app(ApiSettings(redis_url=redis_url, prefix=prefix))
    app.router.routes[:] = [
        r for r in app.router.routes if not getattr(r, "path", "").startswith("/trial/packed/")
    ]
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", server_header=False)


Costs = dict[str, float]


async def sweep(
    redis_url: str,
    prefix: str,
    api: tuple[str, int],
    n: int,
    through: str,
    count: int = 2,
    python: str = sys.executable,
) -> tuple[float, Costs]:
    """Seconds from submitting an n×n study over HTTP (both workers already polling) until it
    is done, and the CPU seconds spent meanwhile; the workers use ``through``: ``--api`` (the
    API at `api`) or ``--redis``; `count` workers."""
    api_url, api_pid = api
    server = redis_pid(redis_url)
    observer = RedisTable(aioredis.Redis.from_url(redis_url), prefix=prefix)
    submitter = HttpTable(api_url)
    target = api_url if through == "--api" else redis_url
    env = {**os.environ, "LD2_PREFIX": prefix}
    cmd = [python, "-P", "-m", "ld2", "worker", through, target, "--capacity", CAPACITY,
           "--processes", "1"]  # fmt: skip
    if TRIAL:
        cmd += ["--max-size", str(TRIAL)]
    workers = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        # all polling: each has reserved (and found nothing) at least once
        seen = f"{prefix}:{{g}}:workers"
        since = (await observer.server_time()).timestamp() * 1000
        while await observer.client.zcount(seen, since, "+inf") < count:
            await asyncio.sleep(0.01)
        reg = mandelbrot_registry(n, f"bench-{uuid.uuid4().hex[:8]}", CAPACITY)
        pids = {"workers": [w.pid for w in workers], "api": [api_pid], "redis": [server or 0]}
        before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
        t0 = time.perf_counter()
        sid = await submitter.register_study(reg)
        while (await observer.get_study(sid)).status != "done":
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - t0
        costs = {k: sum(cpu_seconds(p) for p in v) - before[k] for k, v in pids.items()}
        state = await observer.get_study(sid)
        assert (state.done, state.failed) == (n * n, 0), state
        await observer.delete(sid)
        return elapsed, costs
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(30)
        await submitter.close()
        await observer.close()


def python_of(target: Checkout) -> str:
    """The interpreter of a checkout's ld2 (the ``python`` beside its ``ld2`` script). It runs
    ``-P -m ld2``: without ``-P`` the current directory comes first on ``sys.path``, and every
    checkout measured from this one would run this one's ``ld2/``."""
    return str(target.ld2.parent / "python")


async def main(
    targets: list[Checkout], rounds: int, sizes: list[int], workers: int, json: bool
) -> None:
    for t in targets:
        print(f"{t.label}: {t.describe()}")
    with private_redis() as url, contextlib.ExitStack() as stack:
        servers = {}
        for t in targets:  # each checkout's own APIs, under its own key prefix
            prefix = f"bh{uuid.uuid4().hex[:6]}"
            python = python_of(t)
            api = stack.enter_context(api_server(url, prefix, packed=True, python=python))
            ways = {"--redis": (api, "--redis"), "--api": (api, "--api")}
            if json:
                old = stack.enter_context(api_server(url, prefix, packed=False, python=python))
                ways["--api, JSON"] = (old, "--api")
            servers[t.label] = (prefix, python, ways)
        for n in sizes:
            times: dict[tuple[str, str], list[float]] = {}
            costs: dict[tuple[str, str], list[Costs]] = {}
            for rnd in range(rounds):
                shift = rnd % len(targets)  # a rotating order: nobody always goes first
                for t in targets[shift:] + targets[:shift]:
                    prefix, python, ways = servers[t.label]
                    for how, (server, through) in ways.items():
                        took, spent = await sweep(
                            url, prefix, server, n, through, workers, python=python
                        )
                        times.setdefault((t.label, how), []).append(took)
                        costs.setdefault((t.label, how), []).append(spent)
            print(
                f"{n}x{n} ({n * n:,} points, {f'{TRIAL}-point' if TRIAL else 'adaptive'} "
                f"trials, {workers} workers × 1 process, "
                f"median of {rounds}; CPU s: workers / API / redis-server, median):"
            )
            for t in targets:
                med = {how: statistics.median(times[(t.label, how)]) for how in servers[t.label][2]}
                base = med["--redis"]
                for how, took in med.items():
                    runs = ", ".join(f"{x:.2f}" for x in times[(t.label, how)])
                    cpu = " / ".join(
                        f"{statistics.median(c[part] for c in costs[(t.label, how)]):.2f}"
                        for part in ("workers", "api", "redis")
                    )
                    print(f"  {t.label} {how:12s} {took:6.2f} s ({took / base:5.2f}× --redis)  "
                          f"[{runs}]  CPU {cpu}")  # fmt: skip
                goal = " (goal ≤ 1.2)" if n == 1024 else ""
                print(f"  {t.label} --api / --redis: {med['--api'] / base:.2f}{goal}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-json":
        serve_json(int(sys.argv[2]), sys.argv[3], sys.argv[4])
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 256])
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--no-json", action="store_true", help="skip the JSON (old) way")
    parser.add_argument("--max-size", type=int, default=TRIAL, help="0: adaptive trial size")
    add_target_options(parser)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    TRIAL = args.max_size
    targets = checkouts(args.repo, args.ld2)
    asyncio.run(main(targets, args.rounds, args.sizes, args.workers, not args.no_json))
