"""A local Redis Cluster of three masters, for tests and benches (``redis-server`` needed).

Each node is a private ``redis-server --cluster-enabled yes`` on a free loopback port (with its
bus port, port + 10000, free too) and its own directory, with an append-only file so a node can
be stopped and started again with its data. The slots are spread over the three masters by
``redis-cli --cluster create``; `start` returns once every node says ``cluster_state:ok``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_ports(n: int) -> list[int]:
    """`n` free ports whose cluster bus ports (port + 10000) are free as well."""
    out: list[int] = []
    while len(out) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 < 65536 and port not in out and _free(port + 10000):
            out.append(port)
    return out


def available() -> bool:
    return bool(shutil.which("redis-server") and shutil.which("redis-cli"))


class LocalCluster:
    """Three masters, no replicas; `url` names the first node (any node would do)."""

    def __init__(self, workdir: Path, masters: int = 3, *, node_timeout_ms: int = 2000) -> None:
        self.workdir = workdir
        self.ports = cluster_ports(masters)
        self.node_timeout_ms = node_timeout_ms
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def node_url(self, i: int) -> str:
        return f"redis://127.0.0.1:{self.ports[i]}"

    def _spawn(self, i: int) -> None:
        port = self.ports[i]
        folder = self.workdir / f"node{port}"
        folder.mkdir(parents=True, exist_ok=True)
        self.procs[i] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(self.node_timeout_ms),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--dir", str(folder), "--logfile", str(folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._wait(lambda: self._client(i).ping(), f"node {port} answering")

    def _client(self, i: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.ports[i], socket_timeout=2)

    def _wait(self, check: object, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(redis.RedisError, OSError):
                if check():  # type: ignore[operator]
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"local Redis Cluster: gave up waiting for {what}")
            time.sleep(0.02)

    def _ok(self) -> bool:
        for i in self.procs:
            info = self._client(i).cluster("info")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text and not (
                isinstance(info, dict) and info.get("cluster_state") == "ok"
            ):
                return False
        return True

    def wait_ok(self, timeout: float = 60.0) -> None:
        self._wait(self._ok, "cluster_state:ok on every node", timeout)

    def start(self) -> LocalCluster:
        for i in range(len(self.ports)):
            self._spawn(i)
        subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
        )  # fmt: skip
        self.wait_ok()
        return self

    def master_of(self, key: str) -> int:
        """Which node (index) serves `key`'s slot."""
        client = self._client(next(iter(self.procs)))
        slot = int(client.cluster("keyslot", key))
        for lo, hi, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if int(lo) <= slot <= int(hi):
                return self.ports.index(int(primary[1]))
        raise LookupError(f"no master serves slot {slot}")

    def stop_node(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Stop node `i` (SIGKILL: nothing saved beyond its append-only file)."""
        proc = self.procs.pop(i)
        proc.send_signal(sig)
        proc.wait(30)

    def start_node(self, i: int) -> None:
        """Start node `i` again from its directory (nodes.conf + append-only file)."""
        self._spawn(i)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()
