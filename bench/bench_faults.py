"""Fault recovery benchmark: how long ld2 takes to come back from the faults a fleet meets.

Run by hand: ``uv run python bench/bench_faults.py`` (about 2-3 minutes on 2 cores).

tests/cli/test_faults.py and tests/cli/test_local_run.py assert that these faults are ridden
out; this script measures how long the recovery takes. Everything runs on private processes
started here (redis-server on free loopback ports with an AOF, `ld2 api`, `ld2 worker`,
`ld2 run` with its own state directory) and stopped by pid at the end; the shared Redis on
6379 is never touched. The runner (written to a temporary directory) returns x*x after a short
sleep per point and writes the point it computes to a marker file, so the script waits for "a
worker is mid-trial" instead of sleeping blindly. Progress is read with ld2's own RedisTable.

Scenarios (default ld2 settings unless stated; every worker has one compute process, as in
the tests, so it holds one trial at a time; where the figure is "time until progress resumes",
the workers take trials of 10 points so that progress normally moves every few tens of ms, and
the normal pace is printed next to the figure):

1. kill -9 of one of two workers mid-trial (default --lease 30 s): time until its range is
   registered by the other worker (goal: 45 s), and the sweep's time against the same sweep
   without the kill.
2. Redis SIGKILL mid-sweep, restarted from its AOF: outage, time from restart until the
   workers register again, time until the study is done.
3. Redis stopped cleanly (SIGTERM) and restarted: the same figures.
4. Every client connection cut (CLIENT KILL TYPE normal) five times within ~20 ms: time until
   progress resumes.
5. A full noeviction Redis (maxmemory just above used memory, filled with junk until OOM) for
   ~2 s, then freed: time from freeing until progress resumes.
6. `ld2 api` SIGKILLed while two workers use it (--api), restarted on the same port: time from
   the restart until progress resumes.
7. `ld2 run` (embedded backend) SIGKILLed at ~40 %, run again: the rerun's wall time.
8. SIGTERM of a worker whose runner sleeps 30 s in a trial: time until it exits (goal: 5 s).

Every study's results are checked point by point at the end of its scenario (`ld2 result` and
the registered ranges in the store: every point once, with its value). Exit status 0 when every
scenario completed with whole results, met its goal and left no process behind; 1 otherwise,
naming what went wrong. Findings (a recovery slower or other than one would expect) are listed
at the end without changing the exit status. ``... bench_faults.py 4 5`` runs some scenarios.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis

from ld2.core.errors import LD2Error
from ld2.core.studyfile import study_from_json
from ld2.store.base import StudyState
from ld2.store.redis import RedisTable

T = TypeVar("T")

TAG = uuid.uuid4().hex  # in every child's environment: how the end finds anything left over
POLL = 0.01  # seconds between two looks at a state
CLEARED = ("REDIS_URL", "LD2_REDIS_URL", "LD2_API_URL", "LD2_API_TOKEN", "LD2_PREFIX")
CLEARED += ("LD2_STATE_DIR", "LD2_ALLOW_EVICTION", "PYTHONPATH")
RUNNER_MODULE = "benchfaults_runner"
RUNNER = '''"""The runner of bench_faults.py: x*x after a pause; the point computing in a marker."""

import os
import time
from pathlib import Path

from ld2.worker.runners import runner


@runner("benchsq")
def benchsq(x: int) -> int:
    marker = os.environ.get("BENCH_MARKER")
    if marker:
        Path(marker).write_text(str(x))
    time.sleep(float(os.environ.get("BENCH_PAUSE", "0.005")))
    return x * x
'''
LEASE_GOAL = 45.0  # the issue: a killed worker's range back within 45 s (default lease)
SIGTERM_GOAL = 5.0  # the issue: a worker stops within 5 s of SIGTERM, whatever it computes


class Failure(Exception):
    """A scenario that did not recover, or results that are not whole: a finding."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"


# -- processes ---------------------------------------------------------------------------------
@dataclass
class Proc:
    label: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def mentions(self, text: str) -> int:
        """How many lines of its output contain `text`."""
        try:
            return sum(text in line for line in self.log.read_text(errors="replace").splitlines())
        except OSError:
            return 0


STARTED: list[Proc] = []  # every process this script started, to be sure none is left


