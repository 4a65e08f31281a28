"""Helpers shared by the benchmarks: a private redis-server, free ports, rates, a study."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator

import redis
from benchkit import float_axis, study_body

from ld2.core import models as m


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of this run only, on a free loopback port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is needed for this benchmark")
    port = free_port()
    workdir = tempfile.mkdtemp()
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        workdir,
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(200):
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait()


def registry(size: int | None, name: str) -> m.StudyRegistry:
    """A 1-axis int study: all_calculation when finite, a find_exact that never hits if not."""
    strategy = "all_calculation" if size is not None else "find_exact"
    param = (
        None
        if size is not None
        else {"target_value": {"type": "scalar", "value_type": "int", "value": "-0x1"}}
    )
    return m.StudyRegistry.model_validate(
        {
            "name": name,
            "required_capacity": [],
            "study_strategy": {"type": strategy, "study_strategy_param": param},
            "suggest_strategy": {
                "type": "sequential",
                "suggest_strategy_param": {"strict_aligned": True},
            },
            "const_param": None,
            "result_type": "scalar",
            "result_value_type": "int",
            "parameter_space": {
                "type": "aligned",
                "axes": [
                    {
                        "name": "x",
                        "type": "int",
                        "size": None if size is None else hex(size),
                        "step": "0x1",
                        "start": "0x0",
                    }
                ],
            },
        }
    )


async def rate(fn: Callable[[int], Awaitable[object]], clients: int, seconds: float) -> float:
    """Calls per second of `fn(i)` from `clients` concurrent loops for `seconds`."""
    stop = time.perf_counter() + seconds
    counts = [0] * clients

    async def loop(i: int) -> None:
        while time.perf_counter() < stop:
            await fn(i)
            counts[i] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(clients)))
    return sum(counts) / (time.perf_counter() - t0)


def mandelbrot_registry(n: int, name: str, capacity: str) -> m.StudyRegistry:
    """An n×n Mandelbrot study (axes y then x, max_iter 255) for the runner `capacity`."""
    step = 3.0 / n
    axes = [float_axis("y", n, -1.5, step), float_axis("x", n, -2.0, step)]
    return m.StudyRegistry.model_validate(
        study_body(name, capacity, axes, {"max_iter": 255})["study"]
    )
