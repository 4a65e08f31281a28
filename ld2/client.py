"""ld2 from Python: `Client` (and its asyncio twin `AsyncClient`), `Study` handles, `sweep`.

``Client()`` connects by the command line's rules: ``api=`` with ``token=`` (else
``$LD2_API_URL`` and ``$LD2_API_TOKEN``), else ``redis=`` (else ``$LD2_REDIS_URL``,
``$REDIS_URL``), else the embedded backend in the state directory (``state_dir=``, else
``$LD2_STATE_DIR``, …). A `Study` handle gives the study's state, a wait with a progress bar,
its results (a numpy structured array, an xarray ``DataArray``, a pandas ``DataFrame``), its
failures, its answer, and the controls. The sync classes run the async ones on an event loop
of their own in a background thread, so they also work where a loop is already running (a
Jupyter notebook).

``sweep(func, x=linspace(0, 1, 11), y=arange(0, 4), a=2.0)`` is a whole study from a Python
function in one call: local worker processes on a private embedded backend, or, with
``client=``, the workers of that backend.

The command line is built on the same pieces (`open_backend`, `find_study`, `study_registry`,
`wait_for`, `compute_locally`), so both connect, wait and report alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import logging
import math
import os
import random
import shutil
import tempfile
import threading
import time
import types
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar

import anyio
import numpy as np

from ld2 import summary
from ld2.core.errors import BackendUnavailable, InvalidInput, LD2Error, NotFound
from ld2.core.models import StudyRegistry
from ld2.core.portable import ValueType
from ld2.export import column_names, npy_dtype
from ld2.store.base import Deleted, ResultBlock, StudyState, Table

if TYPE_CHECKING:
    import xarray as xr
    from rich.console import Console
    from rich.progress import Progress

    from ld2.worker.loop import Worker
    from ld2.worker.runners import Runner

__all__ = [
    "Answer",
    "AsyncClient",
    "AsyncStudy",
    "AxisRange",
    "Client",
    "FailedPoints",
    "Study",
    "StudyFailed",
    "arange",
    "linspace",
    "sweep",
]

T = TypeVar("T")
log = logging.getLogger("ld2.client")

StudyLike: TypeAlias = "StudyRegistry | dict[str, Any] | str | os.PathLike[str]"
"""What `Client.submit` takes: a registry, a study file's JSON as a dict, or a file's path."""


# -- connecting ------------------------------------------------------------------------------------


def allow_eviction_from_env() -> bool:
    """``$LD2_ALLOW_EVICTION=1`` (or ``true``, ``yes``): run on a Redis that may evict keys."""
    return os.environ.get("LD2_ALLOW_EVICTION", "").lower() in ("1", "true", "yes")


async def open_backend(
    redis: str | None = None,
    api: str | None = None,
    token: str | None = None,
    *,
    state_dir: Path | None = None,
    allow_eviction: bool = False,
    field: str = "redis",
    **options: Any,
) -> Table:
    """An open table, chosen as every ``ld2`` command chooses it.

    `api` (else ``$LD2_API_URL``, unless a `redis` URL is given) is an ld2 or lite_dist2 API,
    with `token` (else ``$LD2_API_TOKEN``); else `redis` (else ``$LD2_REDIS_URL``, else
    ``$REDIS_URL``); else the embedded backend in `state_dir`. A Redis is pinged and its
    eviction policy checked (refused unless `allow_eviction` or ``$LD2_ALLOW_EVICTION``)
    before the table is returned; an answer such as a wrong password or DB index is an
    `InvalidInput` naming `field`. `options` go to `RedisTable` (``prefix``,
    ``trial_timeout``, ``fair_share``). The caller closes the table.
    """
    url = api or (None if redis else os.environ.get("LD2_API_URL"))
    if url:
        from ld2.store.http import HttpTable

        return HttpTable(url, token=token or os.environ.get("LD2_API_TOKEN"), retries=2)
    from redis.exceptions import ResponseError

    from ld2.store.connect import open_table
    from ld2.store.urls import redacted

    try:
        table = open_table(redis, state_dir=state_dir, **options)
    except InvalidInput:
        raise  # a setting of ours (LD2_REDIS_CLUSTER, …) names itself
    except ValueError as err:  # redis-py's words for a URL it cannot read
        raise InvalidInput(field, f"not a Redis URL ({err})") from None
    try:
        await table.ping()
        await table.check_eviction(allow=allow_eviction or allow_eviction_from_env())
    except ResponseError as err:  # e.g. "DB index is out of range", "NOAUTH"
        await table.close()
        where = redacted(redis) if redis else "the Redis URL"
        raise InvalidInput(field, f"{where}: {err}") from None
    except BaseException:
        await table.close()
        raise
    return table


async def find_study(table: Table, ident: str) -> StudyState:
    """A study by id, else by name."""
    try:
        return await table.get_study(study_id=ident)
    except NotFound:
        try:
            return await table.get_study(name=ident)
        except NotFound:
            raise NotFound(f"no study with id or name {ident!r}") from None


def study_registry(study: StudyLike, *, name: str | None = None) -> StudyRegistry:
    """A study to register, from a registry, a study file's JSON (a dict) or a study file.

    Dicts and files are read as strictly as ``ld2 submit`` reads a file (unknown keys are
    errors, plain JSON numbers are converted by the slot's type); a file without a name is
    named after its stem. `name` replaces the study's name. Problems are `InvalidInput`
    naming the field (and the file)."""
    from ld2.core.study import parse_study
    from ld2.core.studyfile import load_study_file, study_from_json

    if isinstance(study, StudyRegistry):
        registry = study
    elif isinstance(study, dict):
        registry = study_from_json(study)
        try:
            parse_study(registry)
        except InvalidInput as err:  # as a study file names them: no leading "study."
            field = "" if err.field == "study" else err.field.removeprefix("study.")
            raise InvalidInput(field, err.problem) from None
    elif isinstance(study, str | os.PathLike):
        path = Path(study)
        registry = load_study_file(path)
        if registry.name is None:
            registry = registry.model_copy(update={"name": path.stem})
    else:
        raise TypeError(
            f"a study is a dict, a study file's path or a StudyRegistry, not {type(study).__name__}"
        )
    if name is not None:
        registry = registry.model_copy(update={"name": name})
    return registry


# -- waiting ---------------------------------------------------------------------------------------


def progress_bar(console: Console | None = None) -> Progress:
    """The progress bar of a wait: name, bar, done/total (done/∞), elapsed, remaining."""
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[shown]}"),  # done/total, or done/∞ for an infinite study
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _gone(label: str, study_id: str) -> NotFound:
    return NotFound(
        f"study {summary.safe(label)} ({study_id}) no longer exists: it was cancelled or "
        "deleted, or Redis lost its data; submit it again"
    )


def _total(state: StudyState) -> str:
    return "∞" if state.total is None else f"{state.total:,}"


async def wait_for(
    table: Table,
    study_id: str,
    *,
    every: float = 0.5,
    progress: bool = True,
    console: Console | None = None,
    timeout: float | None = None,
    wake: Callable[[StudyState], Awaitable[None]] | None = None,
) -> StudyState:
    """Poll the study every `every` seconds until it is done; returns its final state.

    `wake(state)`, if given, may end a wait early: it returns when the study may be done (a
    local worker that registered every point still open in `state`).

    With `progress`, a rich progress bar (on `console`, else rich's own: a terminal or a
    notebook). A study that vanishes is a `NotFound`; an unreachable backend is waited out
    with backoff, said once when it goes and once when it is back (on `console`, else in the
    ``ld2.client`` log). After `timeout` seconds a `TimeoutError` says how far the study got.
    """
    from rich.markup import escape

    deadline = None if timeout is None else time.monotonic() + timeout
    lost: float | None = None
    delay = every
    last: StudyState | None = None

    def say(text: str) -> None:
        if console is not None:
            console.print(text, markup=False)
        else:
            log.warning("%s", text)

    def overdue() -> TimeoutError | None:
        if deadline is None or time.monotonic() < deadline:
            return None
        if last is None:
            return TimeoutError(f"study {study_id}: the backend did not answer in {timeout:g} s")
        return TimeoutError(
            f"{summary.safe(last.label)} is not done after {timeout:g} s: {last.status}, "
            f"{last.done:,} of {_total(last)} points"
        )

    async def pause(seconds: float) -> None:
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - time.monotonic()))
        await asyncio.sleep(seconds)

    async def poll(label: str) -> StudyState:
        nonlocal lost, delay, last
        while True:
            try:
                state = await table.get_study(study_id)
            except NotFound:
                raise _gone(label, study_id) from None
            except BackendUnavailable as err:
                if lost is None:
                    lost = time.monotonic()
                    say(f"ld2: {err}; waiting for it to come back")
                late = overdue()
                if late is not None:
                    raise late from None
                delay = min(delay * 2, 10.0)
                await pause(delay * (0.5 + random.random()))
                continue
            if lost is not None:
                say(f"ld2: the backend is back after {time.monotonic() - lost:.1f} s")
                lost, delay = None, every
            last = state
            return state

    state = await poll(study_id)
    with _optional_bar(progress, console) as bar:
        task = None
        if bar is not None:
            shown = escape(summary.safe(state.label))
            task = bar.add_task(shown, total=state.total or None, shown="")
        while True:
            state = await poll(state.label)
            if bar is not None and task is not None:
                done = state.done + state.failed
                bar.update(task, completed=done, shown=f"{done:,}/{_total(state)}")
            if state.status == "done":
                return state
            late = overdue()
            if late is not None:
                raise late
            if wake is None:
                await pause(every)
            else:
                with anyio.move_on_after(every):
                    await wake(state)


@contextlib.contextmanager
def _optional_bar(progress: bool, console: Console | None) -> Iterator[Progress | None]:
    if not progress:
        yield None
        return
    with progress_bar(console) as bar:
        yield bar


async def compute_locally(
    table: Table,
    study_id: str,
    worker: Worker,
    *,
    every: float = 0.2,
    progress: bool = True,
    console: Console | None = None,
    timeout: float | None = None,
) -> None:
    """Run `worker` (local compute processes) until the study is done or the worker ends,
    waiting with a progress bar meanwhile (`wait_for`).

    Whatever ends it — the study done, the worker stopped (a signal, a runner that cannot be
    called), a timeout, or the caller cancelled (Ctrl-C in a notebook) — the worker is
    stopped: trials in hand are handed back and its processes ended before this returns.
    A study that vanished, or the timeout, is raised."""
    rounds = worker.idle_rounds

    async def landed(state: StudyState) -> None:  # every slot idle again: maybe done
        nonlocal rounds
        await worker.wait_idle(rounds)
        rounds = worker.idle_rounds

    work = asyncio.create_task(worker.run())
    waiting = asyncio.create_task(
        wait_for(
            table,
            study_id,
            every=every,
            progress=progress,
            console=console,
            timeout=timeout,
            wake=landed,
        )
    )
    try:
        await asyncio.wait({work, waiting}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        worker.stop()  # no trial stays in hand
        try:
            await work
        finally:
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
    if not waiting.cancelled():
        waiting.result()  # raises if the study vanished or the time ran out


# -- answers, failures, results -------------------------------------------------------------------


def _point(state: StudyState, flat: int) -> dict[str, Any]:
    names = column_names(state.spec.space)
    return dict(zip(names, state.spec.space.point(flat), strict=True))


@dataclass(frozen=True)
class Answer:
    """A find_exact or minimize study's answer. ``str(answer)`` is what ``ld2`` prints:
    ``found x = 777``, ``minimum 0.0 at x = 1.0, y = 1.0``, ``not found: …``."""

    text: str
    point: dict[str, Any] | None  # axis name -> value; None when nothing was found
    value: Any  # the result at `point` (the target, the minimum)
    final: bool  # the study is done: the answer will not change

    @property
    def found(self) -> bool:
        return self.point is not None

    def __str__(self) -> str:
        return self.text


async def answer_of(table: Table, state: StudyState) -> Answer | None:
    """The study's answer (None for all_calculation studies, whose answer is every result,
    and for a find_exact study still searching)."""
    text = await summary.answer(table, state)
    if text is None:
        return None
    spec = state.spec
    flat = state.hit_flat if spec.strategy == "find_exact" else state.best_flat
    if flat is None:
        return Answer(text, None, None, state.status == "done")
    if spec.strategy == "find_exact" and spec.target is not None:
        value: Any = spec.target[0] if not spec.vector else list(spec.target)
    else:
        value = await summary.value_at(table, state, flat)
    return Answer(text, _point(state, flat), value, state.status == "done")


@dataclass(frozen=True)
class FailedPoints:
    """A quarantined range of a study: `count` points from flat index `start`, which failed
    `attempts` times; `error` is the last reason, `point` the first point's values."""

    start: int
    count: int
    attempts: int
    error: str
    point: dict[str, Any]
    text: str  # as ``ld2 failures`` lists it

    def __str__(self) -> str:
        return self.text


