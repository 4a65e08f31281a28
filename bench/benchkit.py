"""Plumbing for the benchmarks that run a checkout's `ld2` as separate processes.

bench_peers.py, bench_pickup.py and bench_trial_loop.py measure any checkout (``--repo DIR``,
a folder with its own ``.venv``) from this one, so they import nothing of ``ld2``: they start
its command line and talk HTTP (standard library) and Redis (redis-py) to it. This module has
what they share:

- `Checkout`: which ``ld2`` executable, which commit, whether the tree has local changes.
- `Procs`: every process a benchmark starts, each in its own session (process group), with its
  output in a log file; on leaving (normally, on an exception, Ctrl-C, SIGTERM or SIGHUP) each
  group gets SIGTERM, then SIGKILL after a grace period. Where ``setpriv`` exists, children also
  get SIGTERM from the kernel if the benchmark itself is killed (``--pdeathsig``).
- `start_redis`: a private redis-server on a free loopback port, checked to be ours.
- `Http`: small JSON calls to ``ld2 api``, and a POST timed against the wall clock.
- `wait_for`: bounded waits that fail with a clear message (and a child's log if one died).
- CPU time of process trees from /proc, load averages, percentiles, lite_dist2 study bodies.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
THIS_REPO = HERE.parent
LOOPBACK = "127.0.0.1"
T = TypeVar("T")


# -- the checkout under test ----------------------------------------------------------------------


@dataclass(frozen=True)
class Checkout:
    repo: Path | None
    ld2: Path
    commit: str | None
    dirty: bool | None
    label: str = "ld2"

    def describe(self) -> str:
        where = str(self.repo) if self.repo else str(self.ld2)
        if self.commit is None:
            return where
        return f"{where} @ {self.commit}{' + local changes' if self.dirty else ''}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "repo": str(self.repo) if self.repo else None,
            "ld2": str(self.ld2),
            "commit": self.commit,
            "dirty": self.dirty,
        }


def checkout(repo: str | None, ld2: str | None = None) -> Checkout:
    """The ld2 to measure: ``--ld2 PATH``, else ``DIR/.venv/bin/ld2`` of ``--repo DIR``, else
    this checkout's. Exits with a message when the executable is missing."""
    if ld2:
        exe = Path(ld2).expanduser().resolve()
        root: Path | None = Path(repo).expanduser().resolve() if repo else _repo_of(exe)
    else:
        root = Path(repo).expanduser().resolve() if repo else THIS_REPO
        exe = root / ".venv" / "bin" / "ld2"
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        hint = f" (run `uv sync` in {root})" if root else ""
        raise SystemExit(f"no ld2 executable at {exe}{hint}")
    commit = dirty = None
    if root is not None and (root / ".git").exists():
        commit = _git(root, "rev-parse", "--short=12", "HEAD")
        status = _git(root, "status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status)
    label = (root.name if root else exe.parent.name) + (f"@{commit[:7]}" if commit else "")
    return Checkout(root, exe, commit, dirty, label + ("+" if dirty else ""))


def checkouts(repos: Sequence[str] | None, ld2s: Sequence[str] | None) -> list[Checkout]:
    """Every ``--repo DIR`` and ``--ld2 PATH`` given (repeatable), in that order; this
    checkout's when none is. Labels are made unique (``#2``…) for the tables."""
    found = [checkout(r) for r in repos or []] + [checkout(None, x) for x in ld2s or []]
    found = found or [checkout(None)]
    seen: dict[str, int] = {}
    unique = []
    for c in found:
        seen[c.label] = seen.get(c.label, 0) + 1
        label = c.label if seen[c.label] == 1 else f"{c.label}#{seen[c.label]}"
        unique.append(Checkout(c.repo, c.ld2, c.commit, c.dirty, label))
    return unique


def add_target_options(parser: Any) -> None:
    parser.add_argument("--repo", action="append", metavar="DIR",
                        help="a checkout with its own .venv (repeatable: several are measured "
                        "in the same run, interleaved; default: this checkout)")  # fmt: skip
    parser.add_argument("--ld2", action="append", metavar="PATH",
                        help="an ld2 executable to measure (repeatable), besides --repo")  # fmt: skip


def _repo_of(exe: Path) -> Path | None:
    """The checkout an ``.venv/bin/ld2`` belongs to, if it is one."""
    if exe.parent.name == "bin" and exe.parent.parent.name == ".venv":
        return exe.parent.parent.parent
    return None


def _git(root: Path, *args: str) -> str | None:
    """A read-only git query; None when git cannot answer."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# -- processes ------------------------------------------------------------------------------------


class ChildDied(RuntimeError):
    """A process the benchmark started exited while it was still needed."""


class Procs:
    """Owns every process a benchmark starts; `close()` ends them all (idempotent).

    Use as a context manager. While it is open, SIGTERM and SIGHUP raise SystemExit in the main
    thread (Ctrl-C raises KeyboardInterrupt as usual), so the ``with`` block's exit runs and the
    children are ended by their process group ids, never by name.
    """

    def __init__(self, label: str, keep_logs: bool = False) -> None:
        self.label = label
        self.keep_logs = keep_logs
        self.dir = Path(tempfile.mkdtemp(prefix=f"ld2-{label}-"))
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._logs: list[Any] = []
        self._closed = False
        self._old_handlers: dict[int, Any] = {}
        self._pdeathsig = shutil.which("setpriv")

    def __enter__(self) -> Procs:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, _raise_exit)
        # Ctrl-C must reach the cleanup even when SIGINT came in ignored (a shell's `cmd &`)
        self._old_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
        return self

    def __exit__(self, kind: object, err: object, tb: object) -> None:
        self.close(failed=kind is not None)
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in a new session, output to ``<dir>/<name>.log``."""
        if self._closed:
            raise RuntimeError("Procs is closed")
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        full = list(argv)
        if self._pdeathsig:  # SIGTERM from the kernel if this process dies without cleaning up
            full = [self._pdeathsig, "--pdeathsig", "TERM", "--", *full]
        proc = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=str(cwd or self.dir),
            start_new_session=True,
        )
        self.children.append((name, proc))
        return proc

    def check(self) -> None:
        """Raise ChildDied (with the end of its log) if a child has exited."""
        for name, proc in self.children:
            if proc.poll() is not None:
                raise ChildDied(
                    f"{name} (pid {proc.pid}) exited with status {proc.returncode}; "
                    f"the end of its log:\n{self.tail(name)}"
                )

    def tail(self, name: str, lines: int = 25) -> str:
        try:
            text = (self.dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        """End one child's process group: SIGTERM, then SIGKILL after `grace` seconds."""
        _signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        _signal_group(proc, signal.SIGKILL)  # whatever the group still holds
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self.children = [(n, p) for n, p in self.children if p is not proc]

    def close(self, failed: bool = False, grace: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        with _no_interrupts():  # a second Ctrl-C must not cut the cleanup short
            self._end_all(failed, grace)

    def _end_all(self, failed: bool, grace: float) -> None:
        procs = [p for _, p in reversed(self.children)]
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))
        for proc in procs:
            _signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        stuck = [p.pid for p in procs if p.poll() is None]
        for log in self._logs:
            with contextlib.suppress(OSError):
                log.close()
        if stuck:
            print(f"[{self.label}] processes that would not end: {stuck}", file=sys.stderr)
        if self.keep_logs or failed:
            print(f"[{self.label}] logs kept in {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP ignored for the duration (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the child's process group (its pid: it leads a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def become_subreaper() -> bool:
    """Make orphaned descendants this process's children (Linux), so that they can still be
    found and ended after the process that started them is gone."""
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc), parents before children."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def end_descendants(grace: float = 10.0) -> list[int]:
    """SIGTERM every descendant of this process (their groups too), SIGKILL what is left after
    `grace` seconds, and reap the orphans this subreaper inherited. Returns the pids signalled."""
    pids = descendants(os.getpid())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        _reap()
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    _reap()
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of `pid` and of each live descendant."""
    return {p: cpu_seconds(p) for p in [pid, *descendants(pid)]}


# -- waiting --------------------------------------------------------------------------------------


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    interval: float = 0.05,
    procs: Procs | None = None,
) -> T:
    """Call `check` until it returns something truthy; fail after `timeout` seconds saying
    what was awaited (and the last error), or at once if one of `procs` died."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        if procs is not None:
            procs.check()
        try:
            got = check()
        except (OSError, http.client.HTTPException, ValueError) as err:
            got, last = None, err
        if got:
            return got
        if time.monotonic() >= deadline:
            because = f" (last error: {last!r})" if last else ""
            raise TimeoutError(f"gave up after {timeout:g} s waiting for {what}{because}")
        time.sleep(interval)


