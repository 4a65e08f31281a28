"""ASGI middlewares: bearer-token auth and a request-body limit.

Both answer with a small JSON body and never reach the app, so a refused request changes
nothing and costs almost nothing. `declare_bearer` puts the token's scheme into the OpenAPI
document; the docs page, its assets and the schema stay open (`is_open`).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
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


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, declared or streamed.

    The body is read here first (the app would buffer it anyway) and replayed to the app, so
    an oversized upload is cut off before any handler runs.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body larger than {self.limit} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _reply(send, 413, message, [])
            return
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
                await _reply(send, 413, message, [])
                return
            parts.append(chunk)
            if not msg.get("more_body", False):
                break
        body: Message = {"type": "http.request", "body": b"".join(parts), "more_body": False}
        await self.app(scope, _replay([body], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replayed() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return replayed


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
