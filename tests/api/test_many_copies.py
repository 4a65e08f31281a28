"""Two real ``ld2 api`` processes on one Redis, and one client that alternates every request
between them: register, reserve, register results, heartbeat, fail, replay a request id, read
the status and stream the results. Nothing an API process keeps for itself may show: the two
must answer as one, and the results must be the study's function at every point, once.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis.asyncio as aioredis

from ld2.store.http import HttpTable

TOKEN = f"duo-{uuid.uuid4().hex}"
AUTH = {"authorization": f"Bearer {TOKEN}"}
CAP = "duo"

# the study: x = -3 … 3 (7 values), y = 10, 12, … 20 (6 values); 42 points
XS = [-3 + i for i in range(7)]
YS = [10 + 2 * j for j in range(6)]


def f(x: Any, y: Any) -> Any:
    """The study's function (Python ints or numpy int64 arrays alike)."""
    return x**3 - 2 * x * y + y * y + 7


EXPECTED = {(x, y): f(x, y) for x, y in itertools.product(XS, YS)}


def study_wire(name: str) -> dict[str, Any]:
    """lite_dist2's ``/study/register`` body: every field, portable hex strings."""
    axes = [
        {"name": "x", "type": "int", "size": hex(len(XS)), "step": hex(1), "start": hex(XS[0])},
        {"name": "y", "type": "int", "size": hex(len(YS)), "step": hex(2), "start": hex(YS[0])},
    ]
    return {
        "study": {
            "name": name,
            "required_capacity": [CAP],
            "study_strategy": {"type": "all_calculation", "study_strategy_param": None},
            "suggest_strategy": {
                "type": "sequential",
                "suggest_strategy_param": {"strict_aligned": True},
            },
            "const_param": None,
            "result_type": "scalar",
            "result_value_type": "int",
            "parameter_space": {"type": "aligned", "axes": axes},
        }
    }


def trial_points(trial: dict[str, Any]) -> list[tuple[int, ...]]:
    """The points of a reserved trial, read from its wire form (an aligned box)."""
    space = trial["parameter_space"]
    assert space["type"] == "aligned", space
    axes = []
    for a in space["axes"]:
        start, step, size = int(a["start"], 16), int(a["step"], 16), int(a["size"], 16)
        axes.append([start + step * i for i in range(size)])
    return list(itertools.product(*axes))


def register_wire(trial: dict[str, Any]) -> dict[str, Any]:
    """lite_dist2's ``/trial/register`` body for a reserved trial: f at each of its points."""

    def scalar(value: int, name: str | None) -> dict[str, Any]:
        return {"type": "scalar", "value_type": "int", "value": hex(value), "name": name}

    results = [
        {"params": [scalar(v, n) for v, n in zip(p, ("x", "y"), strict=True)],
         "result": scalar(f(*p), None)}
        for p in trial_points(trial)
    ]  # fmt: skip
    return {"trial": {**trial, "results": results}}


# -- two API processes -----------------------------------------------------------------------------

