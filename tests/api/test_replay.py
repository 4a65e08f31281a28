"""Replay of lite_dist2 0.6.7's captured session (`tests/fixtures/wire/_index-main.json`)
against ld2.

Requests go out in the captured order, with lite_dist2's study and trial ids mapped to ld2's.
Each answer must have lite_dist2's status code and the same shape (field names and JSON types;
ids, timestamps and numbers aside), except where SPEC Part A says ld2 does better: those
entries carry the better status, and a reason.

Trials that lite_dist2's own Worker reserved without a capture (its traffic summaries only)
are reproduced by a filler that reserves and registers in the same order, with the results
the captured final answers hold, until the trial a captured request refers to comes up.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from ld2.core import models as m
from tests.api.conftest import Api
from tests.conftest import WIRE, wire_json

BETTER = {
    "12-study-register-bad-body": (422, "same code; ld2 names more fields"),
    "14-study-register-name-null": (200, "name may be null"),
    "15-study-register-bool-axis-hex-step": (
        422,
        "a bool step must be a JSON bool: refused at the door",
    ),
    "46-study-get-mandelbrot-again": (200, "GET /study can be repeated"),
    "53-trial-register-jagged-float": (200, "jagged trials work for float axes"),
    "64-trial-register-held-after-found": (
        200,
        "late results of a solved find_exact are ignored, not errors",
    ),
    "83-study-get-nohit-exhausted": (200, "an exhausted find_exact ends as done"),
    "85-trial-reserve-starved": (200, "no head-of-line blocking"),
    "87-study-delete-nohit": (404, "the exhausted study is done, so there is nothing to cancel"),
    "98-trial-reserve-max-size-zero": (400, "max_size must be >= 1: refused with a message"),
}


def _shape(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_shape(v[0])] if v else []
    if isinstance(v, bool) or v is None:
        return type(v).__name__
    if isinstance(v, int | float):
        return "number"
    return "str"


def _same_shape(ours: Any, theirs: Any, where: str = "") -> None:
    if isinstance(theirs, dict) and isinstance(ours, dict):
        assert set(ours) == set(theirs), f"{where}: keys {sorted(set(ours) ^ set(theirs))}"
        for k in theirs:
            _same_shape(ours[k], theirs[k], f"{where}.{k}")
    elif isinstance(theirs, list) and isinstance(ours, list):
        if ours and theirs:
            _same_shape(ours[0], theirs[0], f"{where}[0]")
    elif theirs is None or ours is None:
        return  # optional values (results, eta...) may be present on one side only
    else:
        assert _shape(ours) == _shape(theirs), f"{where}: {ours!r} vs {theirs!r}"


class Replay:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.ids: dict[str, str] = {}
        self.max_size: dict[str, int] = {}  # the max_size each worker last asked for
        self.held: dict[str, m.TrialModel] = {}  # trials reserved in the replay, not registered
        self.answers = {
            "mandelbrot": wire_json("45-study-get-mandelbrot-done.response.json"),
            "md5-finite": wire_json("65-study-get-md5-finite-done.response.json"),
            "md5-infinite": wire_json("75-study-get-md5-infinite-done.response.json"),
            "jagged-vector": wire_json("59e-study-get-jagged-done.response.json"),
        }

    def mapped(self, text: str) -> str:
        for theirs in sorted(self.ids, key=len, reverse=True):  # trial ids contain study ids
            text = text.replace(theirs, self.ids[theirs])
        return text

    def learn(self, theirs: Any, ours: Any) -> None:
        """Map lite_dist2's ids to ld2's where the two answers hold the same field."""
        if isinstance(theirs, dict) and isinstance(ours, dict):
            for k, v in theirs.items():
                if (
                    k in ("study_id", "trial_id")
                    and isinstance(v, str)
                    and isinstance(ours.get(k), str)
                ):
                    if k == "trial_id":  # lite_dist2 reuses trial ids: the newest one is meant
                        self.ids[v] = ours[k]
                    else:
                        self.ids.setdefault(v, ours[k])
                elif k in ours:
                    self.learn(v, ours[k])

    async def values(self, sid: str, start: int, count: int) -> np.ndarray:
        state = await self.api.table.get_study(sid)
        spec = state.spec
        answer = self.answers.get(spec.name or "")
        known: dict[int, Any] = {}
        if answer is not None:
            dim = spec.space.dim
            for row in answer["result"]["results"]["values"]:
                from ld2.core import portable

                point = [
                    portable.decode(v, a.kind)
                    for v, a in zip(row[:dim], spec.space.axes, strict=True)
                ]
                flat = spec.space.flat_of_point(point)
                res = [portable.decode(v, spec.value_type) for v in row[dim:]]
                known[flat] = res if spec.vector else res[0]  # type: ignore[index]
        zero: Any = {"int": 0, "float": 0.0, "bool": False}[spec.value_type]
        width = state.vector_len or (
            len(next(iter(known.values()))) if spec.vector and known else 1
        )
        default = [zero] * width if spec.vector else zero
        out = np.empty(count, dtype=object) if not spec.vector else None
        rows = [known.get(f, default) for f in range(start, start + count)]
        if spec.vector:
            return np.array(rows, dtype=np.float64 if spec.value_type == "float" else object)
        assert out is not None
        out[:] = rows
        return out

    async def fill_until(self, trial: dict[str, Any]) -> None:
        """Reserve and register, as lite_dist2's Worker did, until `trial` is the one reserved."""
        sid = self.mapped(trial["study_id"])
        spec = (await self.api.table.get_study(sid)).spec
        want = m.TrialModel.model_validate(trial).parameter_space
        from ld2.core.subspace import trial_range

        start, count = trial_range(spec.space, want)
        while True:
            size = max(count, self.max_size.get(trial["worker_node_id"], count))
            res = await self.api.table.reserve(
                [], size, trial["worker_node_id"], trial["worker_node_name"]
            )
            assert res is not None, "the filler ran out of trials"
            if (res.start, res.count) == (start, count):
                self.ids[trial["trial_id"]] = res.trial_id
                return
            await self.api.table.register(res, await self.values(sid, res.start, res.count))

    async def fill_to_done(self, sid: str) -> None:
        from ld2.core.subspace import trial_range
        from ld2.store.base import TrialRef

        state = await self.api.table.get_study(sid)
        if state.status == "done":
            return
        spec = state.spec
        for tid, trial in list(self.held.items()):
            if trial.study_id == sid:  # what lite_dist2's Worker registered off the record
                start, count = trial_range(spec.space, trial.parameter_space)
                ref = TrialRef(sid, tid, trial.worker_node_id, start, count)
                await self.api.table.register(ref, await self.values(sid, start, count))
                del self.held[tid]
        while (state := await self.api.table.get_study(sid)).status != "done":
            res = await self.api.table.reserve(list(state.spec.capacities), 50, "filler")
            assert res is not None, (state.spec.name, state.status, state.done, state.reserved)
            await self.api.table.register(res, await self.values(sid, res.start, res.count))


