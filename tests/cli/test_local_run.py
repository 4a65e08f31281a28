"""`ld2 run` and its state directory: looked at from other terminals, one run at a time,
killed and run again (its server adopted and stopped, its leases released at once)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cli.test_cli import ld2

NAME = "slow"
HOLD_FROM = 300  # trials reaching this point wait while the file `hold` exists
RUNNER = f"""
import time
from pathlib import Path
from ld2.worker.runners import runner

@runner("slow-square", vectorized=True)
def slow_square(x):
    Path("computing").touch()
    if int(x[-1]) >= {HOLD_FROM}:
        while Path("hold").exists():
            Path("holding").touch()  # this trial is leased, and waits
            time.sleep(0.01)
    time.sleep(0.002 * len(x))
    return x * x
"""


def _study(tmp_path: Path, name: str = NAME, size: int = 600) -> Path:
    (tmp_path / "slowrun.py").write_text(RUNNER)
    study = {
        "name": name,
        "required_capacity": ["slow-square"],
        "study_strategy": {"type": "all_calculation", "study_strategy_param": None},
        "result_type": "scalar",
        "result_value_type": "int",
        "parameter_space": {
            "type": "aligned",
            "axes": [{"name": "x", "type": "int", "size": size, "step": 1, "start": 0}],
        },
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(study))
    return path


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LD2_REDIS_URL")}
    return {**env, "LD2_STATE_DIR": str(state)}


class Run:
    """``ld2 run`` in the background, its output in files (a pipe nobody reads could fill)."""

    def __init__(self, tmp_path: Path, tag: str, study: Path, state: Path) -> None:
        self.out, self.err = tmp_path / f"{tag}.out", tmp_path / f"{tag}.err"
        args = [sys.executable, "-m", "ld2", "run", str(study), "--import", "slowrun", "-w", "2"]
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=err, env=_env(state), cwd=tmp_path, text=True
            )

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait(self, limit: float = 120) -> int:
        return self.proc.wait(limit)


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[list[Run]]:
    """The runs a test starts; afterwards nothing of the test's directory may still run (a
    killed run's orphaned compute processes and its server name it on their command line)."""
    started: list[Run] = []
    yield started
    for pid in _processes_naming(str(tmp_path)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for run in started:
        run.proc.wait(10)


def _processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains `text` (never this one)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, IndexError):
            continue
        if state != "Z" and text.encode() in cmd:
            out.append(int(entry))
    return out


def _valkeys(state: Path) -> list[int]:
    """The valkey-server processes of a state directory (their title names its socket)."""
    found = []
    for pid in _processes_naming(str(state.resolve() / "valkey.sock")):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/comm") as f:
            if f.read().startswith("valkey-server"):
                found.append(pid)
    return found


def _wait_until(check: Callable[[], bool], what: str, run: Run, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert run.proc.poll() is None, f"the run exited {run.proc.returncode}: {run.output()}"
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.02)


def _rows(path: Path) -> list[tuple[int, int]]:
    return [(int(x), int(r)) for x, r in list(csv.reader(path.open()))[1:]]


def _assert_whole(path: Path, size: int = 600) -> None:
    """Every point exactly once, in order, with the right value."""
    assert _rows(path) == [(x, x * x) for x in range(size)]


def _holds_flock(pid: int) -> bool:
    with open("/proc/locks") as f:
        return any(line.split()[1:2] == ["FLOCK"] and line.split()[4] == str(pid) for line in f)


