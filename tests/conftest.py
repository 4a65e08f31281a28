"""Shared test fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

WIRE = Path(__file__).resolve().parent / "fixtures" / "wire"  # lite_dist2 0.6.7 captures


def wire_json(name: str) -> Any:
    return json.loads((WIRE / name).read_text())


@pytest.fixture(scope="session")
def wire_dir() -> Path:
    assert WIRE.is_dir(), f"the lite_dist2 captures are expected at {WIRE}"
    return WIRE


# -- backends ---------------------------------------------------------------------------------------
# One behaviour suite runs against every engine available: a private redis-server (when the
# binary exists), LD2_TEST_REDIS_URL (when set), the embedded Valkey (always) and fakeredis
# (in-process; for the fast layer). The shared server on 6379 is never touched.

import contextlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import AsyncIterator, Iterator  # noqa: E402

import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from ld2.store.embedded import EmbeddedServer  # noqa: E402
from ld2.store.redis import RedisTable  # noqa: E402
from tests.cluster import LocalCluster  # noqa: E402
from tests.cluster import available as cluster_available  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def private_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """A redis-server of this test session only, on a free loopback port."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(500):
        with contextlib.suppress(redis.ConnectionError):
            if client.ping():
                break
        time.sleep(0.01)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-master Redis Cluster of this test session (see tests/cluster.py)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def embedded_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedServer(tmp_path_factory.mktemp("state"))
    url = server.start()
    yield url
    server.stop()


# Only engines that exist here are parametrised, so nothing is skipped for want of one.
REAL_BACKENDS = (
    (["redis"] if shutil.which("redis-server") else [])
    + (["cluster"] if cluster_available() else [])
    + (["env"] if os.environ.get("LD2_TEST_REDIS_URL") else [])
    + ["valkey"]
)
BACKENDS = [*REAL_BACKENDS, "fake"]


def backend_url(request: pytest.FixtureRequest, name: str) -> str | None:
    if name == "redis":
        return request.getfixturevalue("private_redis_url")  # type: ignore[no-any-return]
    if name == "cluster":
        return request.getfixturevalue("local_cluster").url  # type: ignore[no-any-return]
    if name == "env":
        return os.environ["LD2_TEST_REDIS_URL"]
    if name == "valkey":
        return request.getfixturevalue("embedded_url")  # type: ignore[no-any-return]
    return None


@contextlib.asynccontextmanager
async def make_table(
    request: pytest.FixtureRequest, name: str, **kw: object
) -> AsyncIterator[RedisTable]:
    """A table under a fresh key prefix; its keys are deleted afterwards. ``http`` is an
    `HttpTable` through the real app over a real engine (see `http_table`)."""
    if name == "http":
        async with http_table(request, **kw) as t:
            yield t
        return
    prefix = f"ld2test-{uuid.uuid4().hex[:12]}"
    url = backend_url(request, name)
    if url is None:
        import fakeredis

        client: aioredis.Redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        table = RedisTable(client, prefix=prefix, url="fakeredis", index_ttl=0.0, **kw)  # type: ignore[arg-type]
    elif name == "cluster":  # a plain URL of one node: the table finds out it is a cluster
        table = RedisTable.from_url(url, prefix=prefix, index_ttl=0.0, **kw)  # type: ignore[arg-type]
        await table.ping()
        assert table.is_cluster
    else:
        client = aioredis.Redis.from_url(url)
        table = RedisTable(client, prefix=prefix, url=url, index_ttl=0.0, **kw)  # type: ignore[arg-type]
    try:
        yield table
    finally:
        await table.waking.close()  # (its shared wake-up read, if a reserve waited)
        client = table.client
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@contextlib.asynccontextmanager
async def http_table(request: pytest.FixtureRequest, **kw: object) -> AsyncIterator[Any]:
    """`HttpTable` through the real app (in-process ASGI) over a RedisTable on a real engine."""
    import httpx

    from ld2.api import create_app
    from ld2.store.http import HttpTable

    async with make_table(request, REAL_BACKENDS[0], **kw) as inner:
        app = create_app(inner, curriculum_path=Path(str(uuid.uuid4())) / "unused.json")
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        table = HttpTable("http://ld2.test", transport=transport, retries=0)
        try:
            yield table
        finally:
            await table.close()


@pytest.fixture(params=[*BACKENDS, "http"])
async def table(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Every Table implementation: RedisTable on each engine, and HttpTable through the API."""
    async with make_table(request, request.param) as t:
        yield t


@pytest.fixture(params=BACKENDS)
async def redis_table(request: pytest.FixtureRequest) -> AsyncIterator[RedisTable]:
    """RedisTable only: for tests that look at keys, memory or scripts."""
    async with make_table(request, request.param) as t:
        yield t


@pytest.fixture(params=REAL_BACKENDS)
async def real_table(request: pytest.FixtureRequest) -> AsyncIterator[RedisTable]:
    async with make_table(request, request.param) as t:
        yield t


@pytest.fixture(params=[*BACKENDS, "http"])
def backend(request: pytest.FixtureRequest) -> str:
    """The backend name, for tests that need tables with their own settings (make_table)."""
    return str(request.param)


@pytest.fixture(params=REAL_BACKENDS)
def real_backend(request: pytest.FixtureRequest) -> str:
    """A real engine's name (tests that need true concurrency or server memory figures)."""
    return str(request.param)


# -- no process left behind ---------------------------------------------------------------------
# Every process a test starts must be gone when the session ends: descendants of this pytest
# process, and anything running from the session's temporary directory (an embedded Valkey of a
# killed `ld2 run` is reparented away from us but still runs from its state directory there).

_BASETEMP: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _remember_basetemp(tmp_path_factory: pytest.TempPathFactory) -> None:
    _BASETEMP.append(str(tmp_path_factory.getbasetemp()))


def _proc(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, command line) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    return int(fields[1]), fields[0], cmd


def leftover_processes(root: int, marker: str | None) -> list[str]:
    """Processes that descend from `root`, or whose command line names `marker`."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != root:
            info = _proc(int(entry))
            if info is not None and info[1] != "Z":
                table[int(entry)] = info
    out = []
    for pid, (ppid, _, cmd) in table.items():
        seen, up = 0, ppid
        while up not in (root, 0, 1) and up in table and seen < 64:
            up, seen = table[up][0], seen + 1
        if "multiprocessing.resource_tracker" in cmd:
            continue  # Python's own helper: it ends with the interpreter
        if up == root or (marker and marker in cmd):
            out.append(f"pid {pid}: {cmd[:300]}")
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    marker = _BASETEMP[0] if _BASETEMP else None
    deadline = time.monotonic() + 10.0
    left = leftover_processes(os.getpid(), marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = leftover_processes(os.getpid(), marker)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "processes left behind by the tests:\n  " + "\n  ".join(left)
        if reporter is not None:
            reporter.write_line(text, red=True)
        else:
            print(text)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
