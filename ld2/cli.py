"""The ``ld2`` command line: thin commands over the same core the API and workers use.

Connection settings come from flags or the environment (``LD2_REDIS_URL``/``REDIS_URL``,
``LD2_API_URL``, ``LD2_API_TOKEN``); with none, commands use the embedded backend in the local
state directory. Bad input exits with status 2 and a message naming the file and field.
"""

from __future__ import annotations

# Only what building the typer app needs is imported here, so that ``ld2 --help`` and
# ``ld2 CMD --help`` stay quick: a command imports the rest (asyncio, numpy, pydantic, redis,
# the store, the API) when it runs. typer reads the commands' annotations at run time, so the
# types in their signatures must be cheap ones (Path, str, int, ...) imported here.
import contextlib
import functools
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ld2.core.errors import (
    BackendUnavailable,
    InvalidInput,
    LD2Error,
    NotFound,
    RunnerMismatch,
    StudyConflict,
)

if TYPE_CHECKING:
    from rich.console import Console

    from ld2.store.base import StudyState, Table

T = TypeVar("T")


@functools.cache
def _console() -> Console:
    """The terminal's rich console (made on first use: rich costs ~70 ms to import)."""
    from rich.console import Console

    return Console()


app = typer.Typer(
    name="ld2",
    help="Distributed parameter sweeps on Redis, wire-compatible with lite_dist2.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # click's plain help: rich's rendering alone costs ~0.2 s a start
)


def _print_version(value: bool) -> None:
    if value:
        from ld2 import __version__

        typer.echo(f"ld2 {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Distributed parameter sweeps on Redis, wire-compatible with lite_dist2."""


def _fail(message: str) -> typer.Exit:
    typer.secho(f"ld2: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(2)


ApiOpt = Annotated[
    str | None,
    typer.Option(
        "--api", help="An ld2 (or lite_dist2) API URL instead of Redis. Default: $LD2_API_URL."
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token", help="Bearer token for --api (default: $LD2_API_TOKEN).", show_default=False
    ),
]
RedisOpt = Annotated[
    str | None,
    typer.Option(
        "--redis",
        help="Redis URL (redis://, rediss://, unix://). Default: $LD2_REDIS_URL or $REDIS_URL; "
        "without any, the embedded backend in the local state directory.",
    ),
]


def _set_allow_eviction(value: bool) -> bool:
    if value:
        os.environ["LD2_ALLOW_EVICTION"] = "1"
    return value


AllowEvictionOpt = Annotated[
    bool,
    typer.Option(
        "--allow-eviction",
        callback=_set_allow_eviction,
        help="Run on a Redis whose maxmemory-policy may evict keys (studies may vanish). "
        "Default: refuse it ($LD2_ALLOW_EVICTION=1 allows too).",
    ),
]


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(help="Port. Default: $PORT, else the config file's, else 8000.")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="API processes.")] = 1,
    redis: RedisOpt = None,
    config: Annotated[
        Path | None,
        typer.Option("-c", "--config", help="lite_dist2-style table_config.json."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="Require this bearer token (default: $LD2_API_TOKEN).", show_default=False
        ),
    ] = None,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, MiB.")] = 64,
    prefix: Annotated[
        str | None, typer.Option(help="Redis key prefix (default: $LD2_PREFIX, else ld2).")
    ] = None,
    allow_eviction: AllowEvictionOpt = False,
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log/--no-access-log",
            help="Log every request (uvicorn's access log: a line for each trial of each worker).",
        ),
    ] = False,
) -> None:
    """Serve the HTTP API (lite_dist2's endpoints and ld2's extras; docs at /docs)."""
    import logging

    from ld2.api.server import serve
    from ld2.config import ApiSettings, MiB, TableConfig
    from ld2.store.connect import redis_url_from_env

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with _user_errors():
        table_config = TableConfig.load(config) if config else TableConfig()
    env_port = os.environ.get("PORT")
    chosen = port if port is not None else int(env_port) if env_port else table_config.port
    settings = ApiSettings(
        redis_url=redis or redis_url_from_env(),
        token=token or os.environ.get("LD2_API_TOKEN") or None,
        max_body_bytes=int(max_body_mb * MiB),
        prefix=prefix or os.environ.get("LD2_PREFIX") or "ld2",
        table=table_config,
    )
    with _user_errors():
        serve(
            settings, host, chosen, workers, allow_eviction=_allow_eviction(),
            access_log=access_log,
        )  # fmt: skip


