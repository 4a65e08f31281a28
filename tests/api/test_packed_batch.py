"""``/trial/packed/batch``: several trials' packed results registered and several trials leased
in one request (ld2's workers on trials shorter than a round trip).

One request for the whole batch; every upload checked before anything is stored (400 naming
``body.trials[i].<field>``); a lost reply answered as the first was; leases of an answer that
cannot be delivered released at once; and an API without the endpoint served a call per trial.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ld2.api import create_app
from ld2.core import batch, results
from ld2.store.base import Reservation
from ld2.store.http import HttpTable
from ld2.store.wire_client import PACKED_BATCH, PACKED_CYCLE, PACKED_REGISTER, PACKED_TYPE
from tests.api.test_binary_trials import Both, Lossy, Recorder, both_app, lossy_app
from tests.api.test_lost_replies import first
from tests.conftest import REAL_BACKENDS, make_table
from tests.store.helpers import all_results, int_axis, registry, square


@pytest.fixture
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Both]:
    async with both_app(request, tmp_path) as made:
        yield made


@pytest.fixture
async def lossy(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Lossy]:
    async with lossy_app(request, tmp_path) as made:
        yield made


def _part(res: Reservation, values: Any = None) -> batch.Part:
    values = square(res) if values is None else values
    return batch.Part(res.study_id, res.trial_id, res.start, res.count, results.pack(values))


async def _held(api: Both, n: int, caps: tuple[str, ...] = ()) -> list[Reservation]:
    got = [await api.packed.reserve(caps, 10, "w", lease=60) for _ in range(n)]
    assert all(r is not None for r in got)
    return [r for r in got if r is not None]


def _query(**extra: Any) -> dict[str, Any]:
    return {"worker_node_id": "w", "max_size": 10, "lease_count": 2, **extra}


async def test_a_batch_is_one_request(api: Both) -> None:
    sid = await api.inner.register_study(registry([int_axis("x", 300)]))
    held = await _held(api, 3)
    api.wire.log.clear()
    settled, leased = await api.packed.register_batch(
        [(r, square(r)) for r in held], [], 10, "w", lease=60, lease_count=4
    )
    assert settled == ["ok"] * 3 and len(leased) == 4
    assert api.wire.log == [(PACKED_BATCH, 200)]
    assert all(r.spec.total == 300 and r.deadline > r.reserved_at for r in leased)
    state = await api.inner.get_study(sid)
    assert (state.done, state.reserved) == (30, 40)
    assert await api.registrations(sid) == 3


def _bad_batches(res: list[Reservation]) -> dict[str, tuple[bytes, str]]:
    """Each bad body (`BAD_CASES`) for the two trials `res`, and the field its 400 names."""
    a, b = res
    good = [_part(a), _part(b)]
    framed = batch.frame(good)
    head = json.dumps([{"study_id": a.study_id, "trial_id": a.trial_id, "start": a.start,
                        "count": a.count, "bytes": 4}]).encode()  # fmt: skip

    def with_head(items: Any, tail: bytes = b"") -> bytes:
        raw = json.dumps(items).encode()
        return struct.pack(">I", len(raw)) + raw + tail

    item = {"study_id": a.study_id, "trial_id": a.trial_id, "start": a.start, "count": a.count,
            "bytes": 0}  # fmt: skip
    return {
        "empty": (b"", "body"),
        "head longer than the body": (struct.pack(">I", 1000) + b"[]", "body"),
        "head not JSON": (struct.pack(">I", 3) + b"[[[", "body"),
        "head not a list": (with_head({"a": 1}), "body"),
        "a trial not an object": (with_head([1]), "body.trials[0]"),
        "no trial id": (with_head([{**item, "trial_id": ""}]), "body.trials[0].trial_id"),
        "a negative start": (with_head([{**item, "start": -1}]), "body.trials[0].start"),
        "count zero": (with_head([{**item, "count": 0}]), "body.trials[0].count"),
        "bytes past the end": (struct.pack(">I", len(head)) + head, "body.trials[0].bytes"),
        "bytes after the last trial": (framed + b"\0", "body"),
        "one value short": (
            batch.frame([good[0], _part(b, square(b)[:-1])]),
            "body.trials[1].rows",
        ),
        "floats for ints": (
            batch.frame([good[0], _part(b, square(b).astype(float))]),
            "body.trials[1].kind",
        ),
        "past the study's end": (
            batch.frame([good[0], batch.Part(b.study_id, b.trial_id, 20, 10, good[1].body)]),
            "body.trials[1].count",
        ),
        "too many trials": (
            batch.frame([*good, *(_part(b) for _ in range(batch.BATCH_LIMIT))]),
            "body",
        ),
        "a trial twice": (batch.frame([good[0], good[1], good[0]]), "body.trials[2].trial_id"),
    }


BAD_CASES = [
    "empty", "head longer than the body", "head not JSON", "head not a list",
    "a trial not an object", "no trial id", "a negative start", "count zero",
    "bytes past the end", "bytes after the last trial", "one value short", "floats for ints",
    "past the study's end", "too many trials", "a trial twice",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
async def test_a_bad_batch_is_400_naming_the_trial_and_field_and_stores_nothing(
    api: Both, case: str
) -> None:
    sid = await api.inner.register_study(registry([int_axis("x", 25)]))
    held = await _held(api, 2)
    body, field = _bad_batches(held)[case]
    resp = await api.raw.post(
        PACKED_BATCH, params=_query(), content=body,
        headers={"content-type": PACKED_TYPE, "Idempotency-Key": f"bad-{BAD_CASES.index(case)}"},
    )  # fmt: skip
    assert resp.status_code == 400, resp.text
    detail = resp.json()["detail"]
    assert detail.startswith(f"{field}: "), detail
    state = await api.inner.get_study(sid)
    assert (state.done, state.reserved) == (0, 20)  # nothing stored, nothing more leased
    assert await api.stored(sid) == 0 and await api.registrations(sid) == 0
    settled, _ = await api.packed.register_batch(
        [(r, square(r)) for r in held], [], 10, "w", lease_count=0
    )
    assert settled == ["ok", "ok"]  # a refusal is not remembered


async def test_query_and_content_type_refusals(api: Both) -> None:
    await api.inner.register_study(registry([int_axis("x", 30)]))
    body = batch.frame([])
    octet = {"content-type": PACKED_TYPE}
    over = await api.raw.post(
        PACKED_BATCH, params=_query(lease_count=batch.BATCH_LIMIT + 1), content=body,
        headers=octet,
    )  # fmt: skip
    assert over.status_code == 422
    assert over.json()["detail"][0]["loc"] == ["query", "lease_count"]
    no_worker = await api.raw.post(
        PACKED_BATCH, params={"max_size": 10}, content=body, headers=octet
    )
    assert no_worker.status_code == 422
    assert no_worker.json()["detail"][0]["loc"] == ["query", "worker_node_id"]
    as_json = await api.raw.post(
        PACKED_BATCH, params=_query(), content=body, headers={"content-type": "application/json"}
    )
    assert as_json.status_code == 415
    zero = await api.raw.post(PACKED_BATCH, params=_query(max_size=0), content=body, headers=octet)
    assert zero.status_code == 400 and zero.json()["detail"].startswith("max_size")
    assert (await api.inner.list_studies())[0].reserved == 0


async def test_outcomes_answer_each_trial_and_the_wire_says_why(api: Both) -> None:
    sid = await api.inner.register_study(registry([int_axis("x", 100)], capacity=["a"]))
    gone = await api.inner.register_study(registry([int_axis("x", 100)], capacity=["b"]))
    kept, lost = await _held(api, 2, caps=("a",))
    other = await api.packed.reserve(["b"], 10, "w")
    assert other is not None and other.study_id == gone
    await api.inner.fail(lost.trial_id, "w", "handed back", mode="release")
    await api.inner.delete(gone)
    resp = await api.raw.post(
        PACKED_BATCH, params=_query(lease_count=1, retaining_capacity=["a"]),
        content=batch.frame([_part(kept), _part(lost), _part(other)]),
        headers={"content-type": PACKED_TYPE},
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["outcomes"][0] == {"outcome": "ok"}
    assert answer["outcomes"][1]["refused"] == "rejected"
    assert answer["outcomes"][1]["reason"]
    assert answer["outcomes"][2]["refused"] == "not_found"
    assert [t["study_id"] for t in answer["trials"]] == [sid]
    assert set(answer["trials"][0]) == {
        "study_id", "trial_id", "start", "count", "attempt", "reserved_ms", "deadline_ms"
    }  # fmt: skip


async def test_a_batch_whose_reply_was_lost_registers_and_leases_once(lossy: Lossy) -> None:
    sid = await lossy.inner.register_study(registry([int_axis("x", 300)]))
    held = [await lossy.http.reserve([], 10, "w", lease=60) for _ in range(3)]
    lossy.drops.lose = first(1, PACKED_BATCH)
    settled, leased = await lossy.http.register_batch(
        [(r, square(r)) for r in held if r is not None], [], 10, "w", lease=60, lease_count=3
    )
    assert settled == ["ok"] * 3 and len(leased) == 3
    lost = json.loads(lossy.drops.lost[0][1])
    assert [t["trial_id"] for t in lost["trials"]] == [r.trial_id for r in leased]
    state = await lossy.inner.get_study(sid)
    assert (state.done, state.reserved) == (30, 30)
    assert int(await lossy.inner.client.xlen(f"{lossy.inner.prefix}:{{{sid}}}:events")) == 3


async def test_a_client_gone_before_the_answer_releases_every_lease(api: Both) -> None:
    sid = await api.inner.register_study(registry([int_axis("x", 300)]))
    held = await _held(api, 2)
    app = create_app(api.inner)
    body = batch.frame([_part(r) for r in held])
    inbox = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    query = b"worker_node_id=w&max_size=10&lease_count=3"
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": PACKED_BATCH, "raw_path": PACKED_BATCH.encode(),
        "query_string": query, "root_path": "", "server": ("ld2.test", 80),
        "client": ("127.0.0.1", 5000), "headers": [(b"content-type", PACKED_TYPE.encode()),
        (b"content-length", str(len(body)).encode()), (b"host", b"ld2.test")],
    }  # fmt: skip
    await app(scope, receive, send)
    assert not [s for s in sent if s["type"] == "http.response.body" and s.get("body")]
    state = await api.inner.get_study(sid)
    assert (state.done, state.reserved) == (20, 0)  # registered; the three leases released
    again = await api.packed.reserve([], 10, "w2")
    assert again is not None and (again.start, again.attempt) == (20, 0)


async def test_without_the_endpoint_a_batch_is_a_call_per_trial(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """An ld2 API from before the batch endpoint: the same answers, one packed call each."""
    async with make_table(request, REAL_BACKENDS[0]) as inner:
        app = create_app(inner, curriculum_path=tmp_path / "curriculum.json")
        app.router.routes[:] = [
            r for r in app.router.routes if getattr(r, "path", "") != PACKED_BATCH
        ]
        wire = Recorder(app)
        table = HttpTable("http://ld2.test", transport=wire, retries=0)
        try:
            sid = await inner.register_study(registry([int_axis("x", 300)]))
            held = [await table.reserve([], 10, "w") for _ in range(3)]
            finished = [(r, square(r)) for r in held if r is not None]
            settled, leased = await table.register_batch(finished, [], 10, "w", lease_count=2)
            assert settled == ["ok"] * 3 and len(leased) == 2
            paths = [p for p, _ in wire.log]
            assert paths.count(PACKED_BATCH) == 1  # asked once, then never again
            assert paths.count(PACKED_CYCLE) == 2 and paths.count(PACKED_REGISTER) == 1
            settled, _ = await table.register_batch(
                [(r, square(r)) for r in leased], [], 10, "w", lease_count=0
            )
            assert settled == ["ok", "ok"] and [p for p, _ in wire.log].count(PACKED_BATCH) == 1
            flats, _ = await all_results(inner, sid)
            assert flats == list(range(50))
        finally:
            await table.close()


def test_a_batch_body_round_trips() -> None:
    parts = [batch.Part("s", f"s-{i}", i * 10, 10, bytes(range(i + 1))) for i in range(5)]
    assert batch.unframe(batch.frame(parts)) == parts
    assert batch.unframe(batch.frame([])) == []


async def test_a_retry_after_a_study_was_deleted_replays_the_lease_of_its_part(api: Both) -> None:
    """The first attempt registered a trial of a study that had no more trials and leased one
    in another study for it; the study is deleted before the retry (the first reply lost):
    the retry answers not_found for that trial and the same two leases, not new ones."""
    small = await api.inner.register_study(registry([int_axis("x", 10)]))
    big = await api.inner.register_study(registry([int_axis("x", 1000)]))
    a = await api.packed.reserve([], 10, "w", lease=60)
    b = await api.packed.reserve([], 10, "w", lease=60)
    assert a is not None and b is not None and (a.study_id, b.study_id) == (small, big)
    body = batch.frame([_part(a), _part(b)])
    headers = {"content-type": PACKED_TYPE, "Idempotency-Key": "lost-then-deleted"}
    first_ = await api.raw.post(PACKED_BATCH, params=_query(), content=body, headers=headers)
    assert first_.status_code == 200, first_.text
    leased = [t["trial_id"] for t in first_.json()["trials"]]
    assert len(leased) == 2
    await api.inner.delete(small)
    again = await api.raw.post(PACKED_BATCH, params=_query(), content=body, headers=headers)
    assert again.status_code == 200, again.text
    outcomes = again.json()["outcomes"]
    assert outcomes[0]["refused"] == "not_found" and outcomes[1] == {"outcome": "ok"}
    assert [t["trial_id"] for t in again.json()["trials"]] == leased
    state = await api.inner.get_study(big)
    assert (state.done, state.reserved) == (10, 20)  # b once; the two leases, no third


async def test_a_batch_over_the_apis_body_limit_goes_a_trial_at_a_time(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """An API whose body limit is lower than a batch (a 413): the same registrations and
    leases, a call per trial; nothing lost, nothing twice."""
    async with make_table(request, REAL_BACKENDS[0]) as inner:
        app = create_app(inner, curriculum_path=tmp_path / "curriculum.json", max_body_bytes=3000)
        wire = Recorder(app)
        table = HttpTable("http://ld2.test", transport=wire, retries=0)
        try:
            sid = await inner.register_study(registry([int_axis("x", 20_000)]))
            held = [await table.reserve([], 200, "w") for _ in range(4)]
            finished = [(r, square(r)) for r in held if r is not None]
            settled, leased = await table.register_batch(finished, [], 200, "w", lease_count=3)
            assert settled == ["ok"] * 4 and len(leased) == 3
            assert (PACKED_BATCH, 413) in wire.log and wire.log.count((PACKED_CYCLE, 200)) == 3
            state = await inner.get_study(sid)
            assert (state.done, state.reserved) == (800, 600)
        finally:
            await table.close()
