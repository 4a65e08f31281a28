"""The dashboard's routes without a browser: the page and its assets (open, offline, cached),
the JSON it needs beyond the API (behind the token), and that the wheel ships the page."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from ld2 import colormap
from ld2.api.dashboard import STATIC, show
from tests.api.conftest import Api
from tests.store.helpers import int_axis, registry

TOKEN = "d4shb0ard"
WITH_TOKEN = [{"app": {"token": TOKEN}}]
AUTH = {"authorization": f"Bearer {TOKEN}"}


class _Refs(HTMLParser):
    """The ``src`` and ``href`` values of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith(("#", "data:")):
                self.refs.append(value)


async def _register(api: Api, reg: object) -> str:
    body = {"study": json.loads(reg.model_dump_json())}  # type: ignore[attr-defined]
    resp = await api.http.post("/study/register", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["study_id"])


def _float_axis(name: str, size: int, start: float, step: float) -> dict[str, object]:
    return {"name": name, "type": "float", "size": hex(size), "start": start.hex(),
            "step": step.hex()}  # fmt: skip


# -- the page ----------------------------------------------------------------------------------


@pytest.mark.parametrize("api", WITH_TOKEN, indirect=True)
async def test_page_and_assets_are_open_and_local_but_the_json_is_not(api: Api) -> None:
    page = await api.http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    parser = _Refs()
    parser.feed(page.text)
    assert parser.refs, "the page links its script and stylesheet"
    for ref in parser.refs:
        assert not re.match(r"(?i)([a-z]+:)?//", ref), ref  # nothing from another host
        resp = await api.http.get(f"/{ref}")  # relative to the page at /
        assert resp.status_code == 200, ref
    # every module the scripts import is served too
    for path in STATIC.glob("*.js"):
        for name in re.findall(r'from\s+"\./([\w.-]+)"', path.read_text()):
            module = await api.http.get(f"/dashboard/static/{name}")
            assert module.status_code == 200, name
            assert module.headers["content-type"] == "text/javascript; charset=utf-8", name
    # the JSON routes need the token like every other route
    for path in ("/dashboard/colormap", "/dashboard/workers", "/studies"):
        assert (await api.http.get(path)).status_code == 401, path
        assert (await api.http.get(path, headers=AUTH)).status_code == 200, path
    # only the page and the files of STATIC are open: their neighbours are not
    for path in ("/dashboard", "/dashboard/", "/dashboard/staticx", "/index.html"):
        assert (await api.http.get(path)).status_code == 401, path


@pytest.mark.parametrize("api", WITH_TOKEN, indirect=True)
async def test_assets_by_name_only_with_revalidation(api: Api) -> None:
    js = await api.http.get("/dashboard/static/app.js")
    assert js.status_code == 200 and js.headers["cache-control"] == "no-cache"
    etag = js.headers["etag"]
    again = await api.http.get("/dashboard/static/app.js", headers={"if-none-match": etag})
    assert again.status_code == 304 and again.content == b""
    head = await api.http.head("/")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len((STATIC / "index.html").read_bytes())
    for path in ("/dashboard/static/nope.js", "/dashboard/static/../app.py",
                 "/dashboard/static/%2e%2e/app.py", "/dashboard/static/", "/dashboard/static/x/y"):  # fmt: skip
        resp = await api.http.get(path)  # (a client may have normalised the dots away)
        assert resp.status_code in (401, 404) and b"import" not in resp.content, path
    resp = await api.http.post("/", content=b"x")
    assert resp.status_code == 405 and resp.headers["allow"] == "GET, HEAD"


async def test_page_without_a_token_configured(api: Api) -> None:
    assert (await api.http.get("/")).status_code == 200
    assert (await api.http.get("/dashboard/colormap")).status_code == 200
    # the API's own routes are unchanged, and the dashboard's are in the schema
    paths = (await api.http.get("/openapi.json")).json()["paths"]
    assert {"/dashboard/colormap", "/dashboard/study", "/dashboard/workers"} <= set(paths)
    assert "/" not in paths


# -- the JSON ------------------------------------------------------------------------------------


async def test_colormap_is_the_shared_one_with_its_orientation(api: Api) -> None:
    got = (await api.http.get("/dashboard/colormap")).json()
    assert got["lut"] == colormap.as_json()["lut"] and len(got["lut"]) == 256
    assert got["missing"] == list(colormap.MISSING)
    assert got["first_axis_is_rows"] is colormap.FIRST_AXIS_IS_ROWS is True
    assert got["first_axis_start_at_top"] is colormap.FIRST_AXIS_START_AT_TOP


