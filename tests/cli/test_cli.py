"""The command line as a user runs it: real processes, exit codes, messages, files."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from ld2.core.study import parse_study
from ld2.core.studyfile import study_from_json
from ld2.worker.builtins import mandelbrot
from tests.api.test_processes import api_process

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def ld2(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "LD2_REDIS_URL", "LD2_API_URL")
    }
    return subprocess.run(
        [sys.executable, "-m", "ld2", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ld2", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _direct_mandelbrot(path: Path) -> list[int]:
    spec = parse_study(study_from_json(json.loads(path.read_text())))
    y, x = spec.space.arrays(0, spec.total or 0)  # the example's axes are [y, x]
    return mandelbrot(x, y, max_iter=255, abs_threshold=2.0).tolist()


def _small_mandelbrot(tmp_path: Path, name: str = "small", n: int = 40) -> Path:
    data = json.loads((EXAMPLES / "mandelbrot.json").read_text())
    data["name"] = name
    for axis in data["parameter_space"]["axes"]:
        axis["size"] = n
        axis["step"] = 3.0 / n
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def test_run_needs_nothing_else(tmp_path: Path) -> None:
    out = ld2(
        "run",
        str(EXAMPLES / "mandelbrot.json"),
        "-w",
        "2",
        env={"LD2_STATE_DIR": str(tmp_path / "state")},
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    rows = list(csv.reader((tmp_path / "mandelbrot.csv").open()))
    assert rows[0] == ["y", "x", "result"] and len(rows) == 256 * 256 + 1
    assert [int(r[2]) for r in rows[1:]] == _direct_mandelbrot(EXAMPLES / "mandelbrot.json")
    png = (tmp_path / "mandelbrot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 256
    again = ld2(
        "run",
        str(EXAMPLES / "mandelbrot.json"),
        "-o",
        str(tmp_path / "again.npy"),
        env={"LD2_STATE_DIR": str(tmp_path / "state")},
        cwd=tmp_path,
    )
    assert again.returncode == 0 and "resuming mandelbrot" in again.stdout
    assert np.load(tmp_path / "again.npy")["result"].tolist() == _direct_mandelbrot(
        EXAMPLES / "mandelbrot.json"
    )


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (
            lambda d: d["parameter_space"]["axes"][0].update(size=0),
            "parameter_space.axes[0].size: must be at least 1",
        ),
        (
            lambda d: d["parameter_space"]["axes"][0].update(start="0.1"),
            "parameter_space.axes[0].start",
        ),
        (
            lambda d: d["parameter_space"]["axes"][0].update(size=2.5),
            "axes[0].size: 2.5 is not an integer",
        ),
        (lambda d: d.pop("result_type"), "result_type: Field required"),
    ],
)
def test_bad_study_files_exit_2_naming_file_and_field(
    tmp_path: Path, mutate: Any, words: str
) -> None:
    data = json.loads((EXAMPLES / "mandelbrot.json").read_text())
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    out = ld2("submit", str(path), env={"LD2_STATE_DIR": str(tmp_path)})
    assert out.returncode == 2 and str(path) in out.stderr and words in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    (tmp_path / "broken.json").write_text("{oops")
    out = ld2("submit", str(tmp_path / "broken.json"))
    assert out.returncode == 2 and "not valid JSON" in out.stderr


def test_unknown_capacity_import_and_unreachable_backends(tmp_path: Path) -> None:
    out = ld2("worker", "--capacity", "nope", "--redis", "redis://127.0.0.1:1/0")
    assert out.returncode == 2 and "known: mandelbrot" in out.stderr
    out = ld2("worker", "--import", "no_such_module_xyz")
    assert out.returncode == 2 and "no_such_module_xyz" in out.stderr
    out = ld2("status", "--redis", "redis://127.0.0.1:1/0")
    assert (
        out.returncode == 1
        and "redis://127.0.0.1:1/0" in out.stderr
        and "Traceback" not in out.stderr
    )
    out = ld2("status", "--api", "http://127.0.0.1:1")
    assert out.returncode == 1 and "127.0.0.1:1" in out.stderr and "Traceback" not in out.stderr
    assert ld2("new", "md5").stdout == (EXAMPLES / "md5.json").read_text()
    assert ld2("new", "nothing").returncode == 2


def test_end_to_end_with_two_workers(
    private_redis_url: str | None, embedded_url: str, tmp_path: Path
) -> None:
    redis_url = private_redis_url or embedded_url
    env = {"LD2_REDIS_URL": redis_url}
    study = _small_mandelbrot(tmp_path, f"e2e{time.monotonic_ns()}")
    with api_process(redis_url) as api:
        workers = [
            spawn(
                "worker",
                "--capacity",
                "mandelbrot",
                "--processes",
                "1",
                "--max-size",
                "97",
                "--exit-when-idle",
                "60",  # started before the study is submitted; ends them if the test fails
                env=env,
            )
            for _ in range(2)
        ]
        sub = ld2("submit", str(study), "--wait", env=env)
        assert sub.returncode == 0, sub.stderr
        sid = sub.stdout.splitlines()[0]
        for w in workers:  # still serving (not ended by their idle limit yet): stopped
            assert w.poll() is None
            w.terminate()
            assert w.wait(30) == 0
        out = ld2("result", sid, "-o", str(tmp_path / "r.csv"), env=env)
        assert out.returncode == 0, out.stderr
        got = [int(r[2]) for r in list(csv.reader((tmp_path / "r.csv").open()))[1:]]
        assert got == _direct_mandelbrot(study)
        via_api = ld2("result", sid, "-o", str(tmp_path / "r.jsonl"), "--api", api)
        assert via_api.returncode == 0, via_api.stderr
        lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
        assert [x["result"] for x in lines] == got
        status = ld2("status", sid, env=env)
        assert "done" in status.stdout
        # the same through the API: a worker on --api
        study2 = _small_mandelbrot(tmp_path, f"viaapi{time.monotonic_ns()}", n=20)
        sid2 = ld2("submit", str(study2), "--api", api).stdout.strip()
        w = spawn(
            "worker",
            "--capacity",
            "mandelbrot",
            "--processes",
            "2",
            "--api",
            api,
            "--exit-when-idle",
            "2",
        )
        assert w.wait(60) == 0
        body = httpx.get(f"{api}/study", params={"study_id": sid2}).json()
        assert [int(r[2], 16) for r in body["result"]["results"]["values"]] == _direct_mandelbrot(
            study2
        )


def test_find_exact_on_an_infinite_axis_stops_every_worker(
    private_redis_url: str | None, embedded_url: str, tmp_path: Path
) -> None:
    env = {"LD2_REDIS_URL": private_redis_url or embedded_url}
    data = json.loads((EXAMPLES / "md5.json").read_text())
    data["name"] = f"md5-{time.monotonic_ns()}"
    path = tmp_path / "md5.json"
    path.write_text(json.dumps(data))
    sid = ld2("submit", str(path), env=env).stdout.strip()
    workers = [
        spawn(
            "worker",
            "--capacity",
            "md5-preimage",
            "--processes",
            "1",
            "--max-size",
            "5000",
            "--exit-when-idle",
            "1",
            env=env,
        )
        for _ in range(2)
    ]
    for w in workers:
        assert w.wait(120) == 0
    info = subprocess.run(
        [
            sys.executable,
            "-c",
            f"""
