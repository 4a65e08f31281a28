"""The lite_dist2 endpoints: status codes, shapes, and refusals that change nothing."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np

from ld2.core import models as m
from tests.api.conftest import Api
from tests.conftest import wire_json

MANDEL = wire_json("10-study-register-mandelbrot.request.json")
MD5 = wire_json("60-study-register-md5-finite.request.json")


def _no_leak(resp: Any) -> None:
    assert resp.status_code < 500, resp.text
    assert "Traceback" not in resp.text and "/work/" not in resp.text and ".py" not in resp.text


async def _register(api: Api, body: dict[str, Any]) -> str:
    resp = await api.http.post("/study/register", json=body)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["study_id"])


async def _reserve(api: Api, max_size: int = 7, worker: str = "manual-1") -> Any:
    body = {
        "retaining_capacity": [],
        "max_size": max_size,
        "worker_node_name": "manual",
        "worker_node_id": worker,
    }
    return await api.http.post("/trial/reserve", json=body)


def _fill(trial: dict[str, Any], value: Any = "0x1") -> dict[str, Any]:
    """A register body: the reserved trial echoed back with one result per point."""
    space = trial["parameter_space"]
    axes = space["axes"]
    sizes = [int(a["size"], 16) for a in axes]
    results = []
    import itertools

    for idx in itertools.product(*(range(n) for n in sizes)):
        params = []
        for a, i in zip(axes, idx, strict=True):
            first = int(a["ambient_index"], 16) + i
            if a["type"] == "float":  # the mandelbrot study: both axes start at -2.0
                v = (-2.0 + first * float.fromhex(a["step"])).hex()
            else:
                v = hex(int(a["start"], 16) + i * int(a["step"], 16))
            params.append(
                {"type": "scalar", "value_type": a["type"], "value": v, "name": a["name"]}
            )
        results.append(
            {
                "params": params,
                "result": {
                    "type": "scalar",
                    "value_type": trial["result_value_type"],
                    "value": value,
                },
            }
        )
    return {"trial": {**trial, "results": results}}


async def test_basics(api: Api) -> None:
    assert (await api.http.get("/ping")).json() == {"ok": True}
    assert (await api.http.get("/status")).json() == wire_json("01-status-empty.response.json")
    progress = (await api.http.get("/status/progress")).json()
    assert progress["cutoff_sec"] == 600 and progress["progress_summaries"] == []
    resp = await _reserve(api)
    assert resp.status_code == 202 and resp.json() == {"trial": None}


async def test_study_lifecycle_matches_lite_dist2_shapes(api: Api) -> None:
    sid = await _register(api, MANDEL)
    resp = await api.http.get("/study", params={"name": "mandelbrot"})
    assert resp.status_code == 202 and resp.json() == {"status": "wait", "result": None}
    status = (await api.http.get("/status")).json()
    theirs = wire_json("21-status-one-waiting.response.json")
    ours = status["summaries"][0]
    assert set(ours) == set(theirs["summaries"][0])
    assert ours["parameter_space"] == theirs["summaries"][0]["parameter_space"]
    trial = (await _reserve(api)).json()["trial"]
    ref = wire_json("30-trial-reserve-mandelbrot.response.json")["trial"]
    assert set(trial) == set(ref)
    assert trial["parameter_space"] == ref["parameter_space"]
    assert trial["trial_id"] == f"{sid}-0x0"
    body = _fill(trial)
    assert (await api.http.post("/trial/register", json=body)).json() == {"ok": True}
    resp = await api.http.post("/trial/register", json=body)
    assert resp.status_code == 409 and "already registered" in resp.json()["detail"]
    prog = (await api.http.get("/status/progress", params={"cutoff_sec": 60})).json()
    assert prog["progress_summaries"][0]["done_grid"] == 7
    assert m.ProgressSummaryResponse.model_validate(prog)


async def test_refusals_change_nothing(api: Api) -> None:
    sid = await _register(api, MANDEL)
    trial = (await _reserve(api)).json()["trial"]
    good = _fill(trial)
    before = await api.keys()
    cases: list[tuple[str, str, Any, int, str]] = []
    wrong_worker = copy.deepcopy(good)
    wrong_worker["trial"]["worker_node_id"] = "intruder"
    cases.append(("POST", "/trial/register", wrong_worker, 409, "another worker"))
    unknown_study = copy.deepcopy(good)
    unknown_study["trial"]["study_id"] = "no-such-study"
    cases.append(("POST", "/trial/register", unknown_study, 404, "Study not found"))
    unknown_trial = copy.deepcopy(good)
    unknown_trial["trial"]["trial_id"] = f"{sid}-0x99"
    cases.append(("POST", "/trial/register", unknown_trial, 409, "not reserved"))
    fewer = copy.deepcopy(good)
    fewer["trial"]["results"] = fewer["trial"]["results"][:3]
    cases.append(("POST", "/trial/register", fewer, 400, "expected 7 mappings"))
    outside = copy.deepcopy(good)
    outside["trial"]["results"][0]["params"][0]["value"] = "0x1.0000000000000p+1"
    cases.append(("POST", "/trial/register", outside, 400, "not part of the trial"))
    wrong_type = copy.deepcopy(good)
    wrong_type["trial"]["results"][0]["result"] = {
        "type": "scalar",
        "value_type": "float",
        "value": "0x1.0p+0",
    }
    cases.append(("POST", "/trial/register", wrong_type, 400, "value_type"))
    ambiguous = copy.deepcopy(good)
    ambiguous["trial"]["results"][0]["result"]["value"] = "10"
    cases.append(("POST", "/trial/register", ambiguous, 422, "0x"))
    cases.append(("POST", "/trial/register", {"trial": {"trial_id": "x"}}, 422, "study_id"))
    for size in (0, -5):
        body = {"retaining_capacity": [], "max_size": size, "worker_node_id": "w"}
        cases.append(("POST", "/trial/reserve", body, 400, "max_size"))
    cases.append(
        (
            "POST",
            "/trial/reserve",
            {"max_size": "seven", "retaining_capacity": []},
            422,
            "worker_node_id",
        )
    )
    dup = copy.deepcopy(MANDEL)
    cases.append(("POST", "/study/register", dup, 400, "already registered"))
    inf = wire_json("13-study-register-infinite-all-calculation.request.json")
    cases.append(("POST", "/study/register", inf, 400, "study.study_strategy.type"))
    huge = copy.deepcopy(MD5)
    huge["study"]["name"] = "huge"
    huge["study"]["parameter_space"]["axes"][0]["size"] = hex(2**60)
    cases.append(("POST", "/study/register", huge, 400, "2**53"))
    decimal = copy.deepcopy(MD5)
    decimal["study"]["name"] = "decimal"
    decimal["study"]["parameter_space"]["axes"][0]["start"] = "10"
    cases.append(("POST", "/study/register", decimal, 422, "start"))
    bool_hex = wire_json("15-study-register-bool-axis-hex-step.request.json")
    cases.append(("POST", "/study/register", bool_hex, 422, "step"))
    for method, path, body, code, words in cases:
        resp = await api.http.request(method, path, json=body)
        assert resp.status_code == code, (path, resp.text)
        assert words in resp.text, (path, resp.text)
        _no_leak(resp)
    resp = await api.http.post(
        "/study/register", content=b"not json{", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422 and resp.json()["detail"][0]["type"] == "json_invalid"
    assert await api.keys() == before


async def test_study_query_rules(api: Api) -> None:
    await _register(api, MANDEL)
    assert (await api.http.get("/study")).status_code == 400
    both = await api.http.get("/study", params={"name": "mandelbrot", "study_id": "x"})
    assert both.status_code == 400
    assert (await api.http.get("/study", params={"study_id": ""})).status_code == 404
    unknown = await api.http.get("/study", params={"study_id": "no-such-study"})
    assert unknown.status_code == 404 and unknown.json() == wire_json(
        "20-study-get-unknown.response.json"
    )
    assert (await api.http.delete("/study")).status_code == 400
    assert (await api.http.delete("/study", params={"name": "mandelbrot"})).json() == {"ok": True}
    again = await api.http.delete("/study", params={"name": "mandelbrot"})
    assert again.status_code == 404 and again.json() == wire_json(
        "88-study-delete-nohit-again.response.json"
    )


async def test_name_null_is_accepted(api: Api) -> None:
    body = wire_json("14-study-register-name-null.request.json")
    sid = await _register(api, body)
    summary = (await api.http.get("/status")).json()["summaries"][0]
    assert summary["name"] is None and summary["study_id"] == sid


async def _complete(api: Api, sid: str, values: Any) -> None:
    while (res := await api.table.reserve([], 30, "w")) is not None:
        await api.table.register(res, values(res))


async def test_get_study_streams_grid_order_and_repeats(api: Api) -> None:
    sid = await _register(api, MANDEL)
    await _complete(api, sid, lambda r: np.arange(r.start, r.start + r.count) % 7)
    first = await api.http.get("/study", params={"study_id": sid})
    again = await api.http.get("/study", params={"study_id": sid})
    assert first.status_code == again.status_code == 200
    assert first.content == again.content
    body = first.json()
    parsed = m.StudyResponse.model_validate(body)
    assert parsed.result is not None and parsed.result.done_grids == 100
    theirs = wire_json("45-study-get-mandelbrot-done.response.json")
    assert set(body["result"]) == set(theirs["result"])
    assert body["result"]["results"]["params_info"] == theirs["result"]["results"]["params_info"]
    assert body["result"]["results"]["result_info"] == theirs["result"]["results"]["result_info"]
    values = body["result"]["results"]["values"]
    assert [int(r[2], 16) for r in values] == [f % 7 for f in range(100)]
    assert values[9][1] == "0x1.999999999999ap+0"  # ld2's canonical, study-level value
    assert "/" not in body["result"]["trial_repository"]["save_dir"]


async def test_find_exact_result_is_the_hit(api: Api) -> None:
    sid = await _register(api, MD5)
    target = int(
        MD5["study"]["study_strategy"]["study_strategy_param"]["target_value"]["value"], 16
    )
    await _complete(
        api,
        sid,
        lambda r: np.array(
            [target if f == 777 else f for f in range(r.start, r.start + r.count)], dtype=object
        ),
    )
    body = (await api.http.get("/study", params={"name": "md5-finite"})).json()
    theirs = wire_json("65-study-get-md5-finite-done.response.json")
    assert body["result"]["results"]["values"] == theirs["result"]["results"]["values"]
    assert body["status"] == "done"


async def test_jagged_float_and_negative_int_studies_work(api: Api) -> None:
    for name in (
        "50-study-register-jagged-float.request.json",
        "55-study-register-jagged-negint.request.json",
    ):
        body = wire_json(name)
        sid = await _register(api, body)
        trial = (await _reserve(api)).json()["trial"]
        assert trial["parameter_space"]["type"] == "jagged"
        reserved = {"50": "51-trial-reserve-jagged-float", "55": "56-trial-reserve-jagged-negint"}
        theirs = wire_json(f"{reserved[name[:2]]}.response.json")
        assert trial["parameter_space"] == theirs["trial"]["parameter_space"]
        parsed = m.TrialModel.model_validate(trial)
        res = [
            m.Mapping(
                params=[
                    m.ScalarValue(value_type=a.type, value=p, name=a.name)
                    for p, a in zip(row, parsed.parameter_space.axes_info, strict=True)
                ],  # type: ignore[union-attr]
                result=m.VectorValue(value_type="float", values=["0x1.0p+0"])
                if trial["result_type"] == "vector"
                else m.ScalarValue(
                    value_type=trial["result_value_type"],
                    value="0x1" if trial["result_value_type"] == "int" else "0x1.0p+0",
                ),
            )
            for row in parsed.parameter_space.parameters
        ]  # type: ignore[union-attr]
        parsed.results = res
        resp = await api.http.post(
            "/trial/register", json={"trial": json.loads(parsed.model_dump_json())}
        )
        assert resp.status_code == 200, resp.text
        await api.http.delete("/study", params={"study_id": sid})
