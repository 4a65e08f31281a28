"""ld2 beside multiprocessing.Pool(2), Celery, RQ and arq: the shared peer benchmark, called.

Run by hand (the harness's venvs first: ``bash /work/shared/peer-bench/run_all.sh
--setup-only``; Python 3.13, in $BENCH_VENVS, default /tmp/bench-venvs):

    uv run python bench/bench_peers.py [--repo DIR]... \\
        --systems mp_pool,celery,rq_simple,arq,ld2 --kernels np,py --reps 3 --no-redis-limit \\
        --out /tmp/peer-bench/peers.json

This calls the harness's ``run_all.sh`` (``--harness``, default /work/shared/peer-bench; it is
read-only and nothing of it is copied here) with ``LD2_BIN`` set to a checkout's ``ld2``, and
reads the JSON it writes. Per checkout (``--repo DIR`` or ``--ld2 PATH``, both repeatable;
default this checkout), two runs of the harness, each with its own rounds:

1. ld2 fetching the results at the end as one .npy (``LD2_RESULTS=npy``: ``GET
   /study/results?format=npy``): the first checkout with every system asked for, any further
   one with ``mp_pool`` and ``ld2`` only (the peers do not depend on ld2); the harness's noop
   cases too unless ``--no-noop``;
2. unless ``--no-json-pass``: ``mp_pool`` and ``ld2`` with ``--json-kernels`` (default np),
   ld2 fetching lite_dist2's JSON (``LD2_RESULTS=json``: ``GET /study``), no noop cases. The
   difference of ld2's medians in the two runs estimates what ``GET /study`` costs over .npy.

Ratios are the harness's: per round, a system's wall time over mp_pool's in the same round,
median over rounds, so every ratio is to the Pool of its own run. Prints one table, writes
``--out`` (the summary; the harness's own JSON and Markdown files lie beside it, named
``<out>.<checkout>.npy.json`` and ``<out>.<checkout>.json.json``). Anything after ``--`` goes
to the harness unchanged (e.g. ``-- --chunk 512``).

In the .npy runs the harness's clock also covers its own check of the results, ``np.unique(coords,
axis=0)`` over every point (in the JSON runs it counts distinct points after the clock stops):
measured apart with the harness's Python (`verification_seconds`) and printed, with each ld2
.npy median without it.

Cleanup: this process becomes a child subreaper, so whatever the harness starts stays its
descendant even after the harness's own runner processes exit; on an error, Ctrl-C or SIGTERM
every descendant gets SIGTERM (a harness runner then stops its redis-server and workers), and
SIGKILL after a grace period.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchkit import (
    Checkout,
    add_target_options,
    become_subreaper,
    checkouts,
    end_descendants,
    loadavg,
    uptime,
)

HARNESS = Path("/work/shared/peer-bench")
SYSTEMS = "mp_pool,celery,rq_simple,arq,ld2"


def run_harness(
    args: argparse.Namespace,
    target: Checkout,
    out: Path,
    systems: str,
    kernels: str,
    results: str,
    extra: list[str],
) -> dict[str, Any]:
    """One run of run_all.sh; its JSON document. Its output is passed through as it comes."""
    cmd = ["bash", str(args.harness / "run_all.sh"), "--systems", systems,
           "--kernels", kernels, "--reps", str(args.reps), "--out", str(out), *extra,
           *args.harness_args]  # fmt: skip
    env = {**os.environ, "LD2_BIN": str(target.ld2), "LD2_RESULTS": results,
           "BENCH_VENVS": str(args.venvs)}  # fmt: skip
    if args.warmup is not None:
        env["LD2_WORKER_WARMUP"] = str(args.warmup)
    print(f"\n$ LD2_BIN={target.ld2} LD2_RESULTS={results} {' '.join(cmd)}", flush=True)
    print(f"  ({uptime()})", flush=True)
    out.unlink(missing_ok=True)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        rc = proc.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the harness ran over --timeout {args.timeout:g} s") from None
    if rc != 0:
        raise RuntimeError(f"the harness exited with status {rc}")
    if not out.exists():
        raise RuntimeError(f"the harness wrote no {out}")
    return dict(json.loads(out.read_text()))


def cell(d: dict[str, Any] | None) -> tuple[str, str]:
    """(wall median [min–max] (ok/runs), × mp_pool) of one harness summary entry."""
    if not d:
        return "–", "–"
    if d.get("skipped"):
        return "skipped", "–"
    if not d.get("n_ok"):
        return f"FAILED 0/{d.get('n_runs')}", "–"
    wall = (
        f"{d['wall_median_s']:.2f} [{d['wall_min_s']:.2f}–{d['wall_max_s']:.2f}] "
        f"({d['n_ok']}/{d['n_runs']})"
    )
    ratio = d.get("x_mp_pool")
    return wall, "–" if ratio is None else f"{ratio:.2f}"


def table(kernels: list[str], rows: list[tuple[str, dict[str, Any], str, list[str]]]) -> str:
    """rows: (label, a harness summary, the system in it, the kernels that run ran)."""
    head = ["system"]
    for k in kernels:
        head += [f"wall {k} s, median [min–max] (ok)", f"× mp_pool {k}"]
    head.append("noop chunks/s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, summary, system, ran in rows:
        row = [label]
        for k in kernels:
            row += list(cell(summary.get(f"{system}/{k}"))) if k in ran else ["not run", "–"]
        noop = summary.get(f"{system}/noop")
        if noop and noop.get("chunks_per_s_median"):
            row.append(f"{noop['chunks_per_s_median']:.0f} ({noop['n_chunks']} chunks)")
        else:
            row.append("–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def ld2_runs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    keep = ("case", "round", "wall_s", "verified", "loadavg_before", "loadavg_after", "error")
    return [{k: r.get(k) for k in keep} for r in doc.get("runs", []) if r.get("system") == "ld2"]


VERIFY = """\
import statistics, sys, time
import numpy as np
side = int(sys.argv[1])
y, x = np.meshgrid(np.linspace(-1.5, 1.5, side), np.linspace(-2.0, 1.0, side), indexing="ij")
coords = np.stack([y.ravel(), x.ravel()], axis=1)
took = []
for _ in range(5):
    t0 = time.perf_counter()
    assert len(np.unique(coords, axis=0)) == side * side
    took.append(time.perf_counter() - t0)