async def _replay(
    api: Api, entries: list[dict[str, Any]], sleeps: dict[str, float] | None = None
) -> int:
    """Send `entries` in order; returns how many answers were compared with lite_dist2's."""
    import asyncio

    replay = Replay(api)
    checked = 0
    for entry in entries:
        if sleeps and entry["file_prefix"] in sleeps:
            await asyncio.sleep(sleeps[entry["file_prefix"]])
        prefix = entry["file_prefix"]
        expected = BETTER.get(prefix, (entry["status"], ""))[0]
        body: Any = None
        content: bytes | None = None
        req = entry.get("request_file")
        if req and req.endswith(".json"):
            body = json.loads(replay.mapped(json.dumps(wire_json(req))))
            if entry["path"] == "/trial/reserve" and isinstance(body.get("max_size"), int):
                replay.max_size[str(body.get("worker_node_id"))] = body["max_size"]
            trial = body.get("trial") if isinstance(body, dict) else None
            if (
                entry["path"] == "/trial/register"
                and isinstance(trial, dict)
                and "trial_id" in trial
                and trial["trial_id"] not in replay.ids.values()
                and trial.get("study_id") in replay.ids.values()
                and expected == 200
            ):
                original = wire_json(req)["trial"]
                await replay.fill_until(original)
                body = json.loads(replay.mapped(json.dumps(wire_json(req))))
        elif req:
            content = (WIRE / req).read_bytes()
        query = entry.get("query")
        params = {k: replay.mapped(str(v)) for k, v in query.items()} if query else None
        if entry["method"] == "GET" and entry["path"] == "/study" and expected == 200 and params:
            state = await api.table.get_study(**params)
            await replay.fill_to_done(state.study_id)
        if content is not None:
            resp = await api.http.request(
                entry["method"],
                entry["path"],
                content=content,
                headers={"content-type": "application/json"},
            )
        else:
            resp = await api.http.request(entry["method"], entry["path"], json=body, params=params)
        assert resp.status_code == expected, (prefix, resp.status_code, resp.text[:300])
        assert resp.status_code < 500
        if entry["path"] == "/trial/reserve" and resp.status_code == 200:
            trial_model = m.TrialModel.model_validate(resp.json()["trial"])
            replay.held[trial_model.trial_id] = trial_model
        if entry["path"] == "/trial/register" and resp.status_code == 200 and body:
            replay.held.pop(body["trial"]["trial_id"], None)
        if prefix == "14-study-register-name-null":  # lite_dist2 never had it: keep sessions alike
            await api.table.cancel(resp.json()["study_id"])
        theirs_file = entry.get("response_file")
        if theirs_file and theirs_file.endswith(".json") and expected == entry["status"]:
            theirs = wire_json(theirs_file)
            ours = resp.json()
            replay.learn(theirs, ours)
            if isinstance(theirs, dict) and isinstance(theirs.get("detail"), str):
                assert isinstance(ours.get("detail"), str), prefix
            elif prefix not in (
                "04-trial-reserve-bad-body",
                "12-study-register-bad-body",
                "16-study-register-not-json",
                "38-trial-register-bad-body",
            ):
                _same_shape(ours, theirs, prefix)
            checked += 1
    return checked


