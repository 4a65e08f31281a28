"""A long-poll reserve whose client goes away is given up by the API: a worker killed (or
stopped) while it waits must not have a trial leased for it later — that lease would hold the
trial until it expired (found by bench/bench_http_worker.py: a 30 s stall per round)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import anyio
import pytest
import redis.asyncio as aioredis

from ld2.store.redis import RedisTable
from tests.api.test_processes import api_process
from tests.store.helpers import int_axis, registry

BOUND = 30.0

CLIENT = """\
import asyncio, sys
from ld2.store.http import HttpTable

async def main():
    table = HttpTable(sys.argv[1])
    await table.reserve(["x"], 5, "doomed", lease=600, wait=30)

asyncio.run(main())
"""


async def _xreads(client: aioredis.Redis) -> int:
    """Connections blocked in XREAD (the API's long polls)."""
    return sum(
        1 for c in await client.client_list() if c.get("cmd") == "xread" and "b" in c["flags"]
    )  # (flag b: blocked now; a connection's last command stays "xread" once it is back idle)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "json"])
async def test_a_long_poll_whose_client_is_killed_is_given_up(
    private_redis_url: str | None, packed: bool
) -> None:
    if private_redis_url is None:
        pytest.skip("redis-server is not installed")
    prefix = f"longpoll{int(packed)}"
    client = aioredis.Redis.from_url(private_redis_url)
    table = RedisTable.from_url(private_redis_url, prefix=prefix)
    script = CLIENT if packed else CLIENT.replace("HttpTable(sys.argv[1])",
                                                  "HttpTable(sys.argv[1], packed=False)")  # fmt: skip
    try:
        with api_process(private_redis_url, "--prefix", prefix) as url:
            waiting = subprocess.Popen([sys.executable, "-c", script, url], start_new_session=True)
            try:
                with anyio.fail_after(BOUND):
                    while not await _xreads(client):  # the API waits for it
                        assert waiting.poll() is None, "the client ended before waiting"
                        await asyncio.sleep(0.02)
            finally:
                os.killpg(waiting.pid, signal.SIGKILL)
                waiting.wait()
            with anyio.fail_after(BOUND):  # (a lease of 600 s: nothing else ends the wait)
                while await _xreads(client):
                    await asyncio.sleep(0.02)
            sid = await table.register_study(registry([int_axis("x", 10)], capacity=["x"]))
            state = await table.get_study(sid)
            assert state.reserved == 0
            got = await table.reserve(["x"], 5, "alive")
            assert got is not None and (got.start, got.attempt) == (0, 0)
    finally:
        await table.close()
        await client.aclose()


def test_a_refused_long_poll_is_a_4xx_not_a_500(private_redis_url: str | None) -> None:
    """What the table refuses while a long poll is watched for its client is raised as itself
    (a task group would wrap it in an exception group: the fuzz test saw 500s)."""
    import httpx

    if private_redis_url is None:
        pytest.skip("redis-server is not installed")
    with api_process(private_redis_url, "--prefix", "longpoll-bad") as url:
        packed = httpx.post(
            f"{url}/trial/packed/reserve",
            params={"worker_node_id": "", "max_size": 5, "wait_seconds": 1},
            timeout=30,
        )
        plain = httpx.post(
            f"{url}/trial/reserve",
            json={"retaining_capacity": [], "max_size": 5, "worker_node_id": "",
                  "wait_seconds": 1},
            timeout=30,
        )  # fmt: skip
    assert 400 <= packed.status_code < 500 and 400 <= plain.status_code < 500, (
        packed.text,
        plain.text,
    )


async def test_a_disconnect_is_seen_without_waiting_and_a_live_client_is_not_taken_for_gone() -> (
    None
):
    """`_gone`'s look at the next ASGI message: answered at once, never waiting for one."""
    from starlette.requests import Request

    from ld2.api.app import _gone

    arrived = asyncio.Event()
    messages: list[dict[str, object]] = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, object]:
        if messages:
            return messages.pop(0)
        await arrived.wait()  # a live client: the server has nothing to say yet
        return {"type": "http.disconnect"}

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    assert not await _gone(request)
    assert not arrived._waiters  # type: ignore[attr-defined]  # the look left nothing waiting
    messages.append({"type": "http.disconnect"})
    assert await _gone(request)
