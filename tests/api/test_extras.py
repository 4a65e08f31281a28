"""ld2's extra endpoints, result formats, auth and the body limit."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from tests.api.conftest import Api
from tests.store.helpers import int_axis, registry


async def _study(api: Api, **kw: object) -> str:
    reg = registry(
        [
            int_axis("x", 3, -1),
            {"name": "f", "type": "float", "size": "0x4", "step": "0x1.0p-1", "start": "-0x1.0p+0"},
        ],
        **kw,
    )  # type: ignore[arg-type]
    resp = await api.http.post("/study/register", json={"study": json.loads(reg.model_dump_json())})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["study_id"])


async def test_results_formats_partial_and_complete(api: Api) -> None:
    sid = await _study(api, result_type="scalar", value_type="float")
    a = await api.table.reserve([], 4, "w")
    await api.table.register(a, np.array([0.5, np.inf, -0.0, np.nan]))
    resp = await api.http.get("/study/results", params={"study_id": sid, "format": "csv"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert rows[0] == ["x", "f", "result"]
    assert rows[1:] == [
        ["-1", "-1.0", "0.5"],
        ["-1", "-0.5", "inf"],
        ["-1", "0.0", "-0.0"],
        ["-1", "0.5", "nan"],
    ]
    resp = await api.http.get("/study/results", params={"study_id": sid, "format": "jsonl"})
    lines = [json.loads(x) for x in resp.text.splitlines()]
    assert lines[1] == {"flat": 1, "x": -1, "f": -0.5, "result": "inf"}
    while (res := await api.table.reserve([], 4, "w")) is not None:
        await api.table.register(res, np.full(res.count, 2.5))
    resp = await api.http.get("/study/results", params={"study_id": sid, "format": "npy"})
    arr = np.load(io.BytesIO(resp.content))
    assert arr.shape == (12,) and arr.dtype.names == ("x", "f", "result")
    assert arr["x"].tolist() == [-1] * 4 + [0] * 4 + [1] * 4
    assert arr["result"][4:].tolist() == [2.5] * 8
    assert (
        await api.http.get("/study/results", params={"study_id": sid, "format": "xml"})
    ).status_code == 422
    assert (await api.http.get("/study/results", params={"study_id": "nope"})).status_code == 404


async def test_vector_results_formats(api: Api) -> None:
    sid = await _study(api, result_type="vector", value_type="int")
    while (res := await api.table.reserve([], 6, "w")) is not None:
        await api.table.register(
            res, np.stack([np.arange(res.count), -np.arange(res.count)], axis=1)
        )
    text = (await api.http.get("/study/results", params={"study_id": sid})).text
    assert text.splitlines()[0] == "x,f,result_0,result_1"
    line = (
        await api.http.get("/study/results", params={"study_id": sid, "format": "jsonl"})
    ).text.splitlines()[1]
    assert json.loads(line)["result"] == [1, -1]
    arr = np.load(
        io.BytesIO(
            (
                await api.http.get("/study/results", params={"study_id": sid, "format": "npy"})
            ).content
        )
    )
    assert arr["result"].shape == (12, 2)
    body = (await api.http.get("/study", params={"study_id": sid})).json()
    assert body["result"]["results"]["result_info"]["values"] == ["0x0", "0x0"]
    assert body["result"]["results"]["values"][1] == [
        "-0x1",
        "-0x1.0000000000000p-1",
        "0x1",
        "-0x1",
    ]


async def test_leases_control_info_backlog_snapshot(api: Api) -> None:
    sid = await _study(api)
    res = await api.table.reserve([], 4, "w")
    hb = await api.http.post(
        "/trial/heartbeat", json={"trial_id": res.trial_id, "worker_node_id": "w"}
    )
    assert hb.json() == {"answer": "ok"}
    other = await api.http.post(
        "/trial/heartbeat", json={"trial_id": res.trial_id, "worker_node_id": "x"}
    )
    assert other.json() == {"answer": "stop"}
    fail = await api.http.post(
        "/trial/fail", json={"trial_id": res.trial_id, "worker_node_id": "w", "error": "boom"}
    )
    assert fail.json() == {"ok": True}
    again = await api.http.post(
        "/trial/fail", json={"trial_id": res.trial_id, "worker_node_id": "w"}
    )
    assert again.status_code == 409
    assert (await api.http.post("/study/pause", params={"study_id": sid})).json() == {"ok": True}
    info = (await api.http.get("/study/info", params={"study_id": sid})).json()
    assert info["status"] == "paused" and info["summary"]["status"] == "running"
    assert (await api.http.post("/study/resume", params={"study_id": sid})).json() == {"ok": True}
    backlog = (await api.http.get("/backlog")).json()
    # a failed trial goes back as two halves (the failing points are searched for)
    assert backlog["points_waiting"] == 12 and backlog["ranges_waiting"] == 2
    assert (await api.http.post("/trial/reap")).json() == {"reaped": 0}
    assert len((await api.http.get("/studies")).json()) == 1
    snap = (await api.http.get("/snapshot")).json()
    assert snap["format"] == "ld2-snapshot"
    assert (await api.http.post("/snapshot", json=snap)).json() == []  # already there
    bad = await api.http.post("/snapshot", json={"what": 1})
    assert bad.status_code == 400


async def test_save_writes_the_snapshot(api: Api, tmp_path, request) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from ld2.api import create_app

    path = tmp_path / "curriculum.json"
    app = create_app(api.table, curriculum_path=path)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        await _study(api)
        assert (await c.get("/save")).json() == {"ok": True}
        assert json.loads(path.read_text())["format"] == "ld2-snapshot"
        blocked = create_app(api.table, curriculum_path=tmp_path / "file" / "x.json")
        (tmp_path / "file").write_text("not a directory")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=blocked), base_url="http://t"
        ) as c2:
            resp = await c2.get("/save")
            assert resp.status_code == 500 and str(tmp_path) not in resp.text


@pytest.mark.parametrize("api", [{"app": {"token": "s3cret"}}], indirect=True)
async def test_bearer_token(api: Api) -> None:
    assert (await api.http.get("/ping")).status_code == 200
    for path in ("/status", "/backlog"):  # /docs and /openapi.json load without it
        resp = await api.http.get(path)
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
    assert (
        await api.http.get("/status", headers={"authorization": "Bearer nope"})
    ).status_code == 401
    ok = await api.http.get("/status", headers={"authorization": "Bearer s3cret"})
    assert ok.status_code == 200


@pytest.mark.parametrize("api", [{"app": {"max_body_bytes": 1000}}], indirect=True)
async def test_body_limit(api: Api) -> None:
    before = await api.keys()
    big = {"study": {"name": "x" * 2000}}
    resp = await api.http.post("/study/register", json=big)
    assert resp.status_code == 413 and "1000 bytes" in resp.json()["detail"]

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b" " * 200

    streamed = await api.http.post(
        "/study/register", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert await api.keys() == before
    small = await api.http.post(
        "/trial/reserve", json={"retaining_capacity": [], "max_size": 1, "worker_node_id": "w"}
    )
    assert small.status_code == 202
