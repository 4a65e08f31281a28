"""Peak API memory, time and reply size of one jagged ``POST /trial/reserve`` with a big max_size.

Run by hand; each size gets a fresh ``uv run ld2 api`` (so that its peak RSS is its own) on a
private backend: the embedded Valkey in a temporary state directory (default), or ``--redis``
on a private ``redis-server --save '' --appendonly no`` started and stopped here.

    uv run python bench/bench_reserve_memory.py                      # this checkout
    uv run python bench/bench_reserve_memory.py --repo /tmp/before   # another checkout's API

For each max_size it prints the reserve's wall time, the reply's bytes, the points leased
(``reserved_grids``), the API process's peak RSS (``VmHWM`` in /proc/<pid>/status) before and
after, and the longest ``GET /ping`` answer meanwhile (how long the event loop was blocked).
An API process passing ``--rss-limit-mb`` is stopped and reported as such.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

# two float axes of 10⁴ points (10⁸ points): trials are point lists (jagged)
STUDY: dict[str, Any] = {
    "name": "jagged-bench",
    "required_capacity": [],
    "study_strategy": {"type": "all_calculation", "study_strategy_param": None},
    "suggest_strategy": {"type": "sequential", "suggest_strategy_param": {"strict_aligned": False}},
    "const_param": None,
    "result_type": "scalar",
    "result_value_type": "float",
    "parameter_space": {
        "type": "aligned",
        "axes": [
            {"name": "x", "type": "float", "size": hex(10_000), "start": (0.1).hex(),
             "step": (0.001).hex()},
            {"name": "y", "type": "float", "size": hex(10_000), "start": (-0.3).hex(),
             "step": (0.0007).hex()},
        ],
    },
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children first)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == parent:
                out.append(int(entry.name))
                todo.append(int(entry.name))
    return out


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def api_pid(launcher: int) -> int | None:
    """The Python process serving the API below ``uv run`` (uv itself waits as its parent)."""
    for pid in descendants(launcher):
        with contextlib.suppress(OSError):
            if "python" in os.readlink(f"/proc/{pid}/exe"):
                return pid
    return None


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--redis needs redis-server on PATH")
    port = free_port()
    workdir = tempfile.mkdtemp()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def api_server(repo: Path, redis_url: str | None) -> Iterator[tuple[str, int]]:
    """``uv run ld2 api`` in `repo` on a free port; yields its URL and its Python process id."""
    port = free_port()
    state = tempfile.mkdtemp()
    env = dict(os.environ, LD2_STATE_DIR=state)
    env.pop("LD2_REDIS_URL", None)
    env.pop("REDIS_URL", None)
    cmd = ["uv", "run", "ld2", "api", "--port", str(port)]
    if redis_url:
        cmd += ["--redis", redis_url]
    launcher = subprocess.Popen(
        cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    pid = None
    below: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                    pid = api_pid(launcher.pid)
                    below = descendants(launcher.pid)  # the API, its Valkey: all ours
                    break
            if launcher.poll() is not None:
                raise SystemExit(f"the API exited with {launcher.returncode}")
            time.sleep(0.1)
        if pid is None:
            raise SystemExit("the API did not answer /ping")
        yield url, pid
    finally:
        below = below or descendants(launcher.pid)
        for p in below:  # the API first (SIGTERM: it stops the Valkey it started)
            if p == pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGTERM)
        try:
            launcher.wait(60)
        except subprocess.TimeoutExpired:
            launcher.terminate()
            launcher.wait(30)
        for p in below:  # anything of ours still there
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGTERM)
        shutil.rmtree(state, ignore_errors=True)


async def measure(url: str, pid: int, max_size: int, rss_limit_kb: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=1800) as http:
        resp = await http.post("/study/register", json={"study": STUDY})
        resp.raise_for_status()
        sid = resp.json()["study_id"]
        before = status_kb(pid, "VmHWM")
        worst_ping = 0.0
        over_limit = False
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal worst_ping, over_limit
            async with httpx.AsyncClient(base_url=url, timeout=1800) as pinger:
                while not done.is_set():
                    t = time.perf_counter()
                    ping = asyncio.create_task(pinger.get("/ping"))
                    while not ping.done():
                        await asyncio.sleep(0.05)
                        with contextlib.suppress(OSError):
                            if status_kb(pid, "VmRSS") > rss_limit_kb:
                                over_limit = True
                                os.kill(pid, signal.SIGKILL)  # the API we started
                                ping.cancel()
                                return
                    with contextlib.suppress(httpx.HTTPError, asyncio.CancelledError):
                        await ping
                    worst_ping = max(worst_ping, time.perf_counter() - t)
                    await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        body = {"retaining_capacity": [], "max_size": max_size, "worker_node_id": "bench"}
        t = time.perf_counter()
        try:
            reply = await http.post("/trial/reserve", json=body)
        except httpx.HTTPError as err:
            done.set()
            await watcher
            return {"max_size": max_size, "error": repr(err), "over_rss_limit": over_limit}
        seconds = time.perf_counter() - t
        done.set()
        await watcher
        info = (await http.get("/study/info", params={"study_id": sid})).json()
        return {
            "max_size": max_size,
            "status": reply.status_code,
            "seconds": round(seconds, 2),
            "reply_bytes": len(reply.content),
            "points": info["reserved_grids"],
            "hwm_before_mb": round(before / 1024),
            "hwm_after_mb": round(status_kb(pid, "VmHWM") / 1024),
            "worst_ping_s": round(worst_ping, 2),
        }


def main() -> None:
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=here, help="checkout whose API to run")
    parser.add_argument("--redis", action="store_true", help="a private redis-server backend")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**6, 10**7])
    parser.add_argument("--rss-limit-mb", type=int, default=12_000)
    args = parser.parse_args()
    print(f"API from {args.repo}, backend {'redis-server' if args.redis else 'embedded Valkey'}")
    for size in args.sizes:
        with contextlib.ExitStack() as stack:
            redis_url = stack.enter_context(private_redis()) if args.redis else None
            url, pid = stack.enter_context(api_server(args.repo, redis_url))
            print(asyncio.run(measure(url, pid, size, args.rss_limit_mb * 1024)), flush=True)


if __name__ == "__main__":
    main()