# -- shared plumbing -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _table(
    redis: str | None, api: str | None, token: str | None, **kwargs: Any
) -> AsyncIterator[Table]:
    """The table the connection options choose (the Python client's rules: `open_backend`)."""
    from ld2.client import open_backend

    table = await open_backend(
        redis, api, token, allow_eviction=_allow_eviction(), field="--redis", **kwargs
    )
    try:
        yield table
    finally:
        await table.close()


EXIT_BACKEND = 1  # the backend is unreachable, or no such study
EXIT_BAD_INPUT = 2  # the user's input is wrong (a file, a flag, a study that conflicts)
EXIT_INCOMPLETE = 3  # the answer is not whole: failed points, or the study has not finished
EXIT_INTERRUPTED = 130  # Ctrl-C


class Incomplete(Exception):
    """A command did its work, but the answer is not whole (exit status 3)."""


def _allow_eviction() -> bool:
    """``--allow-eviction`` or ``$LD2_ALLOW_EVICTION=1``: run on a Redis that may evict keys
    (studies may vanish; said loudly at start)."""
    from ld2.client import allow_eviction_from_env

    return allow_eviction_from_env()


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Domain errors become one clear line and an exit status (2: bad input), no traceback."""
    try:
        yield
    except (InvalidInput, RunnerMismatch) as err:
        raise _fail(str(err)) from None
    except StudyConflict as err:
        lines = "\n".join(f"  {d}" for d in err.differences)
        raise _fail(
            f"a different study named {err.name!r} is already registered:\n{lines}\n"
            f"Give this study another name, or forget the old one (ld2 delete {err.name}); "
            "ld2 run --restart does both in one step."
        ) from None
    except Incomplete:
        raise typer.Exit(EXIT_INCOMPLETE) from None
    except BackendUnavailable as err:
        typer.secho(f"ld2: cannot reach the backend: {err}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    except (NotFound, LD2Error) as err:
        typer.secho(f"ld2: {err}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None


def _run(coro: Awaitable[T]) -> T:
    """Run a command's coroutine under `_user_errors` (see `run_loop`)."""
    with _user_errors():
        return run_loop(coro)


def run_loop(coro: Awaitable[T]) -> T:
    """Run `coro` on uvloop where it is installed (with uvicorn's ``standard`` extra, on
    Linux and macOS): a worker's event loop turns over several times a trial, and uvloop's
    turns cost about half of asyncio's. Plain asyncio otherwise."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def _load_study(path: Path) -> Any:
    """A study file, read strictly; without a name it is registered under the file's stem."""
    from ld2.client import study_registry

    return study_registry(path)


async def _find(table: Table, ident: str) -> StudyState:
    """A study by id, else by name."""
    from ld2.client import find_study

    return await find_study(table, ident)


def _safe(text: str) -> str:
    from ld2.summary import safe

    return safe(text)


def _err(text: str) -> None:
    typer.secho(text, err=True, fg=typer.colors.YELLOW)


async def _report_end(table: Table, state: StudyState) -> None:
    """Print the answer and the failures; raise `Incomplete` unless the answer is whole."""
    from ld2 import summary

    text = await summary.answer(table, state)
    if text:
        _console().print(text, markup=False, highlight=False)
    report = await summary.failure_report(table, state)
    for line in report:
        _err(line)
    if report:
        _err(
            f"After fixing the runner: `ld2 retry {_safe(state.label)}` requeues the failed points "
            "(`ld2 run` of the same file retries them itself)."
        )
    if not summary.complete(state):
        if state.status != "done":
            total = "∞" if state.total is None else f"{state.total:,}"
            label = _safe(state.label)
            _err(f"partial: {label} is {state.status} ({state.done:,} of {total} points)")
        raise Incomplete


# -- studies --------------------------------------------------------------------------------------


