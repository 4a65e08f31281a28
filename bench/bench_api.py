"""API benchmark: cycles through `ld2 api --workers 2` vs direct Redis, and GET /study streaming.

Run by hand (starts a private redis-server and the API on free loopback ports):

    uv run python bench/bench_api.py

Prints, from one run: reserve+register cycles/s with an empty computation, directly on Redis and
through the API (HttpTable, 1 and 8 concurrent clients), then the rows/s of ``GET /study`` for a
10^6-point int study and the API processes' peak RSS growth while streaming it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import redis.asyncio as aioredis

from ld2.store.http import HttpTable
from ld2.store.redis import RedisTable

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port, private_redis, rate, registry


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().split()
            except OSError:
                continue
            if int(stat[3]) == pid:
                out.append(int(entry.name))
    return out


def _rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


async def main(seconds: float = 3.0) -> None:
    with private_redis() as url:
        await _measure(url, seconds)


async def _measure(url: str, seconds: float) -> None:
    aport = free_port()
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ld2",
            "api",
            "--port",
            str(aport),
            "--redis",
            url,
            "--workers",
            "2",
            "--prefix",
            "bench",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{aport}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/ping").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    client = aioredis.Redis.from_url(url, max_connections=64)
    try:
        direct = RedisTable(client, prefix="bench")
        await direct.register_study(registry(None, "cycles"))
        z = np.zeros(1, dtype=np.int64)

        async def direct_cycle(i: int) -> None:
            res = await direct.reserve([], 1, f"d{i}")
            assert res is not None
            await direct.register(res, z)

        d1 = await rate(direct_cycle, 1, seconds)
        d8 = await rate(direct_cycle, 8, seconds)
        print(f"direct Redis, reserve+register, 1 client : {d1:8.0f} cycles/s")
        print(f"direct Redis, reserve+register, 8 clients: {d8:8.0f} cycles/s")
        tables = [HttpTable(base) for _ in range(8)]

        async def http_cycle(i: int) -> None:
            res = await tables[i].reserve([], 1, f"h{i}")
            assert res is not None
            await tables[i].register(res, z)

        h1 = await rate(http_cycle, 1, seconds)
        h8 = await rate(http_cycle, 8, seconds)
        print(
            f"API --workers 2, HttpTable, 1 client     : {h1:8.0f} cycles/s  ({h1 / d1:.2f}x direct)"
        )
        print(
            f"API --workers 2, HttpTable, 8 clients    : {h8:8.0f} cycles/s  ({h8 / d8:.2f}x direct; goal ≥ 1,500)"
        )
        held: dict[int, object] = {}

        async def http_chained(i: int) -> None:  # a worker's loop: one /trial/cycle per trial
            res = held.get(i) or await tables[i].reserve([], 1, f"c{i}")
            _, held[i] = await tables[i].register_and_reserve(res, z, [], 1)  # type: ignore[arg-type]

        k1 = await rate(http_chained, 1, seconds)
        k8 = await rate(http_chained, 8, seconds)
        print(f"API --workers 2, /trial/cycle, 1 client  : {k1:8.0f} cycles/s")
        print(f"API --workers 2, /trial/cycle, 8 clients : {k8:8.0f} cycles/s  (goal ≥ 1,500)")
        ping_rate = await rate(lambda i: tables[i].client.get("/ping"), 8, seconds)
        print(
            f"httpx GET /ping, 8 clients: {ping_rate:8.0f} requests/s  (httpx's own cost: why the hot path avoids it)"
        )
        for t in tables:
            await t.close()

        # a 10^6-point int study, registered directly in 10^4-point trials
        await direct.cancel((await direct.get_study(name="cycles")).study_id)
        reg = registry(1_000_000, "million")
        sid = await direct.register_study(reg)
        rng = np.random.default_rng(0)
        while (res := await direct.reserve([], 10_000, "filler")) is not None:
            await direct.register(res, rng.integers(0, 1 << 20, res.count))
        pids = _children(api.pid) or [api.pid]
        before = {p: _rss_kb(p, "VmRSS") for p in pids}
        t0 = time.perf_counter()
        parts: list[bytes] = []
        size = 0
        async with (
            httpx.AsyncClient(base_url=base, timeout=120) as http,
            http.stream("GET", "/study", params={"study_id": sid}) as resp,
        ):
            assert resp.status_code == 200, resp.status_code
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                parts.append(chunk)
        dt = time.perf_counter() - t0
        peak = {p: _rss_kb(p, "VmHWM") for p in pids}
        growth = max(peak[p] - before[p] for p in pids) / 1024
        rows = len(json.loads(b"".join(parts))["result"]["results"]["values"])
        assert rows == 1_000_000, rows
        print(
            f"GET /study, 10^6 int rows: {dt:.2f} s, {1_000_000 / dt:,.0f} rows/s (goal ≥ 500,000), "
            f"{size / 1e6:.0f} MB of JSON"
        )
        print(
            f"API peak RSS growth while streaming: {growth:.1f} MB (goal ≤ 100 MB; VmHWM - VmRSS before)"
        )
        del rows
    finally:
        await client.aclose()
        api.terminate()
        api.wait(15)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main())
