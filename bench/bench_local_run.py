"""`ld2 run` against multiprocessing.Pool(2) over the same grid, in one run (issue 11).

Run by hand:

    uv run python bench/bench_local_run.py                      # this checkout, 3 rounds
    uv run python bench/bench_local_run.py --repo /tmp/ld2-base --repo . --rounds 5

The workload: the example Mandelbrot study (`ld2 new mandelbrot`) at 1024 x 1024 points
(max_iter 255), `ld2 run study.json -w 2 -o out.npy` in a fresh state directory, timed from
the process start to its exit, minus the bare interpreter's start (`python -c pass`, measured
in the same round): everything ld2 does counts (imports, the embedded server, the workers, the
results file). The baseline: `Pool(2).map` of ld2's own vectorised kernel over the grid's rows
(chunksize 1), the pool's start and the `.npy` written included. Each round runs every setup
once, interleaved; medians are reported, with the ratio to Pool(2).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from benchkit import add_target_options, checkouts

SIZE = 1024
START_Y, START_X, SPAN = -1.5, -2.0, 3.0


def study(size: int) -> dict[str, Any]:
    step = SPAN / size
    return {
        "name": "bench-local-run",
        "required_capacity": ["mandelbrot"],
        "study_strategy": {"type": "all_calculation", "study_strategy_param": None},
        "suggest_strategy": {
            "type": "sequential",
            "suggest_strategy_param": {"strict_aligned": True},
        },
        "const_param": {
            "consts": [
                {"type": "int", "key": "max_iter", "value": 255},
                {"type": "float", "key": "abs_threshold", "value": 2.0},
            ]
        },
        "result_type": "scalar",
        "result_value_type": "int",
        "parameter_space": {
            "type": "aligned",
            "axes": [
                {"name": "y", "type": "float", "size": size, "step": step, "start": START_Y},
                {"name": "x", "type": "float", "size": size, "step": step, "start": START_X},
            ],
        },
    }


def _row(args: tuple[int, int]) -> np.ndarray:
    from ld2.worker.builtins import mandelbrot

    row, size = args
    step = SPAN / size
    x = START_X + np.arange(size) * step
    y = np.full(size, START_Y + row * step)
    return mandelbrot(x, y, max_iter=255, abs_threshold=2.0)


def pool2(size: int, out: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        rows = pool.map(_row, [(r, size) for r in range(size)], chunksize=1)
    values = np.concatenate(rows)
    np.save(out, values)
    return time.perf_counter() - t0, int(values.sum())


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_options(parser)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    targets = checkouts(args.repo, args.ld2)
    figures: dict[str, list[float]] = {"pool2": [], "python -c pass": []}
    checked: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="ld2-bench-run-") as tmp:
        root = Path(tmp)
        path = root / "study.json"
        path.write_text(json.dumps(study(args.size)))
        for n in range(args.rounds):
            took, total = pool2(args.size, root / "pool.npy")
            figures["pool2"].append(took)
            checked["pool2"] = total
            bare = min(timed([sys.executable, "-c", "pass"], root) for _ in range(3))
            figures["python -c pass"].append(bare)
            for target in targets:
                state = root / f"state-{n}-{target.label}"
                out = root / f"out-{target.label}.npy"
                cmd = [str(target.ld2), "run", str(path), "-w", "2", "-o", str(out),
                       "--state-dir", str(state)]  # fmt: skip
                figures.setdefault(target.label, []).append(timed(cmd, root) - bare)
                checked[target.label] = int(np.load(out)["result"].sum())
            print(f"round {n + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in figures.items()))
    if len(set(checked.values())) != 1:
        raise SystemExit(f"the results differ: {checked}")
    base = statistics.median(figures["pool2"])
    print(f"\n{args.size}x{args.size} Mandelbrot, max_iter 255, -w 2, -o out.npy "
          f"(sum {checked['pool2']:,}); medians of {args.rounds} rounds")  # fmt: skip
    print(f"{'setup':<28} {'seconds':>8} {'x Pool(2)':>10}")
    for label, values in figures.items():
        med = statistics.median(values)
        ratio = "" if label == "python -c pass" else f"{med / base:10.2f}"
        print(f"{label:<28} {med:8.3f} {ratio}")
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "sums": checked}, indent=2))


if __name__ == "__main__":
    main()
