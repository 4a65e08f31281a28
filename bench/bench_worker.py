"""Worker benchmark: ld2 workers against multiprocessing.Pool(2) on the same Mandelbrot chunks.

Run by hand: ``uv run python bench/bench_worker.py``. One run measures, on a private
redis-server: a 1024×1024 Mandelbrot (max_iter 255) computed by two `ld2 worker` processes with
one compute process each (start-up included, until the study is done), against
``multiprocessing.Pool(2)`` mapping the numpy kernel over the same chunks (pool start included);
then the same for the plain-Python scalar kernel on 256×256.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis

from ld2.core import models as m
from ld2.core.planning import plan_count
from ld2.core.study import StudySpec, parse_study
from ld2.store.redis import RedisTable
from ld2.worker import runners

sys.path.insert(0, str(Path(__file__).parent))
from common import mandelbrot_registry, private_redis

CHUNK = 16_384


def _chunk(args: tuple[str, StudySpec, int, int]) -> np.ndarray:
    name, spec, start, count = args
    return runners.compute(runners.REGISTRY[name], spec, start, count)


def pool_baseline(spec: StudySpec, capacity: str) -> float:
    total = spec.total or 0
    chunks, start = [], 0
    while start < total:
        count = plan_count(spec.space, start, CHUNK, False)
        chunks.append((capacity, spec, start, count))
        start += count
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(_chunk, chunks[:2], chunksize=1)  # started and warm, like polling workers
        t0 = time.perf_counter()
        pool.map(_chunk, chunks, chunksize=1)
        return time.perf_counter() - t0


async def ld2_workers(url: str, registry: m.StudyRegistry, capacity: str, warm: bool) -> float:
    """Seconds until the study is done: from starting the two workers (cold), or from
    registering the study while both already poll (warm)."""
    table = RedisTable(aioredis.Redis.from_url(url), prefix=f"bw{time.monotonic_ns()}")
    env = {**os.environ, "LD2_REDIS_URL": url, "LD2_PREFIX": table.prefix}
    t0 = time.perf_counter()
    if not warm:
        sid = await table.register_study(registry)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ld2", "worker", "--capacity", capacity, "--processes", "1",
             "--max-size", str(CHUNK), "--exit-when-idle", "1", "--idle-wait", "0.01"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]  # fmt: skip
    if warm:
        while await table.client.zcard(f"{table.prefix}:{{g}}:workers") < 2:
            await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        sid = await table.register_study(registry)
    while (await table.get_study(sid)).status != "done":
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.wait(30)
    await table.close()
    return elapsed


async def main() -> None:
    runners.load()
    with private_redis() as url:
        for n, capacity in ((1024, "mandelbrot"), (256, "mandelbrot-scalar")):
            reg = mandelbrot_registry(n, f"{capacity}-{n}", capacity)
            spec = parse_study(reg)
            base = pool_baseline(spec, capacity)
            warm = await ld2_workers(url, reg, capacity, warm=True)
            cold = await ld2_workers(url, reg, capacity, warm=False)
            print(
                f"{capacity:18s} {n}x{n}: Pool(2) {base:6.2f} s; ld2, 2 workers already polling "
                f"{warm:6.2f} s (ratio {warm / base:.2f}; goal ≤ 1.15); "
                f"including worker start-up {cold:6.2f} s ({cold / base:.2f})"
            )


if __name__ == "__main__":
    asyncio.run(main())