def test_looking_from_other_terminals_never_disturbs_a_run(tmp_path: Path, runs: list[Run]) -> None:
    state = tmp_path / "state"
    env = {"LD2_STATE_DIR": str(state)}
    study = _study(tmp_path)
    (tmp_path / "hold").touch()
    run = Run(tmp_path, "run", study, state)
    runs.append(run)
    _wait_until((tmp_path / "holding").exists, "a held trial", run)
    server = _valkeys(state)
    assert len(server) == 1
    for round_ in range(3):
        status = ld2("status", NAME, env=env, cwd=tmp_path)
        assert status.returncode == 0 and "running" in status.stdout, status.stderr
        partial = ld2("result", NAME, "-o", "partial.csv", env=env, cwd=tmp_path)
        assert partial.returncode == 3 and "partial: slow is running" in partial.stderr
        rows = _rows(tmp_path / "partial.csv")
        assert rows and all(r == x * x for x, r in rows)
        assert ld2("pause", NAME, env=env, cwd=tmp_path).returncode == 0
        if round_ == 0:
            assert "paused" in ld2("status", NAME, env=env, cwd=tmp_path).stdout
        assert ld2("resume", NAME, env=env, cwd=tmp_path).returncode == 0
        assert run.proc.poll() is None and _valkeys(state) == server

    # a server too busy to answer at once (here: stopped) is waited for, never replaced
    os.kill(server[0], signal.SIGSTOP)
    try:
        with (tmp_path / "st.out").open("w") as out:
            look = subprocess.Popen(
                [sys.executable, "-m", "ld2", "status", NAME],
                stdout=out, stderr=subprocess.STDOUT, env=_env(state), cwd=tmp_path,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while not _holds_flock(look.pid):  # it is joining the server (start.lock)
            assert look.poll() is None, (tmp_path / "st.out").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(subprocess.TimeoutExpired):
            look.wait(2.5)  # 1 s without an answer once meant: replace the server
    finally:
        os.kill(server[0], signal.SIGCONT)
    assert look.wait(60) == 0, (tmp_path / "st.out").read_text()
    assert _valkeys(state) == server and server[0] == int((state / "valkey.pid").read_text())

    (tmp_path / "hold").unlink()
    assert run.wait() == 0, run.output()
    _assert_whole(tmp_path / f"{NAME}.csv")
    assert _valkeys(state) == []  # its owner stopped it


def test_one_run_at_a_time_in_a_state_dir(tmp_path: Path, runs: list[Run]) -> None:
    state = tmp_path / "state"
    env = {"LD2_STATE_DIR": str(state)}
    study = _study(tmp_path)
    (tmp_path / "hold").touch()
    first = Run(tmp_path, "first", study, state)
    runs.append(first)
    _wait_until((tmp_path / "holding").exists, "a held trial", first)
    second = ld2("run", str(study), "--import", "slowrun", "-w", "1", env=env, cwd=tmp_path)
    assert second.returncode == 2, second.stdout + second.stderr
    assert (
        f"another ld2 run (pid {first.proc.pid}) is using {state.resolve()}; "
        "wait for it or use --state-dir"
    ) in second.stderr.replace("\n", "")
    assert "Traceback" not in second.stderr
    # reading is not blocked, and another state directory is another run
    assert ld2("status", NAME, env=env, cwd=tmp_path).returncode == 0
    assert ld2("result", NAME, "-o", "partial.csv", env=env, cwd=tmp_path).returncode == 3
    tiny = _study(tmp_path, "tiny", 20)
    other = ld2(
        "run", str(tiny), "--import", "slowrun", "-w", "1", "--state-dir", str(tmp_path / "other"),
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    _assert_whole(tmp_path / "tiny.csv", 20)
    (tmp_path / "hold").unlink()
    assert first.wait() == 0, first.output()
    _assert_whole(tmp_path / f"{NAME}.csv")
    assert _valkeys(state) == [] and _valkeys(tmp_path / "other") == []


def _kill_holding_a_trial(tmp_path: Path, state: Path, runs: list[Run]) -> int:
    """Start a run, SIGKILL it (only its main process, as ``kill -9 PID``) while it holds a
    trial; its compute processes are orphaned and still run. Returns its server's pid."""
    (tmp_path / "hold").touch()
    run = Run(tmp_path, "killed", _study(tmp_path), state)
    runs.append(run)
    _wait_until((tmp_path / "holding").exists, "a held trial", run)
    server = _valkeys(state)
    assert len(server) == 1
    run.proc.kill()
    run.proc.wait(10)
    (tmp_path / "hold").unlink()
    return server[0]


def test_a_killed_runs_server_is_adopted_and_stopped(tmp_path: Path, runs: list[Run]) -> None:
    state = tmp_path / "state"
    server = _kill_holding_a_trial(tmp_path, state, runs)
    assert _valkeys(state) == [server]  # left running, without its owner
    again = ld2(
        "run", str(tmp_path / f"{NAME}.json"), "--import", "slowrun", "-w", "2",
        env={"LD2_STATE_DIR": str(state)}, cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "resuming slow" in again.stdout
    _assert_whole(tmp_path / f"{NAME}.csv")
    assert _valkeys(state) == []  # adopted, and stopped at the end


def test_a_killed_run_run_again_releases_its_leases_and_finishes(
    tmp_path: Path, runs: list[Run]
) -> None:
    state = tmp_path / "state"
    _kill_holding_a_trial(tmp_path, state, runs)
    t0 = time.monotonic()
    again = ld2(
        "run", str(tmp_path / f"{NAME}.json"), "--import", "slowrun", "-w", "2",
        env={"LD2_STATE_DIR": str(state)}, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert again.returncode == 0, again.stderr
    assert "of an interrupted run handed back" in again.stdout, again.stdout
    assert "600 points written" in again.stdout
    _assert_whole(tmp_path / f"{NAME}.csv")
    assert elapsed < 60, f"the rerun took {elapsed:.1f} s: it waited for the 600 s leases"
    # nothing is left for a third run to release
    third = ld2(
        "run", str(tmp_path / f"{NAME}.json"), "--import", "slowrun", "-w", "1",
        "-o", str(tmp_path / "third.csv"), env={"LD2_STATE_DIR": str(state)}, cwd=tmp_path,
    )  # fmt: skip
    assert third.returncode == 0 and "handed back" not in third.stdout
    _assert_whole(tmp_path / "third.csv")
