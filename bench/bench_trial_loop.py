"""Trial-loop overhead: a worker's wall time per trial minus the kernel's own time.

Run by hand:

    uv run python bench/bench_trial_loop.py [--repo DIR]... [--kernels np,trivial]
        [--processes 1,2] [--reps 3] [--side 1024] [--trial 1024] [--out FILE]

For each checkout (``--repo DIR``, repeatable; default this one) a private redis-server and
``ld2 api``; then for each round, each `--processes` P, each checkout (several: interleaved, in
a rotating order) and each kernel: one ``ld2 worker --processes P --max-size TRIAL`` (runners
``bench-np``: numpy
Mandelbrot, max_iter 255; ``bench-trivial``: zeros; from ld2_bench_kernels.py) computes a
SIDE×SIDE study (1024×1024 in 1,024-point trials: 1,024 trials) registered over HTTP while the
worker already waits for work (after a small warm-up study that starts its compute pool).

- wall W: from the study's first lease to its last registration (``started_timestamp`` and
  ``finished_timestamp`` of ``GET /study/info``, Redis time, ms), so the pick-up delay is out;
- kernel K: the time spent inside the kernel, measured in the compute processes themselves
  (each call appends its ns to a log, see ld2_bench_kernels.py), summed over the study;
- n: the kernel calls (trials), checked to cover every point once;
- overhead per trial = (W × P − K) / n: the compute slots' time per trial not spent in the
  kernel (reserve, register, arrays, pickling, the pool's IPC, waiting for the CPU);
- CPU per trial of the worker's main process, its compute processes, redis-server and the API.

Beside it in the same round (``--no-pool`` to skip): ``multiprocessing.Pool(P).map`` of the same
kernel over the same chunks (chunksize 1, pool started and warm), each chunk's arrays built in
the pool process from its flat range as ld2 does: the local floor for the same overhead.
Medians over rounds, [min–max] beside.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from benchkit import (
    HERE,
    Checkout,
    Http,
    Procs,
    Report,
    add_target_options,
    checkouts,
    clean_exit,
    cpu_seconds,
    descendants,
    epoch_ns,
    float_axis,
    redis_cpu,
    register,
    start_api,
    start_redis,
    study_body,
    uptime,
    wait_done,
    wait_for_workers,
)
from ld2_bench_kernels import LOG_ENV, mandelbrot, read_logs, zeros

X0, Y0, SPAN = -2.0, -1.5, 3.0
CAPACITY = {"np": "bench-np", "trivial": "bench-trivial"}


# -- ld2 --------------------------------------------------------------------------------------------


def study(args: argparse.Namespace, kernel: str, rows: int, tag: str) -> dict[str, Any]:
    step = SPAN / args.side
    axes = [float_axis("y", rows, Y0, step), float_axis("x", args.side, X0, step)]
    consts: dict[str, int | str] = {"max_iter": args.max_iter, "tag": tag}
    return study_body(f"trial-loop-{tag}", CAPACITY[kernel], axes, consts)


class Cpu:
    """CPU seconds of the worker (main process; compute processes), redis-server and the API."""

    def __init__(self, worker: int, api: int, redis_url: str) -> None:
        self.worker, self.api, self.redis_url = worker, api, redis_url

    def read(self) -> dict[str, float]:
        children = descendants(self.worker)
        return {
            "worker_main": cpu_seconds(self.worker),
            "compute": sum(cpu_seconds(p) for p in children),
            "redis": redis_cpu(self.redis_url),
            "api": cpu_seconds(self.api) + sum(cpu_seconds(p) for p in descendants(self.api)),
        }


@dataclass
class Stack:
    """One checkout's redis-server and API."""

    target: Checkout
    k: int
    redis_url: str
    api: Http
    api_pid: int


