"""Hostile request bodies: auth before any body byte, the body budget, strict JSON, a fuzz."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ld2.api import create_app
from tests.api.conftest import Api
from tests.store.helpers import int_axis, registry

MiB = 1024 * 1024
JSON = {"content-type": "application/json"}
RESERVE = (
    '{"retaining_capacity": [], "max_size": %s, "worker_node_name": "w", "worker_node_id": %s}'
)


def _study() -> dict[str, Any]:
    reg = registry([int_axis("x", 10)], name="hostile")
    return {"study": json.loads(reg.model_dump_json())}


class Counting:
    """An ASGI wrapper that counts the body bytes the app inside it has read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.read = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Message:
            msg = await receive()
            self.read += len(msg.get("body", b""))
            return msg

        await self.app(scope, counted, send)


def _client(app: ASGIApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://ld2.test")


# -- auth first -------------------------------------------------------------------------------------


async def test_unauthorised_body_is_never_read(api: Api, tmp_path: Path) -> None:
    app = Counting(create_app(api.table, token="s3cret", curriculum_path=tmp_path / "c.json"))
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(64):  # 16 MiB, well within the default 64 MiB limit
            pulled += 1
            yield b" " * (256 * 1024)

    before = await api.keys()
    async with _client(app) as http:
        for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": "Basic s3cret"}):
            resp = await http.post("/study/register", content=chunks(), headers=JSON | headers)
            assert resp.status_code == 401, resp.text
            assert resp.json() == {"detail": "missing or wrong bearer token"}
            assert resp.headers["www-authenticate"] == "Bearer"
        assert app.read == 0 and pulled == 0
        assert await api.keys() == before
        ok = await http.post(
            "/trial/reserve",
            content=RESERVE % ("1", '"w"'),
            headers=JSON | {"authorization": "bearer s3cret"},  # the scheme in any case
        )
        assert ok.status_code == 202 and app.read > 0
        assert (await http.get("/ping")).status_code == 200


async def test_unauthorised_oversized_body_is_401_not_413(api: Api, tmp_path: Path) -> None:
    app = Counting(
        create_app(
            api.table, token="s3cret", max_body_bytes=1000, curriculum_path=tmp_path / "c.json"
        )
    )
    async with _client(app) as http:
        resp = await http.post("/study/register", content=b"x" * 5000, headers=JSON)
        assert resp.status_code == 401 and app.read == 0
        auth = {"authorization": "Bearer s3cret"}
        resp = await http.post("/study/register", content=b"x" * 5000, headers=JSON | auth)
        assert resp.status_code == 413 and "1000 bytes" in resp.json()["detail"]
        assert app.read == 0  # the declared length alone was too big


# -- the body budget --------------------------------------------------------------------------------


class Held:
    """An app that keeps each request (with its buffered body) until `gate` opens."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.bodies: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        msg = await receive()
        self.bodies.append(len(msg["body"]))
        await self.gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def test_body_budget_bounds_bytes_buffered_at_once() -> None:
    from ld2.api.security import BodyLimit

    held = Held()
    limited = BodyLimit(held, limit=1000, budget=2500, wait=0.3)
    counting = Counting(limited)
    async with _client(counting) as http:

        async def post(body: bytes) -> httpx.Response:
            return await http.post("/x", content=body)

        async def streamed(n: int) -> AsyncIterator[bytes]:
            for _ in range(n):
                yield b"s" * 100

        async def until(n: int) -> None:
            while len(held.bodies) < n:
                await asyncio.sleep(0.01)

        # A chunked body takes the whole limit before it is read, then keeps what it used.
        first = [asyncio.create_task(http.post("/x", content=streamed(3)))]
        await until(1)
        assert limited.budget.used == 300
        first += [asyncio.create_task(post(b"a" * 1000)) for _ in range(2)]
        await until(3)
        assert limited.budget.used == 2300
        read = counting.read
        # No room for another 1000-byte body: it waits `wait` unread, then 503 with Retry-After.
        busy = await post(b"c" * 1000)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json() == {"detail": "too many request bodies in flight; retry later"}
        # Nor for a chunked one, however short it turns out: never read half and left waiting.
        busy = await http.post("/x", content=streamed(1))
        assert busy.status_code == 503 and counting.read == read
        # What fits goes on.
        first.append(asyncio.create_task(post(b"d" * 200)))
        await until(4)
        assert limited.budget.used == 2500 and held.bodies == [300, 1000, 1000, 200]
        # A body that waits for less than `wait` gets through once room comes back.
        limited.wait = 10.0
        late = asyncio.create_task(http.post("/x", content=streamed(10)))
        await asyncio.sleep(0.1)
        assert not late.done() and counting.read == read + 200
        held.gate.set()
        assert [r.status_code for r in await asyncio.gather(*first, late)] == [200] * 5
        assert held.bodies[-1] == 1000
    assert limited.budget.used == 0


async def test_concurrent_chunked_uploads_all_get_through() -> None:
    """More chunked uploads than fit at once: they take turns instead of each reading a part
    and all waiting for the rest."""
    from ld2.api.security import BodyLimit

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await asyncio.sleep(0.05)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limited = BodyLimit(slow, limit=10_000, budget=40_000, wait=5.0)
    async with _client(limited) as http:

        async def upload() -> int:
            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(10):
                    await asyncio.sleep(0.001)
                    yield b"x" * 1000

            return (await http.post("/x", content=chunks())).status_code

        assert await asyncio.gather(*(upload() for _ in range(12))) == [200] * 12
    assert limited.budget.used == 0


async def test_default_budget_and_layering(tmp_path: Path) -> None:
    from ld2.api.metrics import CountRequests
    from ld2.api.security import BearerAuth, BodyLimit

    assert BodyLimit(Held(), limit=1000).budget.total == 4000
    with pytest.raises(ValueError):
        BodyLimit(Held(), limit=1000, budget=999)
    app = create_app(lambda: None, token="t", curriculum_path=tmp_path / "c.json")  # type: ignore[arg-type,return-value]
    # The first of user_middleware is the outermost: auth runs before any body is read, and
    # what lies outside it (the request counter, the dashboard's pages) reads no body.
    layers = [mw.cls for mw in app.user_middleware]
    assert layers[layers.index(BearerAuth) :] == [BearerAuth, BodyLimit]
    assert layers.index(CountRequests) < layers.index(BearerAuth)  # 401s are counted too


# -- NaN, infinities, lone surrogates, huge numbers, deep nesting -----------------------------------


def _with_extra(literal: str) -> str:
    """A valid study registration with one more (ignored) field holding `literal`."""
    text = json.dumps(_study())
    return text[:-2] + f', "extra": {literal}}}}}'


REFUSED = [
    ("/trial/reserve", RESERVE % ("NaN", '"w"')),
    ("/trial/reserve", RESERVE % ("Infinity", '"w"')),
    ("/trial/reserve", RESERVE % ("-Infinity", '"w"')),
    ("/trial/reserve", RESERVE % ("1e999", '"w"')),
    ("/trial/reserve", RESERVE % ("1", '"\\ud800"')),
    ("/trial/reserve", RESERVE % ("1", '"x\\udfffy"')),
    ("/trial/reserve", RESERVE % ("1" + "0" * 5000, '"w"')),
    ("/trial/reserve", RESERVE % ("[" * 5000 + "]" * 5000, '"w"')),
    ("/trial/reserve", RESERVE % ("1", "[" * 950 + "]" * 950)),  # parses; its 422 did not render
    ("/trial/fail", '{"trial_id": "t", "worker_node_id": "w", "mode": %s}' % ("[" * 65 + "]" * 65)),
    ("/study/register", _with_extra("NaN")),
    ("/study/register", _with_extra("-Infinity")),
    ("/study/register", _with_extra("-1e400")),
    ("/study/register", _with_extra('"\\udc00"')),
    ("/study/register", json.dumps(_study()).replace('"int"', "NaN", 1)),
    ("/study/submit", _with_extra("Infinity")),
    ("/snapshot", '{"studies": [], "x": NaN}'),
    ("/trial/heartbeat", '{"trial_id": "\\ud83d", "worker_node_id": "w"}'),
]


@pytest.mark.parametrize(("path", "body"), REFUSED)
async def test_hostile_literals_are_422_and_store_nothing(api: Api, path: str, body: str) -> None:
    before = await api.keys()
    resp = await api.http.post(path, content=body.encode(), headers=JSON)
    assert resp.status_code == 422, resp.text
    (problem,) = resp.json()["detail"]
    assert problem["type"] == "json_invalid" and problem["loc"][0] == "body"
    assert await api.keys() == before


async def test_raw_surrogate_bytes_are_422(api: Api) -> None:
    before = await api.keys()
    body = (RESERVE % ("1", '"\udc80"')).encode("utf-8", "surrogatepass")
    resp = await api.http.post("/trial/reserve", content=body, headers=JSON)
    assert resp.status_code == 422 and resp.json()["detail"][0]["type"] == "json_invalid"
    assert await api.keys() == before


async def test_refusal_names_the_literal(api: Api) -> None:
    body = RESERVE % ("NaN", '"w"')
    resp = await api.http.post("/trial/reserve", content=body.encode(), headers=JSON)
    (problem,) = resp.json()["detail"]
    assert problem["loc"] == ["body", body.index("NaN")]
    assert problem["ctx"] == {"error": "NaN is not valid JSON"}
    body = RESERVE % ("1", '"\\ud83d\\ude00 \\ud800"')
    resp = await api.http.post("/trial/reserve", content=body.encode(), headers=JSON)
    (problem,) = resp.json()["detail"]
    assert problem["loc"] == ["body", body.index('"\\ud83d')]
    assert "lone surrogate" in problem["ctx"]["error"]


async def test_what_is_json_still_gets_through(api: Api) -> None:
    """Surrogate pairs, an escaped backslash before ``u``, huge integers, exponents in range."""
    for name in ('"\\ud83d\\ude00"', '"\\\\ud800"', '"\\u00e9\\uFFFD"'):
        resp = await api.http.post(
            "/trial/reserve", content=(RESERVE % ("1", name)).encode(), headers=JSON
        )
        assert resp.status_code == 202, (name, resp.text)
    for size in ("1" + "0" * 400, "4"):
        resp = await api.http.post(
            "/trial/reserve", content=(RESERVE % (size, '"w"')).encode(), headers=JSON
        )
        assert resp.status_code == 202, resp.text
    body = (RESERVE % ("1e2", '"w"')).encode()
    resp = await api.http.post("/trial/reserve", content=body, headers=JSON)
    assert resp.status_code == 422 and resp.json()["detail"][0]["type"] == "int_type"


def test_parse_json_nesting_limit() -> None:
    from ld2.api.security import MAX_DEPTH, parse_json

    def nested(depth: int) -> list[bytes]:
        return [
            ("[" * depth + "]" * depth).encode(),
            ('{"a": ' * depth + "0" + "}" * depth).encode(),
            (
                '[{"a": ' * (depth // 2) + ("[]" if depth % 2 else "0") + "}]" * (depth // 2)
            ).encode(),
        ]

    for body in nested(MAX_DEPTH):
        assert parse_json(body) == json.loads(body)
    for depth in (MAX_DEPTH + 1, 900, 100_000):
        for body in nested(depth):
            with pytest.raises(json.JSONDecodeError, match=f"deeper than {MAX_DEPTH} levels"):
                parse_json(body)


# -- parse_json against the json module ---------------------------------------------------------

_clean_text = st.text(st.characters(), max_size=8)
_any_text = st.text(st.characters() | st.characters(categories=["Cs"]), max_size=8)
_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | _any_text
)
_values = st.recursive(
    _leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_any_text, kids, max_size=4),
    max_leaves=12,
)


def _clean(value: Any) -> bool:
    """Whether `value` is what strict JSON can carry: finite floats and valid Unicode only."""
    if isinstance(value, float):
        return value - value == 0
    if isinstance(value, str):
        return not re.search("[\ud800-\udfff]", value)
    if isinstance(value, list):
        return all(_clean(v) for v in value)
    if isinstance(value, dict):
        return all(_clean(k) and _clean(v) for k, v in value.items())
    return True


@settings(max_examples=300, deadline=None, database=None)
@given(value=_values, ascii_only=st.booleans())
def test_parse_json_is_the_json_module_minus_what_is_not_json(value: Any, ascii_only: bool) -> None:
    from ld2.api.security import parse_json

    body = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    lenient = json.loads(body)  # NaN, infinities, lone surrogates (raw ones too) let through
    if _clean(lenient):
        assert parse_json(body) == lenient
    else:
        with pytest.raises(json.JSONDecodeError):
            parse_json(body)


@pytest.mark.parametrize(
    "body",
    [
        {"format": "ld2-snapshot"},
        {"format": "ld2-snapshot", "studies": 5},
        {"format": "ld2-snapshot", "studies": [{}]},
        {"studies": [{}], "storages": []},
        {
            "format": "ld2-snapshot",
            "version": 1,
            "studies": [
                {"hash": {"id": "x", "spec": "{}"}, "back": [], "failed": [], "results": []}
            ],
        },
    ],
)
async def test_malformed_snapshot_is_not_5xx(api: Api, body: dict[str, Any]) -> None:
    before = await api.keys()
    resp = await api.http.post("/snapshot", json=body)
    assert resp.status_code == 400 and await api.keys() == before


# -- fuzz: every POST endpoint ----------------------------------------------------------------------

HOSTILE = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1E+400",
    "1" + "0" * 400,
    "-" + "9" * 5000,
    '"\\ud800"',
    '"a\\udc00"',
    '"\\ud83d\\ude00"',
    "[" * 3000 + "]" * 3000,
    "[" * 960 + "]" * 960,
    "[" * 60 + "]" * 60,
    '{"a": ' * 40 + "0" + "}" * 40,
    "0.1",
    '""',
    "null",
    "[]",
]
_SCALAR = re.compile(
    r'(?:(?<=: )|(?<=, )|(?<=\[))(?:"(?:[^"\\]|\\.)*"|-?\d[\d.eE+-]*|true|false|null)'
)


def _templates() -> dict[str, str]:
    """A body each POST endpoint takes (or refuses only for its content: unknown ids, …)."""
    study = _study()
    axes = study["study"]["parameter_space"]["axes"]
    trial = {
        "study_id": "7e474ca5-4040-4122-be45-e2cd4a19a686",
        "trial_id": "7e474ca5-4040-4122-be45-e2cd4a19a686-0x0",
        "reserved_timestamp": "2024-01-01T00:00:00Z",
        "trial_status": "running",
        "const_param": None,
        "parameter_space": {
            "type": "aligned",
            "axes": [{**axes[0], "size": "0x1", "ambient_index": "0x0", "ambient_size": "0xa"}],
            "check_lower_filling": True,
        },
        "result_type": "scalar",
        "result_value_type": "int",
        "worker_node_name": "w",
        "worker_node_id": "w",
        "results": [
            {
                "params": [{"type": "scalar", "value_type": "int", "value": "0x0", "name": "x"}],
                "result": {"type": "scalar", "value_type": "int", "value": "0x1"},
            }
        ],
        "registered_timestamp": None,
    }
    reserve = {"retaining_capacity": ["a"], "max_size": 3, "worker_node_id": "w"}
    lease = {"trial_id": trial["trial_id"], "worker_node_id": "w"}
    return {
        "/study/register": json.dumps(study),
        "/study/submit": json.dumps({**study, "priority": 5}),
        "/trial/reserve": json.dumps(reserve),
        "/trial/register": json.dumps({"trial": trial}),
        "/trial/cycle": json.dumps({"trial": trial, **reserve}),
        "/trial/heartbeat": json.dumps(lease),
        "/trial/fail": json.dumps({**lease, "error": "boom", "mode": "split"}),
        # No /snapshot template: see test_malformed_snapshot_is_not_5xx.
    }


TEMPLATES = _templates()


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """An endpoint (mostly one that takes a body) and a body for it: its template as is, with
    one scalar replaced by a hostile literal or with random bytes spliced in; any JSON-ish
    value; random bytes."""
    path = draw(st.sampled_from(BODY_PATHS) | st.sampled_from(POST_PATHS))
    template = TEMPLATES.get(path) or draw(st.sampled_from(sorted(TEMPLATES.values())))
    kind = draw(
        st.sampled_from(["as is", "splice", "splice", "splice", "value", "bytes", "mangle"])
    )
    if kind == "as is":
        body = template.encode()
    elif kind == "splice":
        spots = list(_SCALAR.finditer(template))
        spot = spots[draw(st.integers(0, len(spots) - 1))]
        literal = draw(st.sampled_from(HOSTILE))
        body = (template[: spot.start()] + literal + template[spot.end() :]).encode()
    elif kind == "value":
        text = json.dumps(draw(_values), ensure_ascii=draw(st.booleans()))
        body = text.encode("utf-8", "surrogatepass")
    elif kind == "bytes":
        body = draw(st.binary(max_size=200))
    else:
        at = draw(st.integers(0, len(template)))
        body = template[:at].encode() + draw(st.binary(min_size=1, max_size=8))
        body += template[at:].encode()
    ctype = draw(st.sampled_from(["application/json"] * 4 + ["text/plain", None]))
    return path, body, ({"content-type": ctype} if ctype else {})


def _post_paths(*, with_body: bool = False) -> list[str]:
    """The app's POST endpoints (only those that take a body, with `with_body`)."""
    app = create_app(lambda: None)  # type: ignore[arg-type,return-value]
    routes = [r for r in app.routes if isinstance(r, APIRoute) and "POST" in r.methods]
    return sorted(r.path for r in routes if r.body_field is not None or not with_body)


POST_PATHS, BODY_PATHS = _post_paths(), _post_paths(with_body=True)


def test_fuzz_covers_every_post_endpoint() -> None:
    assert set(TEMPLATES) | {"/snapshot"} == set(BODY_PATHS)
    assert {"/trial/reap", "/study/pause", "/study/retry"} < set(POST_PATHS)
    for path, template in TEMPLATES.items():
        assert _SCALAR.search(template), path


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sent=_requests())
async def test_fuzz_post_bodies_never_5xx_and_refusals_store_nothing(
    api: Api, sent: tuple[str, bytes, dict[str, str]]
) -> None:
    path, body, headers = sent
    before = await api.keys()
    resp = await api.http.post(path, content=body, headers=headers)
    assert resp.status_code < 500, (path, body[:200], resp.text[:300])
    if resp.status_code >= 400:
        assert await api.keys() == before, (path, body[:200], resp.status_code)
        assert "detail" in resp.json()
