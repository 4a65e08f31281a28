"""Compute processes end with their worker: on SIGTERM (at once, mid-trial), when the worker is
killed, and when a trial overruns its limit (a hung runner). Real `ld2 worker` processes over a
real engine; the runner marks each compute process it runs in with a file named by its pid."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from ld2.store.redis import RedisTable
from ld2.worker import runners
from ld2.worker.loop import Worker, WorkerConfig
from tests.conftest import REAL_BACKENDS, make_table
from tests.store.helpers import all_results, int_axis, registry

RUNNER = """\
import os, time
from pathlib import Path
from ld2.worker.runners import runner

@runner({name!r})
def hanging(x):
    Path({marks!r}, str(os.getpid())).touch()
    if {hangs}:
        time.sleep(3600)
    time.sleep({seconds})
    return x * x
"""


def _runner_module(tmp_path: Path, name: str, hangs: str, seconds: float = 0.0) -> tuple[str, Path]:
    """A runner module that hangs where the expression `hangs` (of x) is true, else takes
    `seconds`; each compute process it runs in leaves a file named by its pid in `marks`."""
    marks = tmp_path / "marks"
    marks.mkdir()
    module = f"hangrunner_{tmp_path.name.replace('-', '_')}"
    text = RUNNER.format(name=name, marks=str(marks), hangs=hangs, seconds=seconds)
    (tmp_path / f"{module}.py").write_text(text)
    return module, marks


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a process, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0]


def _alive(pid: int) -> bool:
    info = _stat(pid)
    return info is not None and info[1] != "Z"


def _descendants(root: int) -> set[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _stat(int(entry))) is not None:
            parents[int(entry)] = info[0]
    out = set()
    for pid in parents:
        up, seen = parents[pid], 0
        while up not in (root, 0, 1) and up in parents and seen < 64:
            up, seen = parents[up], seen + 1
        if up == root:
            out.add(pid)
    return out


def _pids(marks: Path) -> set[int]:
    return {int(p.name) for p in marks.iterdir()}


async def _until(
    what: str, ready: Callable[[], bool], proc: subprocess.Popen[str], limit: float = 60
) -> None:
    """Wait until `ready()` (a state), failing if the worker exits first."""
    deadline = time.monotonic() + limit
    while not ready():
        assert proc.poll() is None, f"exited {proc.returncode}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{what} never happened"
        await asyncio.sleep(0.02)


async def _gone(pids: set[int], why: str, limit: float = 10) -> None:
    """Wait until none of `pids` runs (generous: the kernel ends them at once)."""
    deadline = time.monotonic() + limit
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not [pid for pid in pids if _alive(pid)], why


@contextlib.contextmanager
def _worker(
    table: RedisTable, url: str, module: str, tmp_path: Path, *args: str
) -> Iterator[subprocess.Popen[str]]:
    """`ld2 worker` on the table's engine and prefix; it and every process it started are
    killed afterwards, whatever the test saw (nothing is left behind)."""
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LD2_API_URL")},
        "LD2_REDIS_URL": url,
        "LD2_PREFIX": table.prefix,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ld2", "worker", "--import", module, "--idle-wait", "0.05", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[int] = set()
    try:
        yield proc
    finally:
        seen |= _descendants(proc.pid) | _pids(tmp_path / "marks")
        for pid in [proc.pid, *seen]:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[tuple[RedisTable, str]]:
    """A table on a real engine (the private redis-server when there is one) and its URL."""
    name = REAL_BACKENDS[0]
    async with make_table(request, name, max_attempts=2) as table:
        yield table, table.url


async def test_sigterm_mid_trial_ends_the_compute_processes_at_once(
    engine: tuple[RedisTable, str], tmp_path: Path
) -> None:
    table, url = engine
    module, marks = _runner_module(tmp_path, "hangs-always", "True")
    sid = await table.register_study(registry([int_axis("x", 2)], capacity=["hangs-always"]))
    with _worker(table, url, module, tmp_path, "--processes", "2", "--max-size", "1") as proc:
        await _until("two trials computing", lambda: len(_pids(marks)) == 2, proc)
        pool = _descendants(proc.pid) | _pids(marks)
        assert _pids(marks) <= pool
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            out = proc.communicate(timeout=10)[0]  # generous: it takes well under a second
        except subprocess.TimeoutExpired:
            pytest.fail("the worker was still running 10 s after SIGTERM")
        took = time.monotonic() - t0
        assert proc.returncode == 0 and "2 handed back" in out, out
        await _gone(pool, f"compute processes survived the worker (it exited in {took:.1f} s)")
    state = await table.get_study(sid)
    assert state.reserved == 0 and state.done == 0 and state.failed == 0
    again = [await table.reserve(["hangs-always"], 1, "other") for _ in range(2)]
    assert sorted((r.start, r.attempt) for r in again if r is not None) == [(0, 0), (1, 0)]


async def test_a_killed_worker_takes_its_compute_processes_along(
    engine: tuple[RedisTable, str], tmp_path: Path
) -> None:
    table, url = engine
    module, marks = _runner_module(tmp_path, "hangs-too", "True")
    await table.register_study(registry([int_axis("x", 2)], capacity=["hangs-too"]))
    with _worker(table, url, module, tmp_path, "--processes", "1", "--max-size", "1") as proc:
        await _until("a trial computing", lambda: len(_pids(marks)) == 1, proc)
        (pid,) = _pids(marks)
        proc.kill()
        proc.wait()
        await _gone({pid}, "the compute process outlived its killed worker")


async def test_a_hung_runner_fails_its_trial_and_the_worker_goes_on(
    engine: tuple[RedisTable, str], tmp_path: Path
) -> None:
    table, url = engine
    module, _ = _runner_module(tmp_path, "hangs-on-3", "x == 3")
    sid = await table.register_study(registry([int_axis("x", 8)], capacity=["hangs-on-3"]))
    args = ["--processes", "2", "--max-size", "1", "--trial-limit", "1", "--exit-when-idle", "2"]
    with _worker(table, url, module, tmp_path, *args) as proc:
        err = proc.communicate(timeout=120)[1]
        assert proc.returncode == 0, err
    state = await table.get_study(sid)
    assert (state.status, state.done, state.failed) == ("done", 7, 1), err
    failures = await table.failures(sid)
    assert [(f.start, f.count, f.error) for f in failures] == [
        (3, 1, "TrialTimeout: computation exceeded 1.0 s")
    ]
    flats, values = await all_results(table, sid)
    assert flats == [0, 1, 2, 4, 5, 6, 7] and values == [x * x for x in flats]
    assert "computation exceeded 1.0 s" in err


async def test_a_trial_over_its_limit_ends_only_its_own_slots_process(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each slot computes in its own process: a trial over its limit ends that process only
    (restarted for the slot's next trial); the other slots' computations go on undisturbed,
    nothing else fails or is computed twice."""
    module, marks = _runner_module(tmp_path, "hangs-on-0", "x == 0", seconds=0.2)
    monkeypatch.syspath_prepend(str(tmp_path))
    async with make_table(request, "valkey", max_attempts=2) as table:
        sid = await table.register_study(registry([int_axis("x", 30)], capacity=["hangs-on-0"]))
        config = WorkerConfig(
            ["hangs-on-0"], processes=3, max_size=1, trial_limit=1.0, exit_when_idle=1.0,
            idle_wait=0.05, imports=[module],
        )  # fmt: skip
        worker = Worker(table, runners.load([module]), config)
        try:
            stats = await asyncio.wait_for(worker.run(), 60)
        finally:
            for pid in _pids(marks):
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
        # point 0 timed out twice (its 2 attempts): two processes ended and started again
        assert stats.failures == 2 and stats.abandoned == 0
        assert sum(p.started for p in worker.procs) == 3 + 2
        assert stats.trials == 29  # every other point computed once: none again
        state = await table.get_study(sid)
        assert (state.status, state.done, state.failed) == ("done", 29, 1)
        flats, values = await all_results(table, sid)
        assert flats == list(range(1, 30)) and values == [x * x for x in flats]