def ld2_case(
    args: argparse.Namespace,
    stack: Stack,
    procs: Procs,
    cpu: Cpu,
    logs: Path,
    kernel: str,
    processes: int,
    tag: str,
) -> dict[str, Any]:
    api = stack.api
    before = cpu.read()
    sid = register(api, study(args, kernel, args.side, tag))
    info = wait_done(api, sid, args.study_timeout, procs, poll=args.poll)
    after = cpu.read()
    started, finished = epoch_ns(info["started_timestamp"]), epoch_ns(info["finished_timestamp"])
    if started is None or finished is None:
        raise RuntimeError(f"study {sid} is done without its timestamps: {info}")
    api.ok("POST", f"/study/delete?study_id={sid}")
    got = read_logs(str(logs)).get(tag, {"calls": 0, "ns": 0, "points": 0})
    points = args.side * args.side
    if got["points"] != points:
        raise RuntimeError(
            f"{tag}: the kernels saw {got['points']:,} points in {got['calls']} calls, "
            f"expected {points:,} (a trial computed twice, or the log is incomplete)"
        )
    n, wall, k = got["calls"], (finished - started) / 1e9, got["ns"] / 1e9
    used = {key: after[key] - before[key] for key in after}
    return {
        "system": stack.target.label,
        "kernel": kernel,
        "processes": processes,
        "trials": n,
        "wall_s": wall,
        "kernel_s": k,
        "wall_us_per_trial": wall / n * 1e6,
        "kernel_us_per_trial": k / n * 1e6,
        "overhead_us_per_trial": (wall * processes - k) / n * 1e6,
        "cpu_us_per_trial": {key: v / n * 1e6 for key, v in used.items()},
    }