# -- redis and the api ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def start_redis(procs: Procs, name: str = "redis") -> tuple[str, subprocess.Popen[bytes]]:
    """A private redis-server (no persistence) on a free loopback port; its URL and process."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    for attempt in range(3):
        port = free_port()
        workdir = procs.dir / f"{name}-{attempt}"
        workdir.mkdir()
        argv = [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "",
                "--appendonly", "no", "--dir", str(workdir), "--loglevel", "warning"]  # fmt: skip
        proc = procs.start(f"{name}-{attempt}", argv)
        client = redis.Redis(host=LOOPBACK, port=port, socket_timeout=2)

        def up(
            c: Any = client, p: subprocess.Popen[bytes] = proc, n: str = f"{name}-{attempt}"
        ) -> int | None:
            if p.poll() is not None:
                raise ChildDied(f"redis-server exited with {p.returncode}: {procs.tail(n)}")
            return _server_pid(c)

        try:
            pid = wait_for(f"redis-server on port {port}", up, 15)
        except (ChildDied, TimeoutError):  # e.g. the port was taken meanwhile: another one
            procs.stop(proc)
            continue
        finally:
            client.close()
        if pid != proc.pid:  # another server answers on that port (setpriv execs: same pid)
            procs.stop(proc)
            continue
        return f"redis://{LOOPBACK}:{port}/0", proc
    raise RuntimeError("could not start a private redis-server (3 attempts)")


def _server_pid(client: Any) -> int | None:
    import redis

    try:
        return int(client.info("server")["process_id"])
    except redis.RedisError:
        return None


def redis_cpu(url: str) -> float:
    """used_cpu_user + used_cpu_sys of the server at `url`."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Http:
    """JSON over HTTP/1.1 to ``ld2 api`` (a fresh connection per call)."""

    def __init__(self, base: str, timeout: float = 60.0) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.base, self.host, self.port, self.timeout = base, host, int(port or 80), timeout

    def _conn(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        conn.connect()
        return conn

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = self._conn()
        try:
            status, data, _, _ = self._exchange(conn, method, path, body)
        finally:
            conn.close()
        return status, data

    def timed(self, method: str, path: str, body: Any = None) -> tuple[int, Any, int, int]:
        """(status, answer, wall clock ns just before sending, ns when the answer was read);
        the connection is made before the first clock reading."""
        conn = self._conn()
        try:
            return self._exchange(conn, method, path, body)
        finally:
            conn.close()

    def _exchange(
        self, conn: http.client.HTTPConnection, method: str, path: str, body: Any
    ) -> tuple[int, Any, int, int]:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        sent = time.time_ns()
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        answered = time.time_ns()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = raw[:500].decode(errors="replace")
        return resp.status, data, sent, answered

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        """The answer of a call that must succeed (2xx), else RuntimeError naming it."""
        status, data = self.call(method, path, body)
        if not 200 <= status < 300:
            raise RuntimeError(f"{method} {path} -> {status}: {data}")
        return data

    def ping(self) -> bool:
        status, _ = self.call("GET", "/ping")
        return status == 200


def start_api(
    procs: Procs, ld2: Path, redis_url: str, name: str = "api"
) -> tuple[Http, subprocess.Popen[bytes]]:
    """``ld2 api`` on a free loopback port, answering /ping."""
    port = free_port()
    argv = [str(ld2), "api", "--host", LOOPBACK, "--port", str(port), "--redis", redis_url]
    proc = procs.start(name, argv)
    api = Http(f"http://{LOOPBACK}:{port}")
    wait_for("ld2 api to answer /ping", api.ping, 60, interval=0.1, procs=procs)
    return api, proc


def worker_names(api: Http) -> set[str]:
    """Names of the workers that reserved lately (GET /workers)."""
    status, data = api.call("GET", "/workers?within_sec=600")
    if status != 200 or not isinstance(data, list):
        return set()
    return {w.get("name") or w.get("worker_id") for w in data}


def wait_for_workers(api: Http, names: set[str], timeout: float, procs: Procs) -> None:
    """Until every named worker has reserved (asked for work) at least once."""

    def seen() -> bool:
        return names <= worker_names(api)

    wait_for(f"{len(names)} worker(s) to ask for work", seen, timeout, 0.1, procs)


# -- studies --------------------------------------------------------------------------------------


def float_axis(name: str, size: int, start: float, step: float) -> dict[str, Any]:
    return {
        "name": name,
        "type": "float",
        "size": hex(size),
        "step": float(step).hex(),
        "start": float(start).hex(),
    }


def study_body(
    name: str, capacity: str, axes: list[dict[str, Any]], consts: dict[str, int | str]
) -> dict[str, Any]:
    """A POST /study/register body (lite_dist2's wire form): an all_calculation, sequential,
    int-valued study of `axes` for the runner `capacity`, with these constants."""
    const_list = [
        {"type": "int", "key": k, "value": hex(v)}
        if isinstance(v, int)
        else {"type": "str", "key": k, "value": v}
        for k, v in consts.items()
    ]
    return {
        "study": {
            "name": name,
            "required_capacity": [capacity],
            "study_strategy": {"type": "all_calculation", "study_strategy_param": None},
            "suggest_strategy": {
                "type": "sequential",
                "suggest_strategy_param": {"strict_aligned": True},
            },
            "result_type": "scalar",
            "result_value_type": "int",
            "const_param": {"consts": const_list} if const_list else None,
            "parameter_space": {"type": "aligned", "axes": axes},
        }
    }


def register(api: Http, body: dict[str, Any]) -> str:
    return str(api.ok("POST", "/study/register", body)["study_id"])


def study_info(api: Http, sid: str) -> dict[str, Any]:
    return dict(api.ok("GET", f"/study/info?study_id={sid}"))


def wait_done(api: Http, sid: str, timeout: float, procs: Procs, poll: float) -> dict[str, Any]:
    """/study/info of the study once it is done."""

    def done() -> dict[str, Any] | None:
        info = study_info(api, sid)
        return info if info.get("status") == "done" else None

    return wait_for(f"study {sid} to be done", done, timeout, poll, procs)


def epoch_ns(stamp: str | None) -> int | None:
    """An ISO 8601 timestamp from the API (UTC, ms) as ns since the epoch."""
    if not stamp:
        return None
    from datetime import datetime

    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return round(when.timestamp() * 1000) * 1_000_000


# -- reporting ------------------------------------------------------------------------------------


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "load average: " + ", ".join(f"{x:.2f}" for x in loadavg())


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0 ≤ q ≤ 1), linear between the closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Report:
    """What a benchmark writes with ``--out``: its arguments, the checkout, the load, results."""

    bench: str
    targets: list[Checkout]
    args: dict[str, Any]
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    load_start: list[float] = field(default_factory=loadavg)
    uptime_start: str = field(default_factory=uptime)
    results: dict[str, Any] = field(default_factory=dict)

    def write(self, path: str | None) -> None:
        if not path:
            return
        doc = {
            "bench": self.bench,
            "started": self.started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": {"nproc": os.cpu_count(), "python": sys.version.split()[0]},
            "targets": [t.to_dict() for t in self.targets],
            "args": self.args,
            "load_start": self.load_start,
            "load_end": loadavg(),
            "uptime_start": self.uptime_start,
            "uptime_end": uptime(),
            "results": self.results,
        }
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1, default=str))
        print(f"wrote {out}")


@contextlib.contextmanager
def clean_exit(label: str) -> Iterator[None]:
    """Turn the expected failures (a child died, a wait ran out, a refused call) into a
    one-line message and exit status 1, after the processes were ended."""
    try:
        yield
    except (ChildDied, TimeoutError, RuntimeError) as err:
        print(f"{label}: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(f"{label}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
