"""Replies that get lost: a retry carries the first attempt's request id (``Idempotency-Key``)
and is answered as that attempt was: the same trial, not a second lease; "ok", not "already
registered"; a repeated hand-back changes nothing. A 409 names its ``reason``.

`DropReplies` forwards each request to the real app and then loses the reply (a transport
error, as when a connection breaks after the server answered), for the requests it picks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ld2.api import create_app
from ld2.core import results
from ld2.core.errors import REJECTIONS, InvalidInput, TrialRejected
from ld2.store.http import HttpTable
from ld2.store.redis import REPLY_TTL_MS, RedisTable
from ld2.store.wire_client import LeanClient
from tests.conftest import REAL_BACKENDS, make_table
from tests.store.helpers import all_results, int_axis, registry, square

Lose = Callable[[httpx.Request], bool]


class DropReplies(httpx.AsyncBaseTransport):
    """The app in-process; the reply of each request that `lose` picks is lost after the app
    has handled the request."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self.lose: Lose = lambda request: False
        self.sent: list[tuple[str, str | None]] = []  # (path, idempotency-key) of each attempt
        self.lost: list[tuple[str, bytes]] = []  # (path, reply) of each reply lost

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        content = await response.aread()
        path = request.url.path
        self.sent.append((path, request.headers.get("idempotency-key")))
        if self.lose(request):
            self.lost.append((path, content))
            raise httpx.ReadError("the reply was lost", request=request)
        return httpx.Response(response.status_code, headers=response.headers, content=content)

    async def aclose(self) -> None:
        await self.inner.aclose()


def first(n: int, path: str) -> Lose:
    """Lose the replies of the first `n` requests to `path`."""
    seen = [0]

    def lose(request: httpx.Request) -> bool:
        if request.url.path != path or seen[0] >= n:
            return False
        seen[0] += 1
        return True

    return lose


def every(k: int) -> Lose:
    """Lose the reply of every `k`-th POST — at most once per logical call (request id), so
    that however two clients interleave, no call can lose all of its client's retries."""
    seen = [0]
    lost_ids: set[str] = set()

    def lose(request: httpx.Request) -> bool:
        if request.method != "POST":
            return False
        seen[0] += 1
        key = request.headers.get("idempotency-key", "")
        if seen[0] % k != 0 or key in lost_ids:
            return False
        lost_ids.add(key)
        return True

    return lose


@dataclass
class Lossy:
    inner: RedisTable  # the server's table, to look at what really happened
    http: HttpTable  # ld2's client, retrying, over `drops`
    drops: DropReplies
    raw: httpx.AsyncClient  # the app without losses or retries

    async def study(self, points: int, **kw: Any) -> str:
        return await self.inner.register_study(registry([int_axis("x", points)]), **kw)

    def key(self, sid: str, name: str) -> str:
        return f"{self.inner.prefix}:{{{sid}}}:{name}"

    async def trials(self, sid: str) -> list[str]:
        return sorted(t.decode() for t in await self.inner.client.hkeys(self.key(sid, "trials")))

    async def registrations(self, sid: str) -> int:
        """How many registrations the study recorded (one event each)."""
        return int(await self.inner.client.xlen(self.key(sid, "events")))


@pytest.fixture
async def lossy(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Lossy]:
    async with make_table(request, REAL_BACKENDS[0]) as inner:
        app = create_app(inner, curriculum_path=tmp_path / "curriculum.json")
        drops = DropReplies(app)
        table = HttpTable(
            "http://ld2.test", transport=drops, retries=4, backoff=0.001, packed=False
        )
        plain = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=plain, base_url="http://ld2.test") as raw:
            try:
                yield Lossy(inner, table, drops, raw)
            finally:
                await table.close()


def _lost_trial_ids(lossy: Lossy) -> set[str]:
    return {json.loads(body)["trial"]["trial_id"] for _, body in lossy.drops.lost}


# -- one lost reply per kind of call --------------------------------------------------------


@pytest.mark.parametrize("n_lost", [1, 3])
async def test_a_reserve_whose_reply_was_lost_leases_once(lossy: Lossy, n_lost: int) -> None:
    sid = await lossy.study(100)
    lossy.drops.lose = first(n_lost, "/trial/reserve")
    res = await lossy.http.reserve([], 10, "w", lease=30)
    assert res is not None and len(lossy.drops.lost) == n_lost
    assert _lost_trial_ids(lossy) == {res.trial_id}  # the trial the server created first
    state = await lossy.inner.get_study(sid)
    assert state.reserved == res.count == 10
    assert await lossy.trials(sid) == [res.trial_id]
    keys = {key for path, key in lossy.drops.sent if path == "/trial/reserve"}
    assert len(keys) == 1 and None not in keys  # one id on every attempt of the one call