print(statistics.median(took))
"""


def verification_seconds(args: argparse.Namespace, side: int = 1024) -> float:
    """What the harness's ld2 slot spends inside ld2's clock after the results are in hand
    with LD2_RESULTS=npy: counting distinct points with ``np.unique(coords, axis=0)`` (with
    LD2_RESULTS=json it counts them after stopping the clock). Measured on `side`² float
    (y, x) points in grid order, as ld2 returns them, with the harness's own Python."""
    python = args.venvs / "peers" / "bin" / "python"
    out = subprocess.run([str(python), "-c", VERIFY, str(side)], check=True,
                         capture_output=True, text=True)  # fmt: skip
    return float(out.stdout.strip())


def measure(
    args: argparse.Namespace, targets: list[Checkout], stem: Path
) -> dict[str, dict[str, Any]]:
    """Per checkout label: its passes (file, uptime after, the harness's document)."""
    extra = ["--no-redis-limit"] if args.no_redis_limit else []
    extra += ["--no-noop"] if args.no_noop else []
    done: dict[str, dict[str, Any]] = {}
    for i, target in enumerate(targets):
        safe = re.sub(r"[^A-Za-z0-9_.@+-]", "_", target.label)
        systems = args.systems if i == 0 else "mp_pool,ld2"
        passes: dict[str, Any] = {}
        out = Path(f"{stem}.{safe}.npy.json")
        doc = run_harness(args, target, out, systems, args.kernels, "npy", extra)
        passes["npy"] = {"file": str(out), "uptime_after": uptime(), "doc": doc}
        if not args.no_json_pass:
            out = Path(f"{stem}.{safe}.json.json")
            doc = run_harness(args, target, out, "mp_pool,ld2", args.json_kernels, "json",
                              ["--no-redis-limit", "--no-noop"])  # fmt: skip
            passes["json"] = {"file": str(out), "uptime_after": uptime(), "doc": doc}
        done[target.label] = passes
    return done


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_target_options(parser)
    parser.add_argument("--harness", type=Path, default=HARNESS)
    parser.add_argument("--venvs", type=Path, default=Path(os.environ.get("BENCH_VENVS", "/tmp/bench-venvs")))  # fmt: skip
    parser.add_argument("--systems", default=SYSTEMS)
    parser.add_argument("--kernels", default="np,py")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-redis-limit", action="store_true")
    parser.add_argument("--no-noop", action="store_true")
    parser.add_argument("--no-json-pass", action="store_true",
                        help="skip the run with lite_dist2's JSON GET /study")  # fmt: skip
    parser.add_argument("--json-kernels", default="np", help="kernels of the JSON run")
    parser.add_argument("--warmup", type=float,
                        help="LD2_WORKER_WARMUP: s between starting ld2's workers and the clock")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=4 * 3600.0, help="per harness run (s)")
    parser.add_argument("--out", default=f"/tmp/peer-bench/peers-{time.strftime('%Y%m%d-%H%M%S')}.json")  # fmt: skip
    parser.add_argument("harness_args", nargs="*", help="after --: passed to the harness")
    args = parser.parse_args()
    if not (args.harness / "run_all.sh").is_file():
        parser.error(f"no run_all.sh in {args.harness}")
    if "ld2" not in args.systems.split(","):
        args.no_json_pass = True
    targets = checkouts(args.repo, args.ld2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "uptime": uptime()}
    for t in targets:
        print(f"{t.label}: {t.describe()}")
    print(f"load at start: {started['uptime']}", flush=True)

    become_subreaper()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        passes = measure(args, targets, out.with_suffix(""))
    except (RuntimeError, KeyboardInterrupt, SystemExit) as err:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        ended = end_descendants()
        why = "interrupted" if isinstance(err, KeyboardInterrupt | SystemExit) else str(err)
        print(f"bench_peers: {why}; ended {len(ended)} leftover process(es)", file=sys.stderr)
        raise SystemExit(1) from None
    leftovers = end_descendants()
    if leftovers:
        print(f"bench_peers: ended {len(leftovers)} leftover process(es): {leftovers}")

    kernels = [k for k in args.kernels.split(",") if k]
    json_kernels = [k for k in args.json_kernels.split(",") if k]
    first = passes[targets[0].label]["npy"]["doc"]["summary"]
    rows = [(s, first, s, kernels) for s in args.systems.split(",") if s and s != "ld2"]
    cost: dict[str, dict[str, float]] = {}
    for t in targets:
        p = passes[t.label]
        npy = p["npy"]["doc"]["summary"]
        rows.append((f"ld2 {t.label} (.npy)", npy, "ld2", kernels))
        if "json" in p:
            js = p["json"]["doc"]["summary"]
            rows.append((f"ld2 {t.label} (JSON GET /study)", js, "ld2", json_kernels))
            for k in json_kernels:
                a, b = npy.get(f"ld2/{k}") or {}, js.get(f"ld2/{k}") or {}
                if a.get("wall_median_s") and b.get("wall_median_s"):
                    cost.setdefault(t.label, {})[k] = b["wall_median_s"] - a["wall_median_s"]
    tbl = table(kernels, rows)
    verify = verification_seconds(args)
    pool = {k: (first.get(f"mp_pool/{k}") or {}).get("wall_median_s") for k in kernels}
    doc = {
        "bench": "peers",
        "targets": [t.to_dict() for t in targets],
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "started": started,
        "finished": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "uptime": uptime()},
        "load_end": loadavg(),
        "passes": {
            label: {
                name: {
                    "file": x["file"],
                    "uptime_after": x["uptime_after"],
                    "summary": x["doc"].get("summary"),
                    "ld2_runs": ld2_runs(x["doc"]),
                }
                for name, x in p.items()
            }
            for label, p in passes.items()
        },
        "json_minus_npy_s": cost,
        "harness_verification_s": verify,
        "table_md": tbl,
    }
    out.write_text(json.dumps(doc, indent=1))
    print(
        f"\nratios: wall / mp_pool's wall in the same round of the same harness run, "
        f"median of {args.reps} round(s)\n"
    )
    print(tbl)
    for label, ks in cost.items():
        for k, v in ks.items():
            print(f"ld2 {label} {k}: lite_dist2's JSON GET /study costs about {v:+.2f} s over "
                  f".npy (the JSON run's median − the .npy run's)")  # fmt: skip
    print(
        f"\nthe harness's np.unique(coords, axis=0) inside ld2's clock (.npy runs): {verify:.2f} s"
    )
    for t in targets:
        npy = passes[t.label]["npy"]["doc"]["summary"]
        for k in kernels:
            d, base = npy.get(f"ld2/{k}") or {}, pool.get(k)
            if d.get("wall_median_s") and base:
                rest = d["wall_median_s"] - verify
                print(f"ld2 {t.label} {k} (.npy) without it: {rest:.2f} s = {rest / base:.2f}× "
                      f"mp_pool's median ({base:.2f} s)")  # fmt: skip
    print(f"\nload at start: {started['uptime']}\nload at end:   {doc['finished']['uptime']}")
    print(f"wrote {out} (the harness's own files: {out.with_suffix('')}.*)")


if __name__ == "__main__":
    main()
