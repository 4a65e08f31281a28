"""`/docs` works offline and without the token; API calls still need it.

Swagger UI comes from an installed package (no CDN), and the docs page, its assets and the
schema are open; the OpenAPI document declares the bearer scheme for the "Authorize" button.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from ld2.api import create_app
from tests.api.conftest import Api

TOKEN = "s3cret"
WITH_TOKEN = [{"app": {"token": TOKEN}}]


class _Assets(HTMLParser):
    """The ``<script src>`` and ``<link href>`` values of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.urls.append(value)


async def _docs_assets(http: httpx.AsyncClient) -> list[str]:
    page = await http.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    parser = _Assets()
    parser.feed(page.text)
    assert len(parser.urls) >= 3, parser.urls  # script, stylesheet, icon
    return parser.urls


async def test_docs_page_loads_nothing_from_the_network(api: Api) -> None:
    urls = await _docs_assets(api.http)
    remote = [u for u in urls if re.match(r"(?i)(https?:)?//", u)]
    assert remote == []
    assert all(u.startswith("/docs/static/") for u in urls), urls
    for url in urls:
        resp = await api.http.get(url)
        assert resp.status_code == 200, url
        assert len(resp.content) > (10_000 if url.endswith((".js", ".css")) else 100), url
    js = next(u for u in urls if u.endswith(".js"))
    body = (await api.http.get(js)).text
    assert "SwaggerUIBundle" in body
    # FastAPI's schema is OpenAPI 3.1, which Swagger UI renders from major version 5 on.
    schema = (await api.http.get("/openapi.json")).json()
    assert schema["openapi"].startswith("3.1")
    major = re.search(r'PACKAGE_VERSION:"(\d+)\.', body)
    assert major is not None and int(major.group(1)) >= 5


@pytest.mark.parametrize("api", WITH_TOKEN, indirect=True)
async def test_docs_assets_and_schema_are_open_but_calls_are_not(api: Api) -> None:
    urls = await _docs_assets(api.http)  # /docs itself without the token
    for url in [*urls, "/openapi.json", "/ping"]:
        assert (await api.http.get(url)).status_code == 200, url
    assert (await api.http.get("/status")).status_code == 401
    assert (
        await api.http.get("/status", headers={"authorization": f"bearer {TOKEN}"})
    ).status_code == 200
    # The exemptions are exact: neighbours of the open paths still need the token.
    for path in ("/docs/", "/docsx", "/docs/staticx", "/openapi.json/x", "/ping/x"):
        resp = await api.http.get(path)
        assert resp.status_code == 401, path
        assert resp.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("api", WITH_TOKEN, indirect=True)
async def test_bearer_scheme_is_case_insensitive(api: Api) -> None:
    for scheme in ("bearer", "BEARER", "Bearer", "bEaReR"):
        resp = await api.http.get("/status", headers={"authorization": f"{scheme} {TOKEN}"})
        assert resp.status_code == 200, scheme
    for value in (
        f"Basic {TOKEN}",
        f"bearer{TOKEN}",
        "bearer",
        "bearer ",
        f"bearer {TOKEN.upper()}",
        f"bearer {TOKEN}x",
        TOKEN,
    ):
        resp = await api.http.get("/status", headers={"authorization": value})
        assert resp.status_code == 401, value


@pytest.mark.parametrize("api", WITH_TOKEN, indirect=True)
async def test_openapi_declares_the_bearer_scheme(api: Api, tmp_path: Path) -> None:
    resp = await api.http.get("/openapi.json")
    assert resp.status_code == 200
    schema = resp.json()
    schemes = schema["components"]["securitySchemes"]
    [(name, scheme)] = [(k, v) for k, v in schemes.items() if v.get("type") == "http"]
    assert scheme["scheme"].lower() == "bearer"
    assert schema["security"] == [{name: []}]
    assert schema["paths"]["/ping"]["get"]["security"] == []  # open: no lock in the UI
    assert "security" not in schema["paths"]["/status"]["get"]  # the global requirement
    assert (await api.http.get("/openapi.json")).json() == schema  # stable across calls

    # Without a token, nothing is required, so nothing is declared.
    open_app = create_app(api.table, curriculum_path=tmp_path / "curriculum.json")
    transport = httpx.ASGITransport(app=open_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        plain = (await http.get("/openapi.json")).json()
    assert "security" not in plain
    assert "securitySchemes" not in plain.get("components", {})
