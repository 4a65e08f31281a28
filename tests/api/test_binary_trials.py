"""The packed trial endpoints (``/trial/packed/reserve|register|cycle``): ld2's own clients send
results as the store's packed bytes and get leases back as numbers.

Each behaviour is checked against lite_dist2's JSON path on the same app: the results read back,
the refusals (400 naming the field, 409 with the same reason, nothing stored), request ids after
lost replies, the token, 503 while Redis is away. Then: the fallback to JSON against an API
without the packed endpoints, and the long-poll options (`wait`, `prefetch`) passed through to
the table and capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ld2.api import create_app
from ld2.core import results
from ld2.core.errors import InvalidInput, TrialRejected
from ld2.store.base import Reservation, TrialRef
from ld2.store.http import HttpTable
from ld2.store.redis import RedisTable
from ld2.store.wire_client import (
    MAX_WAIT_SECONDS,
    PACKED_CYCLE,
    PACKED_REGISTER,
    PACKED_RESERVE,
    PACKED_TYPE,
)
from tests.api.test_lost_replies import DropReplies, every, first
from tests.api.test_processes import api_process
from tests.conftest import REAL_BACKENDS, _free_port, make_table
from tests.store.helpers import all_results, int_axis, registry, square

TRIAL_PATHS = {"/trial/reserve", "/trial/register", "/trial/cycle"}
PACKED_PATHS = {PACKED_RESERVE, PACKED_REGISTER, PACKED_CYCLE}


class Recorder(httpx.AsyncBaseTransport):
    """The app in-process; every request's path, status and read timeout is noted."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self.log: list[tuple[str, int]] = []
        self.timeouts: dict[str, float | None] = {}  # path → the last request's read timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.log.append((request.url.path, response.status_code))
        self.timeouts[request.url.path] = request.extensions.get("timeout", {}).get("read")
        return response

    def paths(self) -> set[str]:
        return {p for p, _ in self.log}

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Both:
    inner: RedisTable  # the server's table: what was really stored
    packed: HttpTable  # ld2's client on the packed endpoints
    json: HttpTable  # the same client kept on lite_dist2's JSON (packed=False)
    raw: httpx.AsyncClient
    wire: Recorder

    def key(self, sid: str, name: str) -> str:
        return f"{self.inner.prefix}:{{{sid}}}:{name}"

    async def registrations(self, sid: str) -> int:
        return int(await self.inner.client.xlen(self.key(sid, "events")))

    async def stored(self, sid: str) -> int:
        """Result blocks stored for the study."""
        return int(await self.inner.client.hlen(self.key(sid, "res")))

    def tables(self) -> list[tuple[str, HttpTable]]:
        return [("json", self.json), ("packed", self.packed)]


@contextlib.asynccontextmanager
async def both_over(app: Any) -> AsyncIterator[tuple[Recorder, HttpTable, HttpTable]]:
    wire = Recorder(app)
    packed = HttpTable("http://ld2.test", transport=wire, retries=0)
    plain = HttpTable("http://ld2.test", transport=wire, retries=0, packed=False)
    try:
        yield wire, packed, plain
    finally:
        await packed.close()
        await plain.close()


@contextlib.asynccontextmanager
async def both_app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Both]:
    """The app in-process on a real engine, with ld2's clients, a raw client and the wire."""
    async with make_table(request, REAL_BACKENDS[0]) as inner:
        app = create_app(inner, curriculum_path=tmp_path / "curriculum.json")
        raw_transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with (
            both_over(app) as (wire, packed, plain),
            httpx.AsyncClient(transport=raw_transport, base_url="http://ld2.test") as raw,
        ):
            yield Both(inner, packed, plain, raw, wire)


@pytest.fixture
async def both(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Both]:
    async with both_app(request, tmp_path) as made:
        yield made


# -- results round-trip, and equal those sent as JSON -----------------------------------------


def _values(flat: np.ndarray, value_type: str, big: bool = False) -> Any:
    """A deterministic result per flat index, with the awkward values of each type."""
    if value_type == "bool":
        return flat % 3 == 0
    if value_type == "float":
        out = flat / 3.0 - 2.0
        out[flat % 7 == 0] = np.nan
        out[flat % 11 == 1] = np.inf
        out[flat % 11 == 2] = -np.inf
        out[flat % 11 == 3] = -0.0
        return out
    if big:  # beyond int64: the packed form's wide integers
        return np.array([(-1) ** k * (k + 1) * 2**70 for k in flat.tolist()], dtype=object)
    return flat * flat - 40


def results_of(value_type: str, vector: bool, big: bool, start: int, count: int) -> Any:
    flat = np.arange(start, start + count)
    if not vector:
        return _values(flat, value_type, big)
    return np.stack([_values(f, value_type, big) for f in (flat, flat + 1, 2 * flat)], axis=1)


def compute(value_type: str, vector: bool, big: bool = False) -> Callable[[Reservation], Any]:
    return lambda res: results_of(value_type, vector, big, res.start, res.count)