@app.command()
def submit(
    study: Annotated[Path, typer.Argument(help="A study file (lite_dist2 StudyRegistry JSON).")],
    wait: Annotated[bool, typer.Option("--wait", help="Show a progress bar until done.")] = False,
    priority: Annotated[int, typer.Option(help="Higher goes first (-1000…1000).")] = 0,
    trial_timeout: Annotated[
        float, typer.Option(help="Lease length in seconds (direct Redis; the API uses its own).")
    ] = 600.0,
    redis: RedisOpt = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
    trial_limit: Annotated[
        float | None,
        typer.Option(
            help="Seconds a trial of this study may compute before the worker ends it and fails "
            "the trial (a hung runner). Default: each worker's own limit."
        ),
    ] = None,
    allow_eviction: AllowEvictionOpt = False,
) -> None:
    """Register a study; prints its id.

    Submitting the same study again prints the id it has (a submit can be repeated); a
    different study under a taken name is refused (exit 2) naming what differs. With --wait,
    exits 3 if the study ends with failed points."""
    with _user_errors():
        registry = _load_study(study)

    async def go() -> None:
        from ld2.client import AsyncClient

        async with _table(redis, api, token, trial_timeout=trial_timeout) as table:
            handle = await AsyncClient.from_table(table).submit(
                registry, priority=priority, trial_limit=trial_limit
            )
            typer.echo(handle.id)
            if handle.existed:
                _err(f"ld2: {_safe(registry.name)} was already registered with the same content")
            if wait:
                await _report_end(table, await handle.wait(check=False, console=_console()))

    _run(go())


