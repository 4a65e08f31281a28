"""Study names over HTTP: refused with 400 when unsafe, encoded per RFC 6266 in headers."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from tests.api.conftest import Api
from tests.store.helpers import int_axis, registry


async def test_register_refuses_bad_names_with_400_and_stores_nothing(api: Api) -> None:
    reg = json.loads(registry([int_axis("x", 4)], name="a\rb").model_dump_json())
    resp = await api.http.post("/study/register", json={"study": reg})
    assert resp.status_code == 400 and "control characters" in resp.json()["detail"]
    assert [k for k in await api.keys() if b"{g}" not in k] == []  # no study key written


@pytest.mark.parametrize("name", ["résumé-日本", 'a"b; filename=evil.sh', "plain"])
async def test_results_header_encodes_any_name(api: Api, name: str) -> None:
    reg = json.loads(registry([int_axis("x", 4)], name=name).model_dump_json())
    assert (await api.http.post("/study/register", json={"study": reg})).status_code == 200
    resp = await api.http.get("/study/results", params={"name": name, "format": "csv"})
    assert resp.status_code == 200
    header = resp.headers["content-disposition"]
    assert header.isascii() and header.count("filename=") == 1
    exact = header.split("filename*=UTF-8''", 1)[1]
    assert urllib.parse.unquote(exact) == f"{name}.csv"
    fallback = header.split('filename="', 1)[1].split('"', 1)[0]
    assert '"' not in fallback and ";" not in fallback
