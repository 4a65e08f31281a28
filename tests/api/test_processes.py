"""`ld2 api` as real processes: two of them on one Redis, config files, and a schema fuzz."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ld2.api.server import binding_warning
from tests.conftest import _free_port, wire_json


@contextlib.contextmanager
def api_process(
    redis_url: str | None, *args: str, env: dict[str, str] | None = None, stdout: Any = None
) -> Iterator[str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "ld2", "api", "--port", str(port), *args]
    if redis_url:
        cmd += ["--redis", redis_url]
    workdir = tempfile.mkdtemp(prefix="ld2-api-")  # /save writes curriculum.json there
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL if stdout is None else stdout,
        stderr=subprocess.PIPE,
        cwd=workdir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60  # generous: a loaded 2-core machine starts slowly
        while True:
            try:
                if httpx.get(f"{url}/ping", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read().decode() if proc.stderr else "api exited")
            if time.monotonic() > deadline:
                raise AssertionError(f"ld2 api on {url} never answered /ping within 60 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.fixture
def redis_url(private_redis_url: str | None, embedded_url: str) -> str:
    return private_redis_url or embedded_url


@pytest.mark.parametrize("flag", [None, "--access-log"])
def test_the_access_log_is_off_unless_asked_for(
    redis_url: str, flag: str | None, tmp_path: Path
) -> None:
    out = tmp_path / "stdout.txt"
    with (
        out.open("wb") as sink,
        api_process(redis_url, *([flag] if flag else []), stdout=sink) as url,
    ):
        assert httpx.get(f"{url}/status").status_code == 200
    lines = [line for line in out.read_text().splitlines() if '"GET /status HTTP/1.1" 200' in line]
    assert len(lines) == (1 if flag else 0), out.read_text()


def test_two_api_processes_share_one_redis(redis_url: str) -> None:
    prefix = f"p{time.monotonic_ns()}"
    with (
        api_process(redis_url, "--prefix", prefix) as a,
        api_process(redis_url, "--prefix", prefix, "--workers", "2") as b,
    ):
        sid = httpx.post(
            f"{a}/study/register", json=wire_json("10-study-register-mandelbrot.request.json")
        ).json()["study_id"]
        assert httpx.get(f"{b}/study", params={"study_id": sid}).json()["status"] == "wait"
        seen = set()
        for k in range(6):
            url = a if k % 2 else b
            body = {"retaining_capacity": [], "max_size": 10, "worker_node_id": f"w{k}"}
            trial = httpx.post(f"{url}/trial/reserve", json=body).json()["trial"]
            seen.add(trial["parameter_space"]["axes"][0]["ambient_index"])
        assert len(seen) == 6  # every process hands out different rows
        assert httpx.get(f"{a}/status").json() == httpx.get(f"{b}/status").json()
        assert httpx.delete(f"{b}/study", params={"study_id": sid}).json() == {"ok": True}
        assert httpx.get(f"{a}/study", params={"study_id": sid}).status_code == 404


def test_config_file_and_token(redis_url: str, tmp_path: Path) -> None:
    cfg = tmp_path / "table_config.json"
    cfg.write_text(
        json.dumps(
            {"port": 1, "trial_timeout_seconds": 5, "curriculum_path": str(tmp_path / "c.json")}
        )
    )
    with api_process(
        redis_url, "-c", str(cfg), "--prefix", "cfg", env={"LD2_API_TOKEN": "t0k"}
    ) as url:
        assert httpx.get(f"{url}/status").status_code == 401
        auth = {"authorization": "Bearer t0k"}
        assert httpx.get(f"{url}/save", headers=auth).json() == {"ok": True}
        assert json.loads((tmp_path / "c.json").read_text())["format"] == "ld2-snapshot"
    cfg.write_text(json.dumps({"port": 8000, "colour": "blue"}))
    out = subprocess.run(
        [sys.executable, "-m", "ld2", "api", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "colour: unknown setting" in out.stderr


def test_non_loopback_without_token_warns() -> None:
    assert binding_warning("127.0.0.1", 8000, None) is None
    assert binding_warning("0.0.0.0", 8000, "t") is None
    message = binding_warning("0.0.0.0", 8000, None)
    assert message is not None and "without a token" in message


def test_schema_fuzz_never_answers_5xx(redis_url: str) -> None:
    """A bounded schemathesis pass over the app's own OpenAPI schema."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    with api_process(redis_url, "--prefix", "fuzz") as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        failures = []
        statuses: dict[int, int] = {}
        for op in schema.get_all_operations():
            operation = op.ok()
            strategy = operation.as_strategy()

            @settings(
                max_examples=15,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            @given(case=strategy)
            def check(case) -> None:  # type: ignore[no-untyped-def]
                _short_waits(case)
                resp = case.call(base_url=url, timeout=10)
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                if resp.status_code >= 500:
                    failures.append((case.method, case.path, resp.status_code, resp.text[:200]))

            check()
        assert failures == []
        assert sum(statuses.values()) >= 100 and any(code < 300 for code in statuses), statuses


def _short_waits(case: Any) -> None:
    """Long polls of at most 0.2 s (the fuzzer picks up to the 30 s the API allows)."""
    for params in (case.query, case.body):
        if isinstance(params, dict) and isinstance(params.get("wait_seconds"), int | float):
            params["wait_seconds"] = min(params["wait_seconds"], 0.2)


async def test_lean_client_keeps_one_connection_and_reconnects(redis_url: str) -> None:
    from ld2.store.wire_client import LeanClient

    with api_process(redis_url, "--prefix", "lean") as url:
        client = LeanClient(url, {}, timeout=10)
        body = json.dumps({"retaining_capacity": [], "max_size": 1, "worker_node_id": "w"}).encode()
        first = await client.post("/trial/reserve", body)
        assert first.status_code == 202 and first.json() == {"trial": None}
        conn = client._conn
        assert (await client.post("/trial/reserve", body)).status_code == 202
        assert client._conn is conn  # kept alive
        assert client._conn is not None
        client._conn[1].close()  # the server side of a kept-alive connection went away
        assert (await client.post("/trial/reserve", body)).status_code == 202
        bad = await client.post("/trial/reserve", b"{nope")
        assert bad.status_code == 422 and bad.json()["detail"][0]["type"] == "json_invalid"
        await client.close()
