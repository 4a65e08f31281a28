"""Start-up of the ``ld2`` command line: wall time from process start to exit.

Run by hand (never from the tests):

    uv run python bench/bench_cli.py                   # 15 runs of each command line
    uv run python bench/bench_cli.py -n 30 --json cli.json
    uv run python bench/bench_cli.py --repo /tmp/before  # another tree's ld2, for before/after
                                                       # (git archive HEAD ld2 pyproject.toml
                                                       #  | tar -x -C /tmp/before)

Times ``ld2 --version``, ``ld2 --help`` and ``ld2 CMD --help`` for every command of the real
typer app (subcommands too), the runs of all command lines interleaved, and prints the median
and the fastest run of each. Measured in the same run, as floors: the bare interpreter
(``python -c pass``), and ``--help`` and ``CMD --help`` of a typer app of two empty commands
(what typer and rich cost before ld2 adds anything).

Each command line is what the console script does: the tree's ``[project.scripts] ld2`` entry
point, called from ``python -c`` with ``sys.argv[0] = "ld2"`` and the tree first on the path
(``--repo`` measures another checkout of the same project against this interpreter's
packages).

Python compiles every module it imports unless a bytecode cache is there to read, and here
``PYTHONDONTWRITEBYTECODE=1`` may keep one from ever being written. So each command line is
timed twice: ``as-is`` (this environment unchanged) and ``cached`` (a bytecode cache in a
temporary ``PYTHONPYCACHEPREFIX``, warmed by one untimed run: an installed package normally
starts like this). ``--bytecode`` picks one of the two.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

FLOOR_TYPER = """\
import sys
import typer
app = typer.Typer(add_completion=False)
@app.command()
def one(name: str = "x") -> None:
    '''The first.'''
@app.command()
def two() -> None:
    '''The second.'''
sys.argv[0] = "app"
app()
"""

LIST_COMMANDS = """\
import json
import typer.main
from ld2.cli import app

def walk(command, path):
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from walk(sub, [*path, name])

