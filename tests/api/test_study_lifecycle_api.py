"""ld2's extras for a study's life: idempotent submit, delete in any state, retry failures."""

from __future__ import annotations

import json
from typing import Any

from tests.api.conftest import Api
from tests.store.helpers import int_axis, registry


def _body(size: int, name: str = "life", **kw: Any) -> dict[str, Any]:
    return {"study": json.loads(registry([int_axis("x", size)], name=name, **kw).model_dump_json())}


async def test_submit_is_idempotent_and_names_differences(api: Api) -> None:
    first = await api.http.post("/study/submit", json=_body(10))
    assert first.status_code == 200 and first.json()["existed"] is False
    again = await api.http.post("/study/submit", json=_body(10))
    assert again.json() == {"study_id": first.json()["study_id"], "existed": True}
    other = await api.http.post("/study/submit", json=_body(12))
    assert other.status_code == 409
    body = other.json()
    assert body["reason"] == "study_differs" and body["differences"] == ["axis x size: 10 -> 12"]
    assert body["study_id"] == first.json()["study_id"] and "axis x size" in body["detail"]
    # lite_dist2's own endpoint keeps its 400 for a taken name
    taken = await api.http.post("/study/register", json=_body(10))
    assert taken.status_code == 400


async def test_delete_a_finished_study_and_retry_failures(api: Api) -> None:
    sid = (await api.http.post("/study/register", json=_body(4, name="fin"))).json()["study_id"]
    res = await api.table.reserve([], 4, "w")
    assert res is not None
    fail = {"trial_id": res.trial_id, "worker_node_id": "w", "error": "boom", "mode": "quarantine"}
    assert (await api.http.post("/trial/fail", json=fail)).status_code == 200
    info = (await api.http.get("/study/info", params={"study_id": sid})).json()
    assert info["status"] == "done" and info["failed_grids"] == 4
    # lite_dist2's DELETE /study only cancels active studies
    assert (await api.http.delete("/study", params={"study_id": sid})).status_code == 404
    retried = await api.http.post("/study/retry", params={"name": "fin"})
    assert retried.json() == {"requeued_grids": 4}
    info = (await api.http.get("/study/info", params={"study_id": sid})).json()
    assert info["status"] == "running" and info["failed_grids"] == 0
    gone = await api.http.post("/study/delete", params={"name": "fin"})
    assert gone.json() == {"study_id": sid, "name": "fin", "status": "running",
                           "done_grids": 0, "failed_grids": 0}  # fmt: skip
    assert (await api.http.get("/study/info", params={"study_id": sid})).status_code == 404
    assert [k for k in await api.keys() if sid.encode() in k] == []
    again = await api.http.post("/study/register", json=_body(4, name="fin"))
    assert again.status_code == 200  # the name is free