async def test_study_view_axes_exact_and_the_answer(api: Api) -> None:
    big = 2**60
    reg = registry(
        [int_axis("n", 3, start=big, step=-7), _float_axis("f", 4, -1.0, 0.1)],
        name="grid", strategy="minimize", value_type="float",
    )  # fmt: skip
    sid = await _register(api, reg)
    got = (await api.http.get("/dashboard/study", params={"name": "grid"})).json()
    assert got["study_id"] == sid and got["label"] == "grid" and got["status"] == "wait"
    assert got["axes"] == [
        {"name": "n", "kind": "int", "start": str(big), "step": "-7", "size": 3},
        {"name": "f", "kind": "float", "start": "-1.0", "step": "0.1", "size": 4},
    ]
    assert got["total"] == 12 and got["done"] == 0 and got["answer"] is None
    res = await api.table.reserve([], 12, "w")
    assert res is not None
    values = np.linspace(3.0, 5.0, 12)
    values[6] = -2.5  # the minimum, at n index 1, f index 2
    await api.table.register(res, values)
    got = (await api.http.get("/dashboard/study", params={"study_id": sid})).json()
    assert got["status"] == "done" and got["done"] == 12
    assert got["answer"] == {
        "kind": "best", "flat": 6, "params": [str(big - 7), repr(-1.0 + 2 * 0.1)], "value": "-2.5"
    }  # fmt: skip
    for params, status in (({"study_id": "nope"}, 404), ({}, 400),
                           ({"study_id": sid, "name": "grid"}, 400)):  # fmt: skip
        assert (await api.http.get("/dashboard/study", params=params)).status_code == status


async def test_find_exact_answer_and_target(api: Api) -> None:
    reg = registry([int_axis("x", None)], name="seek", strategy="find_exact", target="0x31")
    sid = await _register(api, reg)
    got = (await api.http.get("/dashboard/study", params={"study_id": sid})).json()
    assert got["target"] == ["49"] and got["total"] is None and got["axes"][0]["size"] is None
    while True:
        res = await api.table.reserve([], 5, "w")
        assert res is not None
        (x,) = res.arrays()
        await api.table.register(res, x * x)
        got = (await api.http.get("/dashboard/study", params={"study_id": sid})).json()
        if got["answer"] is not None:
            break
    assert got["answer"] == {"kind": "hit", "flat": 7, "params": ["7"], "value": "49"}


async def test_failures_with_their_points(api: Api) -> None:
    reg = registry([int_axis("a", 2), _float_axis("b", 3, 0.5, 0.25)], name="bad")
    sid = await _register(api, reg)
    res = await api.table.reserve([], 4, "w")
    assert res is not None and (res.start, res.count) == (0, 3)
    await api.table.fail(res.trial_id, "w", "ValueError: no good", mode="quarantine")
    got = (await api.http.get("/dashboard/failures", params={"study_id": sid})).json()
    assert got == [
        {"start": 0, "count": 3, "attempts": 3, "error": "ValueError: no good",
         "first": ["0", "0.5"], "last": ["0", "1.0"]}
    ]  # fmt: skip
    assert (await api.http.get("/dashboard/failures", params={"name": "x"})).status_code == 404


async def test_workers_seen_with_their_pace(api: Api) -> None:
    reg = registry([int_axis("x", 100)], name="paced")
    await _register(api, reg)
    for worker, n in (("w-a", 10), ("w-b", 30)):
        res = await api.table.reserve([], n, worker, f"name-{worker}")
        assert res is not None
        await api.table.register(res, np.zeros(res.count, dtype=np.int64))
    got = (await api.http.get("/dashboard/workers")).json()
    assert got["cutoff_sec"] == 600 and got["recent_sec"] == 15
    workers = {w["worker_id"]: w for w in got["workers"]}
    assert set(workers) == {"w-a", "w-b"}
    for wid in workers:
        w = workers[wid]
        assert w["name"] == f"name-{wid}" and w["active"] and w["studies"] == ["paced"]
        assert w["points_per_sec"] > 0 and w["recent_points_per_sec"] > 0
        assert w["trials"] == 1 and w["last_seen"] is not None
    assert got["workers"][0]["worker_id"] == "w-b"  # the faster first
    idle = await api.table.reserve([], 5, "w-idle", "idle")
    assert idle is not None  # it reserved (it is seen) but registered nothing yet
    got = (await api.http.get("/dashboard/workers")).json()
    seen = {w["worker_id"]: w for w in got["workers"]}
    assert seen["w-idle"]["trials"] == 0 and seen["w-idle"]["last_seen"] is not None
    listed = (await api.http.get("/workers")).json()
    assert {w["worker_id"] for w in listed} == {"w-a", "w-b", "w-idle"}
    for params in ({"cutoff_sec": 0}, {"recent_sec": "x"}):
        assert (await api.http.get("/dashboard/workers", params=params)).status_code == 422


def test_show_writes_values_exactly() -> None:
    assert [show(v) for v in (True, np.bool_(False), 2**70, np.int64(-3))] == [
        "true", "false", str(2**70), "-3"
    ]  # fmt: skip
    assert [show(v) for v in (0.1, float("nan"), float("-inf"), np.float64(1e300))] == [
        "0.1", "nan", "-inf", "1e+300"
    ]  # fmt: skip
    assert show(np.array([1, 2])) == "[1, 2]"


# -- packaging -------------------------------------------------------------------------------------


def test_the_page_ships_inside_the_package() -> None:
    """hatch's wheel takes every file under ld2/ (``packages = ["ld2"]``), not only .py files:
    the page lives there, next to the module that serves it."""
    import ld2

    names = {p.name for p in STATIC.iterdir()}
    assert {"index.html", "app.js", "plots.js", "style.css"} <= names
    assert STATIC.is_relative_to(STATIC.parents[2]) and STATIC.parents[2].name == "ld2"
    assert STATIC.parents[2] == type(STATIC)(ld2.__file__).parent