async def test_a_cycle_whose_reply_was_lost_registers_once(lossy: Lossy) -> None:
    sid = await lossy.study(30)
    res = await lossy.http.reserve([], 10, "w", lease=30)
    assert res is not None
    lossy.drops.lose = first(1, "/trial/cycle")
    outcome, nxt = await lossy.http.register_and_reserve(res, square(res), [], 10, lease=30)
    assert outcome == "ok" and nxt is not None and nxt.start == 10
    assert _lost_trial_ids(lossy) == {nxt.trial_id}
    state = await lossy.inner.get_study(sid)
    assert (state.done, state.reserved) == (10, 10)
    assert await lossy.registrations(sid) == 1
    assert await lossy.trials(sid) == [nxt.trial_id]
    flats, values = await all_results(lossy.inner, sid)
    assert flats == list(range(10)) and values == [x * x for x in range(10)]


@pytest.mark.parametrize("points", [20, 10])  # the study goes on / the study ends with it
async def test_a_register_whose_reply_was_lost_succeeds_on_retry(lossy: Lossy, points: int) -> None:
    sid = await lossy.study(points)
    res = await lossy.http.reserve([], 10, "w")
    assert res is not None
    lossy.drops.lose = first(1, "/trial/register")
    assert await lossy.http.register(res, square(res)) == "ok"
    assert len(lossy.drops.lost) == 1
    state = await lossy.inner.get_study(sid)
    assert (state.done, state.reserved) == (10, 0)
    assert state.status == ("done" if points == 10 else "running")
    assert await lossy.registrations(sid) == 1


async def test_a_fail_whose_reply_was_lost_counts_once(lossy: Lossy) -> None:
    sid = await lossy.study(20)
    res = await lossy.http.reserve([], 10, "w")
    assert res is not None
    lossy.drops.lose = first(1, "/trial/fail")
    await lossy.http.fail(res.trial_id, "w", "boom", mode="retry")
    assert len(lossy.drops.lost) == 1
    state = await lossy.inner.get_study(sid)
    assert state.reserved == 0
    back = await lossy.inner.client.zrange(lossy.key(sid, "back"), 0, -1)
    assert back == [b"0:10:1:-"]  # the range is back once, with one attempt counted
    again = await lossy.inner.reserve([], 10, "w2")
    assert again is not None and (again.start, again.attempt) == (0, 1)


# -- the design: where a retry finds its first reply --------------------------------------


async def test_a_retried_reserve_finds_its_lease_in_another_study(lossy: Lossy) -> None:
    """The first attempt leased in B because A had nothing; by the retry A has work again and
    comes first: the retry still answers B's trial rather than leasing a second one in A."""
    a = await lossy.study(10, priority=10)
    b = await lossy.study(100)
    held = await lossy.inner.reserve([], 10, "other")  # all of A
    assert held is not None and held.study_id == a
    body = {"retaining_capacity": [], "max_size": 10, "worker_node_id": "w"}
    headers = {"Idempotency-Key": "reserve-1"}
    first_reply = await lossy.raw.post("/trial/reserve", json=body, headers=headers)
    assert first_reply.status_code == 200
    assert first_reply.json()["trial"]["study_id"] == b
    await lossy.inner.fail(held.trial_id, "other", "gone", mode="release")  # A has work again
    retry = await lossy.raw.post("/trial/reserve", json=body, headers=headers)
    assert retry.status_code == 200 and retry.json() == first_reply.json()
    assert (await lossy.inner.get_study(a)).reserved == 0
    assert (await lossy.inner.get_study(b)).reserved == 10
    other = await lossy.raw.post("/trial/reserve", json=body, headers={"Idempotency-Key": "2"})
    assert other.json()["trial"]["study_id"] == a  # a new id is a new call


