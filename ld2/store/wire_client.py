"""A lean keep-alive HTTP/1.1 client for a worker's hot path (reserve, register, cycle).

httpx costs a few hundred microseconds of CPU per request; in a worker's loop of small trials
that is most of the cost. This client does one thing: POST a JSON body over one persistent
connection and read a ``Content-Length`` answer. Anything else (TLS, redirects, streaming,
proxies) is httpx's job: `HttpTable` falls back to it for every other request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import urlsplit


class LeanResponse:
    __slots__ = ("content", "status_code")

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)


class LeanClient:
    """POST JSON to a plain ``http://`` base URL over one kept-alive connection."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("the lean client speaks plain http:// only")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        fixed = {"host": f"{self.host}:{self.port}", "content-type": "application/json", **headers}
        self._head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items() if k != "content-type")
        self._head += "content-type: application/json\r\n"
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()

    async def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> LeanResponse:
        """POST `body`; `headers` go out besides the fixed ones (ld2's ``idempotency-key``)."""
        async with self._lock:  # one request at a time on the one connection
            for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
                try:
                    return await asyncio.wait_for(self._post(path, body, headers), self.timeout)
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
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> LeanResponse:
        if self._conn is None:
            self._conn = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._conn
        head = f"POST {self.prefix}{path} HTTP/1.1\r\n{self._head}"
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
