"""One reservation stays bounded: clamped sizes, small jagged replies, no lease left behind."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from ld2.api import create_app
from ld2.api.app import _trial_body
from ld2.core import models as m
from ld2.core.planning import MAX_JAGGED_REPLY_BYTES, MAX_TRIAL_POINTS
from ld2.core.study import parse_study
from ld2.core.subspace import JSON_CHUNK, jagged_point_bytes
from ld2.store.base import Reservation, clamp_max_size
from tests.api.conftest import Api


def _axis(name: str, kind: str, size: int | None, start: Any, step: Any) -> dict[str, Any]:
    enc = {"int": hex, "float": float.hex, "bool": bool}[kind]
    return {"name": name, "type": kind, "size": None if size is None else hex(size),
            "start": enc(start), "step": enc(step)}  # fmt: skip


def _study(name: str, axes: list[dict[str, Any]], strict_aligned: bool = True) -> dict[str, Any]:
    infinite = axes[0]["size"] is None
    strategy = "all_calculation" if not infinite else "find_exact"
    target = {"type": "scalar", "value_type": "int", "value": "0x1", "name": None}
    param = {"target_value": target} if infinite else None
    return {
        "name": name,
        "required_capacity": [],
        "study_strategy": {"type": strategy, "study_strategy_param": param},
        "suggest_strategy": {
            "type": "sequential",
            "suggest_strategy_param": {"strict_aligned": strict_aligned},
        },
        "const_param": None,
        "result_type": "scalar",
        "result_value_type": "int",
        "parameter_space": {"type": "aligned", "axes": axes},
    }


JAGGED = _study(
    "jagged-big",
    [_axis("x", "float", 10_000, 0.1, 0.001), _axis("y", "float", 10_000, -0.3, 0.0007)],
    strict_aligned=False,
)


async def _register(api: Api, study: dict[str, Any]) -> str:
    resp = await api.http.post("/study/register", json={"study": study})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["study_id"])


async def _reserve(api: Api, max_size: int) -> Any:
    body = {"retaining_capacity": [], "max_size": max_size, "worker_node_id": "w1"}
    return await api.http.post("/trial/reserve", json=body)


async def _reserved(api: Api, sid: str) -> int:
    resp = await api.http.get("/study/info", params={"study_id": sid})
    return int(resp.json()["reserved_grids"])


def _aligned_count(trial: dict[str, Any]) -> int:
    count = 1
    for axis in trial["parameter_space"]["axes"]:
        count *= int(axis["size"], 16)
    return count


async def test_a_huge_max_size_is_clamped_not_refused(api: Api) -> None:
    axes = [_axis("a", "int", 100_000, 0, 1), _axis("b", "int", 1_000, 0, 1)]  # 10⁸ points
    sid = await _register(api, _study("aligned-big", axes))
    resp = await _reserve(api, 10**12)
    assert resp.status_code == 200, resp.text
    count = _aligned_count(resp.json()["trial"])
    assert 0 < count <= MAX_TRIAL_POINTS
    assert await _reserved(api, sid) == count


async def test_a_jagged_reserve_answers_a_bounded_reply(api: Api) -> None:
    await _register(api, JAGGED)
    resp = await _reserve(api, 10**7)
    assert resp.status_code == 200, resp.text
    trial = resp.json()["trial"]
    space = trial["parameter_space"]
    assert space["type"] == "jagged"
    count = len(space["parameters"])
    cap = clamp_max_size(parse_study(m.StudyRegistry.model_validate(JAGGED)), 10**7)
    assert count == cap < 10**7
    assert len(space["ambient_indices"]) == count
    # the point lists stay within the documented budget; the rest of the reply is fixed fields
    fixed = dict(trial, parameter_space=dict(space, parameters=[], ambient_indices=[]))
    fixed_bytes = len(json.dumps({"trial": fixed}, separators=(",", ":")))
    assert len(resp.content) - fixed_bytes <= MAX_JAGGED_REPLY_BYTES
    # the points are the first `count` of the grid, in order
    assert space["ambient_indices"][0] == ["0x0", "0x0"]
    assert space["ambient_indices"][-1] == [hex((count - 1) // 10_000), hex((count - 1) % 10_000)]


async def test_the_table_clamps_for_every_caller(api: Api) -> None:
    """Not only the API: `reserve` and the worker's `register_and_reserve` clamp too."""
    await _register(api, JAGGED)
    cap = clamp_max_size(parse_study(m.StudyRegistry.model_validate(JAGGED)), 10**12)
    first = await api.table.reserve([], 10**12, "w2")
    assert first is not None and first.count == cap
    outcome, nxt = await api.table.register_and_reserve(
        first, np.zeros(first.count, dtype=np.int64), [], 10**12
    )
    assert outcome == "ok" and nxt is not None
    assert (nxt.start, nxt.count) == (cap, cap)


