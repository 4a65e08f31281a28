"""`ld2 worker --metrics-port`: the worker's own metrics over HTTP, gone with the worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ld2.store.redis import RedisTable
from ld2.worker import runners
from ld2.worker.loop import Worker, WorkerConfig
from tests.conftest import _free_port, make_table
from tests.store.helpers import int_axis, registry

RUNNER = """\
from ld2.worker.runners import runner


@runner("metrics-square")
def square(x: int) -> int:
    return x * x
"""


def scrape(port: int) -> dict[str, Any]:
    """The unlabelled samples of the worker's exposition, and ``name{call}`` for the store
    round trips."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.labels:
                out[s.name] = s.value
            elif set(s.labels) == {"call"}:
                out[f"{s.name}{{{s.labels['call']}}}"] = s.value
            elif s.name == "ld2_worker_info":
                out.update({f"info.{k}": v for k, v in s.labels.items()})
    return out


def closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def redis_url(private_redis_url: str | None, embedded_url: str) -> str:
    return private_redis_url or embedded_url


@contextlib.contextmanager
def worker_process(
    tmp_path: Path, redis_url: str, prefix: str, *args: str
) -> Iterator[subprocess.Popen[str]]:
    module = f"metrics_runner_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(RUNNER)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ld2", "worker", "--import", module,
         "--capacity", "metrics-square", "--processes", "1", "--redis", redis_url, *args],
        env={**os.environ, "LD2_PREFIX": prefix},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


@contextlib.asynccontextmanager
async def study_table(redis_url: str, prefix: str) -> AsyncIterator[RedisTable]:
    table = RedisTable.from_url(redis_url, prefix=prefix, index_ttl=0.0)
    try:
        yield table
    finally:
        keys = [k async for k in table.client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await table.client.delete(*keys)
        await table.close()


async def test_worker_serves_its_metrics_and_stops_serving(redis_url: str, tmp_path: Path) -> None:
    prefix = f"wm{uuid.uuid4().hex[:12]}"
    port = _free_port()
    async with study_table(redis_url, prefix) as table:
        sid = await table.register_study(
            registry([int_axis("x", 50)], name="squares", capacity=["metrics-square"])
        )
        with worker_process(
            tmp_path, redis_url, prefix, "--max-size", "7", "--metrics-port", str(port)
        ) as proc:
            deadline = time.monotonic() + 60
            while (await table.get_study(sid)).status != "done":
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the study never finished"
                await asyncio.sleep(0.05)
            # the last trial is registered: wait for the worker to let go of it
            got = await asyncio.to_thread(scrape, port)
            while got["ld2_worker_trials_held"] != 0:
                assert time.monotonic() < deadline, got
                await asyncio.sleep(0.05)
                got = await asyncio.to_thread(scrape, port)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
        assert out.startswith("8 trials, 50 points in "), out  # 7 trials of 7 points, then 1
        assert closed(port)
    assert got["ld2_worker_points_done_total"] == 50
    assert got["ld2_worker_trials_done_total"] == 8
    assert got["ld2_worker_trials_failed_total"] == 0
    assert got["ld2_worker_compute_seconds_count"] == 8
    # the computed trials went back with register_and_reserve, or in register_batch calls
    # (trials this short go several a call); the first came by reserve
    cycles = got["ld2_worker_store_seconds_count{register_and_reserve}"]
    assert cycles == 8 or got["ld2_worker_store_seconds_count{register_batch}"] >= 1
    assert got["ld2_worker_store_seconds_count{reserve}"] >= 1
    assert got["ld2_worker_backend_outages_total"] == 0
    assert got["ld2_worker_backend_down"] == 0
    assert got["ld2_worker_processes"] == 1
    assert got["info.capacities"] == "metrics-square"


def test_a_taken_metrics_port_is_a_clear_error(redis_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        prefix = f"wm{uuid.uuid4().hex[:12]}"
        with worker_process(tmp_path, redis_url, prefix, "--metrics-port", str(port)) as proc:
            _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "--metrics-port" in err and f"127.0.0.1:{port}" in err and "Traceback" not in err


async def test_in_process_worker_ends_its_server(request: pytest.FixtureRequest) -> None:
    """A Worker with a metrics port serves while `run` runs, and leaves no thread or port."""
    before = set(threading.enumerate())
    port = _free_port()
    async with make_table(request, "fake") as table:
        config = WorkerConfig(["mandelbrot"], idle_wait=0.05, metrics_port=port)
        worker = Worker(table, runners.load([]), config)
        run = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 30
        while True:  # served while it runs (it idles: no study)
            try:
                got = await asyncio.to_thread(scrape, port)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and not run.done()
                await asyncio.sleep(0.01)
        assert got["ld2_worker_trials_done_total"] == 0
        assert got["info.worker_id"] == worker.id
        worker.stop()
        stats = await run
    assert stats.trials == 0
    assert closed(port)
    # no server thread behind (only the event loop's to_thread pool)
    left = [t for t in threading.enumerate() if t not in before]
    assert [t.name for t in left if not t.name.startswith("asyncio_")] == []
