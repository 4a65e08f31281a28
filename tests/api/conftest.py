"""API fixtures: the app in-process (ASGI) over a RedisTable on a real engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ld2.api import create_app
from ld2.store.redis import RedisTable
from tests.conftest import REAL_BACKENDS, make_table


@dataclass
class Api:
    http: httpx.AsyncClient
    table: RedisTable

    async def keys(self) -> set[bytes]:
        return {k async for k in self.table.client.scan_iter(match=f"{self.table.prefix}:*")}


@pytest.fixture
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    kw: dict[str, Any] = getattr(request, "param", {})
    async with make_table(request, REAL_BACKENDS[0], **kw.get("table", {})) as table:
        app_kw = {"curriculum_path": tmp_path / "curriculum.json", **kw.get("app", {})}
        app = create_app(table, **app_kw)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://ld2.test") as http:
            yield Api(http, table)
