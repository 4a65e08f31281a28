"""Pick-up latency: from POST /study/register to the study's first trial leased, with idle workers.

Run by hand:

    uv run python bench/bench_pickup.py [--repo DIR]... [--workers 8] [--studies 100]
        [--idle-wait 1] [--backend redis|api] [--out FILE]

For each checkout (``--repo DIR``, repeatable; default this one): a private redis-server,
``ld2 api`` and `--workers` idle ``ld2 worker`` processes (one compute process each, serving the
trivial runner ``bench-trivial`` of ld2_bench_kernels.py, ``--idle-wait`` as given). Once every
worker has asked for work and they have idled a while (what that costs Redis is measured
then), `--studies` small studies (one trial each) are registered over HTTP (``POST
/study/register``, lite_dist2's JSON), one at a time: each after a random pause of up to `--gap`
seconds (default: `--idle-wait`, so that registrations fall at random phases of the workers'
polling), and each waited for until done (then deleted) before the next. With several
checkouts, all their stacks run at once and their studies alternate, so that every checkout
sees the same machine load.

The clock: the client's wall clock just before it sends the POST, against the moment a reserve
script leases the study's first trial, read from Redis's MONITOR feed (the first ``HSET`` of
the study's trial records, or of its ``started_ms``, run inside a script), stamped by Redis with
gettimeofday to the microsecond: same machine, same clock. The trial reaches the worker one
reply later (tens of µs on loopback). With ``--no-monitor`` (or when the feed shows nothing for
a study) the study's ``started_timestamp`` from ``GET /study/info`` is used instead, in whole
milliseconds. Both are recorded; they agree to within 1 ms.

Reports p50/p90/p99/max of POST → first lease, of the POST's answer → first lease (negative
when a worker leased before the API answered), and of the POST's own round trip.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from benchkit import (
    HERE,
    Checkout,
    Http,
    Procs,
    Report,
    add_target_options,
    checkouts,
    clean_exit,
    epoch_ns,
    float_axis,
    percentile,
    redis_cpu,
    start_api,
    start_redis,
    study_body,
    uptime,
    wait_done,
    wait_for_workers,
)

CAPACITY = "bench-trivial"
_LEASE = re.compile(rb'^\+(\d+)\.(\d+) \[\d+ lua\] "hset" "[^"]*\{([^}"]+)\}:(\w+)"')
METRICS = {
    "post_to_lease_ms": "POST sent → first lease",
    "answer_to_lease_ms": "POST answered → first lease",
    "post_rtt_ms": "POST round trip",
}


class LeaseWatch:
    """Reads Redis's MONITOR feed in a thread; keeps each study's first lease time (ns)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("redis://").split("/")[0].split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.sendall(b"MONITOR\r\n")
        self.feed = self.sock.makefile("rb")
        first = self.feed.readline()
        if not first.startswith(b"+OK"):
            raise RuntimeError(f"MONITOR refused: {first!r}")
        self.sock.settimeout(None)
        self.first: dict[str, int] = {}
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="monitor", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for line in self.feed:
                low = line[:240].lower()
                if b' lua] "hset" "' not in low:
                    continue
                m = _LEASE.match(low)
                if m is None:
                    continue
                sec, frac, _, suffix = m.groups()
                leased = suffix == b"trials" or (
                    suffix == b"s" and b'"running"' in low and b'"started_ms"' in low
                )
                if not leased:
                    continue
                ns = int(sec) * 1_000_000_000 + int(frac.ljust(6, b"0")[:6]) * 1000
                sid = line[m.start(3) : m.end(3)].decode()  # as written (m saw lower case)
                with self._cond:
                    if sid not in self.first:
                        self.first[sid] = ns
                        self._cond.notify_all()
        except (OSError, ValueError) as err:
            self.error = err

    def lease_of(self, sid: str, timeout: float) -> int | None:
        """The first lease of `sid` (epoch ns), waiting up to `timeout` s for the feed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sid not in self.first:
                left = deadline - time.monotonic()
                if left <= 0 or self.error is not None:
                    return None
                self._cond.wait(left)
            return self.first.pop(sid)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


@dataclass
class Stack:
    """One checkout's redis-server, API and idle workers."""

    target: Checkout
    redis_url: str
    api: Http
    workers: set[str]
    watch: LeaseWatch | None = None
    idle: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)