def ld2_round(
    args: argparse.Namespace,
    stack: Stack,
    procs: Procs,
    logs: Path,
    processes: int,
    rnd: int,
) -> list[dict[str, Any]]:
    target, api, redis_url = stack.target, stack.api, stack.redis_url
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        LOG_ENV: str(logs),
    }
    name = f"t{stack.k}-trial-loop-p{processes}-r{rnd}"
    backend = ["--redis", redis_url] if args.backend == "redis" else ["--api", api.base]
    caps = [c for k in args.kernels for c in ("--capacity", CAPACITY[k])]
    prefix = [str(target.ld2)]
    if args.profile:  # the worker's main process under cProfile (its pool is not profiled)
        prof = Path(args.profile) / f"{name}.prof"
        prefix = [str(target.ld2.parent / "python"), "-m", "cProfile", "-o", str(prof), *prefix]
    argv = [*prefix, "worker", "--import", "ld2_bench_kernels", *caps,
            "--processes", str(processes), "--max-size", str(args.trial),
            "--idle-wait", str(args.idle_wait), "--name", name, *backend]  # fmt: skip
    worker = procs.start(name, argv, env=env)
    try:
        wait_for_workers(api, {name}, args.startup_timeout, procs)
        for kernel in args.kernels:  # start the pool, warm the caches: not measured
            rows = max(1, 4 * processes * args.trial // args.side)
            sid = register(api, study(args, kernel, rows, f"warm-{name}-{kernel}"))
            wait_done(api, sid, args.study_timeout, procs, poll=0.02)
            api.ok("POST", f"/study/delete?study_id={sid}")
        cpu = Cpu(worker.pid, stack.api_pid, redis_url)
        out = []
        for kernel in args.kernels:
            tag = f"t{stack.k}-{kernel}-p{processes}-r{rnd}-{os.getpid()}"
            out.append(ld2_case(args, stack, procs, cpu, logs, kernel, processes, tag))
            show(out[-1], rnd)
        return out
    finally:
        procs.stop(worker)


# -- the baseline: multiprocessing.Pool ----------------------------------------------------------


def _chunk(task: tuple[str, int, int, int, int]) -> tuple[np.ndarray, int]:
    """One chunk in a pool process: its arrays from the flat range, then the kernel, timed."""
    kernel, start, count, side, max_iter = task
    flat = np.arange(start, start + count)
    step = SPAN / side
    y = Y0 + (flat // side) * step
    x = X0 + (flat % side) * step
    t0 = time.perf_counter_ns()
    out = mandelbrot(y, x, max_iter) if kernel == "np" else zeros(x)
    return out, time.perf_counter_ns() - t0


def pool_round(args: argparse.Namespace, processes: int, rnd: int) -> list[dict[str, Any]]:
    points = args.side * args.side
    out = []
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for kernel in args.kernels:
            tasks = [
                (kernel, s, min(args.trial, points - s), args.side, args.max_iter)
                for s in range(0, points, args.trial)
            ]
            pool.map(_chunk, tasks[: 4 * processes], chunksize=1)  # started and warm
            t0 = time.perf_counter()
            got = pool.map(_chunk, tasks, chunksize=1)
            wall = time.perf_counter() - t0
            if sum(a.size for a, _ in got) != points:
                raise RuntimeError("the pool returned the wrong number of points")
            n, k = len(tasks), sum(ns for _, ns in got) / 1e9
            out.append({
                "system": "pool", "kernel": kernel, "processes": processes, "trials": n,
                "wall_s": wall, "kernel_s": k, "wall_us_per_trial": wall / n * 1e6,
                "kernel_us_per_trial": k / n * 1e6,
                "overhead_us_per_trial": (wall * processes - k) / n * 1e6,
                "cpu_us_per_trial": {},
            })  # fmt: skip
            show(out[-1], rnd)
    return out


# -- reporting -----------------------------------------------------------------------------------


def show(r: dict[str, Any], rnd: int) -> None:
    cpu = " ".join(f"{k} {v:.0f}" for k, v in r["cpu_us_per_trial"].items())
    print(
        f"  [round {rnd}] {r['system']} {r['kernel']} P={r['processes']}: "
        f"{r['trials']} trials in {r['wall_s']:.3f} s; µs/trial: wall {r['wall_us_per_trial']:.0f}, "
        f"kernel {r['kernel_us_per_trial']:.0f}, overhead {r['overhead_us_per_trial']:.0f}"
        + (f"; CPU µs/trial: {cpu}" if cpu else ""),
        flush=True,
    )


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["system"], r["kernel"], r["processes"]), []).append(r)
    rows = []
    for (system, kernel, processes), rs in groups.items():
        row: dict[str, Any] = {"system": system, "kernel": kernel, "processes": processes,
                               "rounds": len(rs), "trials": rs[0]["trials"]}  # fmt: skip
        for key in ("wall_s", "wall_us_per_trial", "kernel_us_per_trial", "overhead_us_per_trial"):
            xs = [r[key] for r in rs]
            row[key] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}
        cpu_keys = rs[0]["cpu_us_per_trial"].keys()
        row["cpu_us_per_trial"] = {
            k: statistics.median(r["cpu_us_per_trial"][k] for r in rs) for k in cpu_keys
        }
        rows.append(row)
    rows.sort(key=lambda r: (r["kernel"], r["processes"], r["system"] == "pool"))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| system | kernel | P | trials | wall s | wall µs/trial | kernel µs/trial "
        "| overhead µs/trial [min–max] | ld2 × pool overhead | CPU µs/trial: worker main, "
        "compute procs, redis, api |"
    )
    lines = [head, "|" + "---|" * 10]
    pools = {(r["kernel"], r["processes"]): r for r in rows if r["system"] == "pool"}
    for r in rows:
        o = r["overhead_us_per_trial"]
        base = pools.get((r["kernel"], r["processes"]))
        ratio = (
            f"{o['median'] / base['overhead_us_per_trial']['median']:.1f}"
            if r["system"] != "pool" and base and base["overhead_us_per_trial"]["median"] > 0
            else "–"
        )
        cpu = r["cpu_us_per_trial"]
        cpus = ", ".join(f"{cpu[k]:.0f}" for k in ("worker_main", "compute", "redis", "api")) if cpu else "–"  # fmt: skip
        lines.append(
            f"| {r['system']} | {r['kernel']} | {r['processes']} | {r['trials']} "
            f"| {r['wall_s']['median']:.3f} | {r['wall_us_per_trial']['median']:.0f} "
            f"| {r['kernel_us_per_trial']['median']:.0f} "
            f"| {o['median']:.0f} [{o['min']:.0f}–{o['max']:.0f}] | {ratio} | {cpus} |"
        )
    return "\n".join(lines)


