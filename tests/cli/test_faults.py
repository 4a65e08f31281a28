"""Faults as a fleet meets them, with real processes: a killed worker with default settings,
a Redis restart under a sweep. Each asserts the final results point by point."""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.cli.test_cli import _wait_for_file, ld2, spawn
from tests.conftest import _free_port

RUNNER = """
import time
from pathlib import Path
from ld2.worker.runners import runner

@runner("slowsq")
def slowsq(x: int) -> int:
    Path("{marker}").touch()
    time.sleep({pause})
    return x * x
"""


def _study(path: Path, name: str, size: int) -> Path:
    path.write_text(json.dumps({
        "name": name, "required_capacity": ["slowsq"],
        "study_strategy": {"type": "all_calculation", "study_strategy_param": None},
        "result_type": "scalar", "result_value_type": "int",
        "parameter_space": {"type": "aligned", "axes": [
            {"name": "x", "type": "int", "size": size, "step": 1, "start": 0}]},
    }))  # fmt: skip
    return path


@contextlib.contextmanager
def _redis(workdir: Path, port: int) -> subprocess.Popen[bytes]:  # type: ignore[misc]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(redis.ConnectionError):
            if redis.Redis(port=port).ping():
                break
        assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.02)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs the redis-server binary"
)


def test_a_killed_workers_range_comes_back_within_its_lease(tmp_path: Path) -> None:
    port = _free_port()
    (tmp_path / "slowmod.py").write_text(RUNNER.format(marker=tmp_path / "computing", pause=0.2))
    env = {"LD2_REDIS_URL": f"redis://127.0.0.1:{port}/0", "PYTHONPATH": str(tmp_path)}
    study = _study(tmp_path / "s.json", "killed", 40)
    args = ("worker", "--import", "slowmod", "--capacity", "slowsq", "--processes", "1",
            "--max-size", "10")  # default lease: nothing set by the user  # fmt: skip
    with _redis(tmp_path, port):
        assert ld2("submit", str(study), env=env).returncode == 0
        victim = spawn(*args, env=env)
        _wait_for_file(tmp_path / "computing", victim)
        victim.kill()
        victim.wait()
        killed_at = time.monotonic()
        rescuer = spawn(*args, "--exit-when-idle", "60", env=env)
        try:
            waited = ld2("submit", str(study), "--wait", env=env, timeout=120)
            recovered = time.monotonic() - killed_at
            assert waited.returncode == 0, waited.stderr
        finally:
            rescuer.terminate()
            rescuer.wait(30)
        assert recovered <= 45, f"the killed worker's range took {recovered:.1f} s to come back"
        out = ld2("result", "killed", "-o", str(tmp_path / "r.csv"), env=env)
        assert out.returncode == 0, out.stderr
        rows = list(csv.reader((tmp_path / "r.csv").open()))[1:]
        assert [int(r[1]) for r in rows] == [x * x for x in range(40)]


def test_redis_killed_and_restarted_from_its_aof_mid_sweep(tmp_path: Path) -> None:
    port = _free_port()
    (tmp_path / "slowmod.py").write_text(RUNNER.format(marker=tmp_path / "computing", pause=0.02))
    env = {"LD2_REDIS_URL": f"redis://127.0.0.1:{port}/0", "PYTHONPATH": str(tmp_path)}
    study = _study(tmp_path / "s.json", "aof", 300)
    args = ("worker", "--import", "slowmod", "--capacity", "slowsq", "--processes", "1",
            "--max-size", "10", "--lease", "3", "--exit-when-idle", "20")  # fmt: skip
    with _redis(tmp_path, port) as first:
        assert ld2("submit", str(study), env=env).returncode == 0
        workers = [spawn(*args, env=env) for _ in range(2)]
        _wait_for_file(tmp_path / "computing", workers[0])
        time.sleep(1.5)  # let it get part-way (a state: some results registered)
        first.kill()  # SIGKILL: the AOF may lose its last second
        first.wait()
    try:
        with _redis(tmp_path, port):
            waited = ld2("submit", str(study), "--wait", env=env, timeout=180)
            assert waited.returncode == 0, waited.stderr
            for w in workers:
                _still_serving_then_stopped(w)  # rode out the outage
            out = ld2("result", "aof", "-o", str(tmp_path / "r.csv"), env=env)
            assert out.returncode == 0, out.stderr
            rows = list(csv.reader((tmp_path / "r.csv").open()))[1:]
            assert [int(r[0]) for r in rows] == list(range(300))  # no hole, no double
            assert [int(r[1]) for r in rows] == [x * x for x in range(300)]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()