print(json.dumps([p for p in walk(typer.main.get_command(app), []) if p]))
"""


def entry_point(tree: Path) -> str:
    """The ``ld2`` console script's target in `tree`'s pyproject.toml (``module:function``)."""
    with (tree / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["scripts"]["ld2"])


def launcher(target: str) -> str:
    """Python code doing what the generated console script for `target` does."""
    module, _, attr = target.partition(":")
    return f'import sys\nsys.argv[0] = "ld2"\nfrom {module} import {attr}\nsys.exit({attr}())\n'


def tree_env(tree: Path | None, base: dict[str, str]) -> dict[str, str]:
    """`base` with `tree` first on the path (None: unchanged)."""
    env = dict(base)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), base.get("PYTHONPATH")) if p)
    return env


def commands(tree: Path, cwd: Path) -> list[list[str]]:
    """Every command path of `tree`'s typer app (``["snapshot", "save"]``), in help order."""
    out = subprocess.run(
        [sys.executable, "-c", LIST_COMMANDS],
        env=tree_env(tree, dict(os.environ)),
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return [list(p) for p in json.loads(out.stdout)]


Case = tuple[str, Path | None, list[str]]  # label, tree (None: a floor), argv


def cases(trees: list[Path], cwd: Path) -> list[Case]:
    """Every command line to time: the floors, then each tree's."""
    py = sys.executable
    out: list[Case] = [
        ("python -c pass", None, [py, "-c", "pass"]),
        ("typer app --help (floor)", None, [py, "-c", FLOOR_TYPER, "--help"]),
        ("typer app CMD --help (floor)", None, [py, "-c", FLOOR_TYPER, "one", "--help"]),
    ]
    for tree in trees:
        ld2 = [py, "-c", launcher(entry_point(tree))]
        lines = [["--version"], ["--help"], *([*p, "--help"] for p in commands(tree, cwd))]
        out += [(" ".join(["ld2", *line]), tree, [*ld2, *line]) for line in lines]
    return out


def once(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    code = subprocess.run(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - t0, code.returncode


def measure(
    todo: list[Case], base: dict[str, str], cwd: Path, runs: int, warm: bool
) -> list[dict[str, Any]]:
    """Median and fastest wall time of each command line; the runs interleaved."""
    envs = [tree_env(tree, base) for _, tree, _ in todo]
    if warm:
        for (_, _, argv), env in zip(todo, envs, strict=True):
            once(argv, env, cwd)
    times: list[list[float]] = [[] for _ in todo]
    codes: list[set[int]] = [set() for _ in todo]
    for _ in range(runs):
        for k, ((_, _, argv), env) in enumerate(zip(todo, envs, strict=True)):
            seconds, code = once(argv, env, cwd)
            times[k].append(seconds)
            codes[k].add(code)
    return [
        {
            "command": label,
            "tree": None if tree is None else str(tree),
            "median_s": statistics.median(times[k]),
            "min_s": min(times[k]),
            "exit_codes": sorted(codes[k]),
        }
        for k, (label, tree, _) in enumerate(todo)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--runs", type=int, default=15, help="timed runs of each line")
    parser.add_argument(
        "--bytecode", choices=["as-is", "cached", "both"], default="both",
        help="as-is: this environment's bytecode caching; cached: a warm private cache",
    )  # fmt: skip
    parser.add_argument(
        "--repo", type=Path, action="append",
        help="a tree whose ld2 to measure (a directory with ld2/ and pyproject.toml); "
        "repeat it to compare trees in one run (default: this one)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every number to this file")
    args = parser.parse_args()
    trees = [p.resolve() for p in args.repo or [ROOT]]
    modes = ["as-is", "cached"] if args.bytecode == "both" else [args.bytecode]
    results: dict[str, list[dict[str, Any]]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="ld2-bench-pycache-") as cache,
        tempfile.TemporaryDirectory(prefix="ld2-bench-cwd-") as empty,
    ):
        # The children run in an empty directory: ``python -c`` puts its working directory
        # first on the path, which would pick the caller's ld2 over the tree's.
        cwd = Path(empty)
        todo = cases(trees, cwd)
        for mode in modes:
            base = dict(os.environ)
            if mode == "cached":
                base.pop("PYTHONDONTWRITEBYTECODE", None)
                base["PYTHONPYCACHEPREFIX"] = cache
            results[mode] = measure(todo, base, cwd, args.runs, warm=mode == "cached")

    print(f"ld2 start-up, {args.runs} runs of each command line, wall time in ms")
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, "
        f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}"
    )
    for k, tree in enumerate(trees, 1):
        print(f"tree {k}: {tree} (console script: {entry_point(tree)})")
    columns = [(m, k) for m in modes for k in range(1, len(trees) + 1)]
    labels = list(dict.fromkeys(label for label, _, _ in todo))
    found = {
        (m, label, None if r["tree"] is None else trees.index(Path(r["tree"])) + 1): r
        for m in modes
        for label, r in zip((c[0] for c in todo), results[m], strict=True)
    }
    width = max(len(label) for label in labels)
    tag = "" if len(trees) == 1 else " {k}"
    print(
        f"{'command line':<{width}}"
        + "".join(f" | {m + tag.format(k=k) + ' median':>17} {'min':>7}" for m, k in columns)
    )
    print("-" * (width + 28 * len(columns)))
    for label in labels:
        cells, bad = [], set()
        for m, k in columns:
            r = found.get((m, label, k)) or found.get((m, label, None))
            if r is None:
                cells.append(f" | {'-':>17} {'-':>7}")
                continue
            cells.append(f" | {r['median_s'] * 1e3:17.1f} {r['min_s'] * 1e3:7.1f}")
            bad |= set(r["exit_codes"]) - {0}
        print(f"{label:<{width}}" + "".join(cells) + (f"   exit {sorted(bad)}" if bad else ""))
    if args.json:
        report = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "trees": [{"path": str(t), "entry_point": entry_point(t)} for t in trees],
            "python": sys.version,
            "cores": os.cpu_count(),
            "runs": args.runs,
            "results": results,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