def start_stack(args: argparse.Namespace, target: Checkout, k: int, procs: Procs) -> Stack:
    redis_url, _ = start_redis(procs, name=f"t{k}-redis")
    api, _ = start_api(procs, target.ld2, redis_url, name=f"t{k}-api")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    backend = ["--redis", redis_url] if args.backend == "redis" else ["--api", api.base]
    names = {f"t{k}-pickup-{w}" for w in range(args.workers)}
    for name in sorted(names):
        argv = [str(target.ld2), "worker", "--import", "ld2_bench_kernels", "--capacity", CAPACITY,
                "--processes", "1", "--max-size", "1024", "--idle-wait", str(args.idle_wait),
                "--name", name, *backend]  # fmt: skip
        procs.start(name, argv, env=env)
    return Stack(target, redis_url, api, names)


def idle_cost(url: str, seconds: float) -> dict[str, float]:
    """Redis commands/s and CPU (ms/s) while the workers idle for `seconds`."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        c0, t0 = client.info("stats")["total_commands_processed"], time.monotonic()
        cpu0 = redis_cpu(url)
        time.sleep(seconds)
        c1, t1 = client.info("stats")["total_commands_processed"], time.monotonic()
        cpu1 = redis_cpu(url)
    finally:
        client.close()
    return {
        "seconds": t1 - t0,
        "redis_commands_per_s": (c1 - c0 - 2) / (t1 - t0),  # less our own two INFO calls
        "redis_cpu_ms_per_s": (cpu1 - cpu0) * 1000 / (t1 - t0),
    }


def one_study(args: argparse.Namespace, stack: Stack, procs: Procs, name: str) -> dict[str, Any]:
    axes = [float_axis("y", 1, 0.0, 1.0), float_axis("x", args.points, 0.0, 1.0)]
    body = study_body(name, CAPACITY, axes, {})
    status, data, sent, answered = stack.api.timed("POST", "/study/register", body)
    if status != 200:
        raise RuntimeError(f"{stack.target.label}: POST /study/register -> {status}: {data}")
    sid = str(data["study_id"])
    info = wait_done(stack.api, sid, args.study_timeout, procs, poll=0.005)
    store_ns = epoch_ns(info.get("started_timestamp"))
    lease_ns = stack.watch.lease_of(sid, 2.0) if stack.watch is not None else None
    source = "monitor"
    if lease_ns is None:
        if store_ns is None:
            raise RuntimeError(f"study {sid} is done but has no started_timestamp: {info}")
        lease_ns, source = store_ns, "store_ms"
    stack.api.ok("POST", f"/study/delete?study_id={sid}")
    return {
        "study_id": sid,
        "source": source,
        "post_to_lease_ms": (lease_ns - sent) / 1e6,
        "answer_to_lease_ms": (lease_ns - answered) / 1e6,
        "post_rtt_ms": (answered - sent) / 1e6,
        "post_to_started_ms_store": None if store_ns is None else (store_ns - sent) / 1e6,
    }


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(samples), "sources": sorted({s["source"] for s in samples})}
    for key in METRICS:
        xs = [s[key] for s in samples]
        out[key] = {
            "min": min(xs),
            "p50": percentile(xs, 0.5),
            "p90": percentile(xs, 0.9),
            "p99": percentile(xs, 0.99),
            "max": max(xs),
            "mean": sum(xs) / len(xs),
        }
    return out


def measure(args: argparse.Namespace, targets: list[Checkout], procs: Procs) -> dict[str, Any]:
    rng = random.Random(args.seed)
    stacks = [start_stack(args, t, k, procs) for k, t in enumerate(targets)]
    t0 = time.monotonic()
    for s in stacks:
        wait_for_workers(s.api, s.workers, args.startup_timeout, procs)
    print(f"{args.workers} worker(s) per checkout asking for work after {time.monotonic() - t0:.1f} s")  # fmt: skip
    settle = max(2.0, 2 * args.idle_wait)
    for s in stacks:  # (one after the other: the others idle meanwhile, as they do later)
        s.idle = idle_cost(s.redis_url, settle)
        print(
            f"{s.target.label}: idle workers cost Redis {s.idle['redis_commands_per_s']:.0f} "
            f"commands/s, {s.idle['redis_cpu_ms_per_s']:.1f} ms CPU/s"
        )
    try:
        for s in stacks:
            s.watch = None if args.no_monitor else LeaseWatch(s.redis_url)
        run = f"{os.getpid()}-{int(time.time())}"
        for k in range(args.warmup + args.studies):
            order = stacks[:]
            rng.shuffle(order)  # which checkout goes first varies from study to study
            for s in order:
                procs.check()
                time.sleep(rng.uniform(0, args.gap))
                sample = one_study(args, s, procs, f"pickup-{run}-{k}")
                if k >= args.warmup:
                    s.samples.append(sample)
            done = k + 1 - args.warmup
            if done > 0 and (done % 10 == 0 or done == args.studies):
                recent = "; ".join(
                    f"{s.target.label} median {percentile([x['post_to_lease_ms'] for x in s.samples[-10:]], 0.5):.1f} ms"
                    for s in stacks
                )
                print(f"  {done}/{args.studies} studies; last 10: {recent}", flush=True)
    finally:
        for s in stacks:
            if s.watch is not None:
                s.watch.close()
    return {
        s.target.label: {"idle": s.idle, "summary": summarize(s.samples), "studies": s.samples}
        for s in stacks
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "| checkout | ms | min | p50 | p90 | p99 | max | mean |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        for key, name in METRICS.items():
            d = r["summary"][key]
            cells = " | ".join(f"{d[q]:.2f}" for q in ("min", "p50", "p90", "p99", "max", "mean"))
            lines.append(f"| {label} | {name} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_target_options(parser)
    parser.add_argument("--workers", type=int, default=8, help="idle workers (per checkout)")
    parser.add_argument("--studies", type=int, default=100, help="measured studies (each)")
    parser.add_argument("--warmup", type=int, default=3, help="studies before, not counted")
    parser.add_argument("--idle-wait", type=float, default=1.0, help="ld2 worker --idle-wait")
    parser.add_argument(
        "--gap", type=float, help="max random pause before each study (default: --idle-wait)"
    )
    parser.add_argument("--points", type=int, default=16, help="points of each study (1 trial)")
    parser.add_argument("--backend", choices=("redis", "api"), default="redis",
                        help="workers connect with --redis (default) or --api")  # fmt: skip
    parser.add_argument("--no-monitor", action="store_true",
                        help="first lease from started_timestamp (ms) instead of MONITOR (µs)")  # fmt: skip
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    parser.add_argument("--study-timeout", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", help="write every sample and the summary here (JSON)")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    if args.gap is None:
        args.gap = args.idle_wait
    if args.studies < 1 or args.workers < 1 or not 1 <= args.points <= 1024:
        parser.error("--studies and --workers must be at least 1, --points within 1..1024")
    targets = checkouts(args.repo, args.ld2)
    report = Report("pickup", targets, vars(args))
    for t in targets:
        print(f"{t.label}: {t.describe()}")
    print(f"load at start: {report.uptime_start}")
    with clean_exit("bench_pickup"), Procs("pickup", args.keep_logs) as procs:
        report.results = {"checkouts": measure(args, targets, procs)}
    per = report.results["checkouts"]
    report.results["table_md"] = table(per)
    sources = sorted({x for r in per.values() for x in r["summary"]["sources"]})
    print(
        f"\npick-up latency, {args.workers} idle workers (--idle-wait {args.idle_wait:g}, "
        f"--backend {args.backend}), {args.studies} studies each, clock: {', '.join(sources)}\n"
    )
    print(report.results["table_md"])
    print(f"\nload at end: {uptime()}")
    report.write(args.out)


if __name__ == "__main__":
    main()