def _still_serving_then_stopped(worker: subprocess.Popen[str]) -> None:
    """The worker lived through the fault (it is still running, not ended by it) and stops
    cleanly on SIGTERM — rather than waiting out its --exit-when-idle, which only ends it if
    the test fails."""
    assert worker.poll() is None, f"the worker ended (exit {worker.returncode})"
    worker.terminate()
    assert worker.wait(30) == 0


def _results(tmp_path: Path, name: str, env: dict[str, str]) -> list[list[str]]:
    out = ld2("result", name, "-o", str(tmp_path / f"{name}.csv"), env=env)
    assert out.returncode == 0, out.stderr
    return list(csv.reader((tmp_path / f"{name}.csv").open()))[1:]


def test_dropped_connections_and_a_full_redis_are_ridden_out(tmp_path: Path) -> None:
    """Blips (every client connection cut) and a full noeviction Redis: the sweep completes."""
    port = _free_port()
    (tmp_path / "slowmod.py").write_text(RUNNER.format(marker=tmp_path / "computing", pause=0.01))
    env = {"LD2_REDIS_URL": f"redis://127.0.0.1:{port}/0", "PYTHONPATH": str(tmp_path)}
    study = _study(tmp_path / "s.json", "blips", 400)
    args = ("worker", "--import", "slowmod", "--capacity", "slowsq", "--processes", "1",
            "--max-size", "5", "--exit-when-idle", "20")  # fmt: skip
    with _redis(tmp_path, port):
        admin = redis.Redis(port=port)
        assert ld2("submit", str(study), env=env).returncode == 0
        workers = [spawn(*args, env=env) for _ in range(2)]
        try:
            _wait_for_file(tmp_path / "computing", workers[0])
            for _ in range(5):  # outages of a few ms: every connection dropped
                admin.client_kill_filter(_type="normal", skipme=True)
                time.sleep(0.05)
            # now Redis is full: writes are refused until memory is freed
            used = int(admin.info("memory")["used_memory"])
            admin.config_set("maxmemory", str(used + 200_000))
            with contextlib.suppress(redis.exceptions.OutOfMemoryError):
                for k in range(10_000):
                    admin.set(f"junk:{k}", "x" * 1000)
            full = ld2("submit", str(_study(tmp_path / "t.json", "later", 10)), env=env)
            assert full.returncode == 1 and "is full" in full.stderr, full.stderr
            time.sleep(0.5)  # let the workers meet the full Redis (a state they must survive)
            admin.delete(*admin.keys("junk:*"))
            admin.config_set("maxmemory", "0")
            waited = ld2("submit", str(study), "--wait", env=env, timeout=180)
            assert waited.returncode == 0, waited.stderr
            for w in workers:
                _still_serving_then_stopped(w)
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
        rows = _results(tmp_path, "blips", env)
        assert [int(r[0]) for r in rows] == list(range(400))
        assert [int(r[1]) for r in rows] == [x * x for x in range(400)]