async def failures_of(table: Table, state: StudyState) -> list[FailedPoints]:
    return [
        FailedPoints(
            f.start,
            f.count,
            f.attempts,
            f.error,
            _point(state, f.start),
            summary.failure_text(state, f),
        )
        for f in await table.failures(state.study_id)
    ]


class StudyFailed(LD2Error):
    """A study ended with points that failed: the message lists the first of them with their
    values and errors (as ``ld2 run`` does). `state` is the final state, `failures` every
    failed range, and `result` what `ld2.sweep` computed (NaN where points failed; None from
    `Study.wait`). Fix the function, then `Study.retry()` (or the same `sweep` again)."""

    def __init__(self, state: StudyState, lines: list[str], failures: list[FailedPoints]) -> None:
        self.state = state
        self.failures = failures
        self.result: Any = None
        text = "\n".join(lines) if lines else f"{state.failed:,} points failed"
        super().__init__(f"{summary.safe(state.label)}: {text}")


async def check_complete(table: Table, state: StudyState) -> None:
    """Raise `StudyFailed` when the study is done but its answer is not whole (failed points
    it needs; a solved find_exact is whole whatever failed elsewhere)."""
    if state.status != "done" or summary.complete(state):
        return
    lines = await summary.failure_report(table, state)
    raise StudyFailed(state, lines, await failures_of(table, state))


