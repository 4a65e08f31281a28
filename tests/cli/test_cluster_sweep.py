"""Sweeps on a local 3-master Redis Cluster with real processes: `ld2 api`, two workers (one
through the API, one on Redis directly) and `ld2 reaper`, each given the plain ``redis://`` URL
of one node (nothing says "cluster": the table finds out). A clean sweep, then a sweep during
which the master serving the study's slot is SIGKILLed and restarted from its append-only file.
Each checks every point against a direct computation, and that each point is there once."""

from __future__ import annotations

import contextlib
import csv
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.cli.test_cli import _wait_for_file, ld2
from tests.cli.test_faults import RUNNER, _study, full_env, ld2_cmd
from tests.cluster import LocalCluster
from tests.cluster import available as cluster_available
from tests.conftest import _free_port

pytestmark = pytest.mark.skipif(
    not cluster_available(), reason="redis-server and redis-cli are needed for a local cluster"
)

WORKER = ("worker", "--import", "slowmod", "--capacity", "slowsq", "--processes", "1",
          "--max-size", "5", "--idle-wait", "0.2")  # fmt: skip
NOTICED = "retrying with backoff"  # a worker's one line when an outage starts (worker/loop.py)
BACK = "the backend is back"
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b.*$", re.MULTILINE)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of this test only: the fault test kills one of its masters."""
    local = LocalCluster(tmp_path / "cluster")
    try:
        yield local.start()
    finally:
        local.stop()


class Fleet:
    """Processes of one test, each logging to its own file; all ended by `close`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.env = {
            k: v
            for k, v in full_env({"PYTHONPATH": str(folder)}).items()
            if k not in ("LD2_API_URL", "LD2_REDIS_CLUSTER", "LD2_PREFIX", "LD2_API_TOKEN")
        }

    def start(self, name: str, *args: str) -> subprocess.Popen[str]:
        with (self.folder / f"{name}.log").open("w") as log:
            proc = subprocess.Popen(
                [*ld2_cmd(), *args], env=self.env, cwd=self.folder,
                stdout=log, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.log(name)[-3000:]}" for name in self.procs)

    def alive(self, *names: str) -> None:
        for name in names:
            code = self.procs[name].poll()
            assert code is None, f"{name} exited {code}:\n{self.logs()}"

    def problems(self, name: str) -> list[str]:
        """What went wrong in `name`'s log: the last line of each traceback (exception lines)
        and each 500 answered (a client that retries 5xx would hide it)."""
        said = self.log(name)
        out = [m.group(0) for m in EXCEPTION_LINE.finditer(said)]
        lines = list(out)
        if " 500 Internal" in said:
            out.append(f"{said.count(' 500 Internal')} answers 500")
        if "Traceback" in said and not lines:
            out.append("a traceback")
        return out

    def end_cleanly(self, *names: str) -> None:
        """SIGTERM each of `names`: each ends with status 0 (the API: after its graceful
        shutdown, as uvicorn then re-raises the signal); then no process has a problem."""
        for name in names:
            self.procs[name].terminate()
            code = self.procs[name].wait(60)
            if name == "api" and "Application shutdown complete" in self.log(name):
                code = 0 if code == -signal.SIGTERM else code
            assert code == 0, f"{name} exited {code}:\n{self.logs()}"
        for name in self.procs:
            assert not self.problems(name), f"{name}: {self.problems(name)}\n{self.log(name)}"

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)


def _until(
    check: Callable[[], Any], what: str, fleet: Fleet, *names: str, limit: float = 120
) -> Any:
    """Poll `check` until it is truthy (its value returned), failing if one of `names` exits."""
    deadline = time.monotonic() + limit
    while True:
        got = check()
        if got:
            return got
        fleet.alive(*names)
        assert time.monotonic() < deadline, f"gave up waiting for {what}:\n{fleet.logs()}"
        time.sleep(0.05)


def _serve_api(fleet: Fleet, redis_url: str) -> str:
    port = _free_port()
    fleet.start("api", "api", "--host", "127.0.0.1", "--port", str(port), "--redis", redis_url)
    api = f"http://127.0.0.1:{port}"

    def up() -> bool:
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"{api}/ping", timeout=1).status_code == 200
        return False

    _until(up, "ld2 api to answer", fleet, "api", limit=60)
    return api


def _info(api: str, sid: str) -> dict[str, Any] | None:
    """ld2's view of the study through the API (None while it answers nothing useful)."""
    with contextlib.suppress(httpx.TransportError):
        got = httpx.get(f"{api}/study/info", params={"study_id": sid}, timeout=5)
        if got.status_code == 200:
            return got.json()  # type: ignore[no-any-return]
    return None


