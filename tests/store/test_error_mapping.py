"""Every Redis error of every public call comes out as BackendUnavailable (one mapping)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, OutOfMemoryError

from ld2.core.errors import BackendUnavailable
from ld2.store.base import TrialRef
from ld2.store.errors import unavailable
from ld2.store.redis import RedisTable
from tests.conftest import _free_port
from tests.store.helpers import int_axis, registry

CALLS: list[tuple[str, Any]] = [
    ("ping", lambda t: t.ping()),
    ("register_study", lambda t: t.register_study(registry([int_axis("x", 4)], name="n"))),
    ("reserve", lambda t: t.reserve([], 4, "w")),
    ("register", lambda t: t.register(TrialRef("s", "s-0x0", "w", 0, 1), np.zeros(1))),
    ("heartbeat", lambda t: t.heartbeat("s-0x0", "w")),
    ("fail", lambda t: t.fail("s-0x0", "w", "x")),
    ("reap", lambda t: t.reap()),
    ("get_study", lambda t: t.get_study(name="n")),
    ("list_studies", lambda t: t.list_studies()),
    ("progress", lambda t: t.progress()),
    ("backlog", lambda t: t.backlog()),
    ("failures", lambda t: t.failures("s")),
    ("delete", lambda t: t.delete("s")),
    ("retry_failures", lambda t: t.retry_failures("s")),
    ("pause", lambda t: t.pause("s")),
    ("export_snapshot", lambda t: t.export_snapshot()),
    ("study_spec", lambda t: t.study_spec("s")),
    ("results_since", lambda t: t.results_since("s", "1-0/0")),
    ("workers", lambda t: t.workers()),
]


def _nowhere() -> aioredis.Redis:
    """A client of a port nobody listens on, which gives up at once (redis-py retries a refused
    connection with backoff, seconds per call, by default: the mapping is what is tested)."""
    return aioredis.Redis(port=_free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[c[0] for c in CALLS])
async def test_an_unreachable_redis_is_backend_unavailable(name: str, call: Any) -> None:
    table = RedisTable(_nowhere(), url="nowhere")
    try:
        with pytest.raises(BackendUnavailable, match="nowhere"):
            await call(table)
    finally:
        await table.close()


async def test_result_streams_are_mapped_too() -> None:
    table = RedisTable(_nowhere(), url="nowhere")
    try:
        with pytest.raises(BackendUnavailable):
            async for _ in table.iter_results("s"):
                pass
    finally:
        await table.close()


def test_full_and_loading_redis_say_so() -> None:
    full = unavailable(OutOfMemoryError("OOM command not allowed"), "redis://x")
    assert "is full" in str(full) and "noeviction" in str(full)
    loading = unavailable(BusyLoadingError("loading"), "redis://x")
    assert "loading its data" in str(loading)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
async def test_a_restart_is_ridden_out_by_the_same_table(tmp_path: Any) -> None:
    port = _free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path)]  # fmt: skip

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if redis.Redis(port=port).ping():
                    return proc
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    proc = start()
    table = RedisTable.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        sid = await table.register_study(registry([int_axis("x", 10)], name="restart"))
        proc.terminate()
        proc.wait(10)
        with pytest.raises(BackendUnavailable):
            await table.get_study(sid)
        proc = start()
        assert (await table.get_study(sid)).total == 10  # the AOF kept it; the client reconnects
    finally:
        await table.close()
        proc.terminate()
        proc.wait(10)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_an_evicting_redis_is_refused_at_start(tmp_path: Any) -> None:
    from tests.cli.test_cli import EXAMPLES, ld2

    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--maxmemory", "20mb", "--maxmemory-policy", "allkeys-lru",
         "--dir", str(tmp_path)], stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if redis.Redis(port=port).ping():
                    break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        env = {"LD2_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        out = ld2("submit", str(EXAMPLES / "md5.json"), env=env)
        assert out.returncode == 2 and "maxmemory-policy allkeys-lru" in out.stderr
        assert "noeviction" in out.stderr and "Traceback" not in out.stderr
        assert redis.Redis(port=port).dbsize() == 0  # nothing stored
        loud = ld2("submit", str(EXAMPLES / "md5.json"), env={**env, "LD2_ALLOW_EVICTION": "1"})
        assert loud.returncode == 0 and "Studies may be lost" in loud.stderr
    finally:
        proc.terminate()
        proc.wait(10)


async def test_the_api_answers_503_when_redis_is_away() -> None:
    import httpx

    from ld2.api import create_app

    table = RedisTable(_nowhere(), url="nowhere")
    app = create_app(table)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        for method, path, body in [
            ("GET", "/status", None),
            ("GET", "/study", None),
            ("POST", "/trial/reserve", {"retaining_capacity": [], "max_size": 5,
                                        "worker_node_id": "w"}),
        ]:  # fmt: skip
            params = {"name": "x"} if path == "/study" else None
            resp = await http.request(method, path, json=body, params=params)
            assert resp.status_code == 503, (path, resp.text)
            assert "nowhere" in resp.json()["detail"]
    await table.close()


async def test_progress_with_a_huge_cutoff_is_an_answer(table: Any) -> None:
    await table.register_study(registry([int_axis("x", 10)], name="p"))
    res = await table.reserve([], 5, "w")
    await table.register(res, np.zeros(5, dtype=np.int64))
    progress = await table.progress(2_000_000_000)
    assert progress.studies[0].done == 5


def test_bad_redis_urls_are_input_errors_not_tracebacks() -> None:
    from tests.cli.test_cli import ld2

    out = ld2("status", "--redis", "foo")
    assert out.returncode == 2 and "--redis: not a Redis URL" in out.stderr
    assert "Traceback" not in out.stderr


def _raise_in(filename: str, exc: BaseException) -> Any:
    """A function that raises `exc` from code whose file is `filename`."""
    scope: dict[str, Any] = {"exc": exc}
    exec(compile("def boom():\n    raise exc\n", filename, "exec"), scope)
    return scope["boom"]


def test_a_write_on_a_connection_closed_under_it_is_not_now() -> None:
    """uvloop says RuntimeError ("the handler is closed") where asyncio says ConnectionError;
    from redis-py's connection code it is an outage, from anywhere else a bug."""
    from ld2.store.errors import closed_under_it

    redis_io = os.path.join("site-packages", "redis", "asyncio", "connection.py")
    for exc in (RuntimeError("the handler is closed"), AttributeError("'NoneType' writelines")):
        with pytest.raises(type(exc)) as caught:
            _raise_in(redis_io, exc)()
        assert closed_under_it(caught.value)
        with pytest.raises(type(exc)) as elsewhere:
            _raise_in("ld2/store/redis.py", type(exc)("a bug"))()
        assert not closed_under_it(elsewhere.value)
    assert not closed_under_it(ValueError("no"))