import asyncio
from ld2.store.connect import open_table
async def main():
    t = open_table({env["LD2_REDIS_URL"]!r})
    s = await t.get_study({sid!r})
    print(s.status, s.hit_flat)
    await t.close()
asyncio.run(main())
""",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert info.stdout.split() == ["done", "123456"]


def test_sigterm_hands_back_and_kill_9_is_reaped(
    private_redis_url: str | None, embedded_url: str, tmp_path: Path
) -> None:
    env = {"LD2_REDIS_URL": private_redis_url or embedded_url}
    (tmp_path / "slowrunner.py").write_text(
        "import time\nfrom pathlib import Path\nfrom ld2.worker.runners import runner\n"
        "@runner('slow-square', vectorized=True)\n"
        "def slow_square(x):\n"
        f"    Path({str(tmp_path / 'computing')!r}).touch()\n"
        "    time.sleep(0.5)\n    return x * x\n"
    )
    study = {
        "name": f"slow-{time.monotonic_ns()}",
        "required_capacity": ["slow-square"],
        "study_strategy": {"type": "all_calculation", "study_strategy_param": None},
        "result_type": "scalar",
        "result_value_type": "int",
        "parameter_space": {
            "type": "aligned",
            "axes": [{"name": "x", "type": "int", "size": 60, "step": 1, "start": 0}],
        },
    }
    path = tmp_path / "slow.json"
    path.write_text(json.dumps(study))
    env = {**env, "PYTHONPATH": str(tmp_path)}
    sid = ld2("submit", str(path), "--trial-timeout", "2", env=env).stdout.strip()
    args = [
        "worker",
        "--import",
        "slowrunner",
        "--capacity",
        "slow-square",
        "--processes",
        "1",
        "--max-size",
        "10",
        "--lease",
        "2",  # a killed worker's range comes back after its own lease
    ]
    term = spawn(*args, env=env)
    _wait_for_file(tmp_path / "computing", term)  # mid-trial
    term.send_signal(signal.SIGTERM)
    assert term.wait(10) == 0
    summary = term.stdout.read()  # type: ignore[union-attr]
    handed = re.search(r"(\d+) handed back", summary)
    assert handed is not None and int(handed.group(1)) >= 1, summary
    (tmp_path / "computing").unlink()
    killed = spawn(*args, env=env)
    _wait_for_file(tmp_path / "computing", killed)
    killed.kill()
    killed.wait()
    finisher = spawn(*args, "--exit-when-idle", "5", env={**env})
    assert finisher.wait(120) == 0
    out = ld2("result", sid, "-o", str(tmp_path / "slow.csv"), env=env)
    assert out.returncode == 0
    rows = list(csv.reader((tmp_path / "slow.csv").open()))[1:]
    assert [int(r[1]) for r in rows] == [x * x for x in range(60)]


def _wait_for_file(path: Path, proc: subprocess.Popen[str], limit: float = 60) -> None:
    """Wait until `path` exists (a runner marks that it computes), failing if `proc` died."""
    deadline = time.monotonic() + limit
    while not path.exists():
        assert proc.poll() is None, f"exited {proc.returncode}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def test_examples_are_packaged_as_is() -> None:
    for name in ("mandelbrot.json", "md5.json"):
        assert (EXAMPLES / name).read_text() == (ROOT / "ld2" / "examples" / name).read_text()


def test_custom_runner_example_and_controls(tmp_path: Path) -> None:
    env = {"LD2_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(EXAMPLES / "custom")}
    out = ld2(
        "run",
        str(EXAMPLES / "custom" / "rosenbrock.json"),
        "--import",
        "rosenbrock",
        "-w",
        "1",
        "-o",
        str(tmp_path / "r.jsonl"),
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    best = min(rows, key=lambda r: r["result"])
    assert (round(best["x"], 6), round(best["y"], 6), best["result"]) == (1.0, 1.0, 0.0)
    assert len(rows) == 201 * 201
    snap = ld2("snapshot", "save", str(tmp_path / "snap.json"), env=env)
    assert snap.returncode == 0 and "1 studies saved" in snap.stdout
    env2 = {"LD2_STATE_DIR": str(tmp_path / "other")}
    assert (
        "1 studies loaded" in ld2("snapshot", "load", str(tmp_path / "snap.json"), env=env2).stdout
    )
    status = ld2("status", "rosenbrock", env=env2)
    assert "done" in status.stdout and "40,401 / 40,401" in status.stdout
    sub = ld2("submit", str(_small_mandelbrot(tmp_path, "ctl")), env=env2)
    assert sub.returncode == 0
    assert ld2("pause", "ctl", env=env2).stdout.strip() == "pause: ctl"
    assert "paused" in ld2("status", "ctl", env=env2).stdout
    assert ld2("resume", "ctl", env=env2).returncode == 0
    assert ld2("cancel", "ctl", env=env2).returncode == 0
    gone = ld2("status", "ctl", env=env2)
    assert gone.returncode == 1 and "no study with id or name 'ctl'" in gone.stderr


def test_run_needs_a_runner_for_a_lite_dist2_study(tmp_path: Path) -> None:
    wire = ROOT / "tests" / "fixtures" / "wire" / "10-study-register-mandelbrot.request.json"
    env = {"LD2_STATE_DIR": str(tmp_path / "state")}
    out = ld2("run", str(wire), env=env, cwd=tmp_path)
    assert (
        out.returncode == 2 and "names no known runner" in out.stderr and "mandelbrot" in out.stderr
    )
    out = ld2("run", str(wire), "--capacity", "mandelbrot", "-w", "1", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = list(csv.reader((tmp_path / "mandelbrot.csv").open()))
    assert len(rows) == 101 and rows[0] == ["x", "y", "result"]
