"""Hostile input: bearer-token auth, a request-body limit and budget, strict JSON bodies.

The middlewares answer with a small JSON body and never reach the app, so a refused request
changes nothing and costs almost nothing. `BearerAuth` must wrap `BodyLimit` (see the end of
`create_app`): it decides from the headers alone, so an unauthorised request is answered
before any byte of its body is read. `BodyLimit` then buffers bodies within a server-wide
`ByteBudget`. `StrictJsonRoute` parses JSON bodies with `parse_json`, which refuses what
Python's json module lets through (``NaN``, ``Infinity``, ``1e999``, lone surrogates, …) as
FastAPI's 422 ``json_invalid``. `declare_bearer` puts the token's scheme into the OpenAPI
document; the docs page, its assets and the schema stay open (`is_open`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import re
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCS_STATIC = "/docs/static"
"""Where the Swagger UI assets are mounted (see `create_app`)."""

OPEN_PATHS = frozenset({"/ping", "/docs", "/openapi.json"})
"""Paths served without the token: the liveness probe and the docs page with its schema."""
OPEN_PREFIXES = (f"{DOCS_STATIC}/",)
"""Path prefixes served without the token: the docs page's static assets only."""

SCHEME_NAME = "BearerAuth"
_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def is_open(path: str) -> bool:
    """Whether `path` is served without the token (nothing secret lives there)."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


async def _reply(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _bearer_credentials(header: bytes) -> bytes | None:
    """The credentials of an ``Authorization`` value, if its scheme is Bearer (any case)."""
    scheme, _, credentials = header.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return credentials.lstrip(b" ")


class BearerAuth:
    """Every path but the open ones (`is_open`) needs ``Authorization: Bearer <token>``.

    The scheme name is matched case-insensitively (RFC 7235); the token itself is compared in
    constant time.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = _bearer_credentials(dict(scope["headers"]).get(b"authorization", b""))
        if given is None or not hmac.compare_digest(given, self.expected):
            await _reply(
                send, 401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")]
            )
            return
        await self.app(scope, receive, send)


BUDGET_FACTOR = 4
"""The default `ByteBudget`: this many request bodies of the largest size, at once."""
BUDGET_WAIT = 5.0
"""How long (s) a body waits for room in the budget before it is refused with 503."""
RETRY_AFTER = 1
"""The ``Retry-After`` (s) of that 503."""


class ByteBudget:
    """Request-body bytes buffered at once, across all the requests of this process.

    `take` waits (up to `wait` seconds) until the bytes fit; `give` hands them back. A body
    holds its room from before its first byte is read until its response has been sent, since
    the app's parsed copy of it lives that long.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._freed: asyncio.Event | None = None  # set (and dropped) whenever bytes come back

    async def take(self, n: int, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while self.used + n > self.total:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._freed is None:
                self._freed = asyncio.Event()
            try:
                await asyncio.wait_for(self._freed.wait(), left)
            except TimeoutError:
                return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        if n:
            self.used -= n
            if self._freed is not None:
                self._freed.set()
                self._freed = None


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, declared or streamed, and keep the
    bytes buffered at once within `budget` (default `BUDGET_FACTOR` × `limit`).

    The body is read here first (the app would buffer it anyway) and replayed to the app, so
    an oversized upload is cut off before any handler runs. Before any byte of it is read, a
    body takes its room in the budget: its declared ``Content-Length``, or for a chunked body
    the whole `limit`, of which it gives back what it did not use once read. The rest is given
    back when the app has answered. A body that finds no room waits up to `wait` seconds,
    unread (TCP holds the client back), then gets 503 with ``Retry-After``. Since no body ever
    waits half-read, concurrent uploads cannot hold the budget against each other, and since
    one body is at most `limit` ≤ `budget`, every body fits once the others are answered.
    """

    def __init__(
        self, app: ASGIApp, limit: int, budget: int | None = None, wait: float = BUDGET_WAIT
    ) -> None:
        self.app = app
        self.limit = limit
        self.budget = ByteBudget(BUDGET_FACTOR * limit if budget is None else budget)
        if self.budget.total < limit:
            raise ValueError(f"body budget {self.budget.total} < body limit {limit}")
        self.wait = wait

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = f"request body larger than {self.limit} bytes"
        busy = "too many request bodies in flight; retry later"
        retry = [(b"retry-after", str(RETRY_AFTER).encode())]
        held = 0  # bytes taken from the budget, given back once the app has answered
        try:
            headers = dict(scope["headers"])
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit():
                if int(declared) > self.limit:
                    await _reply(send, 413, too_big, [])
                    return
                need = int(declared)
            else:  # chunked: it may grow to the limit; no framing header at all: no body
                need = self.limit if b"transfer-encoding" in headers else 0
            if not await self.budget.take(need, self.wait):  # before reading any of it
                await _reply(send, 503, busy, retry)
                return
            held = need
            parts: list[bytes] = []
            seen = 0
            while True:
                msg = await receive()
                if msg["type"] != "http.request":
                    await self.app(scope, _replay([msg], receive), send)
                    return
                chunk = msg.get("body", b"")
                seen += len(chunk)
                if seen > self.limit:
                    await _reply(send, 413, too_big, [])
                    return
                if seen > held:  # more than its headers announced: not from an HTTP/1.1 server
                    if not await self.budget.take(seen - held, self.wait):
                        await _reply(send, 503, busy, retry)
                        return
                    held = seen
                parts.append(chunk)
                if not msg.get("more_body", False):
                    break
            self.budget.give(held - seen)  # what a chunked body did not use
            held = seen
            body: Message = {"type": "http.request", "body": b"".join(parts), "more_body": False}
            parts.clear()
            await self.app(scope, _replay([body], receive), send)
        finally:
            self.budget.give(held)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replayed() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return replayed


