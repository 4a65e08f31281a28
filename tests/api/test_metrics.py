"""GET /metrics: the store's figures as the store has them, and this app's request counts."""

from __future__ import annotations

import asyncio
import collections
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from ld2.api import create_app
from ld2.core.errors import BackendUnavailable
from ld2.store.http import HttpTable
from ld2.store.redis import RedisTable
from tests.store.helpers import int_axis, registry, square

TOKEN = "metrics-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
Key = tuple[str, tuple[tuple[str, str], ...]]


def parse(text: str, families: Any = text_string_to_metric_families) -> dict[Key, float]:
    """Every sample of an exposition: (name, sorted labels) → value."""
    out: dict[Key, float] = {}
    for family in families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def study_samples(got: dict[Key, float], sid: str) -> dict[str, float]:
    """The ld2_study_* samples of one study: name (with ``{status}`` for the status) → value."""
    out = {}
    for (name, labels), value in got.items():
        lab = dict(labels)
        if lab.get("study_id") == sid:
            out[f"{name}{{{lab['status']}}}" if "status" in lab else name] = value
    return out


@dataclass
class Client:
    app: FastAPI
    http: httpx.AsyncClient  # with the token
    anonymous: httpx.AsyncClient  # without it
    table: HttpTable  # ld2's own client through the same app: reserve, register, cycle
    seen: collections.Counter[tuple[str, str, int]]  # (method, path, status) as answered

    async def scrape(self, **headers: str) -> httpx.Response:
        resp = await self.http.get("/metrics", headers=headers)
        assert resp.status_code == 200, resp.text
        return resp


@pytest.fixture
async def client(redis_table: RedisTable, tmp_path: Path) -> AsyncIterator[Client]:
    app = create_app(redis_table, token=TOKEN, curriculum_path=tmp_path / "curriculum.json")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    seen: collections.Counter[tuple[str, str, int]] = collections.Counter()

    async def tally(resp: httpx.Response) -> None:
        seen[(resp.request.method, resp.request.url.path, resp.status_code)] += 1

    hooks = {"response": [tally]}
    base = "http://ld2.test"
    async with (
        httpx.AsyncClient(
            transport=transport, base_url=base, headers=AUTH, event_hooks=hooks
        ) as http,
        httpx.AsyncClient(transport=transport, base_url=base, event_hooks=hooks) as anonymous,
    ):
        table = HttpTable(base, token=TOKEN, transport=transport, retries=0, packed=False)
        table.client.event_hooks["response"].append(tally)
        try:
            yield Client(app, http, anonymous, table, seen)
        finally:
            await table.close()


async def _until_reaped(table: RedisTable, limit: float = 10.0) -> None:
    """Wait for a short lease to expire: reap until one comes back."""
    deadline = time.monotonic() + limit
    while await table.reap() == 0:
        assert time.monotonic() < deadline, "the lease never expired"
        await asyncio.sleep(0.01)


async def test_metrics_equal_the_store_and_count_requests(
    client: Client, redis_table: RedisTable
) -> None:
    store = redis_table
    finite = await store.register_study(registry([int_axis("x", 20)], name=f"m{uuid.uuid4().hex}"))
    infinite = await store.register_study(
        registry([int_axis("n", None)], strategy="find_exact", target="-0x1", name=None)
    )
    api = client.table
    # through the API: a reserve, a cycle (register + reserve), a register, a trial left leased
    first = await api.reserve([], 4, "w1")
    assert first is not None and first.study_id == finite
    _, second = await api.register_and_reserve(first, square(first), [], 4, "w1")
    assert second is not None
    await api.register(second, square(second))
    in_flight = await api.reserve([], 4, "w1")
    assert in_flight is not None and in_flight.study_id == finite
    # in the store: a lease that expires, then the range quarantined
    lost = await store.reserve([], 4, "w2", lease=0.05)
    assert lost is not None
    await _until_reaped(store)
    again = await store.reserve([], 4, "w3")
    assert again is not None and again.start == lost.start
    await store.fail(again.trial_id, "w3", "boom", mode="quarantine")
    # errors: an unknown study (404 on a route), an unknown path, no token (401)
    assert (await client.http.get("/study/info", params={"study_id": "nope"})).status_code == 404
    assert (await client.http.get("/no/such/path")).status_code == 404
    assert (await client.anonymous.get("/status")).status_code == 401
    assert (await client.anonymous.get("/metrics")).status_code == 401

    resp = await client.scrape()
    assert resp.headers["content-type"].startswith("text/plain")
    got = parse(resp.text)
    states = {s.study_id: s for s in await store.list_studies()}
    backlog = await store.backlog()

    # per study, as the store has it
    a = states[finite]
    assert (a.done, a.failed, a.reserved, a.expired, a.status) == (8, 4, 4, 1, "running")
    assert study_samples(got, finite) == {
        "ld2_study_points_done": a.done,
        "ld2_study_points_total": 20,
        "ld2_study_points_failed": a.failed,
        "ld2_study_points_in_flight": a.reserved,
        "ld2_study_points_waiting": 20 - 8 - 4 - 4,
        "ld2_study_leases_expired_total": a.expired,
        "ld2_study_workers": a.live_workers,
        "ld2_study_status{wait}": 0,
        "ld2_study_status{running}": 1,
        "ld2_study_status{paused}": 0,
        "ld2_study_status{done}": 0,
    }
    assert ("ld2_study_points_done", (("name", a.spec.name), ("study_id", finite))) in got
    b = study_samples(got, infinite)
    assert "ld2_study_points_total" not in b  # infinite
    assert b["ld2_study_points_waiting"] == math.inf
    assert b["ld2_study_points_done"] == b["ld2_study_points_in_flight"] == 0
    assert b["ld2_study_leases_expired_total"] == 0 and b["ld2_study_status{wait}"] == 1
    assert ("ld2_study_points_done", (("name", ""), ("study_id", infinite))) in got
    # across studies: the backlog
    assert got[("ld2_points_waiting", ())] == math.inf  # an infinite study is active
    assert got[("ld2_trials_in_flight", ())] == backlog.trials_in_flight == 1
    assert got[("ld2_points_in_flight", ())] == backlog.points_in_flight == 4
    assert got[("ld2_ranges_waiting", ())] == backlog.ranges_waiting
    assert got[("ld2_active_studies", ())] == backlog.active_studies == 2
    assert got[("ld2_workers_seen", ())] == backlog.workers_seen >= 1
    assert got[("ld2_store_up", ())] == 1

    # this app's requests: exactly what its clients were answered, by route template
    answered = collections.Counter(client.seen)
    got = parse((await client.scrape()).text)  # (counts the first scrape; not itself)
    requests = {
        (dict(k)["method"], dict(k)["route"], dict(k)["status"]): v
        for (name, k), v in got.items()
        if name == "ld2_api_requests_total"
    }
    expected = {
        (m, "unmatched" if p == "/no/such/path" else p, str(s)): float(n)
        for (m, p, s), n in answered.items()
    }
    assert requests == expected
    assert {
        ("GET", "/study/info", "404"),
        ("GET", "unmatched", "404"),
        ("GET", "/status", "401"),
        ("GET", "/metrics", "401"),
        ("GET", "/metrics", "200"),
        ("POST", "/trial/reserve", "200"),
        ("POST", "/trial/cycle", "200"),
        ("POST", "/trial/register", "200"),
    } <= set(requests)
    # store latencies: one observation per reserve, register and cycle that reached the table
    for call, path in (
        ("reserve", "/trial/reserve"),
        ("register", "/trial/register"),
        ("register_and_reserve", "/trial/cycle"),
    ):
        calls = sum(n for (m, p, s), n in answered.items() if p == path and s < 400)
        assert calls >= 1
        assert got[("ld2_api_store_seconds_count", (("call", call),))] == calls
        assert got[("ld2_api_store_seconds_bucket", (("call", call), ("le", "+Inf")))] == calls