def _axes() -> list[dict[str, Any]]:
    f = {"name": "f", "type": "float", "size": "0x5", "step": "0x1.0p-1", "start": "-0x1.0p+0"}
    return [int_axis("x", 5, -2), f]


async def _sweep(table: HttpTable, fn: Callable[[Reservation], Any], size: int = 7) -> int:
    """A worker's loop: reserve, then register-and-reserve until nothing is left."""
    n = 0
    res = await table.reserve([], size, "w")
    while res is not None:
        _, res = await table.register_and_reserve(res, fn(res), [], size)
        n += 1
    return n


@pytest.mark.parametrize(
    ("value_type", "result_type", "big"),
    [
        ("int", "scalar", False),
        ("int", "vector", False),
        ("int", "scalar", True),
        ("int", "vector", True),
        ("float", "scalar", False),
        ("float", "vector", False),
        ("bool", "scalar", False),
        ("bool", "vector", False),
    ],
)
async def test_every_value_type_round_trips_and_equals_json(
    both: Both, value_type: str, result_type: str, big: bool
) -> None:
    fn = compute(value_type, result_type == "vector", big)
    got = {}
    for how, table in both.tables():
        reg = registry(_axes(), name=how, result_type=result_type, value_type=value_type)
        sid = await both.inner.register_study(reg)
        assert await _sweep(table, fn) == 5  # strictly aligned: a row of 5 points a trial
        state = await both.inner.get_study(sid)
        assert (state.status, state.done, state.reserved, state.failed) == ("done", 25, 0, 0)
        flats, values = await all_results(both.inner, sid)
        assert flats == list(range(25))
        got[how] = repr(values)
    expected = results_of(value_type, result_type == "vector", big, 0, 25)
    assert got["packed"] == got["json"] == repr(np.asarray(expected).tolist())
    trial_calls = {p for p, _ in both.wire.log if p.startswith("/trial/")}
    assert trial_calls == {PACKED_RESERVE, PACKED_CYCLE, "/trial/reserve", "/trial/cycle"}


async def test_register_alone_and_with_a_plain_trial_ref(both: Both) -> None:
    """`register` works from a bare TrialRef too: the spec comes from the table's cache."""
    sid = await both.inner.register_study(registry([int_axis("x", 20)]))
    a = await both.packed.reserve([], 10, "w")
    b = await both.packed.reserve([], 10, "w")
    assert a is not None and b is not None
    assert await both.packed.register(a, square(a)) == "ok"
    ref = TrialRef(b.study_id, b.trial_id, b.worker_id, b.start, b.count)
    assert await both.packed.register(ref, square(b)) == "ok"
    flats, values = await all_results(both.inner, sid)
    assert flats == list(range(20)) and values == [x * x for x in range(20)]
    assert (await both.inner.get_study(sid)).status == "done"
    with pytest.raises(InvalidInput, match="registering over HTTP needs the Reservation"):
        await both.json.register(ref, square(b))  # lite_dist2's form needs the whole trial


async def test_a_lease_is_the_stores_own(both: Both) -> None:
    """The packed answer carries the store's lease exactly: a replay of its request id on the
    table itself answers the same trial, range, attempt and times."""
    await both.inner.register_study(registry([int_axis("x", 30)]))
    res = await both.packed.reserve([], 10, "w", "name", lease=45, request_id="same")
    held = await both.inner.reserve([], 10, "w", "name", lease=45, request_id="same")
    assert res is not None and held is not None
    assert (res.trial_id, res.start, res.count, res.attempt) == (
        held.trial_id, held.start, held.count, held.attempt,
    )  # fmt: skip
    assert (res.reserved_at, res.deadline) == (held.reserved_at, held.deadline)
    assert (res.worker_id, res.worker_name, res.spec) == ("w", "name", held.spec)
    body = {"retaining_capacity": [], "max_size": 10, "worker_node_id": "w", "lease_seconds": 45}
    json_reply = await both.raw.post("/trial/reserve", json=body)
    assert set(json_reply.json()) == {"trial", "lease_deadline_ms"}  # lite_dist2's, unchanged


async def test_a_reissued_range_says_its_attempt(both: Both) -> None:
    await both.inner.register_study(registry([int_axis("x", 10)]))
    res = await both.packed.reserve([], 10, "w")
    assert res is not None
    await both.packed.fail(res.trial_id, "w", "boom", mode="retry")
    again = await both.packed.reserve([], 10, "w")
    assert again is not None and (again.start, again.attempt) == (0, 1)


async def test_find_exact_and_minimize_as_in_json(both: Both) -> None:
    answers = {}
    for how, table in both.tables():
        hit = await both.inner.register_study(
            registry([int_axis("x", 40)], name=f"hit-{how}", strategy="find_exact", target="0x90")
        )
        low = await both.inner.register_study(
            registry([int_axis("x", 40)], name=f"low-{how}", strategy="minimize")
        )

        def fn(r: Reservation, hit: str = hit) -> Any:
            return square(r) if r.study_id == hit else (square(r) - 300) ** 2

        await _sweep(table, fn)
        h, m = await both.inner.get_study(hit), await both.inner.get_study(low)
        assert (h.status, m.status) == ("done", "done")
        answers[how] = (h.hit_flat, m.best_flat, await all_results(both.inner, low))
    assert answers["packed"] == answers["json"]
    assert answers["packed"][:2] == (12, 17)  # 12² = 0x90; 17² = 289 is nearest 300