async def test_a_retried_cycle_finds_its_lease_in_another_study(redis_table: RedisTable) -> None:
    """The cycle registered in A and, A being empty, leased in B (two script calls). By the
    retry A has work again: the registration is answered again and B's trial too."""
    t = redis_table
    a = await t.register_study(registry([int_axis("x", 10)]), priority=10)
    b = await t.register_study(registry([int_axis("x", 100)]))
    mine = await t.reserve([], 5, "w")
    other = await t.reserve([], 5, "o")
    assert mine is not None and other is not None and mine.study_id == other.study_id == a
    outcome, nxt = await t.register_and_reserve(mine, square(mine), [], 5, request_id="c1")
    assert outcome == "ok" and nxt is not None and nxt.study_id == b
    await t.fail(other.trial_id, "o", "gone", mode="release")  # A has work again, and is first
    outcome, again = await t.register_and_reserve(mine, square(mine), [], 5, request_id="c1")
    assert outcome == "ok" and again is not None
    assert (again.trial_id, again.start, again.count) == (nxt.trial_id, nxt.start, nxt.count)
    state_a, state_b = await t.get_study(a), await t.get_study(b)
    assert (state_a.done, state_a.reserved, state_b.reserved) == (5, 0, 5)


async def test_request_ids_on_every_engine(redis_table: RedisTable) -> None:
    """The scripts' replay (and the reply key's expiry) on each engine, fakeredis included."""
    t = redis_table
    sid = await t.register_study(registry([int_axis("x", 30)]))
    res = await t.reserve([], 10, "w", lease=30, request_id="r1")
    again = await t.reserve([], 10, "w", lease=30, request_id="r1")
    assert res is not None and again is not None
    assert (again.trial_id, again.start, again.reserved_at) == (res.trial_id, 0, res.reserved_at)
    assert (await t.get_study(sid)).reserved == 10
    key = f"{t.prefix}:{{{sid}}}:reply:r1"
    assert 0 < await t.client.pttl(key) <= REPLY_TTL_MS
    assert await t.register(res, square(res), request_id="g1") == "ok"
    assert await t.register(res, square(res), request_id="g1") == "ok"
    with pytest.raises(TrialRejected) as err:
        await t.register(res, square(res), request_id="g2")  # another call: a duplicate
    assert err.value.reason == "duplicate"
    nxt = await t.reserve([], 10, "w")
    assert nxt is not None
    await t.fail(nxt.trial_id, "w", "boom", mode="retry", request_id="f1")
    await t.fail(nxt.trial_id, "w", "boom", mode="retry", request_id="f1")  # a no-op
    with pytest.raises(TrialRejected):
        await t.fail(nxt.trial_id, "w", "boom", mode="retry", request_id="f2")
    state = await t.get_study(sid)
    assert (state.done, state.reserved, state.failed) == (10, 0, 0)
    with pytest.raises(InvalidInput):
        await t.reserve([], 10, "w", request_id="has space")


async def test_without_an_id_nothing_is_remembered(lossy: Lossy) -> None:
    sid = await lossy.study(30)
    body = {"retaining_capacity": [], "max_size": 10, "worker_node_id": "w"}
    one = await lossy.raw.post("/trial/reserve", json=body)
    two = await lossy.raw.post("/trial/reserve", json=body)
    assert one.json()["trial"]["trial_id"] != two.json()["trial"]["trial_id"]  # as before
    replies = lossy.inner.client.scan_iter(match=f"{lossy.inner.prefix}:*:reply:*")
    assert [k async for k in replies] == []
    three = await lossy.raw.post("/trial/reserve", json=body, headers={"Idempotency-Key": "k"})
    four = await lossy.raw.post("/trial/reserve", json=body, headers={"Idempotency-Key": "k"})
    assert three.json() == four.json() and three.json()["trial"]["parameter_space"]
    assert (await lossy.inner.get_study(sid)).reserved == 30
    for bad in (b"", b"x" * 129, "é".encode(), b"a b"):
        resp = await lossy.raw.post("/trial/reserve", json=body, headers={"Idempotency-Key": bad})
        assert resp.status_code == 422, bad
        assert resp.json()["detail"][0]["loc"] == ["header", "idempotency-key"]


# -- 409 reasons ---------------------------------------------------------------------------