async def test_each_app_counts_its_own_requests(redis_table: RedisTable, tmp_path: Path) -> None:
    """Each app has a registry of its own: many apps in one process do not collide."""
    apps = [create_app(redis_table, curriculum_path=tmp_path / f"{k}.json") for k in range(2)]
    counts = []
    for n, app in enumerate(apps, start=1):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://ld2.test") as http:
            for _ in range(n):
                assert (await http.get("/ping")).status_code == 200
            got = parse((await http.get("/metrics")).text)  # no token set: open
        ping = (("method", "GET"), ("route", "/ping"), ("status", "200"))
        counts.append(got[("ld2_api_requests_total", ping)])
    assert counts == [1, 2]


async def test_a_store_outage_and_an_error_are_reported(
    client: Client, redis_table: RedisTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down() -> Any:
        raise BackendUnavailable("Redis at redis://127.0.0.1:1 is unreachable")

    async def broken() -> Any:
        raise RuntimeError("a bug")

    # the store down: the scrape still answers, with ld2_store_up 0 and no study figures
    monkeypatch.setattr(redis_table, "backlog", down)
    got = parse((await client.scrape()).text)
    assert got[("ld2_store_up", ())] == 0
    assert not any(name.startswith(("ld2_study_", "ld2_points_")) for name, _ in got)
    # an unexpected error: a 500, counted as such
    monkeypatch.setattr(redis_table, "list_studies", broken)
    assert (await client.http.get("/status")).status_code == 500
    monkeypatch.undo()
    got = parse((await client.scrape()).text)
    assert got[("ld2_store_up", ())] == 1
    status_500 = (("method", "GET"), ("route", "/status"), ("status", "500"))
    assert got[("ld2_api_requests_total", status_500)] == 1


async def test_openmetrics_when_asked_for(client: Client) -> None:
    accept = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    resp = await client.scrape(accept=accept)
    assert resp.headers["content-type"].startswith("application/openmetrics-text")
    assert resp.text.endswith("# EOF\n")
    got = parse(resp.text, openmetrics_families)
    assert got[("ld2_store_up", ())] == 1


async def test_expired_leases_are_counted_whoever_reaps_them(redis_table: RedisTable) -> None:
    """A reserve hands expired leases back as a reaper does: both count them."""
    sid = await redis_table.register_study(registry([int_axis("x", 8)]))
    first = await redis_table.reserve([], 2, "w1", lease=0.05)
    second = await redis_table.reserve([], 2, "w1", lease=0.05)
    assert first is not None and second is not None
    deadline = time.monotonic() + 10
    while await redis_table.server_time() <= max(first.deadline, second.deadline):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    again = await redis_table.reserve([], 2, "w2")  # reaps both, then leases one of them
    assert again is not None and again.start == first.start
    assert (await redis_table.get_study(sid)).expired == 2
    assert await redis_table.reap() == 0  # nothing left to count twice
    assert (await redis_table.get_study(sid)).expired == 2
