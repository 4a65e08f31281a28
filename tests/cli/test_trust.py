"""Never a silently wrong or incomplete answer: the command line as a new user meets it.

Each test runs real `ld2` processes on a private embedded state directory."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_cli import EXAMPLES, ld2

FLAKY_RUNNER = """
import time
from pathlib import Path

import ld2

BAD = {bad}


@ld2.runner("flaky")
def flaky(x: int, scale: int = 1) -> int:
    if x in BAD:
        raise ValueError(f"cannot do {{x}}")
    return x * scale
"""

SLOW_RUNNER = """
import time
from pathlib import Path

import ld2


@ld2.runner("slow")
def slow(x: int) -> int:
    Path("started").touch()
    time.sleep(0.05)
    return x
"""


def _study(path: Path, capacity: str, size: int = 64, **extra: Any) -> Path:
    data: dict[str, Any] = {
        "required_capacity": [capacity],
        "study_strategy": {"type": "all_calculation", "study_strategy_param": None},
        "result_type": "scalar",
        "result_value_type": "int",
        "parameter_space": {
            "type": "aligned",
            "axes": [{"name": "x", "type": "int", "size": size, "start": 0, "step": 1}],
        },
    }
    data.update(extra)
    path.write_text(json.dumps(data))
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    return {"LD2_STATE_DIR": str(tmp_path / "state")}


def _column(path: Path, k: int = 1) -> list[int]:
    return [int(r[k]) for r in list(csv.reader(path.open()))[1:]]


def test_an_edited_study_file_is_refused_naming_the_difference(tmp_path: Path) -> None:
    data = json.loads((EXAMPLES / "mandelbrot.json").read_text())
    for axis in data["parameter_space"]["axes"]:
        axis["size"], axis["step"] = 16, 0.2
    study = tmp_path / "m.json"
    study.write_text(json.dumps(data))
    first = ld2("run", str(study), "-w", "1", env=_env(tmp_path), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "mandelbrot.csv").read_text()
    data["const_param"]["consts"] = [
        {"type": "int", "key": "max_iter", "value": 7} if c["key"] == "max_iter" else c
        for c in data["const_param"]["consts"]
    ]
    study.write_text(json.dumps(data))
    edited = ld2("run", str(study), "-w", "1", env=_env(tmp_path), cwd=tmp_path)
    assert edited.returncode == 2, edited.stdout + edited.stderr
    assert "const max_iter: 255 -> 7" in edited.stderr and "--restart" in edited.stderr
    assert (tmp_path / "mandelbrot.csv").read_text() == before  # the old results stay put
    restarted = ld2("run", str(study), "-w", "1", "--restart", env=_env(tmp_path), cwd=tmp_path)
    assert restarted.returncode == 0, restarted.stderr
    assert max(_column(tmp_path / "mandelbrot.csv", 2)) == 7
    same = ld2("run", str(study), "-w", "1", env=_env(tmp_path), cwd=tmp_path)
    assert same.returncode == 0 and "resuming mandelbrot" in same.stdout


def test_a_study_without_a_name_is_registered_under_the_file_stem(tmp_path: Path) -> None:
    (tmp_path / "runners.py").write_text(FLAKY_RUNNER.format(bad="set()"))
    study = _study(tmp_path / "stem-named.json", "flaky")
    first = ld2("run", str(study), "--import", "runners", "-w", "1", env=_env(tmp_path),
                cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert _column(tmp_path / "stem-named.csv") == list(range(64))
    again = ld2("run", str(study), "--import", "runners", "-w", "1", env=_env(tmp_path),
                cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0 and "resuming stem-named (64 points done)" in again.stdout
    status = ld2("status", "stem-named", env=_env(tmp_path))
    assert status.returncode == 0 and "stem-named" in status.stdout


def test_failing_points_are_isolated_reported_and_retried(tmp_path: Path) -> None:
    (tmp_path / "runners.py").write_text(FLAKY_RUNNER.format(bad="{13}"))
    study = _study(tmp_path / "flaky.json", "flaky", size=256)
    args = ("run", str(study), "--import", "runners", "-w", "2")
    out = ld2(*args, env=_env(tmp_path), cwd=tmp_path)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "1 of 256 points failed" in out.stderr
    assert "x = 13: ValueError: cannot do 13" in out.stderr
    assert "ld2 retry flaky" in out.stderr
    assert _column(tmp_path / "flaky.csv", 0) == [x for x in range(256) if x != 13]
    listed = ld2("failures", "flaky", env=_env(tmp_path))
    assert (
        listed.returncode == 0 and "x = 13: ValueError: cannot do 13 (3 attempts)" in listed.stdout
    )
    result = ld2("result", "flaky", "-o", str(tmp_path / "r.csv"), env=_env(tmp_path))
    assert result.returncode == 3 and "1 of 256 points failed" in result.stderr
    # the runner is fixed: the same command computes the failed point and completes
    (tmp_path / "runners.py").write_text(FLAKY_RUNNER.format(bad="set()"))
    fixed = ld2(*args, env=_env(tmp_path), cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "retrying 1 failed points" in fixed.stdout
    assert _column(tmp_path / "flaky.csv") == list(range(256))
    assert ld2("failures", "flaky", env=_env(tmp_path)).stdout.strip() == "flaky: no failed points"


def test_retry_command_requeues_failed_points(tmp_path: Path) -> None:
    (tmp_path / "runners.py").write_text(FLAKY_RUNNER.format(bad="{3, 4}"))
    study = _study(tmp_path / "rq.json", "flaky", size=8)
    assert ld2("run", str(study), "--import", "runners", "-w", "1", env=_env(tmp_path),
               cwd=tmp_path).returncode == 3  # fmt: skip
    out = ld2("retry", "rq", env=_env(tmp_path))
    assert out.returncode == 0 and "rq: 2 failed points requeued" in out.stdout
    status = ld2("status", "rq", env=_env(tmp_path))
    assert "running" in status.stdout


def test_a_constant_the_runner_does_not_take_stops_before_computing(tmp_path: Path) -> None:
    (tmp_path / "runners.py").write_text(FLAKY_RUNNER.format(bad="set()"))
    consts = {"consts": [{"type": "int", "key": "scael", "value": 2}]}
    study = _study(tmp_path / "typo.json", "flaky", const_param=consts)
    out = ld2("run", str(study), "--import", "runners", "-w", "1", env=_env(tmp_path),
              cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "scael" in out.stderr and "scale" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "typo.csv").exists()
    assert len(out.stderr.strip().splitlines()) <= 3


def test_outputs_are_checked_before_computing(tmp_path: Path) -> None:
    (tmp_path / "runners.py").write_text(SLOW_RUNNER)
    study = _study(tmp_path / "out.json", "slow")
    bad = ld2("run", str(study), "--import", "runners", "-o", "out.xyz", env=_env(tmp_path),
              cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "out.xyz: unknown format" in bad.stderr
    assert not (tmp_path / "started").exists()  # nothing was computed
    png = ld2("run", str(study), "--import", "runners", "-o", "one-d.png", env=_env(tmp_path),
              cwd=tmp_path)  # fmt: skip
    assert png.returncode == 2 and "a PNG needs a finite 2-D study" in png.stderr
    assert not (tmp_path / "started").exists()
    nested = tmp_path / "new" / "dir" / "out.csv"
    ok = ld2("run", str(study), "--import", "runners", "-o", str(nested), env=_env(tmp_path),
             cwd=tmp_path)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert _column(nested) == list(range(64))


def test_find_exact_and_minimize_print_their_answer(tmp_path: Path) -> None:
    md5 = ld2("run", str(EXAMPLES / "md5.json"), "-w", "1", env=_env(tmp_path), cwd=tmp_path)
    assert md5.returncode == 0, md5.stderr
    assert "found x = 123456" in md5.stdout, md5.stdout
    (tmp_path / "runners.py").write_text(
        "import ld2\n\n@ld2.runner('bowl')\ndef bowl(x: float, y: float) -> float:\n"
        "    return (x - 1.0) ** 2 + (y + 0.5) ** 2\n"
    )
    axes = [{"name": n, "type": "float", "size": 21, "start": -2.0, "step": 0.25} for n in "xy"]
    study = _study(tmp_path / "bowl.json", "bowl", result_value_type="float",
                   study_strategy={"type": "minimize", "study_strategy_param": None},
                   parameter_space={"type": "aligned", "axes": axes})  # fmt: skip
    out = ld2("run", str(study), "--import", "runners", "-w", "1", "-o", "bowl.csv",
              env=_env(tmp_path), cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "minimum 0.0 at x = 1.0, y = -0.5" in out.stdout
    status = ld2("status", "bowl", env=_env(tmp_path))
    assert "minimum 0.0 at x = 1.0, y = -0.5" in status.stdout


def test_ctrl_c_exits_130_and_a_rerun_resumes(tmp_path: Path) -> None:
    (tmp_path / "runners.py").write_text(SLOW_RUNNER)
    study = _study(tmp_path / "slow.json", "slow", size=400)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ld2", "run", str(study), "--import", "runners", "-w", "1"],
        env={**os.environ, **_env(tmp_path)}, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the runner never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted:" in stderr and "run the same command to resume" in stderr
    assert not (tmp_path / "slow.csv").exists()
    again = ld2("run", str(study), "--import", "runners", "-w", "2", env=_env(tmp_path),
                cwd=tmp_path, timeout=180)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "resuming slow" in again.stdout
    assert _column(tmp_path / "slow.csv") == list(range(400))


def test_submit_is_idempotent_and_delete_forgets(
    private_redis_url: str | None, embedded_url: str, tmp_path: Path
) -> None:
    env = {"LD2_REDIS_URL": private_redis_url or embedded_url, "LD2_PREFIX": f"t{time.time_ns()}"}
    study = _study(tmp_path / "idem.json", "flaky")
    first = ld2("submit", str(study), env=env)
    assert first.returncode == 0, first.stderr
    again = ld2("submit", str(study), env=env)
    assert again.returncode == 0 and again.stdout == first.stdout
    assert "already registered with the same content" in again.stderr
    data = json.loads(study.read_text())
    data["parameter_space"]["axes"][0]["size"] = 65
    study.write_text(json.dumps(data))
    other = ld2("submit", str(study), env=env)
    assert other.returncode == 2 and "axis x size: 64 -> 65" in other.stderr
    assert "ld2 delete idem" in other.stderr
    gone = ld2("delete", "idem", env=env)
    assert gone.returncode == 0 and "deleted idem" in gone.stdout
    assert ld2("submit", str(study), env=env).returncode == 0


@pytest.mark.parametrize(
    "args",
    [
        ("run", "{missing}"),
        ("run", "{bad_json}"),
        ("run", "{unknown_key}"),
        ("run", "{good}", "-o", "x.xyz"),
        ("run", "{good}", "-o", "{file_as_dir}/x.csv"),
        ("run", "{good}", "--capacity", "nope"),
        ("run", "{good}", "--import", "no_such_module_xyz"),
        ("submit", "{missing}", "--redis", "redis://127.0.0.1:1/0"),
        ("result", "nope", "-o", "x.xyz"),
        ("result", "nope", "-o", "x.csv"),
        ("status", "nope"),
        ("failures", "nope"),
        ("retry", "nope"),
        ("delete", "nope"),
        ("worker", "--max-size", "zero", "--redis", "redis://127.0.0.1:1/0"),
        ("status", "--redis", "redis://127.0.0.1:1/0"),
    ],
)
def test_no_user_mistake_shows_a_traceback(tmp_path: Path, args: tuple[str, ...]) -> None:
    good = EXAMPLES / "md5.json"
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"name": "x",\n  "oops"\n}')
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({**json.loads(good.read_text()), "const_params": None}))
    (tmp_path / "plain-file").write_text("")
    names = {"missing": str(tmp_path / "nope.json"), "bad_json": str(bad_json),
             "unknown_key": str(unknown), "good": str(good),
             "file_as_dir": str(tmp_path / "plain-file")}  # fmt: skip
    out = ld2(*(a.format(**names) for a in args), env=_env(tmp_path), cwd=tmp_path)
    assert out.returncode in (1, 2), out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert out.stderr.startswith("ld2: ") or "Usage:" in out.stderr, out.stderr


def test_a_study_no_local_runner_could_take_is_refused_not_hung(tmp_path: Path) -> None:
    data = json.loads((EXAMPLES / "mandelbrot.json").read_text())
    data["required_capacity"] = ["mandelbrot", "mandelbrot-scalar"]
    two = tmp_path / "two.json"
    two.write_text(json.dumps(data))
    out = ld2("run", str(two), env=_env(tmp_path), cwd=tmp_path, timeout=60)
    assert out.returncode == 2 and "names 2 capacities" in out.stderr, out.stderr
    other = ld2("run", str(EXAMPLES / "mandelbrot.json"), "--capacity", "mandelbrot-scalar",
                env=_env(tmp_path), cwd=tmp_path, timeout=60)  # fmt: skip
    assert other.returncode == 2 and "is not the study's required_capacity" in other.stderr