async def test_late_results_of_a_solved_find_exact_are_ignored(both: Both) -> None:
    """The packed answer says ``ignored`` (lite_dist2's JSON only says ok)."""
    reg = registry([int_axis("x", 20)], strategy="find_exact", target="0x4")
    sid = await both.inner.register_study(reg)
    a = await both.packed.reserve([], 10, "w")
    b = await both.packed.reserve([], 10, "w")
    assert a is not None and b is not None
    assert await both.packed.register(a, square(a)) == "ok"
    assert (await both.inner.get_study(sid)).status == "done"
    assert await both.packed.register(b, square(b)) == "ignored"


# -- refusals: as the JSON path refuses, and nothing stored -----------------------------------


def _params(res: Reservation, **over: Any) -> dict[str, Any]:
    base = {"study_id": res.study_id, "trial_id": res.trial_id, "worker_node_id": res.worker_id,
            "start": res.start, "count": res.count}  # fmt: skip
    return {k: v for k, v in (base | over).items() if v is not None}


HEADER = results._HEADER


def _bad_bodies(count: int) -> dict[str, tuple[bytes, str]]:
    """Bodies for a trial of `count` int scalars, each wrong in one way: (body, field named)."""
    good = results.pack(np.arange(count, dtype=np.int64))
    ints = np.arange(count, dtype=np.int64)
    return {
        "empty": (b"", "body"),
        "header cut short": (good[:7], "body"),
        "one value missing": (results.pack(ints[:-1]), "body.rows"),
        "one value too many": (results.pack(np.arange(count + 1)), "body.rows"),
        "a byte short": (good[:-1], "body"),
        "a byte over": (good + b"\0", "body"),
        "rows and bytes lie together": (HEADER.pack(b"B", 0, count, 0) + bytes(count - 1), "body"),
        "floats for an int study": (results.pack(ints.astype(float)), "body.kind"),
        "bools for an int study": (results.pack(ints % 2 == 0), "body.kind"),
        "unknown kind": (HEADER.pack(b"z", 0, count, 0) + bytes(count), "body.kind"),
        "width on a fixed dtype": (HEADER.pack(b"B", 3, count, 0) + bytes(count), "body.width"),
        "wide ints of width 0": (HEADER.pack(b"O", 0, count, 0), "body.width"),
        "a vector for a scalar study": (
            results.pack(np.ones((count, 2), np.int64)),
            "body.columns",
        ),
        "4 billion rows claimed": (HEADER.pack(b"q", 0, 2**32 - 1, 0) + good[12:], "body.rows"),
    }


@pytest.mark.parametrize("case", sorted(_bad_bodies(10)))
async def test_a_bad_body_is_400_naming_it_and_stores_nothing(both: Both, case: str) -> None:
    sid = await both.inner.register_study(registry([int_axis("x", 20)]))
    res = await both.packed.reserve([], 10, "w")
    assert res is not None
    body, field = _bad_bodies(10)[case]
    for path in (PACKED_REGISTER, PACKED_CYCLE):
        extra = {"max_size": 10} if path == PACKED_CYCLE else {}
        resp = await both.raw.post(
            path, params=_params(res) | extra, content=body,
            headers={"content-type": PACKED_TYPE, "Idempotency-Key": f"bad-{path}"},
        )  # fmt: skip
        assert resp.status_code == 400, resp.text
        detail = resp.json()["detail"]
        assert detail.startswith(f"{field}: "), detail
    state = await both.inner.get_study(sid)
    assert (state.done, state.reserved) == (0, 10)  # nothing stored, the lease still held
    assert await both.stored(sid) == 0 and await both.registrations(sid) == 0
    assert await both.packed.register(res, square(res)) == "ok"  # a refusal is not remembered


async def test_bad_bodies_of_other_types(both: Both) -> None:
    cases = [
        ("float", "scalar", results.pack(np.arange(4, dtype=np.int64)), "body.kind"),
        ("float", "scalar", HEADER.pack(b"d", 0, 4, 0) + bytes(31), "body"),
        ("bool", "scalar", HEADER.pack(b"?", 0, 4, 0) + bytes([0, 1, 2, 1]), "body"),
        ("bool", "vector", results.pack(np.zeros(4, dtype=bool)), "body.columns"),
        ("int", "vector", HEADER.pack(b"B", 0, 4, 0) + bytes(4), "body.columns"),
    ]
    for value_type, result_type, body, field in cases:
        reg = registry([int_axis("x", 4)], value_type=value_type, result_type=result_type)
        sid = await both.inner.register_study(reg)
        res = await both.packed.reserve([], 4, "w")
        assert res is not None and res.study_id == sid
        resp = await both.raw.post(
            PACKED_REGISTER, params=_params(res), content=body,
            headers={"content-type": PACKED_TYPE},
        )  # fmt: skip
        assert resp.status_code == 400, (value_type, result_type, resp.text)
        assert resp.json()["detail"].startswith(f"{field}: "), resp.text
        assert await both.stored(sid) == 0
        await both.inner.cancel(sid)