def test_redis_restarted_without_its_data(tmp_path: Path) -> None:
    port = _free_port()
    (tmp_path / "slowmod.py").write_text(RUNNER.format(marker=tmp_path / "computing", pause=0.05))
    env = {"LD2_REDIS_URL": f"redis://127.0.0.1:{port}/0", "PYTHONPATH": str(tmp_path)}
    first_study = _study(tmp_path / "a.json", "lost", 400)
    args = ("worker", "--import", "slowmod", "--capacity", "slowsq", "--processes", "1",
            "--max-size", "5", "--exit-when-idle", "30")  # fmt: skip
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with _redis(tmp_path / "one", port) as first:
        assert ld2("submit", str(first_study), env=env).returncode == 0
        worker = spawn(*args, env=env)
        waiting = subprocess.Popen(
            [*ld2_cmd(), "submit", str(first_study), "--wait"], env=full_env(env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            _wait_for_file(tmp_path / "computing", worker)
            assert waiting.stdout is not None
            assert waiting.stdout.readline().strip()  # it printed the id: now it waits
            first.kill()
            first.wait()
            with _redis(tmp_path / "two", port):  # a new, empty Redis on the same address
                _, err = waiting.communicate(timeout=120)
                assert waiting.returncode == 1, err
                assert "no longer exists" in err and "Redis lost its data" in err
                second = _study(tmp_path / "b.json", "after", 30)
                done = ld2("submit", str(second), "--wait", env=env, timeout=120)
                assert done.returncode == 0, done.stderr  # the same worker carries on
                rows = _results(tmp_path, "after", env)
                assert [int(r[1]) for r in rows] == [x * x for x in range(30)]
                worker.terminate()
                _, said = worker.communicate(timeout=30)
                assert said.count("no longer exists") == 1, said  # said once, not per trial
        finally:
            for p in (worker, waiting):
                if p.poll() is None:
                    p.kill()
                    p.wait()


def ld2_cmd() -> list[str]:
    import sys

    return [sys.executable, "-m", "ld2"]


def full_env(env: dict[str, str]) -> dict[str, str]:
    import os

    clean = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LD2_REDIS_URL")}
    return {**clean, **env}


@contextlib.contextmanager
def _api(redis_url: str, port: int):  # type: ignore[no-untyped-def]
    import httpx

    proc = subprocess.Popen([*ld2_cmd(), "api", "--port", str(port), "--redis", redis_url],
                            env=full_env({}), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=0.5).status_code == 200:
                break
        assert proc.poll() is None and time.monotonic() < deadline, "ld2 api did not start"
        time.sleep(0.05)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_api_killed_and_restarted_while_workers_use_it(tmp_path: Path) -> None:
    port, api_port = _free_port(), _free_port()
    (tmp_path / "slowmod.py").write_text(RUNNER.format(marker=tmp_path / "computing", pause=0.01))
    env = {"PYTHONPATH": str(tmp_path)}
    study = _study(tmp_path / "s.json", "viaapi", 300)
    api = f"http://127.0.0.1:{api_port}"
    with _redis(tmp_path, port):
        url = f"redis://127.0.0.1:{port}/0"
        with _api(url, api_port) as first:
            assert ld2("submit", str(study), "--api", api).returncode == 0
            worker = spawn("worker", "--import", "slowmod", "--capacity", "slowsq",
                           "--processes", "1", "--max-size", "5", "--api", api,
                           "--exit-when-idle", "30", env=env)  # fmt: skip
            _wait_for_file(tmp_path / "computing", worker)
            first.kill()  # SIGKILL: requests in flight are lost
            first.wait()
        try:
            with _api(url, api_port):
                waited = ld2("submit", str(study), "--wait", "--api", api, timeout=180)
                assert waited.returncode == 0, waited.stderr
                _still_serving_then_stopped(worker)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        rows = _results(tmp_path, "viaapi", {"LD2_REDIS_URL": url})
        assert [int(r[1]) for r in rows] == [x * x for x in range(300)]


def test_reaper_takes_lite_dist2s_table_config(tmp_path: Path) -> None:
    port = _free_port()
    env = {"LD2_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    (tmp_path / "table_config.json").write_text(json.dumps({"timeout_check_interval_seconds": 7}))
    (tmp_path / "bad.json").write_text(json.dumps({"timeout_check_interval_second": 7}))
    with _redis(tmp_path, port):
        ok = ld2("reaper", "-c", str(tmp_path / "table_config.json"), "--once", env=env)
        assert ok.returncode == 0 and "expired trial(s) handed back" in ok.stdout, ok.stderr
        bad = ld2("reaper", "-c", str(tmp_path / "bad.json"), "--once", env=env)
        assert bad.returncode == 2 and "timeout_check_interval_second" in bad.stderr
        assert "Traceback" not in bad.stderr