@app.command()
def status(
    study: Annotated[str | None, typer.Argument(help="A study id or name (default: all).")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every second.")] = False,
    redis: RedisOpt = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """A table of studies: status, done/total, velocity (last 30 s), ETA, live workers.

    Workers count while they hold a lease that has not expired; the ETA is shown only while
    some worker is live."""
    import asyncio

    from rich.table import Table as RichTable
    from rich.text import Text

    async def go() -> None:
        async with _table(redis, api, token) as table:
            while True:
                states = [await _find(table, study)] if study else await table.list_studies()
                progress = {p.study_id: p for p in (await table.progress(30)).studies}
                grid = RichTable(
                    "study", "status", "done / total", "failed", "points/s", "ETA", "workers"
                )
                for s in states:
                    p = progress.get(s.study_id)
                    total = "∞" if s.total is None else f"{s.total:,}"
                    live = s.live_workers
                    if live is None:  # a lite_dist2 server: who sent results lately
                        live = 0 if p is None else len(p.workers)
                    eta = "" if p is None or p.eta is None else str(p.eta)[:19]
                    if not live or s.status != "running":
                        eta = ""
                    grid.add_row(
                        Text(_safe(s.label)),
                        s.status,
                        f"{s.done:,} / {total}",
                        f"{s.failed:,}",
                        "" if p is None else f"{p.velocity:,.1f}",
                        eta,
                        str(live) if s.status != "done" else "",
                    )
                if watch:
                    _console().clear()
                _console().print(grid)
                if study and not watch:
                    with contextlib.suppress(Incomplete):
                        await _report_end(table, states[0])
                if not watch:
                    return
                await asyncio.sleep(1.0)

    _run(go())


@app.command()
def result(
    study: Annotated[str, typer.Argument(help="A study id or name.")],
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="out.csv, .jsonl, .json, .npy, .png, .svg or .pdf"),
    ],
    redis: RedisOpt = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Write a study's results in grid order (partial while it runs; json once done).

    Exits 3 when the results are not the whole answer: the study is still running, or some
    of its points failed (they are listed)."""
    from ld2.export import check_output, write_results

    with _user_errors():
        check_output(output)

    async def go() -> None:
        async with _table(redis, api, token) as table:
            state = await _find(table, study)
            n = await write_results(table, state, output)
            typer.echo(f"{n:,} points written to {output}")
            await _report_end(table, state)

    _run(go())


StudyArg = Annotated[str, typer.Argument(help="A study id or name.")]


def _study_command(
    name: str, doc: str, act: Callable[[Table, StudyState], Awaitable[None]]
) -> None:
    """Register ``ld2 NAME STUDY``: find the study by id or name, then `act` on it."""

    def command(
        study: StudyArg, redis: RedisOpt = None, api: ApiOpt = None, token: TokenOpt = None
    ) -> None:
        async def go() -> None:
            async with _table(redis, api, token) as table:
                await act(table, await _find(table, study))

        _run(go())

    command.__doc__ = doc
    app.command(name)(command)


async def _delete(table: Table, state: StudyState) -> None:
    gone = await table.delete(state.study_id)
    typer.echo(
        f"deleted {_safe(gone.name or gone.study_id)} ({gone.study_id}): it was {gone.status}, "
        f"with {gone.done:,} results and {gone.failed:,} failed points"
    )


async def _failures(table: Table, state: StudyState) -> None:
    from ld2 import summary

    found = await table.failures(state.study_id)
    if not found:
        typer.echo(f"{_safe(state.label)}: no failed points")
        return
    typer.echo(f"{_safe(state.label)}: {state.failed:,} failed points")
    for f in found:
        typer.echo("  " + summary.failure_text(state, f))


async def _retry(table: Table, state: StudyState) -> None:
    n = await table.retry_failures(state.study_id)
    if n:
        typer.echo(f"{_safe(state.label)}: {n:,} failed points requeued")
    elif state.spec.strategy == "find_exact" and state.hit_flat is not None:
        typer.echo(f"{_safe(state.label)}: already solved; nothing to retry")
    else:
        typer.echo(f"{_safe(state.label)}: no failed points")


def _control(action: str) -> Callable[[Table, StudyState], Awaitable[None]]:
    async def act(table: Table, state: StudyState) -> None:
        await getattr(table, action)(state.study_id)
        typer.echo(f"{action}: {_safe(state.label)}")

    return act


_study_command(
    "delete",
    "Forget a study in any state, with its results and failures; its name becomes free.",
    _delete,
)
_study_command(
    "failures",
    "List a study's failed (quarantined) points with their values and errors.",
    _failures,
)
_study_command(
    "retry", "Put a study's failed points back to work (after the runner was fixed).", _retry
)
_study_command(
    "cancel",
    "Cancel an active study (its results are dropped, its name is freed).",
    _control("cancel"),
)
_study_command(
    "pause", "Stop handing out trials of a study (work in flight may finish).", _control("pause")
)
_study_command("resume", "Hand out trials of a paused study again.", _control("resume"))


# -- processes ------------------------------------------------------------------------------------


def _runners(imports: list[str], capacities: list[str]) -> tuple[dict[str, Any], list[str]]:
    from ld2.worker import runners

    available = runners.load(imports)
    chosen = capacities or sorted(available)
    for name in chosen:  # ``module:qualname``: a function `ld2.sweep(..., client=)` submitted
        if name not in available and (found := runners.by_reference(name)) is not None:
            available[name] = found
    unknown = [c for c in chosen if c not in available]
    if unknown:
        known = ", ".join(sorted(available))
        raise InvalidInput("--capacity", f"unknown capacity {unknown[0]!r}; known: {known}")
    return available, chosen


def _max_size(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise InvalidInput(
            "--max-size", f"expected a positive integer or 'auto', got {text!r}"
        ) from None
    if value < 1:
        raise InvalidInput("--max-size", f"must be at least 1, got {value}")
    return value


async def _work(table: Table, available: dict[str, Any], config: Any) -> Any:
    """Run a worker until idle or signalled; SIGTERM/SIGINT hand the trials in hand back."""
    import asyncio
    import signal

    from ld2.worker.loop import Worker

    worker = Worker(table, available, config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        return await worker.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


@app.command()
def worker(
    capacity: Annotated[
        list[str] | None,
        typer.Option("--capacity", help="A runner to serve (repeatable; default: all loaded)."),
    ] = None,
    import_: Annotated[
        list[str] | None,
        typer.Option("--import", help="A module that registers runners (repeatable)."),
    ] = None,
    processes: Annotated[
        int, typer.Option(min=1, help="Compute processes (default: CPU count).")
    ] = os.cpu_count() or 1,
    max_size: Annotated[str, typer.Option(help="Points a trial, or 'auto'.")] = "auto",
    trial_seconds: Annotated[float, typer.Option(help="With --max-size auto: aim at this.")] = 2.0,
    name: Annotated[str | None, typer.Option(help="Worker name shown in progress.")] = None,
    exit_when_idle: Annotated[
        float | None, typer.Option(help="Exit after this many seconds without work.")
    ] = None,
    idle_wait: Annotated[
        float,
        typer.Option(
            help="Idle: the longest wait for a wake-up (a study registered or resumed, a trial "
            "handed back) before looking again anyway."
        ),
    ] = 1.0,
    trial_limit: Annotated[
        float | None,
        typer.Option(
            help="Seconds a trial may compute before its process is ended and the trial fails "
            "(default: 20x this worker's average for the study, at least 60 s; 600 s at first)."
        ),
    ] = None,
    lease: Annotated[
        float,
        typer.Option(
            help="Seconds of this worker's leases (renewed every third of it while a trial "
            "computes): a killed worker's trials come back after about this long."
        ),
    ] = 30.0,
    metrics_port: Annotated[
        int,
        typer.Option(
            min=0,
            max=65535,
            help="Serve this worker's Prometheus metrics at http://HOST:PORT/metrics while it "
            "runs (0: off). See docs/metrics.md.",
        ),
    ] = 0,
    metrics_host: Annotated[
        str, typer.Option(help="Address for --metrics-port (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    prefetch: Annotated[
        bool,
        typer.Option(
            help="Lease each slot's next trial while it computes one, and short trials several "
            "a call (refused near a study's end, so that no worker idles while another holds "
            "more). --no-prefetch: one trial at a time, leased when the slot holds none."
        ),
    ] = True,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="Log every trial (else a summary every 30 s).")
    ] = False,
    redis: RedisOpt = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
    allow_eviction: AllowEvictionOpt = False,
) -> None:
    """Reserve trials the loaded runners cover, compute them, register the results."""
    import logging

    from ld2.worker.loop import WorkerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if verbose:
        logging.getLogger("ld2.worker").setLevel(logging.DEBUG)
    imports = import_ or []
    with _user_errors():
        available, chosen = _runners(imports, capacity or [])
        size = _max_size(max_size)
        if trial_limit is not None and not trial_limit > 0:
            raise InvalidInput("--trial-limit", f"must be more than 0 seconds, got {trial_limit}")
        if not 0 < lease <= 86_400:
            raise InvalidInput("--lease", f"must be above 0 and at most 86400 seconds, got {lease}")
        if not idle_wait > 0:
            raise InvalidInput("--idle-wait", f"must be more than 0 seconds, got {idle_wait}")
    config = WorkerConfig(
        chosen, processes=processes, max_size=size, trial_seconds=trial_seconds, name=name,
        exit_when_idle=exit_when_idle, idle_wait=idle_wait, imports=imports,
        trial_limit=trial_limit, lease=lease, heartbeat_every=lease / 3,
        metrics_port=metrics_port, metrics_host=metrics_host, prefetch=prefetch,
    )  # fmt: skip

    async def go() -> None:
        # --max-size auto on Redis: no trial takes more than its fair share of what is left
        async with _table(redis, api, token, fair_share=size is None) as table:
            stats = await _work(table, available, config)
            typer.echo(
                f"{stats.trials} trials, {stats.points:,} points in {stats.seconds:.1f} s; "
                f"{stats.failures} failed, {stats.handed_back} handed back"
            )

    _run(go())


@app.command()
def reaper(
    interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between passes (default: the config file's "
            "timeout_check_interval_seconds, else 5)."
        ),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit.")] = False,
    config: Annotated[
        Path | None,
        typer.Option("-c", "--config", help="lite_dist2-style table_config.json."),
    ] = None,
    redis: RedisOpt = None,
    allow_eviction: AllowEvictionOpt = False,
) -> None:
    """Hand back expired leases (any number of copies may run; reserve also reaps)."""
    import asyncio
    import logging

    from ld2.config import TableConfig
    from ld2.store.files import reap_periodically

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with _user_errors():
        table_config = TableConfig.load(config) if config else None
        if interval is None:
            interval = float(table_config.timeout_check_interval_seconds) if table_config else 5.0
        if not interval > 0:
            raise InvalidInput("--interval", f"must be more than 0 seconds, got {interval}")

    async def go() -> None:
        main = asyncio.current_task()
        assert main is not None
        stop = asyncio.Event()

        def on_sigterm() -> None:  # a platform stopping the reaper: exit 0, as Ctrl-C does
            stop.set()  # also checked between passes: a cancellation alone can be lost (Python
            main.cancel()  # 3.11's asyncio.wait_for, which redis-py writes through, swallows it)

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
        async with _table(redis, None, None) as table:
            if once:
                typer.echo(f"{await table.reap()} expired trial(s) handed back")
                return
            await reap_periodically(table, interval, stop)

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        _run(go())


snapshot_app = typer.Typer(
    help="Save or load the whole curriculum (JSON).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(snapshot_app, name="snapshot")


@snapshot_app.command("save")
def snapshot_save(
    path: Path, redis: RedisOpt = None, api: ApiOpt = None, token: TokenOpt = None
) -> None:
    """Write every study, its state and results to PATH."""
    from ld2.store.files import save_snapshot

    async def go() -> None:
        async with _table(redis, api, token) as table:
            typer.echo(f"{await save_snapshot(table, path)} studies saved to {path}")

    _run(go())


@snapshot_app.command("load")
def snapshot_load(
    path: Path, redis: RedisOpt = None, api: ApiOpt = None, token: TokenOpt = None
) -> None:
    """Load an ld2 snapshot or a lite_dist2 0.6.7 curriculum.json."""
    from ld2.store.files import load_snapshot

    async def go() -> None:
        async with _table(redis, api, token) as table:
            ids = await load_snapshot(table, path)
            typer.echo(f"{len(ids)} studies loaded from {path}")

    _run(go())


EXAMPLES = {"mandelbrot": "mandelbrot.json", "md5": "md5.json"}


@app.command()
def new(kind: Annotated[str, typer.Argument(help="mandelbrot or md5")]) -> None:
    """Print a ready study file: ``ld2 new mandelbrot > study.json``."""
    from importlib import resources

    if kind not in EXAMPLES:
        raise _fail(f"unknown example {kind!r}; choose one of {', '.join(EXAMPLES)}")
    typer.echo(resources.files("ld2").joinpath("examples", EXAMPLES[kind]).read_text(), nl=False)


@app.command()
def run(
    study: Annotated[Path, typer.Argument(help="A study file.")],
    workers: Annotated[
        int, typer.Option("-w", "--workers", min=1, help="Compute processes.")
    ] = os.cpu_count() or 1,
    output: Annotated[
        list[Path] | None,
        typer.Option(
            "-o",
            "--output",
            help="Result files: .csv .jsonl .json .npy .png .svg .pdf "
            "(default: NAME.csv, and NAME.png for a 2-D study).",
        ),
    ] = None,
    import_: Annotated[list[str] | None, typer.Option("--import", help="Runner modules.")] = None,
    capacity: Annotated[
        str | None,
        typer.Option(help="The runner, when the study's required_capacity names none."),
    ] = None,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart", help="Discard an earlier study of this name (its results) and start anew."
        ),
    ] = False,
    state_dir: Annotated[Path | None, typer.Option(help="Embedded backend's directory.")] = None,
) -> None:
    """One machine, one command: embedded backend, local workers, a progress bar, results.

    Running it again resumes the study of that name (and retries its failed points) if the
    file still describes the same study; an edited file is refused (exit 2) naming what
    changed. Exits 3 if points failed, 130 on Ctrl-C (run the same command to resume), 2 if
    another ld2 run is using the state directory (status and result may look meanwhile)."""

    from ld2.core.study import parse_study
    from ld2.export import check_output

    with _user_errors():
        registry = _load_study(study)
        spec = parse_study(registry)
        imports = import_ or []
        available, _ = _runners(imports, [capacity] if capacity else [])
        required = sorted(set(registry.required_capacity))
        if len(required) > 1:
            raise InvalidInput(
                f"{study}: required_capacity",
                f"names {len(required)} capacities ({', '.join(required)}); a study is computed "
                "by one runner: name exactly one",
            )
        if capacity and required and capacity not in required:
            raise InvalidInput(
                "--capacity",
                f"{capacity!r} is not the study's required_capacity ({required[0]}): no worker "
                "serving it would ever be handed its trials",
            )
        named = [c for c in required if c in available]
        chosen = [capacity] if capacity else named[:1]
        if not chosen:
            known = ", ".join(sorted(available))
            raise InvalidInput(
                f"{study}: required_capacity",
                f"names no known runner; add one ({known}) or pass --capacity",
            )
        from ld2.worker.runners import check_call

        try:
            check_call(available[chosen[0]], spec)
        except RunnerMismatch as err:
            raise InvalidInput(str(study), str(err)) from None
        outs = list(output or [Path(f"{registry.name}.csv")])
        if not output and spec.space.dim == 2 and not spec.vector and spec.total:
            outs.append(Path(f"{registry.name}.png"))
        for out in outs:
            check_output(out, spec)
    with _user_errors():
        code = run_loop(_run_locally(registry, chosen, available, imports, workers, outs,
                                        restart, state_dir))  # fmt: skip
    if code:
        raise typer.Exit(code)


async def _run_locally(
    registry: Any,
    chosen: list[str],
    available: dict[str, Any],
    imports: list[str],
    workers: int,
    outs: list[Path],
    restart: bool,
    state_dir: Path | None,
) -> int:
    """`ld2 run`'s work; returns the exit status."""
    import asyncio
    import signal

    from ld2.client import compute_locally
    from ld2.export import write_results
    from ld2.store.connect import open_table
    from ld2.store.embedded import LocalRun, StateDirBusy
    from ld2.worker.loop import Worker, WorkerConfig

    name = registry.name
    try:
        local = LocalRun(state_dir)  # one run at a time in a state directory
    except StateDirBusy as err:
        raise _fail(str(err)) from None
    table = open_table(None, state_dir=local.state_dir, fair_share=True)
    config = WorkerConfig(chosen, processes=workers, max_size=None, trial_seconds=0.5,
                          idle_wait=0.05, imports=imports, stop_on_mismatch=True)  # fmt: skip
    worker = Worker(table, available, config)
    worker.prepare()  # compute processes ready (and forked after the imports) before the study
    try:
        released = await local.hand_back(table)  # what the workers of a killed run still hold
        if released:
            _console().print(f"{released:,} trial(s) of an interrupted run handed back")
        try:
            sid, existed = await table.submit_study(registry)
        except StudyConflict as err:
            if not restart:
                raise
            await table.delete(err.study_id)
            _console().print(
                f"restart: the earlier study {_safe(name)} and its results are discarded"
            )
            sid, existed = await table.submit_study(registry)
        state = await table.get_study(sid)
        if existed and restart:
            await table.delete(sid)
            _console().print(
                f"restart: the earlier study {_safe(name)} and its results are discarded"
            )
            sid, existed = await table.submit_study(registry)
            state = await table.get_study(sid)
        if existed:
            retried = 0 if not state.failed else await table.retry_failures(sid)
            _console().print(f"resuming {_safe(name)} ({state.done:,} points done)", markup=False)
            if retried:
                _console().print(f"retrying {retried:,} failed points")
            state = await table.get_study(sid)
        if state.status != "done":
            local.record_workers([worker.id])  # so that a next run can release its trials
            interrupted = asyncio.Event()

            def interrupt() -> None:
                interrupted.set()
                worker.stop()

            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, interrupt)
            try:  # until the study is done or the worker ends; raises if the study vanished
                await compute_locally(table, sid, worker, every=0.2, console=_console())
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            state = await table.get_study(sid)
            if interrupted.is_set():
                total = "∞" if state.total is None else f"{state.total:,}"
                _err(
                    f"interrupted: {state.done:,} of {total} points done; "
                    "run the same command to resume"
                )
                return EXIT_INTERRUPTED
            if worker.fatal:
                raise InvalidInput(name, worker.fatal)
            if state.status != "done":
                raise LD2Error(f"the local workers stopped before {name} was done")
        for out in outs:
            n = await write_results(table, state, out)
            _console().print(f"{n:,} points written to {out}", markup=False)
        try:
            await _report_end(table, state)
        except Incomplete:
            return EXIT_INCOMPLETE
        return 0
    finally:
        await worker.end()  # (ended already if it ran)
        await table.close()
        local.release()