async def test_replay_main_session(api: Api) -> None:
    checked = await _replay(api, wire_json("_index-main.json"))
    assert checked > 50
    # the studies ended as lite_dist2's did, or better
    assert (await api.table.get_study(name="mandelbrot")).done == 100
    assert (await api.table.get_study(name="md5-finite")).hit_flat == 777
    assert (await api.table.get_study(name="md5-infinite")).hit_flat == 300


@pytest.mark.parametrize("api", [{"table": {"trial_timeout": 1.0}}], indirect=True)
async def test_replay_expired_trial_in_the_middle(api: Api) -> None:
    """T00–T13: trial b expires and is reissued (as lite_dist2 does); b's late result is refused;
    unlike lite_dist2 (ids reused, 15 values for 20 points), ld2 ends with all 20 values."""
    entries = [e for e in wire_json("_index-timeout.json") if e["file_prefix"] < "T20"]
    assert await _replay(api, entries, sleeps={"T06-status-after-expiry": 1.3}) >= 10
    state = await api.table.get_study(name="timeout-middle")
    assert state.status == "done" and state.done == 20
    flats = [
        f
        async for b in api.table.iter_results(state.study_id)
        for f in range(b.start, b.start + b.count)
    ]
    assert flats == list(range(20))


async def test_replay_restart_from_the_saved_curriculum(api: Api) -> None:
    """R01–R04: lite_dist2 restarted from its curriculum.json; ld2 loads that file instead, and
    also serves the finished jagged study again (lite_dist2 answered 500)."""
    loaded = await api.http.post("/snapshot", json=wire_json("99d-curriculum.snapshot-final.json"))
    assert loaded.status_code == 200 and len(loaded.json()) >= 4
    better = {"R04-study-get-jagged-after-restart": 200}
    for entry in wire_json("_index-restart.json"):
        body = wire_json(entry["request_file"]) if entry.get("request_file") else None
        resp = await api.http.request(
            entry["method"], entry["path"], json=body, params=entry.get("query")
        )
        assert resp.status_code == better.get(entry["file_prefix"], entry["status"]), entry[
            "file_prefix"
        ]
        theirs_file = entry.get("response_file", "")
        if theirs_file.endswith(".json"):
            _same_shape(resp.json(), wire_json(theirs_file), entry["file_prefix"])
    jagged = (await api.http.get("/study", params={"name": "jagged-vector"})).json()
    theirs = wire_json("59e-study-get-jagged-done.response.json")["result"]["results"]["values"]
    assert sorted(map(tuple, jagged["result"]["results"]["values"])) == sorted(map(tuple, theirs))