async def test_query_and_content_type_refusals(both: Both) -> None:
    sid = await both.inner.register_study(registry([int_axis("x", 20)]))
    res = await both.packed.reserve([], 10, "w")
    assert res is not None
    body = results.pack(square(res))
    octet = {"content-type": PACKED_TYPE}

    async def post(params: dict[str, Any], headers: dict[str, Any] = octet) -> httpx.Response:
        return await both.raw.post(PACKED_REGISTER, params=params, content=body, headers=headers)

    for name in ("study_id", "trial_id", "worker_node_id", "start", "count"):
        resp = await post(_params(res, **{name: None}))
        assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["query", name]
    for name, value in (("start", -1), ("count", 0), ("start", "x")):
        resp = await post(_params(res, **{name: value}))
        assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["query", name]
    for bad in (b"", b"x" * 129, "é".encode(), b"a b"):
        resp = await post(_params(res), {**octet, "Idempotency-Key": bad})
        assert resp.status_code == 422, bad
        assert resp.json()["detail"][0]["loc"] == ["header", "idempotency-key"]
    resp = await post(_params(res, start=15))  # [15, 25) is not all in the study's 20 points
    assert resp.status_code == 400 and resp.json()["detail"].startswith("count: ")
    resp = await post(_params(res, study_id="no-such-study"))
    assert resp.status_code == 404
    for ctype in ({}, {"content-type": "application/json"}):
        resp = await post(_params(res), ctype)
        assert resp.status_code == 415 and resp.json()["detail"].startswith("content-type: ")
    resp = await both.raw.post(
        PACKED_CYCLE, params=_params(res, max_size=0), content=body, headers=octet
    )
    assert resp.status_code == 400 and "max_size" in resp.json()["detail"]
    assert await both.stored(sid) == 0
    ok = await post(_params(res), {"content-type": "Application/Octet-Stream; x=y"})
    assert ok.status_code == 200 and ok.json() == {"outcome": "ok"}


async def test_a_body_over_the_limit_is_413_and_stores_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with make_table(request, REAL_BACKENDS[0]) as inner:
        app = create_app(inner, max_body_bytes=1000, curriculum_path=tmp_path / "c.json")
        sid = await inner.register_study(registry([int_axis("x", 500)], value_type="float"))
        async with both_over(app) as (_, table, _json):
            res = await table.reserve([], 500, "w")
            assert res is not None
            with pytest.raises(InvalidInput, match="HTTP 413"):  # 4,012 bytes of floats
                await table.register(res, np.zeros(500))
            state = await inner.get_study(sid)
            assert (state.done, state.reserved) == (0, 500)


# -- 409s: the same reasons as the JSON path -----------------------------------------------


async def _outcome(call: Any) -> str:
    try:
        return str(await call)
    except TrialRejected as err:
        return f"409 {err.reason}"


async def test_rejections_are_those_of_json(both: Both) -> None:
    seen: dict[str, list[str]] = {}
    for how, t in both.tables():
        reg = registry([int_axis("x", 40)], name=how, capacity=[how])
        sid = await both.inner.register_study(reg)
        a = await t.reserve([how], 10, "w1")
        b = await t.reserve([how], 10, "w1")
        assert a is not None and b is not None
        got = [
            await _outcome(t.register(dataclasses.replace(a, worker_id="w2"), square(a))),
            await _outcome(t.register(dataclasses.replace(a, trial_id=f"{sid}-0x99"), square(a))),
            await _outcome(
                t.register(dataclasses.replace(a, count=9), square(a)[:9])  # not its range
            ),
            await _outcome(t.register(a, square(a), request_id=f"{how}-1")),
            await _outcome(t.register(a, square(a), request_id=f"{how}-1")),  # a retry
            await _outcome(t.register(a, square(a))),  # another call
            await _outcome(t.register_and_reserve(a, square(a), [], 10, request_id=f"{how}-2")),
        ]
        assert await both.registrations(sid) == 1, got
        state = await both.inner.get_study(sid)
        assert (state.done, state.reserved) == (10, 10)
        await t.register(b, square(b))
        seen[how] = got
    assert seen["packed"] == seen["json"]
    assert seen["packed"] == [
        "409 wrong_worker", "409 unknown", "409 mismatch", "ok", "ok", "409 duplicate",
        "409 duplicate",
    ]  # fmt: skip


async def test_vector_length_is_checked_as_in_json(both: Both) -> None:
    seen = {}
    for how, t in both.tables():
        reg = registry([int_axis("x", 20)], name=how, result_type="vector")
        await both.inner.register_study(reg)
        a = await t.reserve([], 10, "w")
        b = await t.reserve([], 10, "w")
        assert a is not None and b is not None
        first_ = await _outcome(t.register(a, np.ones((10, 3), dtype=np.int64)))
        seen[how] = (first_, await _outcome(t.register(b, np.ones((10, 2), dtype=np.int64))))
    assert seen["packed"] == seen["json"] == ("ok", "409 vector_length")