def _optional(module: str, extra: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{what} needs {module}, which is not installed here: pip install 'ld2[{extra}]'"
        ) from err


async def results_array(table: Table, state: StudyState) -> np.ndarray:
    """The registered results as a numpy structured array in grid order: one field per axis
    (``x<k>`` for an unnamed axis) and ``result`` (a sub-array for vector results), the
    dtype of the ``.npy`` export. Exactly the points registered when `state` was read; ints
    beyond int64 are kept as Python ints (an object field) instead of failing."""
    spec = state.spec
    names = column_names(spec.space)
    dtype = npy_dtype(spec.space, spec.value_type, state.vector_len or (0 if spec.vector else None))
    columns: dict[str, list[np.ndarray]] = {name: [] for name in [*names, "result"]}
    left = state.done
    async for block in table.iter_results(state.study_id):
        if left <= 0:
            break
        n = min(block.count, left)
        for name, values in zip(names, spec.space.arrays(block.start, n), strict=True):
            columns[name].append(values)
        columns["result"].append(block.values[:n])
        left -= n
    joined = {name: np.concatenate(parts) for name, parts in columns.items() if parts}
    fields: list[Any] = []
    for name in dtype.names or ():
        sub = dtype[name]
        col = joined.get(name)
        base = np.dtype(object) if col is not None and col.dtype == object else sub.base
        fields.append((name, base, sub.shape) if sub.shape else (name, base))
    rows = len(joined["result"]) if "result" in joined else 0
    out = np.empty(rows, dtype=fields)
    for name, col in joined.items():
        out[name] = col
    return out


def _attrs(state: StudyState) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "study": state.label,
        "study_id": state.study_id,
        "strategy": state.spec.strategy,
        "status": state.status,
        "done": state.done,
        "failed": state.failed,
    }
    if state.total is not None:
        attrs["total"] = state.total
    return attrs


