"""Peak RSS of `ld2 api` while concurrent clients upload big chunked bodies.

Run by hand; it starts ``uv run ld2 api --port P --token T --max-body-mb 64`` from `--repo`
(default: this checkout) with ``LD2_STATE_DIR`` a fresh temporary folder (the embedded Valkey,
never a shared Redis), sends `--posts` concurrent chunked ``POST /study/register`` of `--mb`
MiB each (httpx, a generator body, so no ``Content-Length``), without the token unless
`--authorised`, then reads the API process's VmRSS before and VmHWM after from /proc, and stops
everything it started:

    uv run python bench/bench_body_memory.py                         # this checkout
    uv run python bench/bench_body_memory.py --repo /tmp/before-auth # e.g. a git worktree

Prints the answers' status codes, the time they took, the API's resident memory once started
and its peak (VmHWM) after the uploads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import free_port

MiB = 1024 * 1024
TOKEN = "bench-s3cret"


def _status(pid: int) -> dict[str, int]:
    """The kB figures of /proc/<pid>/status (VmRSS, VmHWM, …)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0])
    return out


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        todo += kids
    return found


def _api_pid(uv_pid: int) -> int:
    """The Python process that serves the API (uv's child running the ``ld2`` script)."""
    for pid in _descendants(uv_pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if Path(argv[0].decode()).name.startswith("python") and argv[1].endswith(b"ld2"):
                return pid
    raise SystemExit("the API process was not found")


@contextlib.contextmanager
def api_server(repo: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LD2_REDIS_URL", "REDIS_URL", "LD2_API_TOKEN", "LD2_PREFIX", "PORT")
    }
    state = tempfile.mkdtemp(prefix="ld2-bench-state-")
    env["LD2_STATE_DIR"] = state
    cmd = ["uv", "run", "ld2", "api", "--port", str(port), "--token", TOKEN, "--max-body-mb", "64"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # uv, the API and its embedded Valkey
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(state, ignore_errors=True)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the API exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit("the API did not start")


async def _post_all(url: str, posts: int, mb: int, authorised: bool) -> tuple[list[int | str], int]:
    """The answers (status codes, or the error's name) and the MiB the clients sent."""
    headers = {"content-type": "application/json"}
    if authorised:
        headers["authorization"] = f"Bearer {TOKEN}"
    chunk = b" " * MiB
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(mb):
            yield chunk
            sent += 1

    async def one(client: httpx.AsyncClient) -> int | str:
        try:
            resp = await client.post(f"{url}/study/register", content=body(), headers=headers)
        except httpx.HTTPError as err:
            return type(err).__name__
        return resp.status_code

    limits = httpx.Limits(max_connections=posts)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        codes = list(await asyncio.gather(*(one(client) for _ in range(posts))))
    return codes, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--posts", type=int, default=6)
    parser.add_argument("--mb", type=int, default=63, help="MiB per body")
    parser.add_argument("--authorised", action="store_true", help="send the token")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkstemp(prefix="ld2-bench-api-", suffix=".log")[1])
    with api_server(args.repo.resolve(), port, log) as proc:
        _wait_ready(url, proc)
        pid = _api_pid(proc.pid)
        time.sleep(1.0)  # let start-up settle
        before = _status(pid)
        started = time.perf_counter()
        codes, sent = asyncio.run(_post_all(url, args.posts, args.mb, args.authorised))
        took = time.perf_counter() - started
        after = _status(pid)
    who = "with" if args.authorised else "without"
    print(f"repo: {args.repo.resolve()}  (API log: {log})")
    print(f"{args.posts} concurrent chunked POSTs of {args.mb} MiB {who} the token")
    print(f"answers: {dict(Counter(codes))} in {took:.1f} s; the clients sent {sent} MiB")
    print(f"API VmRSS once started: {before['VmRSS'] / 1024:.0f} MiB")
    print(f"API VmHWM after the uploads: {after['VmHWM'] / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