def show_profiles(folder: Path, top: int = 15) -> None:
    """The functions with the most own time in each worker profile."""
    import pstats

    for prof in sorted(folder.glob("*.prof")):
        print(f"\n{prof} (worker main process, by own time):")
        pstats.Stats(str(prof)).sort_stats("tottime").print_stats(top)


def measure(args: argparse.Namespace, targets: list[Checkout], procs: Procs) -> dict[str, Any]:
    stacks = []
    for k, target in enumerate(targets):
        redis_url, _ = start_redis(procs, name=f"t{k}-redis")
        api, api_proc = start_api(procs, target.ld2, redis_url, name=f"t{k}-api")
        stacks.append(Stack(target, k, redis_url, api, api_proc.pid))
    logs = procs.dir / "kernel-logs"
    logs.mkdir()
    runs: list[dict[str, Any]] = []
    loads = []
    for rnd in range(1, args.reps + 1):
        loads.append(os.getloadavg())
        print(f"round {rnd}/{args.reps} (load {loads[-1][0]:.2f})", flush=True)
        for processes in args.processes:
            shift = (rnd - 1) % len(stacks)  # a rotating order: nobody always goes first
            for stack in stacks[shift:] + stacks[:shift]:
                runs += ld2_round(args, stack, procs, logs, processes, rnd)
            if not args.no_pool:
                runs += pool_round(args, processes, rnd)
    return {"runs": runs, "summary": summarize(runs), "load_per_round": loads}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_target_options(parser)
    parser.add_argument("--kernels", default="np,trivial", help="np and/or trivial")
    parser.add_argument("--processes", default="1,2", help="ld2 worker --processes values")
    parser.add_argument("--reps", type=int, default=3, help="rounds")
    parser.add_argument("--side", type=int, default=1024, help="the study is SIDE×SIDE points")
    parser.add_argument("--trial", type=int, default=1024, help="points a trial (--max-size)")
    parser.add_argument("--max-iter", type=int, default=255)
    parser.add_argument("--idle-wait", type=float, default=0.02,
                        help="ld2 worker --idle-wait (small: a slot's first reserve is not late)")  # fmt: skip
    parser.add_argument("--backend", choices=("redis", "api"), default="redis",
                        help="the worker connects with --redis (default) or --api")  # fmt: skip
    parser.add_argument("--poll", type=float, default=0.1, help="GET /study/info period (s)")
    parser.add_argument("--no-pool", action="store_true", help="skip the Pool baseline")
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument("--study-timeout", type=float, default=600.0)
    parser.add_argument("--profile", metavar="DIR",
                        help="run each worker's main process under cProfile, profiles in DIR "
                        "(slows it down: for where the time goes, not for the figures)")  # fmt: skip
    parser.add_argument("--out", help="write every run and the summary here (JSON)")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    args.kernels = [k for k in args.kernels.split(",") if k]
    args.processes = [int(p) for p in args.processes.split(",") if p]
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    if not args.kernels or any(k not in CAPACITY for k in args.kernels):
        parser.error(f"--kernels: choose from {', '.join(CAPACITY)}")
    if args.side < 1 or args.trial < 1 or args.reps < 1 or min(args.processes, default=0) < 1:
        parser.error("--side, --trial, --reps and --processes must be at least 1")
    targets = checkouts(args.repo, args.ld2)
    report = Report("trial_loop", targets, vars(args))
    for t in targets:
        print(f"{t.label}: {t.describe()}")
    print(f"load at start: {report.uptime_start}")
    with clean_exit("bench_trial_loop"), Procs("trial-loop", args.keep_logs) as procs:
        report.results = measure(args, targets, procs)
    report.results["table_md"] = table(report.results["summary"])
    print(
        f"\ntrial-loop overhead: {args.side}×{args.side} points in {args.trial}-point trials, "
        f"--backend {args.backend}; overhead = (wall × P − kernel) / trials; medians of "
        f"{args.reps} round(s)\n"
    )
    print(report.results["table_md"])
    print(f"\nload at end: {uptime()}")
    if args.profile:
        show_profiles(Path(args.profile))
    report.write(args.out)


if __name__ == "__main__":
    main()