async def data_array(table: Table, state: StudyState) -> xr.DataArray:
    """The results as an xarray ``DataArray`` over the grid: one dimension per axis (axis
    order; the axes' values as coordinates), plus ``component`` for vector results. Points
    without a result are NaN (so int and bool results become float unless every point is
    there). An infinite first axis is cut after the last row that holds a result."""
    xarray = _optional("xarray", "xarray", "to_xarray()")
    space = state.spec.space
    blocks: list[ResultBlock] = [b async for b in table.iter_results(state.study_id)]
    sizes = [int(s) if s is not None else 0 for s in space.sizes]
    if space.total is None:
        end = max((b.start + b.count for b in blocks), default=0)
        sizes[0] = -(-end // space.strides[0])
    total = math.prod(sizes)
    vector = state.spec.vector
    width = 0
    if vector:
        width = state.vector_len or next((b.values.shape[1] for b in blocks if b.count), 0)
    shape: tuple[int, ...] = (total, width) if vector else (total,)
    present = sum(b.count for b in blocks)
    if any(b.values.dtype == object for b in blocks):
        flat = np.full(shape, np.nan, dtype=object)
    elif blocks and present == total:
        flat = np.empty(shape, dtype=np.result_type(*(b.values.dtype for b in blocks)))
    else:
        flat = np.full(shape, np.nan)
    for b in blocks:
        flat[b.start : b.start + b.count] = b.values
    names = column_names(space)
    coords = {
        name: axis.values(np.arange(size, dtype=np.int64))
        for name, axis, size in zip(names, space.axes, sizes, strict=True)
    }
    dims = [*names, "component"] if vector else names
    data = flat.reshape([*sizes, width] if vector else sizes)
    out: xr.DataArray = xarray.DataArray(
        data, coords=coords, dims=dims, name="result", attrs=_attrs(state)
    )
    return out


def data_frame(records: np.ndarray, state: StudyState) -> Any:
    """`results_array` as a pandas ``DataFrame``: a column per axis, then ``result`` (or
    ``result_0``, ``result_1``, … for vector results, as the CSV export names them)."""
    pandas = _optional("pandas", "pandas", "to_pandas()")
    columns: dict[str, Any] = {}
    for name in records.dtype.names or ():
        col = records[name]
        if col.ndim == 2:
            for j in range(col.shape[1]):
                columns[f"{name}_{j}"] = col[:, j]
        else:
            columns[name] = col
    frame = pandas.DataFrame(columns)
    frame.attrs.update(_attrs(state))
    return frame


# -- the asyncio client -------------------------------------------------------------------------


class AsyncClient:
    """ld2 for asyncio code; see `Client` (the same, without ``await``).

    The connection is opened at first use and kept until `aclose` (or the end of an
    ``async with``). Use one client from one event loop."""

    def __init__(
        self,
        redis: str | None = None,
        api: str | None = None,
        token: str | None = None,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        prefix: str | None = None,
        allow_eviction: bool = False,
        trial_timeout: float | None = None,
    ) -> None:
        self._redis, self._api, self._token = redis, api, token
        self._state_dir = Path(state_dir) if state_dir is not None else None
        self._allow_eviction = allow_eviction
        self._options: dict[str, Any] = {}
        if prefix is not None:
            self._options["prefix"] = prefix
        if trial_timeout is not None:
            self._options["trial_timeout"] = trial_timeout
        self._table: Table | None = None
        self._lock: asyncio.Lock | None = None
        self._owned = True

    @classmethod
    def from_table(cls, table: Table) -> AsyncClient:
        """A client over a table that is already open (it stays the caller's to close)."""
        client = cls()
        client._table, client._owned = table, False
        return client

    async def table(self) -> Table:
        """The open table (connecting at first use)."""
        if self._table is None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._table is None:
                    self._table = await open_backend(
                        self._redis, self._api, self._token, state_dir=self._state_dir,
                        allow_eviction=self._allow_eviction, **self._options,
                    )  # fmt: skip
        return self._table

    async def aclose(self) -> None:
        """Close the connection (an embedded server this client started stops, unless
        another process uses it). The client may be used again: it reconnects."""
        table, self._table, self._lock = self._table, None, None
        if table is not None and self._owned:
            await table.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def submit(
        self,
        study: StudyLike,
        *,
        name: str | None = None,
        priority: int = 0,
        trial_limit: float | None = None,
    ) -> AsyncStudy:
        """Register a study (see `Client.submit`)."""
        registry = study_registry(study, name=name)
        table = await self.table()
        sid, existed = await table.submit_study(
            registry, priority=priority, trial_limit=trial_limit
        )
        try:
            state = await table.get_study(sid)
        except NotFound:
            raise _gone(registry.name or sid, sid) from None
        return AsyncStudy(self, state, existed=existed)

    async def study(self, ident: str) -> AsyncStudy:
        """The study with this id, else this name (`NotFound` if none)."""
        return AsyncStudy(self, await find_study(await self.table(), ident))

    async def studies(self) -> list[AsyncStudy]:
        """Every study: finished ones first (in completion order), then active ones."""
        return [AsyncStudy(self, s) for s in await (await self.table()).list_studies()]


class AsyncStudy:
    """A handle on one study (see `Study`); `state` is its state when last read."""

    def __init__(self, client: AsyncClient, state: StudyState, *, existed: bool = False) -> None:
        self.client = client
        self.id = state.study_id
        self.name = state.spec.name
        self.state = state
        self.existed = existed  # submit found it already registered, the same

    @property
    def label(self) -> str:
        return self.state.label

    def __repr__(self) -> str:
        s = self.state
        kind = type(self).__name__
        return f"<{kind} {s.label!r} {s.status} {s.done:,}/{_total(s)} id={s.study_id}>"

    async def status(self) -> StudyState:
        table = await self.client.table()
        try:
            self.state = await table.get_study(self.id)
        except NotFound:
            raise _gone(self.label, self.id) from None
        return self.state

    async def wait(
        self,
        *,
        progress: bool = True,
        timeout: float | None = None,
        check: bool = True,
        every: float = 0.5,
        console: Console | None = None,
    ) -> StudyState:
        """Wait until the study is done (see `Study.wait`)."""
        table = await self.client.table()
        self.state = await wait_for(
            table, self.id, every=every, progress=progress, console=console, timeout=timeout
        )
        if check:
            await check_complete(table, self.state)
        return self.state

    async def results(self) -> np.ndarray:
        state = await self.status()
        return await results_array(await self.client.table(), state)

    async def to_xarray(self) -> xr.DataArray:
        _optional("xarray", "xarray", "to_xarray()")
        state = await self.status()
        return await data_array(await self.client.table(), state)

    async def to_pandas(self) -> Any:
        _optional("pandas", "pandas", "to_pandas()")
        state = await self.status()
        return data_frame(await results_array(await self.client.table(), state), state)

    async def failures(self) -> list[FailedPoints]:
        state = await self.status()
        return await failures_of(await self.client.table(), state)

    async def answer(self) -> Answer | None:
        state = await self.status()
        return await answer_of(await self.client.table(), state)

    async def cancel(self) -> None:
        await (await self.client.table()).cancel(self.id)

    async def pause(self) -> None:
        await (await self.client.table()).pause(self.id)

    async def resume(self) -> None:
        await (await self.client.table()).resume(self.id)

    async def retry(self) -> int:
        return await (await self.client.table()).retry_failures(self.id)

    async def delete(self) -> Deleted:
        return await (await self.client.table()).delete(self.id)


# -- the sync client ----------------------------------------------------------------------------


class _LoopThread:
    """An event loop in a daemon thread. `run` runs a coroutine there and blocks the calling
    thread until it ends, so it works from any thread, also one whose own loop is running
    (a notebook's). Ctrl-C in the caller cancels the coroutine and waits for its clean-up."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a sync ld2 client was called from its own event loop")
        inner: list[asyncio.Task[T]] = []

        async def main() -> T:
            task = asyncio.ensure_future(coro)
            inner.append(task)
            return await task

        future = asyncio.run_coroutine_threadsafe(main(), self.loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            if inner:
                self.loop.call_soon_threadsafe(inner[0].cancel)
            else:
                future.cancel()
            with contextlib.suppress(BaseException):
                future.result(timeout=30)  # the coroutine's clean-up (a worker handing back)
            raise

    def stop(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                self.loop.call_soon_threadsafe(self.loop.stop)
            if threading.current_thread() is not self.thread:
                self.thread.join()


def _shut(loop: _LoopThread, client: AsyncClient) -> None:
    """Close `client` on its loop, then end the loop (a `Client`'s finalizer: also at exit,
    so that an embedded server does not outlive the program)."""
    if threading.current_thread() is loop.thread:  # collected on the loop itself
        task = loop.loop.create_task(client.aclose())
        task.add_done_callback(lambda _: loop.loop.stop())
        return
    try:
        if loop.thread.is_alive():
            loop.run(client.aclose())
    finally:
        loop.stop()


class Client:
    """ld2 from Python: submit studies, look at them, fetch their results.

    ``Client()`` connects as the ``ld2`` command does: `api` (else ``$LD2_API_URL``, unless
    `redis` is given) with `token` (else ``$LD2_API_TOKEN``); else `redis` (else
    ``$LD2_REDIS_URL``, else ``$REDIS_URL``); else the embedded backend in `state_dir` (else
    ``$LD2_STATE_DIR``, else ``~/.local/state/ld2``). `prefix` is the Redis key prefix (else
    ``$LD2_PREFIX``, else ``ld2``). The connection opens at first use; `close` it (or use
    ``with Client() as client:``) — an embedded server this client started then stops.

    Calls block; they run on an event loop of the client's own in a background thread, so
    they also work in a notebook. In asyncio code, `AsyncClient` is the same with ``await``.
    """

    def __init__(
        self,
        redis: str | None = None,
        api: str | None = None,
        token: str | None = None,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        prefix: str | None = None,
        allow_eviction: bool = False,
        trial_timeout: float | None = None,
    ) -> None:
        self._async = AsyncClient(
            redis, api, token, state_dir=state_dir, prefix=prefix,
            allow_eviction=allow_eviction, trial_timeout=trial_timeout,
        )  # fmt: skip
        self._guard = threading.Lock()
        self._loop: _LoopThread | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._guard:
            if self._loop is None:
                self._loop = _LoopThread("ld2-client")
                self._finalizer = weakref.finalize(self, _shut, self._loop, self._async)
            loop = self._loop
        return loop.run(coro)

    def close(self) -> None:
        """Close the connection and the client's loop (it may be used again afterwards)."""
        with self._guard:
            finalizer, self._finalizer, self._loop = self._finalizer, None, None
        if finalizer is not None:
            finalizer()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self,
        study: StudyLike,
        *,
        name: str | None = None,
        priority: int = 0,
        trial_limit: float | None = None,
    ) -> Study:
        """Register a study and return its handle.

        `study` is a dict (a study file's JSON: lite_dist2's ``StudyRegistry``, plain numbers
        allowed), a study file's path (read strictly, as ``ld2 submit`` reads it; named after
        the file's stem when it has no name) or a ``StudyRegistry``. `name` replaces its name.

        Like ``ld2 submit``, it can be repeated: the same study under the same name gives
        the handle of the registered one (``study.existed``), a different study under that
        name raises `StudyConflict` naming the differences. `priority`: higher goes first
        (-1000…1000); `trial_limit`: seconds one trial may compute before a worker ends it.
        """
        return Study(self, self._call(self._async.submit(
            study, name=name, priority=priority, trial_limit=trial_limit
        )))  # fmt: skip

    def study(self, ident: str) -> Study:
        """The study with this id, else this name (`NotFound` if there is none)."""
        return Study(self, self._call(self._async.study(ident)))

    def studies(self) -> list[Study]:
        """Every study: finished ones first (in completion order), then active ones."""
        return [Study(self, s) for s in self._call(self._async.studies())]