async def test_a_409_names_its_reason(lossy: Lossy) -> None:
    sid = await lossy.study(20)
    res = await lossy.inner.reserve([], 10, "w")
    assert res is not None
    model = res.to_wire()
    model.results = results.to_mappings(res.spec.space, res.start, square(res), "int")
    trial = model.model_dump(mode="json")
    assert (await lossy.raw.post("/trial/register", json={"trial": trial})).status_code == 200
    again = await lossy.raw.post("/trial/register", json={"trial": trial})
    assert again.status_code == 409
    assert again.json() == {"detail": REJECTIONS["duplicate"], "reason": "duplicate"}
    nxt = await lossy.inner.reserve([], 10, "w")
    assert nxt is not None
    wrong = await lossy.raw.post(
        "/trial/fail", json={"trial_id": nxt.trial_id, "worker_node_id": "x", "error": ""}
    )
    assert wrong.status_code == 409 and wrong.json()["reason"] == "wrong_worker"
    assert (await lossy.inner.get_study(sid)).done == 10


async def test_http_table_reads_the_reason_and_falls_back_to_the_words() -> None:
    cases = [
        ({"detail": "any words at all", "reason": "reissued"}, "reissued"),  # ld2: the code
        ({"detail": REJECTIONS["duplicate"]}, "duplicate"),  # an older ld2: its sentence
        ({"detail": "Invalid trial. Maybe the trial is not reserved or already registered."},
         "rejected"),  # lite_dist2
    ]  # fmt: skip
    for body, reason in cases:
        transport = httpx.MockTransport(lambda request, body=body: httpx.Response(409, json=body))
        table = HttpTable("http://ld2.test", transport=transport, retries=0)
        try:
            with pytest.raises(TrialRejected) as err:
                await table.fail("s-0x0", "w", "boom")
            assert (err.value.reason, str(err.value)) == (reason, body["detail"])
        finally:
            await table.close()


# -- a whole sweep over a lossy line ---------------------------------------------------------


async def test_a_sweep_losing_every_third_reply_does_every_point_once(lossy: Lossy) -> None:
    sid = await lossy.study(300)
    lossy.drops.lose = every(3)

    async def work(name: str) -> None:
        res = await lossy.http.reserve([], 7, name, lease=60)
        while res is not None:
            _, res = await lossy.http.register_and_reserve(res, square(res), [], 7, lease=60)

    await asyncio.gather(work("w1"), work("w2"))
    assert len(lossy.drops.lost) >= 8  # a third of ~45 calls, each losing at most once
    state = await lossy.inner.get_study(sid)
    assert (state.status, state.done, state.reserved, state.failed) == ("done", 300, 0, 0)
    flats, values = await all_results(lossy.inner, sid)
    assert flats == list(range(300)) and values == [x * x for x in range(300)]
    assert await lossy.registrations(sid) == await lossy.inner.client.zcard(lossy.key(sid, "done"))


# -- the lean client sends the header too ----------------------------------------------------


async def test_the_lean_client_sends_the_request_id() -> None:
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                heads.append(head.lower())
                body = b'{"trial":null}'
                writer.write(
                    b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    table = HttpTable(f"http://127.0.0.1:{port}", retries=0)
    try:
        assert table._lean is not None  # plain http: the worker's hot path
        assert await table.reserve([], 4, "w") is None
        assert await table.reserve([], 4, "w", request_id="my-id-1") is None
        lean = LeanClient(f"http://127.0.0.1:{port}", {}, timeout=5)
        await lean.post("/trial/reserve", b"{}", {"idempotency-key": "abc"})
        await lean.post("/trial/reserve", b"{}")
        await lean.close()
    finally:
        await table.close()
        server.close()
        await server.wait_closed()
    ids = [
        [
            line.split(b": ", 1)[1]
            for line in h.split(b"\r\n")
            if line.startswith(b"idempotency-key")
        ]
        for h in heads
    ]
    assert len(ids[0]) == 1 and len(ids[0][0]) == 32  # a fresh uuid4 per call
    assert ids[1:] == [[b"my-id-1"], [b"abc"], []]


async def test_the_lean_client_never_reads_a_late_answer_as_the_next_one() -> None:
    """A request that timed out may still be answered: that connection must not be reused."""
    import asyncio

    from ld2.store.wire_client import LeanClient

    served = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            served += 1
            if served == 1:
                await asyncio.sleep(0.5)  # answered after the client gave up
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = LeanClient(f"http://127.0.0.1:{port}", {}, timeout=0.2)
    try:
        with pytest.raises(TimeoutError):
            await client.post("/x", b'{"req":"first"}')
        second = await client.post("/x", b'{"req":"second"}')
        assert second.content == b'{"req":"second"}'  # not the late answer to the first
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