SCRUBBED = ("REDIS_URL", "LD2_REDIS_URL", "LD2_API_URL", "LD2_API_TOKEN", "LD2_PREFIX")


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (all held open together while they are picked)."""
    with contextlib.ExitStack() as stack:
        socks = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@contextlib.contextmanager
def two_apis(redis_url: str, prefix: str, workdir: Path) -> Iterator[dict[str, str]]:
    """Two ``ld2 api`` processes on the same Redis and prefix; the token comes from
    ``$LD2_API_TOKEN``. Yields ``{"A": url, "B": url}``."""
    base = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env = {**base, "LD2_API_TOKEN": TOKEN, "LD2_STATE_DIR": str(workdir / "state")}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    logs: dict[str, Path] = {}
    try:
        for name, port in zip("AB", free_ports(2), strict=True):
            home = Path(tempfile.mkdtemp(prefix=f"api{name}-", dir=workdir))
            logs[name] = home / "api.log"
            with logs[name].open("wb") as log:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "ld2", "api", "--host", "127.0.0.1",
                     "--port", str(port), "--redis", redis_url, "--prefix", prefix],
                    env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            urls[name] = f"http://127.0.0.1:{port}"
        for name, url in urls.items():
            give_up = time.monotonic() + 90  # generous: a loaded 2-core machine starts slowly
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                        break
                assert procs[name].poll() is None, logs[name].read_text(errors="replace")
                assert time.monotonic() < give_up, f"ld2 api {name} never answered /ping"
                time.sleep(0.05)
        yield urls
    finally:
        for proc in procs.values():
            _stop(proc)


class Alternate(httpx.AsyncBaseTransport):
    """Sends each request to the other server than the one before: A, B, A, B, …

    Shared by a raw client and an `HttpTable`, so the alternation runs across both; `log`
    says who served what."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.targets = {name: httpx.URL(url) for name, url in urls.items()}
        self.names = sorted(self.targets)
        self.inner = httpx.AsyncHTTPTransport()
        self.turn = 0
        self.log: list[tuple[str, str, str]] = []  # (server, method, path)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        name = self.names[self.turn % len(self.names)]
        self.turn += 1
        to = self.targets[name]
        request.url = request.url.copy_with(scheme=to.scheme, host=to.host, port=to.port)
        request.headers["host"] = f"{to.host}:{to.port}"
        self.log.append((name, request.method, request.url.path))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Shared: `close` ends it once, after both clients are done."""

    async def close(self) -> None:
        await self.inner.aclose()

    @property
    def last(self) -> str:
        return self.log[-1][0]


def rows_from_csv(text: str) -> list[tuple[int, int, int]]:
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["x", "y", "result"]
    return [(int(x), int(y), int(r)) for x, y, r in rows[1:]]


def rows_from_jsonl(text: str) -> list[tuple[int, int, int]]:
    lines = [json.loads(line) for line in text.splitlines() if line]
    assert [d["flat"] for d in lines] == list(range(len(EXPECTED)))  # grid order, each once
    return [(d["x"], d["y"], d["result"]) for d in lines]


def rows_from_npy(data: bytes) -> list[tuple[int, int, int]]:
    arr = np.load(io.BytesIO(data))
    assert arr.dtype.names == ("x", "y", "result")
    return list(zip(arr["x"].tolist(), arr["y"].tolist(), arr["result"].tolist(), strict=True))


def rows_from_study(body: dict[str, Any]) -> list[tuple[int, int, int]]:
    """lite_dist2's ``GET /study`` answer: rows of portable values ``[x, y, result]``."""
    assert body["status"] == "done"
    assert body["result"]["done_grids"] == len(EXPECTED)
    values = body["result"]["results"]["values"]
    return [(int(x, 16), int(y, 16), int(r, 16)) for x, y, r in values]


def assert_exact(rows: list[tuple[int, int, int]]) -> None:
    """Every point of the grid exactly once, in grid order, with f's value."""
    assert [(x, y) for x, y, _ in rows] == list(EXPECTED)  # each point once, in grid order
    assert {(x, y): r for x, y, r in rows} == EXPECTED


@pytest.fixture
async def observer(private_redis_url: str | None) -> AsyncIterator[aioredis.Redis]:
    if private_redis_url is None:
        print("skipped: no redis-server binary for a private Redis")
        pytest.skip("needs the redis-server binary (a private Redis for real API processes)")
    client = aioredis.Redis.from_url(private_redis_url)
    yield client
    await client.aclose()