class Study:
    """A handle on one study of a `Client`: `id`, `name`, and `state` (its state when last
    read: `status` reads it afresh)."""

    def __init__(self, client: Client, handle: AsyncStudy) -> None:
        self.client = client
        self._async = handle

    @property
    def id(self) -> str:
        return self._async.id

    @property
    def name(self) -> str | None:
        return self._async.name

    @property
    def label(self) -> str:
        """The name, or the id of a study without one."""
        return self._async.label

    @property
    def state(self) -> StudyState:
        return self._async.state

    @property
    def existed(self) -> bool:
        """`Client.submit` found this study already registered, the same."""
        return self._async.existed

    def __repr__(self) -> str:
        return repr(self._async).replace("<AsyncStudy", "<Study", 1)

    def status(self) -> StudyState:
        """The study's state now: ``status`` (wait, running, paused, done), ``done``,
        ``failed``, ``total`` (None: infinite), ``live_workers``, …"""
        return self.client._call(self._async.status())

    def wait(
        self,
        *,
        progress: bool = True,
        timeout: float | None = None,
        check: bool = True,
        every: float = 0.5,
    ) -> StudyState:
        """Wait until the study is done and return its final state.

        `progress`: a rich progress bar (a terminal, or a notebook). `timeout`: seconds,
        then `TimeoutError`. `check`: raise `StudyFailed` (its message lists the failed points
        with their values and errors) when points failed. An unreachable backend is waited
        out; a study deleted meanwhile raises `NotFound`."""
        return self.client._call(
            self._async.wait(progress=progress, timeout=timeout, check=check, every=every)
        )

    def results(self) -> np.ndarray:
        """The results so far, in grid order, as a numpy structured array: a field per axis
        and ``result`` (the ``.npy`` export's dtype)."""
        return self.client._call(self._async.results())

    def to_xarray(self) -> xr.DataArray:
        """The results as an xarray ``DataArray`` over the grid (axes as coordinates, NaN
        where there is no result yet). Needs ``ld2[xarray]``."""
        return self.client._call(self._async.to_xarray())

    def to_pandas(self) -> Any:
        """The results as a pandas ``DataFrame`` (a column per axis, then ``result``). Needs
        ``ld2[pandas]``."""
        return self.client._call(self._async.to_pandas())

    def failures(self) -> list[FailedPoints]:
        """The failed (quarantined) ranges, with their first point's values and the error."""
        return self.client._call(self._async.failures())

    @property
    def answer(self) -> Answer | None:
        """A find_exact or minimize study's answer (read now); None for all_calculation."""
        return self.client._call(self._async.answer())

    def cancel(self) -> None:
        """Cancel an active study (its results are dropped, its name is freed)."""
        self.client._call(self._async.cancel())

    def pause(self) -> None:
        """Stop handing out the study's trials (work in flight may finish)."""
        self.client._call(self._async.pause())

    def resume(self) -> None:
        """Hand out a paused study's trials again."""
        self.client._call(self._async.resume())

    def retry(self) -> int:
        """Requeue the failed points (after fixing the runner); returns how many."""
        return self.client._call(self._async.retry())

    def delete(self) -> Deleted:
        """Forget the study in any state, with its results; its name becomes free."""
        return self.client._call(self._async.delete())