# -- strict JSON bodies ----------------------------------------------------------------------

MAX_DEPTH = 64
"""How deeply `parse_json` lets arrays and objects nest (lite_dist2's curriculum.json: 9)."""
_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""An escape that may make a lone surrogate (a raw one is no valid UTF-8); rare in real bodies."""
_LITERAL = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|NaN|-?Infinity|-?[0-9][0-9.eE+-]*')
"""The strings, numbers and non-standard constants of a JSON text, in order."""


class _Refused(ValueError):
    """A literal that `parse_json` refuses, raised from the json module's hooks."""


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not valid JSON")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise _Refused("number out of range")
    return value


def _is_unicode(s: str) -> bool:
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


def _nests_within(value: Any, limit: int) -> bool:
    """Whether `value` nests no more than `limit` arrays and objects deep (level by level)."""
    level = [value] if type(value) is dict or type(value) is list else []
    for _ in range(limit):
        if not level:
            return True
        inner = []
        for outer in level:
            for item in outer.values() if type(outer) is dict else outer:
                if type(item) is dict or type(item) is list:
                    inner.append(item)
        level = inner
    return not level


def _refusal(text: str) -> tuple[int, str] | None:
    """The first literal of the JSON `text` that `parse_json` refuses: where, and why."""
    for found in _LITERAL.finditer(text):
        literal = found.group()
        if literal[0] == '"':
            if _SURROGATE_ESCAPE.search(literal) and not _is_unicode(json.loads(literal)):
                return found.start(), "lone surrogate in a string (not valid Unicode)"
        elif literal in ("NaN", "Infinity", "-Infinity"):
            return found.start(), f"{literal} is not valid JSON"
        elif literal.lstrip("-").isdigit():
            if 0 < sys.get_int_max_str_digits() < len(literal.lstrip("-")):  # int() refuses
                return found.start(), "number out of range"
        elif _is_number(literal) and math.isinf(float(literal)):
            return found.start(), "number out of range"
    return None


def _is_number(literal: str) -> bool:
    try:
        float(literal)
    except ValueError:
        return False
    return True


def parse_json(body: bytes) -> Any:
    """`body` as JSON, like Starlette's `Request.json`, but strict.

    Python's json module takes ``NaN``, ``Infinity`` and ``-Infinity``, reads ``1e999`` as
    infinity and lets lone surrogates (``"\\ud800"``, or raw in a body it decodes with
    ``surrogatepass``) into strings, none of which is JSON or can be stored or answered. Those,
    integers over 4300 digits, text that is not in its encoding and nesting deeper than
    `MAX_DEPTH` (which could not even be echoed in a 422: the encoder recurses) are a
    `json.JSONDecodeError`, which FastAPI answers with 422 ``json_invalid`` before the endpoint
    runs; its ``loc`` is the offending literal's position (0 for the nesting).
    """
    encoding = json.detect_encoding(body)
    try:
        text = body.decode(encoding)  # strict, unlike json.loads(bytes)
    except UnicodeDecodeError as err:
        raise json.JSONDecodeError(f"not valid {encoding}", "", err.start) from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError:
        raise
    except RecursionError:  # deeper than the parser's own stack allows
        raise json.JSONDecodeError(_TOO_DEEP, text, 0) from None
    except ValueError as err:  # a hook's _Refused, or an integer too long for int()
        pos, why = _refusal(text) or (0, str(err))
        raise json.JSONDecodeError(why, text, pos) from None
    if _SURROGATE_ESCAPE.search(text) and (found := _refusal(text)) is not None:
        raise json.JSONDecodeError(found[1], text, found[0])
    if not _nests_within(data, MAX_DEPTH):
        raise json.JSONDecodeError(_TOO_DEEP, text, 0)
    return data


class StrictJsonRequest(Request):
    """A `Request` whose `json` is `parse_json`."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


async def validation_errors(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own 422 answer, but one that always renders: a body handed to the schema as
    raw bytes (sent with a content type other than JSON) is echoed with bad UTF-8 replaced
    rather than failing as a 500."""
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(exc.errors(), custom_encoder={bytes: _lenient_text})
    return JSONResponse({"detail": errors}, status_code=422)


def _lenient_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class StrictJsonRoute(APIRoute):
    """An `APIRoute` whose endpoint reads its JSON body with `parse_json`; set as the app's
    ``router.route_class`` before any route is declared, it covers every endpoint."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict


def declare_bearer(app: FastAPI) -> None:
    """Declare the bearer scheme in `app`'s OpenAPI document, required by every operation
    but the open ones, so that Swagger UI offers an "Authorize" button for the token."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        first = app.openapi_schema is None
        schema = build()  # FastAPI's own: built once, then cached on the app
        if first:
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes[SCHEME_NAME] = {
                "type": "http",
                "scheme": "bearer",
                "description": "The API token (`ld2 api --token` / `$LD2_API_TOKEN`).",
            }
            schema["security"] = [{SCHEME_NAME: []}]
            for path, item in schema.get("paths", {}).items():
                if is_open(path):
                    for method, operation in item.items():
                        if method in _HTTP_METHODS:
                            operation["security"] = []
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")