async def _until_expired(inner: RedisTable, res: Reservation) -> None:
    deadline = time.monotonic() + 30
    while await inner.server_time() <= res.deadline:
        assert time.monotonic() < deadline, "the lease never expired"
        await asyncio.sleep(0.01)


async def test_expired_leases_as_in_json(both: Both) -> None:
    seen = {}
    for how, t in both.tables():
        sid = await both.inner.register_study(registry([int_axis("x", 20)], name=how))
        late = await t.reserve([], 10, "w", lease=0.05)
        lost = await t.reserve([], 10, "w", lease=0.05)
        assert late is not None and lost is not None
        await _until_expired(both.inner, lost)
        assert await both.inner.reap() >= 2
        taken = await both.inner.reserve([], 10, "w2")  # reissues the first range handed back
        assert taken is not None and taken.start == late.start
        seen[how] = (
            await _outcome(t.register(late, square(late))),  # reissued meanwhile
            await _outcome(t.register(lost, square(lost))),  # still waiting: accepted late
        )
        assert (await both.inner.get_study(sid)).done == 10
    assert seen["packed"] == seen["json"] == ("409 unknown", "ok")


# -- request ids after lost replies ----------------------------------------------------------


@dataclass
class Lossy:
    inner: RedisTable
    http: HttpTable
    drops: DropReplies


@contextlib.asynccontextmanager
async def lossy_app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Lossy]:
    """ld2's client through an app that loses the replies it is told to."""
    async with make_table(request, REAL_BACKENDS[0]) as inner:
        drops = DropReplies(create_app(inner, curriculum_path=tmp_path / "curriculum.json"))
        table = HttpTable("http://ld2.test", transport=drops, retries=4, backoff=0.001)
        try:
            yield Lossy(inner, table, drops)
        finally:
            await table.close()


@pytest.fixture
async def lossy(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Lossy]:
    async with lossy_app(request, tmp_path) as made:
        yield made


async def _registrations(lossy: Lossy, sid: str) -> int:
    return int(await lossy.inner.client.xlen(f"{lossy.inner.prefix}:{{{sid}}}:events"))


@pytest.mark.parametrize("n_lost", [1, 3])
async def test_a_packed_reserve_whose_reply_was_lost_leases_once(lossy: Lossy, n_lost: int) -> None:
    sid = await lossy.inner.register_study(registry([int_axis("x", 100)]))
    lossy.drops.lose = first(n_lost, PACKED_RESERVE)
    res = await lossy.http.reserve([], 10, "w", lease=30)
    assert res is not None and len(lossy.drops.lost) == n_lost
    assert {json.loads(body)["trial"]["trial_id"] for _, body in lossy.drops.lost} == {res.trial_id}
    assert (await lossy.inner.get_study(sid)).reserved == 10
    keys = {key for path, key in lossy.drops.sent if path == PACKED_RESERVE}
    assert len(keys) == 1 and None not in keys


async def test_a_packed_cycle_whose_reply_was_lost_registers_once(lossy: Lossy) -> None:
    sid = await lossy.inner.register_study(registry([int_axis("x", 30)]))
    res = await lossy.http.reserve([], 10, "w", lease=30)
    assert res is not None
    lossy.drops.lose = first(1, PACKED_CYCLE)
    outcome, nxt = await lossy.http.register_and_reserve(res, square(res), [], 10, lease=30)
    assert outcome == "ok" and nxt is not None and nxt.start == 10
    assert json.loads(lossy.drops.lost[0][1])["trial"]["trial_id"] == nxt.trial_id
    state = await lossy.inner.get_study(sid)
    assert (state.done, state.reserved) == (10, 10)
    assert await _registrations(lossy, sid) == 1


@pytest.mark.parametrize("points", [20, 10])  # the study goes on / the study ends with it
async def test_a_packed_register_whose_reply_was_lost_is_ok_once(lossy: Lossy, points: int) -> None:
    sid = await lossy.inner.register_study(registry([int_axis("x", points)]))
    res = await lossy.http.reserve([], 10, "w")
    assert res is not None
    lossy.drops.lose = first(1, PACKED_REGISTER)
    assert await lossy.http.register(res, square(res)) == "ok"
    assert len(lossy.drops.lost) == 1
    state = await lossy.inner.get_study(sid)
    assert (state.done, state.status) == (10, "done" if points == 10 else "running")
    assert await _registrations(lossy, sid) == 1


async def test_a_packed_sweep_losing_every_third_reply_does_every_point_once(
    lossy: Lossy,
) -> None:
    sid = await lossy.inner.register_study(registry([int_axis("x", 300)]))
    lossy.drops.lose = every(3)

    async def work(name: str) -> None:
        res = await lossy.http.reserve([], 7, name, lease=60)
        while res is not None:
            _, res = await lossy.http.register_and_reserve(res, square(res), [], 7, lease=60)

    await asyncio.gather(work("w1"), work("w2"))
    assert len(lossy.drops.lost) >= 8
    calls = {path for path, _ in lossy.drops.sent if path.startswith("/trial/")}
    assert calls == {PACKED_RESERVE, PACKED_CYCLE}
    state = await lossy.inner.get_study(sid)
    assert (state.status, state.done, state.reserved, state.failed) == ("done", 300, 0, 0)
    flats, values = await all_results(lossy.inner, sid)
    assert flats == list(range(300)) and values == [x * x for x in range(300)]