# -- sweep --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxisRange:
    """One axis of a `sweep`: `size` values ``start + i * step`` (bool: ``start + i``)."""

    kind: ValueType
    start: bool | int | float
    step: bool | int | float
    size: int

    def values(self) -> np.ndarray:
        from ld2.core.space import Axis

        axis = Axis(self.kind, self.start, self.step, self.size)
        return axis.values(np.arange(self.size, dtype=np.int64))

    def __len__(self) -> int:
        return self.size


def _number(value: Any, what: str) -> int | float:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(what, f"must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(what, f"must be finite, got {value!r}")
    return value


def linspace(start: float, stop: float, num: int = 50) -> AxisRange:
    """A float axis of `num` values from `start` to `stop` (both included), spaced evenly.

    The values are ``start + i * step`` with ``step = (stop - start) / (num - 1)``, as every
    ld2 process computes them, so the last one may differ from `stop` in its last bit."""
    a, b = float(_number(start, "start")), float(_number(stop, "stop"))
    if isinstance(num, bool) or not isinstance(num, int | np.integer) or num < 1:
        raise InvalidInput("num", f"must be a whole number of at least 1, got {num!r}")
    n = int(num)
    if n == 1:
        return AxisRange("float", a, 1.0, 1)
    if a == b:
        raise InvalidInput("stop", "equals start: a constant is a keyword, not an axis")
    step = (b - a) / (n - 1)
    if step == 0.0 or not math.isfinite(step):
        raise InvalidInput("num", f"{n} values between {a!r} and {b!r} are not distinct floats")
    return AxisRange("float", a, step, n)


def arange(start: float, stop: float | None = None, step: float = 1) -> AxisRange:
    """An axis of the values ``start, start + step, …`` below `stop` (above it for a negative
    step), as numpy's ``arange``: ``arange(5)`` is 0…4. All ints give an int axis (exact at any
    size); a float among them gives a float axis (`linspace` is the surer way to floats)."""
    if stop is None:
        start, stop = 0, start
    lo, hi, by = _number(start, "start"), _number(stop, "stop"), _number(step, "step")
    if by == 0:
        raise InvalidInput("step", "must not be 0")
    if all(isinstance(v, int) for v in (lo, hi, by)):
        size = max(0, -(-(int(hi) - int(lo)) // int(by)))
        kind: ValueType = "int"
    else:
        size = max(0, math.ceil((float(hi) - float(lo)) / float(by)))
        lo, by, kind = float(lo), float(by), "float"
    if size < 1:
        raise InvalidInput("stop", f"arange({lo!r}, {hi!r}, {by!r}) holds no value")
    return AxisRange(kind, lo, by, size)


def _axis(key: str, value: Any) -> AxisRange | None:
    """The axis `value` describes, or None when it is a constant."""
    if isinstance(value, AxisRange):
        return value
    if isinstance(value, range):
        if len(value) == 0:
            raise InvalidInput(key, f"{value!r} holds no value")
        return AxisRange("int", value.start, value.step, len(value))
    if isinstance(value, list | tuple):
        if list(value) in ([False, True], [False], [True]):
            return AxisRange("bool", bool(value[0]), True, len(value))
        raise InvalidInput(
            key,
            "an axis is ld2.linspace(start, stop, num), ld2.arange(start, stop, step), a "
            "range, or [False, True]; a list of other values is not an evenly spaced axis",
        )
    return None


def _const(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return {"type": "bool", "key": key, "value": value}
    if isinstance(value, int):
        return {"type": "int", "key": key, "value": value}
    if isinstance(value, float):
        if not math.isfinite(value):
            return {"type": "float", "key": key, "value": value.hex()}
        return {"type": "float", "key": key, "value": value}
    if isinstance(value, str):
        return {"type": "str", "key": key, "value": value}
    raise InvalidInput(
        key,
        f"a constant is a bool, int, float or str, got {type(value).__name__}; an axis is "
        "ld2.linspace(…), ld2.arange(…), a range or [False, True]",
    )


ResultSpec: TypeAlias = Literal["bool", "int", "float", "bool[]", "int[]", "float[]"]


def _kind_of(value: Any, where: str) -> ValueType:
    if isinstance(value, bool | np.bool_):
        return "bool"
    if isinstance(value, int | np.integer):
        return "int"
    if isinstance(value, float | np.floating):
        return "float"
    raise InvalidInput(
        where, f"returned {type(value).__name__}; a sweep needs a bool, int or float result, "
        "or a sequence of them (pass result='float' or 'float[]' to say which)",
    )  # fmt: skip


def _probe_kind(out: Any, vectorized: bool, where: str) -> tuple[ValueType, bool]:
    """The result type and whether it is a vector, from the function's output at one point."""
    if vectorized:
        arr = np.asarray(out)
        if arr.ndim not in (1, 2) or len(arr) != 1:
            raise InvalidInput(where, f"returned shape {arr.shape} for 1 point; expected (1,)"
                               " or (1, k)")  # fmt: skip
        return _kind_of(arr.reshape(-1)[0] if arr.size else 0.0, where), arr.ndim == 2
    if isinstance(out, np.ndarray | list | tuple):
        items = np.asarray(out, dtype=object).reshape(-1)
        if np.ndim(out) != 1 or not len(items):
            raise InvalidInput(where, "a vector result is a non-empty 1-D sequence")
        return _kind_of(items[0], where), True
    return _kind_of(out, where), False


def _code_digest(code: types.CodeType, h: Any) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, h)
        else:
            h.update(repr(const).encode())


@dataclass(frozen=True)
class _Plan:
    registry: StudyRegistry
    run: Runner

    @property
    def label(self) -> str:
        return self.registry.name or self.run.name


def _registered(func: Callable[..., Any]) -> Runner | None:
    """The runner `func` is registered as (``@ld2.runner``), if it is."""
    from ld2.worker import runners

    return next((r for r in runners.REGISTRY.values() if r.func is func), None)


def _importable(func: Callable[..., Any]) -> bool:
    module = getattr(func, "__module__", None) or "__main__"
    qualname = getattr(func, "__qualname__", "")
    return module != "__main__" and "<" not in qualname and bool(qualname)


def _plan(
    func: Callable[..., Any],
    params: dict[str, Any],
    consts: dict[str, Any],
    *,
    name: str | None,
    vectorized: bool | None,
    result: ResultSpec | None,
    remote: bool,
) -> _Plan:
    from ld2.core.study import parse_study
    from ld2.worker import runners

    if not callable(func):
        raise TypeError(f"ld2.sweep needs a function, got {type(func).__name__}")
    axes: dict[str, AxisRange] = {}
    const_items: dict[str, Any] = {}
    for key, value in params.items():
        axis = _axis(key, value)
        if axis is None:
            const_items[key] = value
        else:
            axes[key] = axis
    for key, value in consts.items():
        if key in params:
            raise InvalidInput(key, "given both as a keyword and in consts")
        const_items[key] = value
    if not axes:
        raise InvalidInput("sweep", "no axis: give one such as x=ld2.linspace(0, 1, 11)")
    module = getattr(func, "__module__", None) or "__main__"
    qualname = getattr(func, "__qualname__", None) or type(func).__name__
    known = _registered(func)
    if known is not None:
        if vectorized is not None and vectorized != known.vectorized:
            raise InvalidInput(
                "vectorized", f"runner {known.name!r} is registered with "
                f"vectorized={known.vectorized}",
            )  # fmt: skip
        run = known
    else:
        if remote and not _importable(func):
            raise InvalidInput(
                "client",
                f"{qualname} is defined in {module} and no other process can import it: put "
                "it in a module (workers run `ld2 worker --import MODULE`), or register it "
                "with @ld2.runner('NAME') in one",
            )
        run = runners.Runner(f"{module}:{qualname}", func, bool(vectorized))

    def registry(value_type: ValueType, vector: bool, study_name: str | None) -> StudyRegistry:
        data = {
            "name": study_name,
            "required_capacity": [run.name],
            "study_strategy": {"type": "all_calculation", "study_strategy_param": None},
            "result_type": "vector" if vector else "scalar",
            "result_value_type": value_type,
            "const_param": (
                {"consts": [_const(k, v) for k, v in const_items.items()]} if const_items else None
            ),
            "parameter_space": {
                "type": "aligned",
                "axes": [
                    {"name": k, "type": a.kind, "size": a.size, "start": a.start, "step": a.step}
                    for k, a in axes.items()
                ],
            },
        }
        return study_registry(data)

    draft = registry("float", False, None)
    spec = parse_study(draft)
    runners.check_call(run, spec)
    if result is not None:
        if result not in ("bool", "int", "float", "bool[]", "int[]", "float[]"):
            raise InvalidInput(
                "result", f"must be bool, int or float, [] for a vector; got {result!r}"
            )
        value_type: ValueType = result.removesuffix("[]")  # type: ignore[assignment]
        vector = result.endswith("[]")
    else:
        value_type, vector = _probe(run, spec)
    if name is None:
        h = hashlib.sha256(registry(value_type, vector, None).model_dump_json().encode())
        code = getattr(func, "__code__", None)
        if isinstance(code, types.CodeType):
            _code_digest(code, h)  # an edited function is another study
        name = f"{getattr(func, '__name__', 'sweep')}-{h.hexdigest()[:10]}"
    return _Plan(registry(value_type, vector, name), run)


def _probe(run: Runner, spec: Any) -> tuple[ValueType, bool]:
    """Call the function at the first point to learn its result type."""
    from ld2.worker import runners

    consts = spec.registry.const_param.to_dict() if spec.registry.const_param else {}
    arrays = spec.space.arrays(0, 1)
    values = arrays if run.vectorized else [a.tolist()[0] for a in arrays]
    try:
        out = runners._binding(run, spec, consts).call(run.func, values, consts)
    except Exception as err:
        point = ", ".join(f"{k} = {summary.show(v)}" for k, v in _point_of(spec, 0).items())
        err.add_note(
            f"ld2.sweep called {run.name} at the first point ({point}) to learn its result "
            "type; pass result='float' (or 'int', 'bool', 'float[]', …) to skip this call"
        )
        raise
    return _probe_kind(out, run.vectorized, f"{run.name}")


def _point_of(spec: Any, flat: int) -> dict[str, Any]:
    return dict(zip(column_names(spec.space), spec.space.point(flat), strict=True))


async def _outcome(table: Table, state: StudyState) -> Any:
    """The sweep's value: the DataArray (the structured array without xarray); `StudyFailed`
    carrying it when points failed."""
    try:
        importlib.import_module("xarray")
    except ImportError:
        result: Any = await results_array(table, state)
    else:
        result = await data_array(table, state)
    try:
        await check_complete(table, state)
    except StudyFailed as err:
        err.result = result
        raise
    return result


async def _submitted(table: Table, registry: StudyRegistry) -> StudyState:
    """Submit (or find) the study; an earlier run's failed points are retried."""
    sid, existed = await table.submit_study(registry)
    state = await table.get_study(sid)
    if existed and state.failed:
        await table.retry_failures(sid)
        state = await table.get_study(sid)
    return state


async def _sweep_here(
    plan: _Plan, workers: int, state_dir: Path | None, progress: bool, timeout: float | None
) -> Any:
    from ld2.store.connect import EmbeddedTable
    from ld2.store.embedded import EmbeddedServer, LocalRun
    from ld2.worker import runners
    from ld2.worker.loop import Worker, WorkerConfig

    temp = Path(tempfile.mkdtemp(prefix="ld2-sweep-")) if state_dir is None else None
    try:
        local = LocalRun(state_dir or temp)  # one run at a time in a state directory
        try:
            prefix = os.environ.get("LD2_PREFIX") or "ld2"
            table = EmbeddedTable(EmbeddedServer(local.state_dir), prefix=prefix, fair_share=True)
            earlier = runners.REGISTRY.get(plan.run.name)
            runners.REGISTRY[plan.run.name] = plan.run  # forked compute processes look it up
            try:
                await local.hand_back(table)  # what the workers of a killed sweep still hold
                state = await _submitted(table, plan.registry)
                if state.status != "done":
                    config = WorkerConfig(
                        [plan.run.name], processes=workers, max_size=None, trial_seconds=0.5,
                        idle_wait=0.05, stop_on_mismatch=True,
                    )  # fmt: skip
                    worker = Worker(table, {plan.run.name: plan.run}, config)
                    local.record_workers([worker.id])
                    await compute_locally(
                        table, state.study_id, worker, progress=progress, timeout=timeout
                    )
                    if worker.fatal:
                        raise InvalidInput(plan.label, worker.fatal)
                    state = await table.get_study(state.study_id)
                    if state.status != "done":
                        raise LD2Error(f"the local workers stopped before {plan.label} was done")
                return await _outcome(table, state)
            finally:
                if earlier is None:
                    runners.REGISTRY.pop(plan.run.name, None)
                else:
                    runners.REGISTRY[plan.run.name] = earlier
                await table.close()
        finally:
            local.release()
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


async def _sweep_there(
    client: AsyncClient, plan: _Plan, progress: bool, timeout: float | None
) -> Any:
    table = await client.table()
    state = await _submitted(table, plan.registry)
    if progress and state.status != "done":
        from rich import get_console

        module = getattr(plan.run.func, "__module__", None) or "MODULE"
        get_console().print(
            f"{plan.label}: waiting for workers serving {plan.run.name!r} "
            f"(ld2 worker --import {module} --capacity '{plan.run.name}')",
            markup=False,
            highlight=False,
        )
    state = await wait_for(table, state.study_id, progress=progress, timeout=timeout)
    return await _outcome(table, state)


def sweep(
    func: Callable[..., Any],
    /,
    *,
    workers: int | None = None,
    client: Client | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    name: str | None = None,
    vectorized: bool | None = None,
    result: ResultSpec | None = None,
    progress: bool = True,
    timeout: float | None = None,
    consts: dict[str, Any] | None = None,
    **params: Any,
) -> Any:
    """Compute `func` over a grid and return the results as an xarray ``DataArray``.

    Every keyword that is an axis — ``ld2.linspace(a, b, n)`` (floats), ``ld2.arange(start,
    stop, step)`` (ints), a ``range``, ``[False, True]`` — becomes one, named after the
    keyword, in keyword order (the first is the rows); every other keyword is a constant
    (bool, int, float, str) passed to `func` as is (`consts` holds any whose name is one of
    these options). `func` gets the axes by name when its parameters name them all, else by
    position; with ``vectorized=True`` it gets numpy arrays of many points at once.

    The result type (bool, int, float; a sequence of them: a vector) is learnt by calling
    `func` once at the first point, unless `result` says it (``"float"``, ``"int[]"``, …).

    Without `client`: runs on a private embedded backend (a temporary directory, removed
    afterwards; or `state_dir`, where a later call with the same arguments resumes or just
    re-reads it) with `workers` local processes (default: the CPU count), forked so that
    functions from ``__main__`` or a notebook work. With ``client=Client(redis=…)``: submits
    to that backend and waits for its workers (none run here); the study's capacity is the
    name `func` is registered under (``@ld2.runner``), else ``module:qualname``.

    The study is named `name`, else after the function and a digest of the study and the
    function's code (the same sweep again finds it; an edited one is another study).
    Returns the structured array of `Study.results` when xarray is not installed. Raises
    `StudyFailed` (with ``.result``) when points failed, `TimeoutError` after `timeout` s.
    """
    plan = _plan(func, params, consts or {}, name=name, vectorized=vectorized, result=result,
                 remote=client is not None)  # fmt: skip
    if client is not None:
        if workers is not None:
            raise InvalidInput(
                "workers", "a sweep on a client's backend runs no local workers; start "
                f"`ld2 worker` processes serving {plan.run.name!r} instead",
            )  # fmt: skip
        if not isinstance(client, Client):
            raise TypeError(f"client must be an ld2.Client, not {type(client).__name__}")
        return client._call(_sweep_there(client._async, plan, progress, timeout))
    count = (os.cpu_count() or 1) if workers is None else workers
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidInput("workers", f"must be at least 1, got {workers!r}")
    loop = _LoopThread("ld2-sweep")
    try:
        where = Path(state_dir) if state_dir is not None else None
        return loop.run(_sweep_here(plan, count, where, progress, timeout))
    finally:
        loop.stop()
