"""ld2's own wire for a worker's hot path: a lean HTTP client, and the packed trial endpoints.

httpx costs a few hundred microseconds of CPU per request; in a worker's loop of small trials
that is most of the cost. `LeanClient` does one thing: POST a body (JSON, or the packed results
of a trial) over one persistent connection and read a ``Content-Length`` answer. Anything else
(TLS, redirects, streaming, proxies) is httpx's job: `HttpTable` falls back to it for every
other request.

The packed endpoints (ld2 only; see docs/api.md, "Packed trial endpoints") carry a trial's
identity in the query and its results as `ld2.core.results.pack`'s bytes, the form the store
keeps, instead of lite_dist2's hex mappings; their reservation answer is a small JSON object
without the parameter space. Server (`ld2.api.app`) and client (`HttpTable`) share the names
below.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import urlsplit

PACKED_RESERVE = "/trial/packed/reserve"
PACKED_REGISTER = "/trial/packed/register"
PACKED_CYCLE = "/trial/packed/cycle"
PACKED_BATCH = "/trial/packed/batch"
PACKED_TYPE = "application/octet-stream"
"""The content type of a packed registration's body."""
JSON_TYPE = "application/json"
MAX_WAIT_SECONDS = 30.0
"""The longest long poll (``wait_seconds``) the API accepts; `HttpTable` asks for no more."""


class LeanResponse:
    __slots__ = ("content", "status_code")

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)


class LeanClient:
    """POST to a plain ``http://`` base URL over one kept-alive connection."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("the lean client speaks plain http:// only")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        fixed = {"host": f"{self.host}:{self.port}", **headers}
        self._head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items() if k != "content-type")
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()

    async def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        content_type: str = JSON_TYPE,
        timeout: float | None = None,
    ) -> LeanResponse:
        """POST `body` of `content_type` to `path` (which may carry a query string); `headers`
        go out besides the fixed ones (ld2's ``idempotency-key``). `timeout` (default: the
        client's) bounds the whole exchange: a long poll asks for more than its wait."""
        limit = self.timeout if timeout is None else timeout
        async with self._lock:  # one request at a time on the one connection
            for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
                try:
                    return await asyncio.wait_for(
                        self._post(path, body, headers, content_type), limit
                    )
                except (ConnectionError, asyncio.IncompleteReadError):
                    await self.close()
                    if attempt:
                        raise
                except BaseException:
                    # a timeout (or a cancel) mid-request: a late answer could still arrive on
                    # this connection and be read as the next request's; never reuse it
                    await self.close()
                    raise
            raise AssertionError("unreachable")

    async def _post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = JSON_TYPE,
    ) -> LeanResponse:
        if self._conn is None:
            self._conn = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._conn
        head = f"POST {self.prefix}{path} HTTP/1.1\r\n{self._head}"
        head += f"content-type: {content_type}\r\n"
        if headers:
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"{head}content-length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("connection closed by the server")
        status = int(status_line.split(b" ", 2)[1])
        length = None
        close = False
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding":
                raise ConnectionError("chunked answers are not for the lean client")
        content = await reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return LeanResponse(status, content)

    async def close(self) -> None:
        if self._conn is not None:
            _, writer = self._conn
            self._conn = None
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
