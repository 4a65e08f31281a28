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
                assert w.wait(60) == 0  # rode out the outage, then went idle
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