class Procs:
    """Every process this script starts; each is stopped by its pid, never by name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.live: list[Proc] = []

    def start(
        self, label: str, args: Sequence[str], env: dict[str, str], cwd: Path | None = None
    ) -> Proc:
        log = self.root / f"{label}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(args), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=cwd or self.root,
            )  # fmt: skip
        proc = Proc(label, popen, log)
        self.live.append(proc)
        STARTED.append(proc)
        return proc

    def stop(self, proc: Proc, sig: int = signal.SIGTERM, grace: float = 15.0) -> int:
        """Signal it (SIGKILL after `grace` seconds) and reap it; returns its exit status."""
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(sig)
            try:
                proc.popen.wait(grace)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        if proc in self.live:
            self.live.remove(proc)
        return proc.popen.returncode

    def stop_all(self) -> None:
        for proc in reversed(list(self.live)):
            self.stop(proc)


def ours() -> list[tuple[int, str]]:
    """Live processes (not zombies, never this one) with this run's tag in their environment
    or its directory on their command line: (pid, command line)."""
    found = []
    marks = (f"BENCH_FAULTS_TAG={TAG}".encode(), TAG.encode())
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    environ = f.read()
            except OSError:
                environ = b""
        except (OSError, IndexError):
            continue
        if state != "Z" and (marks[0] in environ or marks[1] in cmd):
            found.append((int(entry), cmd.replace(b"\0", b" ").decode(errors="replace").strip()))
    return found


def wait_until(
    what: str, check: Callable[[], T | None], limit: float, watch: Sequence[Proc] = ()
) -> T:
    """Poll `check` until it returns a true value (returned); a Failure after `limit` seconds,
    or as soon as a watched process has exited."""
    deadline = time.monotonic() + limit
    while True:
        value = check()
        if value:
            return value
        for proc in watch:
            if not proc.alive():
                raise Failure(
                    f"{what}: {proc.label} exited ({proc.popen.returncode}) first; "
                    f"its log ends: {tail(proc.log)}"
                )
        if time.monotonic() > deadline:
            raise Failure(f"{what} did not happen within {limit:.0f} s")
        time.sleep(POLL)


# -- reading the study -------------------------------------------------------------------------
class Probe:
    """A study's counters and registered ranges, read with ld2's RedisTable (its own loop)."""

    def __init__(self, url: str, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.table = RedisTable.from_url(url)
        self.name = name
        self.key: str | None = None  # the study's hash, once known

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 2.0))

    def submit(self, size: int) -> None:
        registry = study_from_json(study_json(self.name, size))
        self._run(self.table.submit_study(registry))

    def state(self) -> StudyState | None:
        """The study as `ld2 status` sees it; None while the backend does not answer."""
        try:
            state = self._run(self.table.get_study(name=self.name))
        except (LD2Error, redis.RedisError, OSError, TimeoutError):
            return None
        self.key = self.table.study_keys(state.study_id).s
        return state

    def done(self) -> int | None:
        """Points registered; None while the backend does not answer."""
        if self.key is None:
            state = self.state()
            return None if state is None else state.done
        try:
            value = self._run(self.table.client.hget(self.key, "done"))
        except (redis.RedisError, OSError, TimeoutError):
            return None
        return int(value or 0)

    def blocks(self) -> list[tuple[int, int]]:
        """The registered ranges: (first point, count), in grid order."""

        async def read() -> list[tuple[int, int]]:
            state = await self.table.get_study(name=self.name)
            return [(b.start, b.count) async for b in self.table.iter_results(state.study_id)]

        return self._run(read())

    def covered(self, x: int) -> bool | None:
        """Whether point `x` is registered; None while the backend does not answer."""
        try:
            return any(start <= x < start + count for start, count in self.blocks())
        except (LD2Error, redis.RedisError, OSError, TimeoutError):
            return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.table.close())
        self.loop.close()


def study_json(name: str, size: int) -> dict[str, Any]:
    return {
        "name": name, "required_capacity": ["benchsq"],
        "study_strategy": {"type": "all_calculation", "study_strategy_param": None},
        "result_type": "scalar", "result_value_type": "int",
        "parameter_space": {"type": "aligned", "axes": [
            {"name": "x", "type": "int", "size": size, "step": 1, "start": 0}]},
    }  # fmt: skip


@dataclass
class Pace:
    """How progress moved before a fault: a registration every `gap` s (median), at `rate`
    points/s."""

    gap: float
    longest: float
    rate: float

    def __str__(self) -> str:
        return (
            f"normal pace: a registration every {self.gap * 1000:.0f} ms "
            f"(longest gap {self.longest * 1000:.0f} ms), {self.rate:.0f} points/s"
        )


def track(probe: Probe, until: int, watch: Sequence[Proc], limit: float = 120) -> Pace:
    """Follow the study until `until` points are done, noting when `done` moved."""
    wait_until("the first registration", lambda: (probe.done() or 0) > 0, limit, watch)
    times: list[float] = []
    values: list[int] = []

    def moved() -> bool:
        done = probe.done()
        if done is not None and (not values or done != values[-1]):
            times.append(time.monotonic())
            values.append(done)
        return done is not None and done >= until

    wait_until(f"{until} points done", moved, limit, watch)
    gaps = [b - a for a, b in itertools.pairwise(times)] or [float("nan")]
    span = times[-1] - times[0] if len(times) > 1 else float("nan")
    return Pace(statistics.median(gaps), max(gaps), (values[-1] - values[0]) / span)


def read_done(probe: Probe) -> int:
    """Points registered, once the backend answers."""

    def read() -> tuple[int] | None:
        done = probe.done()
        return None if done is None else (done,)

    return wait_until("reading the study", read, 30)[0]


def progress_after(probe: Probe, base: int, limit: float, watch: Sequence[Proc]) -> float:
    """Wait until more than `base` points are done; returns when (monotonic)."""
    wait_until(f"progress beyond {base} points", lambda: (probe.done() or -1) > base, limit, watch)
    return time.monotonic()


# -- checking results --------------------------------------------------------------------------
def check_csv(path: Path, total: int) -> None:
    """Every point of the study exactly once, in grid order, with the value x*x."""
    with path.open() as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["x", "result"]:
        raise Failure(f"{path.name}: unexpected header {rows[:1]}")
    xs = [int(row[0]) for row in rows[1:]]
    seen = Counter(xs)
    missing = [x for x in range(total) if not seen[x]]
    doubled = sorted(x for x, n in seen.items() if n > 1)
    stray = sorted(x for x in seen if not 0 <= x < total)
    wrong = [int(row[0]) for row in rows[1:] if int(row[1]) != int(row[0]) ** 2]
    problems = [
        f"{what}: {len(xs_)} (first {xs_[:8]})"
        for what, xs_ in (("missing", missing), ("more than once", doubled),
                          ("outside the grid", stray), ("wrong value", wrong))
        if xs_
    ]  # fmt: skip
    if not problems and xs != list(range(total)):
        problems.append("not in grid order")
    if problems:
        raise Failure(f"{path.name}: points " + "; ".join(problems))


def check_blocks(blocks: list[tuple[int, int]], total: int) -> None:
    """The registered ranges tile the grid: no hole, no range registered twice."""
    at = 0
    for start, count in sorted(blocks):
        if start != at:
            what = "a hole" if start > at else "an overlap (registered twice)"
            raise Failure(f"the store's registered ranges have {what} at point {min(at, start)}")
        at += count
    if at != total:
        raise Failure(f"the store's registered ranges end at point {at}, not {total}")


# -- the bench ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    figure: str  # the measured figure, short (for the table)
    meaning: str  # what it means (for the scenario's line)
    goal: str = "-"
    met: bool | None = None  # the goal met (None: no goal)
    notes: list[str] = field(default_factory=list)  # findings worth a line of their own


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs = Procs(root)
        self.probes: list[Probe] = []
        (root / f"{RUNNER_MODULE}.py").write_text(RUNNER)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in CLEARED}
        env.update(
            PYTHONPATH=str(self.root),
            BENCH_FAULTS_TAG=TAG,
            LD2_STATE_DIR=str(self.root / "unused-state"),  # nothing may use ~/.local/state
        )
        env.update(extra)
        return env

    def probe(self, url: str, name: str) -> Probe:
        probe = Probe(url, name)
        self.probes.append(probe)
        return probe

    def close_probes(self) -> None:
        for probe in self.probes:
            probe.close()
        self.probes.clear()

    def ld2(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ld2", *args], env=self.env(**env), cwd=self.root,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def worker(
        self,
        label: str,
        backend: Sequence[str],
        pause: float,
        *extra: str,
        marker: Path | None = None,
    ) -> Proc:
        args = [
            sys.executable, "-m", "ld2", "worker", "--import", RUNNER_MODULE, "--capacity",
            "benchsq", "--processes", "1", "--exit-when-idle", "120", *backend, *extra,
        ]  # fmt: skip
        env = self.env(BENCH_PAUSE=str(pause), BENCH_MARKER=str(marker) if marker else "")
        return self.procs.start(label, args, env)

    def redis(self, label: str) -> RedisServer:
        return RedisServer(self, label)

    def verify(self, probe: Probe, total: int, url: str) -> None:
        """The study is done, nothing failed, and its results are whole (store and CSV)."""
        state = wait_until("reading the finished study", probe.state, 30)
        if state.status != "done" or state.failed:
            raise Failure(f"{probe.name}: status {state.status}, {state.failed} points failed")
        check_blocks(probe.blocks(), total)
        out = self.root / f"{probe.name}.csv"
        result = self.ld2("result", probe.name, "-o", str(out), "--redis", url)
        if result.returncode != 0:
            raise Failure(f"ld2 result {probe.name} exited {result.returncode}: {result.stderr}")
        check_csv(out, total)

    def cleanup(self) -> None:
        self.close_probes()
        self.procs.stop_all()


class RedisServer:
    """A private redis-server with an AOF (everysec), restartable on the same port and dir."""

    def __init__(self, bench: Bench, label: str) -> None:
        self.bench = bench
        self.label = label
        self.dir = bench.root / label
        self.dir.mkdir()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None
        self.starts = 0

    def start(self) -> float:
        """Start it; returns when it first answers PING (monotonic)."""
        self.starts += 1
        args = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.dir),
        ]  # fmt: skip
        self.proc = self.bench.procs.start(
            f"{self.label}-redis{self.starts}", args, self.bench.env()
        )
        client = self.admin()
        try:
            return self.wait_ping(client)
        finally:
            client.close()

    def wait_ping(self, client: redis.Redis) -> float:
        def pong() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        assert self.proc is not None
        wait_until(f"redis-server on port {self.port} answering PING", pong, 60, [self.proc])
        return time.monotonic()

    def admin(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def stop(self, sig: int) -> float:
        """Send `sig` and wait for the server to exit; returns when the signal was sent."""
        assert self.proc is not None
        sent = time.monotonic()
        self.bench.procs.stop(self.proc, sig, grace=30)
        return sent


# -- scenarios ---------------------------------------------------------------------------------
def s1_killed_worker(b: Bench) -> Outcome:
    size, pause = 600, 0.01  # 6 s of compute: the rest is done long before a 30 s lease ends
    server = b.redis("s1")
    server.start()
    backend = ("--redis", server.url)

    # the same sweep without the kill
    base = b.probe(server.url, "s1-nokill")
    base.submit(size)
    t0 = time.monotonic()
    workers = [b.worker(f"s1-nokill-w{i}", backend, pause) for i in (1, 2)]
    wait_until("the sweep without a kill done", lambda: (base.done() or 0) >= size, 120, workers)
    clean_sweep = time.monotonic() - t0
    for w in workers:
        b.procs.stop(w)
    b.verify(base, size, server.url)

    probe = b.probe(server.url, "s1-kill")
    probe.submit(size)
    marker = b.root / "s1-victim.marker"
    t0 = time.monotonic()
    victim = b.worker("s1-victim", backend, pause, marker=marker)
    rescuer = b.worker("s1-rescuer", backend, pause)
    wait_until("the victim computing a trial", marker.exists, 60, [victim, rescuer])
    killed_at = time.monotonic()
    b.procs.stop(victim, signal.SIGKILL)

    def point() -> int | None:
        with contextlib.suppress(ValueError):
            return int(marker.read_text()) + 1  # +1: point 0 is a valid answer
        return None

    x = wait_until("reading the victim's marker", point, 5) - 1
    notes = []
    if probe.covered(x):
        notes.append(f"point {x} was registered at the kill: the kill fell between two trials")
    back_at = wait_until(
        f"point {x} (the killed worker's range) registered",
        lambda: time.monotonic() if probe.covered(x) else None, 120, [rescuer],
    )  # fmt: skip
    done_at = wait_until(
        "the sweep with a kill done",
        lambda: time.monotonic() if (probe.done() or 0) >= size else None, 120, [rescuer],
    )  # fmt: skip
    b.procs.stop(rescuer)
    b.verify(probe, size, server.url)
    back = back_at - killed_at
    return Outcome(
        figure=f"range back after {back:.1f} s; sweep {done_at - t0:.1f} s vs {clean_sweep:.1f} s",
        meaning=(
            f"the killed worker's range (point {x}) was registered by the other worker "
            f"{back:.1f} s after kill -9 (default 30 s lease, then 1 s idle polls and its "
            f"recompute); the {size}-point sweep took {done_at - t0:.1f} s instead of "
            f"{clean_sweep:.1f} s without the kill"
        ),
        goal=f"<= {LEASE_GOAL:.0f} s",
        met=back <= LEASE_GOAL,
        notes=notes,
    )


def _sweep_with_redis_restart(b: Bench, label: str, sig: int) -> Outcome:
    size, pause = 1500, 0.005
    server = b.redis(label)
    server.start()
    probe = b.probe(server.url, label)
    probe.submit(size)
    backend = ("--redis", server.url)
    workers = [b.worker(f"{label}-w{i}", backend, pause, "--max-size", "10") for i in (1, 2)]
    pace = track(probe, size * 3 // 10, workers)
    before = probe.done() or 0
    stopped_at = server.stop(sig)
    up_at = server.start()
    reloaded = read_done(probe)
    resumed_at = progress_after(probe, reloaded, 120, workers)
    finished_at = wait_until(
        "the study done after the restart",
        lambda: time.monotonic() if (probe.done() or 0) >= size else None, 180, workers,
    )  # fmt: skip
    outages = [w.mentions("retrying with backoff") for w in workers]
    rejected = sum(w.mentions("not registered") for w in workers)
    for w in workers:
        b.procs.stop(w)
    b.verify(probe, size, server.url)
    expected = (size - reloaded) / pace.rate
    notes = [
        f"{pace}; {before} points done just before the signal, {reloaded} after the reload: "
        f"{max(before - reloaded, 0)} lost",
        f"workers that logged the outage: {sum(n > 0 for n in outages)} of 2; "
        f"registrations rejected after the restart: {rejected}",
    ]
    tail_s = finished_at - up_at
    if tail_s > expected + 10:
        notes.append(
            f"FINDING: the study took {tail_s:.1f} s after the restart where the remaining "
            f"{size - reloaded} points need ~{expected:.1f} s at the normal pace: a range waited "
            "for its lease to expire"
        )
    how = "SIGKILL" if sig == signal.SIGKILL else "SIGTERM (AOF flushed)"
    return Outcome(
        figure=(
            f"outage {up_at - stopped_at:.2f} s; resumed {resumed_at - up_at:.2f} s after "
            f"restart; done {tail_s:.1f} s after"
        ),
        meaning=(
            f"Redis {how}, restarted at once: PING answered again {up_at - stopped_at:.2f} s "
            f"after the signal, the workers registered again {resumed_at - up_at:.2f} s after "
            f"that, and the study was done {tail_s:.1f} s after the restart (~{expected:.1f} s "
            "of work left); every point present once"
        ),
        notes=notes,
    )


def s2_redis_sigkill(b: Bench) -> Outcome:
    return _sweep_with_redis_restart(b, "s2", signal.SIGKILL)


def s3_redis_sigterm(b: Bench) -> Outcome:
    return _sweep_with_redis_restart(b, "s3", signal.SIGTERM)


def _resume_figures(
    b: Bench, probe: Probe, size: int, workers: Sequence[Proc], pace: Pace, base: int, at: float
) -> tuple[float, float, list[str]]:
    """After a fault that ended at `at` with `base` points done: (resumed after, done after,
    notes)."""
    resumed = progress_after(probe, base, 120, workers) - at
    finished = wait_until(
        "the study done after the fault",
        lambda: time.monotonic() if (probe.done() or 0) >= size else None, 180, workers,
    ) - at  # fmt: skip
    outages = [w.mentions("retrying with backoff") for w in workers]
    notes = [f"{pace}; workers that logged an outage: {sum(n > 0 for n in outages)} of 2"]
    expected = (size - base) / pace.rate
    if finished > expected + 10:
        notes.append(
            f"FINDING: the study took {finished:.1f} s after the fault where the remaining "
            f"{size - base} points need ~{expected:.1f} s at the normal pace: a range waited for "
            "its lease to expire"
        )
    return resumed, finished, notes


def s4_connections_cut(b: Bench) -> Outcome:
    size, pause = 1500, 0.005
    server = b.redis("s4")
    server.start()
    probe = b.probe(server.url, "s4")
    probe.submit(size)
    backend = ("--redis", server.url)
    workers = [b.worker(f"s4-w{i}", backend, pause, "--max-size", "10") for i in (1, 2)]
    pace = track(probe, size * 3 // 10, workers)
    admin = server.admin()
    try:
        assert probe.key is not None
        first = time.monotonic()
        cut = 0
        for _ in range(5):
            cut += int(admin.client_kill_filter(_type="normal", skipme=True))
            time.sleep(0.004)
        last = time.monotonic()
        base = int(admin.hget(probe.key, "done") or 0)  # on a connection that was not cut
    finally:
        admin.close()
    resumed, finished, notes = _resume_figures(b, probe, size, workers, pace, base, last)
    for w in workers:
        b.procs.stop(w)
    b.verify(probe, size, server.url)
    notes.insert(0, f"{cut} connections cut in 5 rounds over {(last - first) * 1000:.0f} ms")
    return Outcome(
        figure=f"resumed {resumed:.2f} s after the last cut",
        meaning=(
            f"every client connection cut 5 times within {(last - first) * 1000:.0f} ms: "
            f"progress moved again {resumed:.2f} s after the last cut (study done "
            f"{finished:.1f} s after it); every point present once"
        ),
        notes=notes,
    )


def s5_full_redis(b: Bench) -> Outcome:
    size, pause = 1500, 0.005
    server = b.redis("s5")
    server.start()
    probe = b.probe(server.url, "s5")
    probe.submit(size)
    backend = ("--redis", server.url)
    workers = [b.worker(f"s5-w{i}", backend, pause, "--max-size", "10") for i in (1, 2)]
    pace = track(probe, size // 4, workers)
    admin = server.admin()
    assert probe.key is not None
    try:
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory", str(used + 200_000))
        junk = 0

        def fill() -> int:
            """Junk keys until Redis refuses one (OOM); returns how many it took."""
            nonlocal junk
            first = junk
            with contextlib.suppress(redis.exceptions.OutOfMemoryError):
                while junk < first + 100_000:
                    admin.set(f"benchjunk:{junk}", "x" * 1000)
                    junk += 1
                raise Failure("Redis never refused a write: maxmemory had no effect")
            return junk - first

        fill()
        full_at = time.monotonic()
        at_full = int(admin.hget(probe.key, "done") or 0)
        topped = 0  # used memory dips below maxmemory now and then: keep it full for 2 s
        while time.monotonic() - full_at < 2.0:
            topped += fill()
            time.sleep(0.005)
        at_free = int(admin.hget(probe.key, "done") or 0)
        memory = admin.info("memory")
        over = int(memory["used_memory"]) - int(memory["maxmemory"])
        refused = 0
        with contextlib.suppress(redis.exceptions.OutOfMemoryError):
            admin.set("benchjunk:check", "x")
            refused = 1
        keys = admin.keys("benchjunk:*")
        if keys:
            admin.delete(*keys)
        admin.config_set("maxmemory", "0")
        freed_at = time.monotonic()
    finally:
        admin.close()
    resumed, finished, notes = _resume_figures(b, probe, size, workers, pace, at_free, freed_at)
    for w in workers:
        b.procs.stop(w)
    b.verify(probe, size, server.url)
    held = freed_at - full_at
    during = at_free - at_full
    notes.insert(
        0,
        f"full after {junk - topped} junk keys of 1 kB, kept full with {topped} more as memory "
        f"dipped; {during} points registered during the {held:.1f} s; at its end used memory "
        f"was {over / 1000:+.0f} kB over maxmemory and a SET was "
        + ("still accepted" if refused else "refused (OOM)"),
    )
    if during:
        notes.append(
            f"FINDING: the full Redis did not stop the workers ({during} points registered "
            f"while it was full, ~{pace.rate * held:.0f} at the normal pace): Redis checks OOM for "
            "a script only at its first write, if that command is deny-oom; the first write of "
            "register.lua (and cycle.lua) is a ZREM, after which Redis lets the script finish, "
            "so registrations write past maxmemory"
        )
        figure = f"never stalled: {during} points registered while full"
    else:
        figure = f"resumed {resumed:.2f} s after freeing"
    return Outcome(
        figure=figure,
        meaning=(
            f"Redis full (noeviction) for {held:.1f} s: {during} points registered meanwhile; "
            f"progress moved {resumed:.2f} s after memory was freed (study done {finished:.1f} s "
            "after); every point present once"
        ),
        notes=notes,
    )


def _api(b: Bench, label: str, port: int, url: str) -> tuple[Proc, float]:
    """Start `ld2 api`; returns it and when /ping first answered (monotonic)."""
    args = [sys.executable, "-m", "ld2", "api", "--port", str(port), "--redis", url]
    proc = b.procs.start(label, args, b.env())

    def answers() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"http://127.0.0.1:{port}/ping", timeout=0.5).status_code == 200
        return False

    wait_until(f"{label} answering /ping", answers, 60, [proc])
    return proc, time.monotonic()


def s6_api_killed(b: Bench) -> Outcome:
    size, pause = 1500, 0.005
    server = b.redis("s6")
    server.start()
    port = free_port()
    launched = time.monotonic()
    first, first_up = _api(b, "s6-api1", port, server.url)
    first_start = first_up - launched
    probe = b.probe(server.url, "s6")
    probe.submit(size)
    backend = ("--api", f"http://127.0.0.1:{port}")
    workers = [b.worker(f"s6-w{i}", backend, pause, "--max-size", "10") for i in (1, 2)]
    pace = track(probe, size * 3 // 10, workers)
    killed_at = time.monotonic()
    b.procs.stop(first, signal.SIGKILL)
    base = read_done(probe)  # nothing registers while no API runs
    launched_at = time.monotonic()
    _, up_at = _api(b, "s6-api2", port, server.url)
    resumed, finished, notes = _resume_figures(b, probe, size, workers, pace, base, up_at)
    rejected = sum(w.mentions("not registered") for w in workers)
    for w in workers:
        b.procs.stop(w)
    b.verify(probe, size, server.url)
    notes.append(
        f"registrations rejected after the restart: {rejected}; the first start (no workers "
        f"running yet) answered /ping after {first_start:.2f} s"
    )
    return Outcome(
        figure=f"resumed {up_at - launched_at + resumed:.2f} s after restart",
        meaning=(
            f"ld2 api SIGKILLed and started again on its port: it answered /ping "
            f"{up_at - launched_at:.2f} s after its start ({up_at - killed_at:.2f} s without an "
            f"API), the two --api workers registered again {resumed:.2f} s after that, "
            f"{up_at - launched_at + resumed:.2f} s after the restart (study done "
            f"{finished:.1f} s after /ping); every point present once"
        ),
        notes=notes,
    )


def s7_local_run_killed(b: Bench) -> Outcome:
    size, pause, name = 1500, 0.005, "s7run"
    state = b.root / "s7-state"
    study = b.root / f"{name}.json"
    study.write_text(json.dumps(study_json(name, size)))
    out = b.root / f"{name}.csv"
    args = [
        sys.executable, "-m", "ld2", "run", str(study), "--import", RUNNER_MODULE, "-w", "2",
        "--state-dir", str(state), "-o", str(out),
    ]  # fmt: skip
    marker = b.root / "s7.marker"
    env = b.env(BENCH_PAUSE=str(pause), LD2_STATE_DIR=str(state), BENCH_MARKER=str(marker))
    started = time.monotonic()
    run = b.procs.start("s7-run1", args, env)
    probe = b.probe(f"unix://{state / 'valkey.sock'}", name)

    def at_40() -> bool:
        with contextlib.suppress(OSError, ValueError):
            return int(marker.read_text()) >= size * 4 // 10
        return False

    wait_until("the run computing the point at 40 % of the grid", at_40, 120, [run])
    took = time.monotonic() - started
    b.procs.stop(run, signal.SIGKILL)
    killed_done = probe.done()
    probe.close()
    b.probes.remove(probe)
    left = [cmd for _, cmd in ours() if str(study) in cmd or str(state) in cmd]
    t0 = time.monotonic()
    rerun = subprocess.run(args, env=env, cwd=b.root, capture_output=True, text=True, timeout=300)
    rerun_s = time.monotonic() - t0
    (b.root / "s7-run2.log").write_text(rerun.stdout + rerun.stderr)
    if rerun.returncode != 0:
        raise Failure(f"the rerun exited {rerun.returncode}: {rerun.stderr.strip()[-500:]}")
    check_csv(out, size)
    after = [f"{pid}: {cmd}" for pid, cmd in ours() if str(study) in cmd or str(state) in cmd]
    notes = [
        f"killed with {killed_done} of {size} points done, {took:.1f} s after its start; "
        f"left running after the kill: {len(left)} process(es) "
        f"({', '.join(c.split()[0].rsplit('/', 1)[-1] for c in left) or 'none'}); "
        f"after the rerun: {len(after)}",
    ]
    handed = [line.strip() for line in rerun.stdout.splitlines() if "handed back" in line]
    notes.append("the rerun said: " + (handed[0] if handed else "nothing handed back"))
    if after:
        notes.append(f"FAILED: still running after the rerun: {after}")
    share = 100 * (killed_done or 0) // size
    return Outcome(
        figure=f"rerun {rerun_s:.1f} s, exit 0, {size} points whole",
        meaning=(
            f"ld2 run SIGKILLed while computing the point at 40 % of the grid ({killed_done}/"
            f"{size} points, {share} %, registered); the same command again finished in "
            f"{rerun_s:.1f} s wall (the first run needed {took:.1f} s to get "
            "there, start-up included) and its CSV holds every point once with its value"
        ),
        notes=notes,
    )


def s8_worker_sigterm(b: Bench) -> Outcome:
    size = 100
    server = b.redis("s8")
    server.start()
    probe = b.probe(server.url, "s8")
    probe.submit(size)
    backend = ("--redis", server.url)
    marker = b.root / "s8-victim.marker"
    victim = b.worker("s8-victim", backend, 30.0, marker=marker)  # each point sleeps 30 s
    wait_until("the worker computing its 30 s trial", marker.exists, 60, [victim])
    term_at = time.monotonic()
    status = b.procs.stop(victim, signal.SIGTERM, grace=60)
    exited = time.monotonic() - term_at
    sleepers = [pid for pid, _ in ours() if _environ_has(pid, b"BENCH_PAUSE=30.0")]
    finisher = b.worker("s8-finisher", backend, 0.005)
    done_at = wait_until(
        "the study done by a second worker",
        lambda: time.monotonic() if (probe.done() or 0) >= size else None, 120, [finisher],
    )  # fmt: skip
    b.procs.stop(finisher)
    b.verify(probe, size, server.url)
    notes = [f"exit status {status}"]
    if sleepers:
        notes.append(f"FAILED: its compute process(es) {sleepers} outlived it")
    taken = done_at - term_at
    notes.append(
        f"a new worker finished the study {taken:.1f} s after the SIGTERM (start-up included): "
        + ("the trial was handed back" if taken < 30 else "it waited for the lease")
    )
    if status != 0:
        notes.append(f"FINDING: the worker exited {status} after SIGTERM, not 0")
    return Outcome(
        figure=f"exited {exited:.2f} s after SIGTERM",
        meaning=(
            f"a worker whose runner sleeps 30 s in its trial exited {exited:.2f} s after SIGTERM "
            "(its compute process ended, its trial handed back); every point present once"
        ),
        goal=f"<= {SIGTERM_GOAL:.0f} s",
        met=exited <= SIGTERM_GOAL,
        notes=notes,
    )


def _environ_has(pid: int, text: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return text in f.read().split(b"\0")
    except OSError:
        return False


SCENARIOS: list[tuple[str, Callable[[Bench], Outcome]]] = [
    ("worker kill -9 mid-trial", s1_killed_worker),
    ("Redis SIGKILL + AOF restart", s2_redis_sigkill),
    ("Redis SIGTERM + restart", s3_redis_sigterm),
    ("connections cut (~20 ms)", s4_connections_cut),
    ("Redis full (noeviction) 2 s", s5_full_redis),
    ("ld2 api SIGKILL + restart", s6_api_killed),
    ("ld2 run SIGKILL at 40 % + rerun", s7_local_run_killed),
    ("worker SIGTERM mid-trial", s8_worker_sigterm),
]


def main(argv: Sequence[str]) -> int:
    """Runs every scenario, or those whose numbers are given (`... bench_faults.py 4 5`)."""
    only = {int(arg) for arg in argv}
    if shutil.which("redis-server") is None:
        print("bench_faults: redis-server is needed (apt-get install redis-server)")
        return 2
    root = Path(tempfile.mkdtemp(prefix=f"ld2-bench-faults-{TAG}-"))
    print(f"ld2 fault recovery; logs in {root}; command: uv run python bench/bench_faults.py")
    started = time.monotonic()
    rows: list[tuple[int, str, Outcome | None, float]] = []
    failures: list[str] = []
    findings: list[str] = []
    try:
        for number, (title, scenario) in enumerate(SCENARIOS, 1):
            if only and number not in only:
                continue
            bench = Bench(root)
            t0 = time.monotonic()
            outcome: Outcome | None = None
            try:
                outcome = scenario(bench)
            except Failure as err:
                failures.append(f"{number}. {title}: {err}")
            except Exception:
                failures.append(f"{number}. {title}: crashed:\n{traceback.format_exc()}")
            finally:
                bench.cleanup()
            took = time.monotonic() - t0
            rows.append((number, title, outcome, took))
            if outcome is None:
                why = failures[-1].removeprefix(f"{number}. {title}: ")
                print(f"[{number}] {title}: FAILED after {took:.0f} s: {why}", flush=True)
                continue
            print(f"[{number}] {title}: {outcome.figure} -- {outcome.meaning}", flush=True)
            for note in outcome.notes:
                print(f"      {note}", flush=True)
                if note.startswith("FINDING"):
                    findings.append(f"{number}. {title}: {note.removeprefix('FINDING: ')}")
                elif note.startswith("FAILED"):
                    failures.append(f"{number}. {title}: {note.removeprefix('FAILED: ')}")
            if outcome.met is False:
                failures.append(f"{number}. {title}: goal {outcome.goal} missed: {outcome.figure}")
    finally:
        left = ours()
        for pid, _ in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left:
            failures.append(f"processes left over (now killed): {left}")
        for proc in STARTED:
            if proc.alive():
                failures.append(f"{proc.label} (pid {proc.pid}) left over (now killed)")
                proc.popen.kill()
                proc.popen.wait()

    print()
    wide = max([len(o.figure) for _, _, o, _ in rows if o is not None] + [6])
    print(f"{'#':<2} {'scenario':<32} {'figure':<{wide}} {'goal':<8} {'took':>5}  verdict")
    for number, title, outcome, took in rows:
        if outcome is None:
            print(f"{number:<2} {title:<32} {'-':<{wide}} {'-':<8} {took:>4.0f}s  FAILED")
            continue
        verdict = {None: "ok", True: "met", False: "MISSED"}[outcome.met]
        found = sum(note.startswith("FINDING") for note in outcome.notes)
        if any(note.startswith("FAILED") for note in outcome.notes):
            verdict = "FAILED"
        if found and verdict not in ("MISSED", "FAILED"):
            verdict += f" ({found} finding{'s' if found > 1 else ''})"
        print(
            f"{number:<2} {title:<32} {outcome.figure:<{wide}} {outcome.goal:<8} {took:>4.0f}s  "
            f"{verdict}"
        )
    print(f"total {time.monotonic() - started:.0f} s; run it: uv run python bench/bench_faults.py")
    if findings:
        print("\nFindings (recovered, but not as one would expect):", *findings, sep="\n  ")
    if failures:
        print("\nFAILED:", *failures, sep="\n  ")
        print(f"logs kept in {root}")
        return 1
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