async def test_two_api_processes_answer_as_one(
    private_redis_url: str, observer: aioredis.Redis, tmp_path: Path
) -> None:
    prefix = f"duo-{uuid.uuid4().hex[:10]}"
    name = f"duo-{uuid.uuid4().hex[:6]}"

    def key(sid: str, what: str) -> str:  # store.md's data model (for looking, never writing)
        return f"{prefix}:{{{sid}}}:{what}"

    try:
        with two_apis(private_redis_url, prefix, tmp_path) as urls:
            for url in urls.values():  # the token from the environment is required by both
                assert httpx.get(f"{url}/status", timeout=30).status_code == 401
                assert httpx.get(f"{url}/status", headers=AUTH, timeout=30).status_code == 200
            alt = Alternate(urls)
            raw = httpx.AsyncClient(
                transport=alt, base_url="http://duo.invalid", headers=AUTH, timeout=60
            )
            table = HttpTable(
                "http://duo.invalid", token=TOKEN, transport=alt, retries=3, packed=False
            )
            try:
                await _scenario(alt, raw, table, observer, name, key)
            finally:
                await table.close()
                await raw.aclose()
                await alt.close()
    finally:
        keys = [k async for k in observer.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await observer.delete(*keys)


async def _scenario(
    alt: Alternate,
    raw: httpx.AsyncClient,
    table: HttpTable,
    observer: aioredis.Redis,
    name: str,
    key: Callable[[str, str], str],
) -> None:
    # -- registration: the wire's /study/register on one, ld2's /study/submit on the other ----
    resp = await raw.post("/study/register", json=study_wire(name))
    assert resp.status_code == 200, resp.text
    sid = resp.json()["study_id"]
    resp = await raw.post("/study/submit", json=study_wire(name))
    assert resp.json() == {"study_id": sid, "existed": True}
    resp = await raw.post("/study/register", json=study_wire(name))
    assert resp.status_code == 400 and "already registered" in resp.json()["detail"]
    for _ in range(2):
        resp = await raw.get("/study", params={"study_id": sid})
        assert (resp.status_code, resp.json()) == (202, {"status": "wait", "result": None})

    # -- a reserve retried with its request id on the other API: the same trial ---------------
    body = {"retaining_capacity": [CAP], "max_size": 4, "worker_node_id": "replayer",
            "worker_node_name": "replayer"}  # fmt: skip
    rid = uuid.uuid4().hex
    first = await raw.post("/trial/reserve", json=body, headers={"Idempotency-Key": rid})
    first_by = alt.last
    assert first.status_code == 200, first.text
    trial = first.json()["trial"]
    for _ in range(2):  # retried on the other API, then on the first again
        again = await raw.post("/trial/reserve", json=body, headers={"Idempotency-Key": rid})
        assert again.status_code == 200, again.text
        assert again.json()["trial"] == trial  # same id, range and reserved time: one lease
    assert [s for s, _, _ in alt.log[-3:]] == [first_by, *({"A", "B"} - {first_by}), first_by]
    n = len(trial_points(trial))
    info = (await raw.get("/study/info", params={"study_id": sid})).json()
    assert (info["status"], info["reserved_grids"]) == ("running", n)
    assert await observer.zcard(key(sid, "leases")) == 1

    # ... and its registration, replayed on the other API: answered as the first was
    rid = uuid.uuid4().hex
    upload = register_wire(trial)
    for _ in range(2):
        resp = await raw.post("/trial/register", json=upload, headers={"Idempotency-Key": rid})
        assert (resp.status_code, resp.json()) == (200, {"ok": True}), resp.text
    resp = await raw.post("/trial/register", json=upload)  # a new call, not a retry
    assert resp.status_code == 409 and resp.json()["reason"] == "duplicate"
    info = (await raw.get("/study/info", params={"study_id": sid})).json()
    assert (info["summary"]["done_grids"], info["reserved_grids"]) == (n, 0)

    # -- a lease taken on one API, heartbeated and failed on the other --------------------------
    leasing = {**body, "worker_node_id": "leaser", "lease_seconds": 30}
    resp = await raw.post("/trial/reserve", json=leasing)
    leased_by = alt.last
    assert resp.status_code == 200, resp.text
    held = resp.json()["trial"]
    deadline_ms = resp.json()["lease_deadline_ms"]
    ref = {"trial_id": held["trial_id"], "worker_node_id": "leaser"}
    resp = await raw.post("/trial/heartbeat", json=ref)
    assert alt.last != leased_by and resp.json() == {"answer": "ok"}
    assert await observer.zscore(key(sid, "leases"), held["trial_id"]) >= deadline_ms
    resp = await raw.post("/trial/heartbeat", json={**ref, "worker_node_id": "someone else"})
    assert resp.json() == {"answer": "stop"}
    rid = uuid.uuid4().hex
    failing = {**ref, "error": "handed back on the other API", "mode": "retry"}
    for k in range(2):  # the second is a retry, on the other API: it changes nothing more
        resp = await raw.post("/trial/fail", json=failing, headers={"Idempotency-Key": rid})
        assert (resp.status_code, resp.json()) == (200, {"ok": True}), resp.text
        assert (alt.last == leased_by) == (k == 1)  # failed first where it was not leased
    resp = await raw.post("/trial/fail", json=failing)  # a new call: the trial is gone
    assert resp.status_code == 409 and resp.json()["reason"] == "unknown"
    resp = await raw.post("/trial/heartbeat", json=ref)
    assert resp.json() == {"answer": "stop"}
    back = [m.decode() for m in await observer.zrange(key(sid, "back"), 0, -1)]
    assert len(back) == 1 and back[0].split(":")[2:] == ["1", "-"]  # one attempt counted
    assert int(back[0].split(":")[1]) == len(trial_points(held))
    backlog = (await raw.get("/backlog")).json()
    assert (backlog["ranges_waiting"], backlog["trials_in_flight"]) == (1, 0)

    # a trial kept aside: its registration will finish the study (see the end)
    resp = await raw.post("/trial/reserve", json={**body, "worker_node_id": "finisher"})
    assert resp.status_code == 200, resp.text
    last = resp.json()["trial"]

    # -- the rest through HttpTable: each request to the other API than the one before --------
    state = await table.get_study(sid)  # (and HttpTable learns the study's space)
    done_seen = [state.done]
    crossings: list[tuple[str, str]] = []  # (API that leased a trial, API that registered it)

    async def served(call: Any, path: str) -> Any:
        mark = len(alt.log)
        out = await call
        hits = [s for s, _, p in alt.log[mark:] if p == path]
        assert len(hits) == 1, alt.log[mark:]
        return out, hits[0]

    for _ in range(3):  # reserve, register, status: the next reserve goes to the other API
        res, leased_on = await served(table.reserve([CAP], 5, "bulk", "bulk", lease=60),
                                      "/trial/reserve")  # fmt: skip
        assert res is not None
        _, registered_on = await served(table.register(res, f(*res.arrays())), "/trial/register")
        crossings.append((leased_on, registered_on))
        state = await table.get_study(sid)
        done_seen.append(state.done)
    res, leased_on = await served(table.reserve([CAP], 5, "bulk", "bulk", lease=60),
                                  "/trial/reserve")  # fmt: skip
    while res is not None:  # /trial/cycle registers there what the other API leased
        (_, nxt), on = await served(
            table.register_and_reserve(res, f(*res.arrays()), [CAP], 5, "bulk", lease=60),
            "/trial/cycle",
        )
        crossings.append((leased_on, on))
        res, leased_on = nxt, on
        # the status from each API in turn (two reads: the next cycle goes to the other API)
        here, there = await table.get_study(sid), await table.get_study(sid)
        assert (here.done, here.reserved) == (there.done, there.reserved)
        done_seen.append(here.done)
    assert all(a != b for a, b in crossings)
    state = await table.get_study(sid)
    assert (state.status, state.done, state.reserved) == (
        "running", len(EXPECTED) - len(trial_points(last)), len(trial_points(last)))  # fmt: skip

    # the registration that finishes the study, retried on the other API: answered as the
    # first attempt was (200), not 404 for a study no longer active
    rid = uuid.uuid4().hex
    upload = register_wire(last)
    for _ in range(2):
        resp = await raw.post("/trial/register", json=upload, headers={"Idempotency-Key": rid})
        assert (resp.status_code, resp.json()) == (200, {"ok": True}), resp.text
    assert {("A", "B"), ("B", "A")} <= set(crossings)
    assert done_seen == sorted(done_seen)  # both APIs show the same progress, never behind

    # -- the finished study, read from both ------------------------------------------------------
    pairs = {}
    for path, params in [
        ("/study/info", {"study_id": sid}),
        ("/status", None),
        ("/backlog", None),
        ("/studies", None),
        ("/study/failures", {"study_id": sid}),
    ]:
        one = await raw.get(path, params=params)
        two = await raw.get(path, params=params)
        assert one.status_code == two.status_code == 200, (path, one.text, two.text)
        assert one.json() == two.json(), path
        pairs[path] = one.json()
    info = pairs["/study/info"]
    assert info["status"] == "done"
    assert (info["summary"]["done_grids"], info["failed_grids"]) == (len(EXPECTED), 0)
    assert info["reserved_grids"] == 0 and pairs["/study/failures"] == []

    bodies: dict[str, list[bytes]] = {}
    for label, path, params in [
        ("csv", "/study/results", {"study_id": sid, "format": "csv"}),
        ("jsonl", "/study/results", {"study_id": sid, "format": "jsonl"}),
        ("npy", "/study/results", {"study_id": sid, "format": "npy"}),
        ("json", "/study", {"study_id": sid}),
    ]:
        for _ in range(2):
            async with raw.stream("GET", path, params=params) as resp:
                assert resp.status_code == 200, (label, await resp.aread())
                bodies.setdefault(label, []).append(b"".join([c async for c in resp.aiter_raw()]))
        assert bodies[label][0] == bodies[label][1], f"{label}: the two APIs differ"
    assert_exact(rows_from_csv(bodies["csv"][0].decode()))
    assert_exact(rows_from_jsonl(bodies["jsonl"][0].decode()))
    assert_exact(rows_from_npy(bodies["npy"][0]))
    assert_exact(rows_from_study(json.loads(bodies["json"][0])))

    streamed: list[list[int]] = []
    for _ in range(2):  # HttpTable's own reading (the jsonl stream), once from each API
        values: list[int] = []
        async for block in table.iter_results(sid):
            assert block.start == len(values)
            values.extend(block.values.tolist())
        streamed.append(values)
    assert streamed[0] == streamed[1] == list(EXPECTED.values())

    # every request of the client went to the other API than the one before it
    assert all(a[0] != b[0] for a, b in itertools.pairwise(alt.log)), alt.log
    assert {s for s, _, _ in alt.log} == {"A", "B"}

    resp = await raw.post("/study/delete", params={"study_id": sid})
    assert resp.json()["status"] == "done"
    resp = await raw.get("/study/info", params={"study_id": sid})
    assert resp.status_code == 404