def _check_results(tmp_path: Path, name: str, redis_url: str, size: int) -> None:
    """Every point once, in grid order, equal to a direct computation."""
    out = ld2("result", name, "-o", str(tmp_path / f"{name}.csv"), "--redis", redis_url)
    assert out.returncode == 0, out.stderr
    with (tmp_path / f"{name}.csv").open() as f:
        rows = list(csv.reader(f))[1:]
    assert len(rows) == size
    assert [int(r[0]) for r in rows] == list(range(size))  # no hole, no double
    assert [int(r[1]) for r in rows] == [x * x for x in range(size)]


def _fleet(
    tmp_path: Path, cluster: LocalCluster, pause: float, nodes: tuple[int, int, int]
) -> tuple[Fleet, str]:
    """`ld2 api`, a worker through the API, a worker on Redis and a reaper, the last three
    given the plain URL of one node each (`nodes`: the API's, the direct worker's, the
    reaper's), and no cluster switch: each finds out it is on a cluster."""
    (tmp_path / "slowmod.py").write_text(RUNNER.format(marker=tmp_path / "computing", pause=pause))
    api_node, worker_node, reaper_node = nodes
    fleet = Fleet(tmp_path)
    api = _serve_api(fleet, cluster.node_url(api_node))
    fleet.start("reaper", "reaper", "--redis", cluster.node_url(reaper_node), "--interval", "1")
    fleet.start("via-api", *WORKER, "--api", api, "--name", "via-api")
    fleet.start("direct", *WORKER, "--redis", cluster.node_url(worker_node), "--name", "direct")
    return fleet, api


def _down(cluster: LocalCluster, i: int) -> bool:
    """Whether node `i` says the cluster is down (it marked a master serving slots failed)."""
    with redis.Redis(port=cluster.ports[i], socket_timeout=5, decode_responses=True) as node:
        info = node.execute_command("CLUSTER", "INFO")
    text = "\n".join(f"{k}:{v}" for k, v in info.items()) if isinstance(info, dict) else info
    return "cluster_state:fail" in str(text)


def _study_key(sid: str) -> str:
    return f"ld2:{{{sid}}}:s"  # the default prefix; every key of a study shares {sid}


def _holds(cluster: LocalCluster, i: int, key: str) -> bool:
    """Whether node `i` itself holds `key` (asked directly, not through the cluster)."""
    with redis.Redis(port=cluster.ports[i], socket_timeout=5) as node:
        return bool(node.exists(key))