async def test_a_reply_that_cannot_be_built_releases_its_trial(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = await _register(api, JAGGED)
    first = (await _reserve(api, 100)).json()["trial"]
    ok = await api.http.post(
        "/trial/fail",
        json={"trial_id": first["trial_id"], "worker_node_id": "w1", "mode": "release"},
    )
    assert ok.status_code == 200

    def broken(self: Reservation, *, points: bool = True) -> m.TrialModel:
        raise RuntimeError("reply building failed")

    monkeypatch.setattr(Reservation, "to_wire", broken)
    resp = await _reserve(api, 100)
    assert resp.status_code == 500
    assert await _reserved(api, sid) == 0
    monkeypatch.undo()
    again = await _reserve(api, 100)  # the same range at once, not after the lease timeout
    assert again.status_code == 200, again.text
    assert again.json()["trial"]["parameter_space"] == first["parameter_space"]


async def test_a_client_gone_before_the_reply_releases_its_trial(api: Api) -> None:
    sid = await _register(api, JAGGED)
    app = create_app(api.table)
    body = json.dumps({"retaining_capacity": [], "max_size": 100, "worker_node_id": "w1"})
    inbox = [{"type": "http.request", "body": body.encode(), "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/trial/reserve", "raw_path": b"/trial/reserve",
        "query_string": b"", "root_path": "", "server": ("ld2.test", 80),
        "client": ("127.0.0.1", 5000), "headers": [(b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()), (b"host", b"ld2.test")],
    }  # fmt: skip
    await app(scope, receive, send)
    assert not [s for s in sent if s["type"] == "http.response.body" and s.get("body")]
    assert await _reserved(api, sid) == 0
    again = await _reserve(api, 100)
    assert again.status_code == 200
    assert again.json()["trial"]["parameter_space"]["ambient_indices"][0] == ["0x0", "0x0"]


@pytest.mark.parametrize(
    "axes",
    [
        [_axis("x", "float", 7, -1.5, 0.1), _axis("y", "float", 3001, 1e300, -1e297)],
        [_axis("i", "int", None, -(2**70), 3), _axis("b", "bool", 2, False, True)],
        [_axis("n", "int", 50, -17, -(2**40)), _axis("m", "int", 1000, 2**62, 2**61)],
    ],
)
def test_the_jagged_reply_is_pydantics_json_byte_for_byte(axes: list[dict[str, Any]]) -> None:
    spec = parse_study(m.StudyRegistry.model_validate(_study("j", axes, strict_aligned=False)))
    assert spec.jagged
    now = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    for start, count in [(0, 1), (5, 3), (123, 2 * JSON_CHUNK + 17)]:
        res = Reservation(
            study_id="s", trial_id="s-0x0", worker_id="w", start=start, count=count,
            worker_name='a "quoted" name', attempt=0, reserved_at=now, deadline=now, spec=spec,
        )  # fmt: skip
        theirs = m.TrialReserveResponse(trial=res.to_wire()).model_dump_json().encode()
        ours = _trial_body(res)
        assert ours == theirs
        # the bound the jagged cap is computed from holds
        fixed = m.TrialReserveResponse(trial=res.to_wire(points=False)).model_dump_json()
        assert len(ours) - len(fixed) <= count * jagged_point_bytes(spec.space)