# -- two API processes' worth of apps, one Redis: packed calls cross between them -------------


class Alternate(httpx.AsyncBaseTransport):
    """Each request to the other app than the one before."""

    def __init__(self, *apps: Any) -> None:
        self.inner = [httpx.ASGITransport(app=a, raise_app_exceptions=False) for a in apps]
        self.n = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.n += 1
        return await self.inner[self.n % len(self.inner)].handle_async_request(request)


async def test_packed_calls_cross_between_api_processes(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with make_table(request, REAL_BACKENDS[0]) as one:
        other = RedisTable(aioredis.Redis.from_url(one.url), prefix=one.prefix, index_ttl=0.0)
        apps = [
            create_app(t, curriculum_path=tmp_path / f"{k}.json")
            for k, t in enumerate((one, other))
        ]
        table = HttpTable("http://ld2.test", transport=Alternate(*apps), retries=0)
        try:
            sid = await table.register_study(registry([int_axis("x", 50)]))
            assert await _sweep(table, square, 6) == 9
            flats, values = await all_results(one, sid)
            assert flats == list(range(50)) and values == [x * x for x in range(50)]
        finally:
            await table.close()
            await other.close()


# -- the token, and Redis away ---------------------------------------------------------------


async def test_packed_endpoints_need_the_token(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with make_table(request, REAL_BACKENDS[0]) as inner:
        app = create_app(inner, token="s3cret", curriculum_path=tmp_path / "c.json")
        sid = await inner.register_study(registry([int_axis("x", 10)]))
        res = await inner.reserve([], 5, "w")
        assert res is not None
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://ld2.test") as raw:
            for path in PACKED_PATHS:
                resp = await raw.post(
                    path, params=_params(res, max_size=5), content=results.pack(square(res)),
                    headers={"content-type": PACKED_TYPE},
                )  # fmt: skip
                assert resp.status_code == 401, (path, resp.text)
        assert (await inner.get_study(sid)).done == 0
        wire = Recorder(app)
        for token, works in (("s3cret", True), ("wrong", False)):
            table = HttpTable("http://ld2.test", token=token, transport=wire, retries=0)
            try:
                if works:
                    assert await table.register(res, square(res)) == "ok"
                    assert await _sweep(table, square, 5) == 1
                else:
                    with pytest.raises(InvalidInput, match="HTTP 401"):
                        await table.reserve([], 5, "w")
                    assert table._packed  # a 401 is no reason to leave the packed endpoints
            finally:
                await table.close()
        trial_calls = {(p, s) for p, s in wire.log if p.startswith("/trial/")}
        assert trial_calls == {
            (PACKED_RESERVE, 401), (PACKED_REGISTER, 200), (PACKED_RESERVE, 200),
            (PACKED_CYCLE, 202),
        }  # fmt: skip
        assert (await inner.get_study(sid)).status == "done"


async def test_packed_endpoints_answer_503_while_redis_is_away() -> None:
    client = aioredis.Redis(port=_free_port(), retry=Retry(NoBackoff(), 0))  # refused at once
    table = RedisTable(client, url="nowhere")
    app = create_app(table)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    body = results.pack(np.arange(5, dtype=np.int64))
    params: dict[str, Any] = {"study_id": "s", "trial_id": "s-0x0", "worker_node_id": "w",
                              "start": 0, "count": 5, "max_size": 5}  # fmt: skip
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://ld2.test") as raw:
            for path in PACKED_PATHS:
                resp = await raw.post(
                    path, params=params, content=body, headers={"content-type": PACKED_TYPE}
                )
                assert resp.status_code == 503, (path, resp.text)
                assert "nowhere" in resp.json()["detail"]
    finally:
        await table.close()


# -- an API without the packed endpoints: back to lite_dist2's JSON ---------------------------


async def test_falls_back_to_json_without_the_packed_endpoints(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with make_table(request, REAL_BACKENDS[0]) as inner:
        app = create_app(inner, curriculum_path=tmp_path / "c.json")
        app.router.routes[:] = [  # an ld2 API from before the packed endpoints
            r for r in app.router.routes if not getattr(r, "path", "").startswith("/trial/packed")
        ]
        sid = await inner.register_study(registry([int_axis("x", 30)]))
        async with both_over(app) as (wire, table, _):
            res = await table.reserve([], 10, "w", wait=5)
            assert res is not None and not table._packed
            calls = [(p, s) for p, s in wire.log if p.startswith("/trial/")]
            assert calls == [(PACKED_RESERVE, 404), ("/trial/reserve", 200)]
            outcome, nxt = await table.register_and_reserve(res, square(res), [], 10)
            assert outcome == "ok" and nxt is not None
            assert await table.register(nxt, square(nxt)) == "ok"
            last = await table.reserve([], 10, "w")
            assert last is not None
            assert await table.register(last, square(last)) == "ok"
            assert [p for p, _ in wire.log[2:] if p.startswith("/trial/")] == [
                "/trial/cycle", "/trial/register", "/trial/reserve", "/trial/register",
            ]  # fmt: skip
        flats, values = await all_results(inner, sid)
        assert flats == list(range(30)) and values == [x * x for x in range(30)]


async def test_a_cycle_falls_back_too(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A table whose first packed call is a cycle (its lease came from elsewhere)."""
    async with make_table(request, REAL_BACKENDS[0]) as inner:
        app = create_app(inner, curriculum_path=tmp_path / "c.json")
        app.router.routes[:] = [
            r for r in app.router.routes if getattr(r, "path", "") != PACKED_CYCLE
        ]
        sid = await inner.register_study(registry([int_axis("x", 20)]))
        async with both_over(app) as (wire, table, _):
            res = await table.reserve([], 10, "w")
            assert res is not None
            outcome, nxt = await table.register_and_reserve(res, square(res), [], 10)
            assert outcome == "ok" and nxt is not None and not table._packed
            assert [p for p, _ in wire.log if p.startswith("/trial/")] == [
                PACKED_RESERVE, PACKED_CYCLE, "/trial/cycle",
            ]  # fmt: skip
            assert await table.register(nxt, square(nxt)) == "ok"
        assert (await inner.get_study(sid)).status == "done"


# -- long polls: wait and prefetch reach the table, capped -----------------------------------


class Spy:
    """Records the keyword arguments of the table's reserve and register_and_reserve."""

    def __init__(self, table: RedisTable, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.entered = asyncio.Event()
        reserve, cycle = table.reserve, table.register_and_reserve

        async def spy_reserve(*args: Any, **kw: Any) -> Any:
            self.calls.append(("reserve", kw))
            self.entered.set()
            return await reserve(*args, **kw)

        async def spy_cycle(*args: Any, **kw: Any) -> Any:
            self.calls.append(("register_and_reserve", kw))
            return await cycle(*args, **kw)

        monkeypatch.setattr(table, "reserve", spy_reserve)
        monkeypatch.setattr(table, "register_and_reserve", spy_cycle)

    def options(self) -> list[tuple[str, float | None, bool]]:
        got = [(name, kw.get("wait"), kw["prefetch"]) for name, kw in self.calls]
        self.calls.clear()
        return got


async def test_wait_and_prefetch_are_passed_to_the_table(
    both: Both, monkeypatch: pytest.MonkeyPatch
) -> None:
    await both.inner.register_study(registry([int_axis("x", 10**6)]))
    spy = Spy(both.inner, monkeypatch)
    for how, t in both.tables():
        res = await t.reserve([], 10, "w", wait=2.5, prefetch=True)
        assert res is not None, how
        assert spy.options() == [("reserve", 2.5, True)]
        assert await t.reserve([], 10, "w") is not None
        assert spy.options() == [("reserve", 0.0, False)]
        assert await t.reserve([], 10, "w", wait=1000) is not None  # capped by the client
        assert spy.options() == [("reserve", MAX_WAIT_SECONDS, False)]
        _, nxt = await t.register_and_reserve(res, square(res), [], 10, prefetch=True)
        assert nxt is not None
        assert spy.options()[0] == ("register_and_reserve", None, True)
        await t.register_and_reserve(nxt, square(nxt), [], 10)
        assert spy.options()[0] == ("register_and_reserve", None, False)
    lite_dist2 = {"retaining_capacity": [], "max_size": 10, "worker_node_id": "old"}
    assert (await both.raw.post("/trial/reserve", json=lite_dist2)).status_code == 200
    assert spy.options() == [("reserve", 0.0, False)]
    with pytest.raises(InvalidInput, match="wait"):
        await both.packed.reserve([], 10, "w", wait=-1)


async def test_wait_over_the_cap_is_a_422_naming_it(both: Both) -> None:
    await both.inner.register_study(registry([int_axis("x", 100)]))
    body = {"retaining_capacity": [], "max_size": 10, "worker_node_id": "w"}
    for wait in (MAX_WAIT_SECONDS + 0.5, -1, "NaN", "Infinity"):
        resp = await both.raw.post(
            PACKED_RESERVE, params={"max_size": 10, "worker_node_id": "w", "wait_seconds": wait}
        )
        assert resp.status_code == 422, (wait, resp.text)
        assert resp.json()["detail"][0]["loc"] == ["query", "wait_seconds"]
        if isinstance(wait, str):
            continue  # not JSON
        resp = await both.raw.post("/trial/reserve", json=body | {"wait_seconds": wait})
        assert resp.status_code == 422, (wait, resp.text)
        assert resp.json()["detail"][0]["loc"] == ["body", "wait_seconds"]
    params: dict[str, Any] = {"max_size": 10, "worker_node_id": "w", "prefetch": "maybe"}
    resp = await both.raw.post(PACKED_RESERVE, params=params)
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["query", "prefetch"]
    resp = await both.raw.post("/trial/reserve", json=body | {"prefetch": "maybe"})
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["body", "prefetch"]
    state = (await both.inner.list_studies())[0]
    assert state.reserved == 0  # none of those leased anything


async def test_the_client_timeout_outlasts_the_wait(both: Both) -> None:
    await both.inner.register_study(registry([int_axis("x", 100)]))
    for _, t in both.tables():
        assert await t.reserve([], 10, "w", wait=12) is not None
    assert both.wire.timeouts[PACKED_RESERVE] == both.wire.timeouts["/trial/reserve"]
    assert both.wire.timeouts[PACKED_RESERVE] == both.packed.timeout + 12
    assert await both.packed.reserve([], 10, "w") is not None
    assert both.wire.timeouts[PACKED_RESERVE] == both.packed.timeout


async def test_the_lean_client_timeout_outlasts_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over a real socket (the lean client): the answer may take the whole wait."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 14\r\n\r\n")
                writer.write(b'{"trial":null}')
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    table = HttpTable(f"http://127.0.0.1:{port}", retries=0, timeout=7)
    assert table._lean is not None
    timeouts: list[float | None] = []
    post = table._lean.post

    async def spy(*args: Any, **kw: Any) -> Any:
        timeouts.append(kw.get("timeout"))
        return await post(*args, **kw)

    monkeypatch.setattr(table._lean, "post", spy)
    try:
        assert await table.reserve([], 4, "w", wait=20) is None
        assert await table.reserve([], 4, "w", wait=100) is None
        assert await table.reserve([], 4, "w") is None
    finally:
        await table.close()
        server.close()
        await server.wait_closed()
    assert timeouts == [27, 7 + MAX_WAIT_SECONDS, 7]


async def test_a_long_poll_is_answered_when_work_arrives(
    both: Both, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiting packed reserve gets the trial of a study registered while it waits."""
    spy = Spy(both.inner, monkeypatch)
    waiting = asyncio.create_task(both.packed.reserve([], 10, "w", wait=25))
    await spy.entered.wait()  # the request reached the table
    sid = await both.inner.register_study(registry([int_axis("x", 30)]))
    res = await waiting
    assert res is not None and res.study_id == sid and (res.start, res.count) == (0, 10)
    assert spy.options() == [("reserve", 25.0, False)]


# -- the OpenAPI document names the packed body ----------------------------------------------


async def test_openapi_describes_the_packed_endpoints(both: Both) -> None:
    paths = (await both.raw.get("/openapi.json")).json()["paths"]
    for path in (PACKED_REGISTER, PACKED_CYCLE):
        assert list(paths[path]["post"]["requestBody"]["content"]) == [PACKED_TYPE]
    for path, names in (
        (PACKED_RESERVE, {"worker_node_id", "max_size", "retaining_capacity", "wait_seconds",
                          "prefetch", "lease_seconds", "worker_node_name"}),
        (PACKED_REGISTER, {"study_id", "trial_id", "worker_node_id", "start", "count"}),
        (PACKED_CYCLE, {"study_id", "trial_id", "worker_node_id", "start", "count", "max_size",
                        "retaining_capacity", "prefetch", "lease_seconds", "worker_node_name"}),
    ):  # fmt: skip
        params = paths[path]["post"]["parameters"]
        assert {p["name"] for p in params if p["in"] == "query"} == names, path
        assert [p["name"] for p in params if p["in"] == "header"] == ["idempotency-key"]
        required = {p["name"] for p in params if p["required"]}
        assert required == names - {"retaining_capacity", "wait_seconds", "prefetch",
                                    "lease_seconds", "worker_node_name"}  # fmt: skip


# -- a real `ld2 api` process and the lean client --------------------------------------------


async def test_packed_sweep_through_a_real_api_process(
    private_redis_url: str | None, embedded_url: str
) -> None:
    url = private_redis_url or embedded_url
    prefix = f"packed-{uuid.uuid4().hex[:8]}"
    with api_process(url, "--prefix", prefix) as api:
        fn = compute("float", True)
        tables = [HttpTable(api, retries=0), HttpTable(api, retries=0, packed=False)]
        try:
            got = []
            for k, table in enumerate(tables):
                assert table._lean is not None
                reg = registry(_axes(), name=f"s{k}", result_type="vector", value_type="float")
                sid = await table.register_study(reg)
                res = await table.reserve(["a", "b c"], 7, "w", "w name/é", lease=30)
                while res is not None:
                    _, res = await table.register_and_reserve(
                        res, fn(res), ["a", "b c"], 7, "w name/é", lease=30
                    )
                got.append(repr([b.values.tolist() async for b in table.iter_results(sid)]))
            assert tables[0]._packed and got[0] == got[1]
        finally:
            for table in tables:
                await table.close()
            direct = RedisTable(aioredis.Redis.from_url(url), prefix=prefix)
            keys = [k async for k in direct.client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await direct.client.delete(*keys)
            await direct.close()