def test_a_sweep_on_a_cluster_found_from_plain_node_urls(
    tmp_path: Path, cluster: LocalCluster
) -> None:
    size = 120
    study = _study(tmp_path / "clean.json", "clean", size)
    fleet, api = _fleet(tmp_path, cluster, pause=0.005, nodes=(0, 1, 2))
    try:
        sub = ld2("submit", str(study), "--api", api)
        assert sub.returncode == 0, sub.stderr
        sid = sub.stdout.strip().splitlines()[-1]
        waited = ld2("submit", str(study), "--wait", "--api", api, timeout=240)
        assert waited.returncode == 0, f"{waited.stderr}\n{fleet.logs()}"
        fleet.alive("api", "reaper", "via-api", "direct")
        info = _info(api, sid)
        assert info is not None and info["status"] == "done", info
        assert info["failed_grids"] == 0 and info["summary"]["done_grids"] == size, info
        assert info["reserved_grids"] == 0, info  # no lease left behind
        # the study lives in the cluster: its hash on the master serving its slot
        assert _holds(cluster, cluster.master_of(_study_key(sid)), _study_key(sid))
        _check_results(tmp_path, "clean", cluster.node_url(2), size)
        fleet.end_cleanly("via-api", "direct", "api", "reaper")
    finally:
        fleet.close()


def test_the_studys_master_killed_and_restarted_mid_sweep(
    tmp_path: Path, cluster: LocalCluster
) -> None:
    size = 240
    study = _study(tmp_path / "outage.json", "outage", size)
    # submitted on Redis first, so that the processes' URLs can be chosen knowing the master
    # that will be killed: it is the API's only URL (its seed node dies), not the others'
    sub = ld2("submit", str(study), "--redis", cluster.url)
    assert sub.returncode == 0, sub.stderr
    sid = sub.stdout.strip().splitlines()[-1]
    node = cluster.master_of(_study_key(sid))
    assert _holds(cluster, node, _study_key(sid))
    fleet, api = _fleet(tmp_path, cluster, pause=0.04, nodes=(node, (node + 1) % 3, (node + 2) % 3))
    try:
        everyone = ("api", "reaper", "via-api", "direct")
        fleet.start("waiting", "submit", str(study), "--wait", "--api", api)
        _wait_for_file(tmp_path / "computing", fleet.procs["direct"])

        def midway() -> bool:  # a worker holds a trial and some points are done, not all;
            # and the waiting command has submitted (printed the id): it is waiting now
            info = _info(api, sid)
            return (
                sid in fleet.log("waiting")
                and info is not None
                and info["reserved_grids"] > 0
                and 0 < info["summary"]["done_grids"] < size
            )

        _until(midway, "a sweep part-way with a trial held", fleet, *everyone, "waiting")
        assert cluster.master_of(_study_key(sid)) == node
        cluster.stop_node(node, signal.SIGKILL)

        def noticed() -> bool:  # the direct worker's next register meets the dead master
            return NOTICED in fleet.log("direct")

        _until(noticed, "the direct worker to notice the outage", fleet, *everyone, limit=60)
        others = [j for j in range(3) if j != node]  # the cluster itself says so: CLUSTERDOWN
        _until(
            lambda: all(_down(cluster, j) for j in others), "cluster_state:fail", fleet, *everyone
        )
        cluster.start_node(node)
        cluster.wait_ok(timeout=120)

        waiting = fleet.procs["waiting"]
        assert waiting.wait(300) == 0, fleet.logs()  # rode out the outage, then saw it done
        fleet.alive(*everyone)  # nothing crashed

        def over() -> bool:  # each outage a worker logged has its end logged too (the worker
            # through the API may log none: its client retries a few 503s before it says so)
            return all(fleet.log(w).count(NOTICED) == fleet.log(w).count(BACK) for w in workers)

        workers = ("via-api", "direct")
        _until(over, "the workers to see the backend back", fleet, *everyone)
        info = _info(api, sid)
        assert info is not None and info["status"] == "done", info
        assert info["failed_grids"] == 0 and info["summary"]["done_grids"] == size, info
        assert info["reserved_grids"] == 0, info  # no lease left behind
        failures = ld2("failures", "outage", "--api", api)
        assert failures.returncode == 0 and "no failed points" in failures.stdout, failures
        _check_results(tmp_path, "outage", cluster.node_url(node), size)
        fleet.end_cleanly("via-api", "direct", "api", "reaper")
    finally:
        fleet.close()
