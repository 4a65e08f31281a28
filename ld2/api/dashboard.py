"""The dashboard: a live page over the API, served by ``ld2 api`` at ``/``.

The page (``static/dashboard/``: hand-written HTML, JS and CSS, no build step) reads the API it
is served by: ``/studies``, ``/status/progress``, ``/study/info``, ``/study/landed`` and the
controls. The few things it needs beyond that are the JSON routes here, under ``/dashboard/``,
which read the shared state through the `Table` interface only:

* ``GET /dashboard/colormap``: ``ld2.colormap`` as JSON, with its orientation constants;
* ``GET /dashboard/study``: one study's axes in plain JSON (exact ints as strings), its
  counters and, for ``find_exact`` / ``minimize``, the answering point with its value;
* ``GET /dashboard/failures``: the quarantined ranges with the parameter values of their points;
* ``GET /dashboard/workers``: the workers seen registering results, with their pace.

The page and its assets (``/`` and ``/dashboard/static/…``) hold nothing secret and are served
without the token, like ``/docs``, so that the page can ask for it; every JSON route still needs
it. `install_dashboard` therefore wraps the app in `DashboardPages`, which answers those paths
itself, ahead of the token check: call it after the token middleware is added.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from datetime import datetime
from email.utils import formatdate
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Query
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from ld2 import colormap
from ld2.api.lookup import find_study
from ld2.core.space import Axis
from ld2.store.base import StudyState, Table

STATIC = Path(__file__).resolve().parent / "static" / "dashboard"
"""The page's files (shipped in the wheel with the package)."""

PAGE = "/"
"""Where the page is served."""

ASSETS = "/dashboard/static/"
"""Where its assets are served (each file of `STATIC` by its name)."""

_MEDIA = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

_HEADERS = [
    (b"cache-control", b"no-cache"),  # revalidate (ETag): a new ld2 version shows at once
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # Everything comes from this server; the token never leaves for another origin.
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
]


# -- the page and its assets, ahead of the token check ---------------------------------------


class _File:
    def __init__(self, path: Path) -> None:
        self.body = path.read_bytes()
        self.media = _MEDIA.get(path.suffix, "application/octet-stream").encode()
        self.etag = b'"' + hashlib.sha256(self.body).hexdigest()[:32].encode() + b'"'
        self.modified = formatdate(path.stat().st_mtime, usegmt=True).encode()


def _route_path(scope: Scope) -> str:
    path = str(scope["path"])
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


class DashboardPages:
    """Serves `PAGE` (``index.html``) and the files of `STATIC` under `ASSETS`, with no token;
    every other request goes on to `app`. Only the files present at start are served, by name
    (no sub-paths), so nothing else of the file system is reachable."""

    def __init__(self, app: ASGIApp, directory: Path = STATIC) -> None:
        self.app = app
        self.files = {p.name: _File(p) for p in sorted(directory.iterdir()) if p.is_file()}
        if "index.html" not in self.files:
            raise FileNotFoundError(f"the dashboard page is missing from {directory}")

    def _wanted(self, path: str) -> str | None:
        if path == PAGE:
            return "index.html"
        if path.startswith(ASSETS):
            return path[len(ASSETS) :]
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = self._wanted(_route_path(scope)) if scope["type"] == "http" else None
        if name is None:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await _plain(send, 405, b"method not allowed", [(b"allow", b"GET, HEAD")])
            return
        found = self.files.get(name)
        if found is None:
            await _plain(send, 404, b"not found", [])
            return
        headers = [(b"etag", found.etag), (b"last-modified", found.modified), *_HEADERS]
        if dict(scope["headers"]).get(b"if-none-match") == found.etag:
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers += [
            (b"content-type", found.media),
            (b"content-length", str(len(found.body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else found.body})


async def _plain(send: Send, status: int, text: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(text)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})


# -- the JSON the page needs beyond the API --------------------------------------------------


class ColormapModel(BaseModel):
    lut: list[list[int]]
    missing: list[int]
    first_axis_is_rows: bool
    first_axis_start_at_top: bool


class AxisModel(BaseModel):
    """An axis in plain JSON: ``start`` and ``step`` as text so that ints stay exact (floats
    are Python's shortest round-trip form, which JavaScript's ``Number`` reads bit for bit)."""

    name: str  # ``x<k>`` for an unnamed axis, as the exports name it
    kind: Literal["bool", "int", "float"]
    start: str
    step: str
    size: int | None  # None: infinite (the first axis only)


class AnswerModel(BaseModel):
    kind: Literal["hit", "best"]  # find_exact's hit, minimize's best point so far
    flat: int
    params: list[str]  # the point's value on each axis, as text
    value: str | None  # its result as text (None if it could not be read)


class StudyView(BaseModel):
    study_id: str
    name: str | None
    label: str
    status: Literal["wait", "running", "paused", "done"]
    strategy: str
    result_type: Literal["scalar", "vector"]
    value_type: Literal["bool", "int", "float"]
    vector_length: int | None
    total: int | None
    done: int
    failed: int
    reserved: int
    priority: int
    registered_timestamp: datetime
    started_timestamp: datetime | None
    finished_timestamp: datetime | None
    live_workers: int | None
    axes: list[AxisModel]
    target: list[str] | None  # find_exact's target value, as text
    answer: AnswerModel | None


class FailureView(BaseModel):
    start: int
    count: int
    attempts: int
    error: str
    first: list[str]  # the parameter values of the range's first point, as text
    last: list[str] | None  # and of its last point, when it holds more than one


class WorkerView(BaseModel):
    worker_id: str
    name: str | None
    points_per_sec: float  # over the last `cutoff_sec` seconds, all active studies together
    recent_points_per_sec: float  # over the last `recent_sec` seconds
    active: bool  # registered results within the last `recent_sec` seconds
    studies: list[str]  # the labels of the studies it registered results to
    trials: int  # trials it registered within `cutoff_sec` seconds
    last_seen: datetime | None  # its last reserve (to within 5 s; None: not within the window)


class WorkersView(BaseModel):
    now: datetime
    cutoff_sec: int
    recent_sec: int
    workers: list[WorkerView]


def show(value: Any) -> str:
    """A value as text, exactly: ``true``/``false``, ints in full, floats in Python's shortest
    round-trip form (``nan``, ``inf``, ``-inf`` as such), vectors as ``[a, b]``."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, list | tuple | np.ndarray):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def axis_names(axes: Sequence[Axis]) -> list[str]:
    return [a.name if a.name is not None else f"x{k}" for k, a in enumerate(axes)]


def _axis(name: str, axis: Axis) -> AxisModel:
    return AxisModel(
        name=name, kind=axis.kind, start=show(axis.start), step=show(axis.step), size=axis.size
    )


def _point(state: StudyState, flat: int) -> list[str]:
    return [show(v) for v in state.spec.space.point(flat)]


async def _value_at(table: Table, state: StudyState, flat: int) -> str | None:
    """The result registered at `flat` (read block by block in grid order), or None."""
    async for block in table.iter_results(state.study_id):
        if block.start <= flat < block.start + block.count:
            return show(block.values[flat - block.start])
        if block.start > flat:
            break
    return None


async def study_view(table: Table, state: StudyState) -> StudyView:
    spec = state.spec
    answer = None
    flat, kind = (
        (state.hit_flat, "hit") if spec.strategy == "find_exact" else (state.best_flat, "best")
    )
    if spec.strategy != "all_calculation" and flat is not None:
        answer = AnswerModel(
            kind=kind,
            flat=flat,
            params=_point(state, flat),
            value=await _value_at(table, state, flat),
        )
    axes = spec.space.axes
    return StudyView(
        study_id=state.study_id,
        name=spec.name,
        label=state.label,
        status=state.status,
        strategy=spec.strategy,
        result_type="vector" if spec.vector else "scalar",
        value_type=spec.value_type,
        vector_length=state.vector_len,
        total=state.total,
        done=state.done,
        failed=state.failed,
        reserved=state.reserved,
        priority=state.priority,
        registered_timestamp=state.registered_at,
        started_timestamp=state.started_at,
        finished_timestamp=state.finished_at,
        live_workers=state.live_workers,
        axes=[_axis(n, a) for n, a in zip(axis_names(axes), axes, strict=True)],
        target=None if spec.target is None else [show(v) for v in spec.target],
        answer=answer,
    )


def _rate(v: float) -> float:
    return v if math.isfinite(v) else 0.0


def _worker(worker_id: str, name: str | None) -> WorkerView:
    return WorkerView(
        worker_id=worker_id, name=name, points_per_sec=0.0, recent_points_per_sec=0.0,
        active=False, studies=[], trials=0, last_seen=None,
    )  # fmt: skip


async def workers_view(table: Table, cutoff_sec: int, recent_sec: int) -> WorkersView:
    """The workers that reserved, or registered results to an active study, within
    `cutoff_sec` seconds."""
    long, recent = await table.progress(cutoff_sec), await table.progress(recent_sec)
    seen: dict[str, WorkerView] = {}
    for one in await table.workers(cutoff_sec):
        seen[one.worker_id] = _worker(one.worker_id, one.name)
        seen[one.worker_id].last_seen = one.last_seen
    for study in long.studies:
        label = study.name or study.study_id
        for w in study.workers:
            view = seen.setdefault(w.worker_id, _worker(w.worker_id, w.worker_name))
            view.points_per_sec += _rate(w.velocity)
            view.trials += w.trials
            view.name = view.name or w.worker_name
            if label not in view.studies:
                view.studies.append(label)
    for study in recent.studies:
        for w in study.workers:
            got = seen.get(w.worker_id)
            if got is None:  # its study started between the two reads
                continue
            got.recent_points_per_sec += _rate(w.velocity)
            got.active = True
    workers = sorted(seen.values(), key=lambda w: (not w.active, -w.points_per_sec, w.worker_id))
    return WorkersView(now=long.now, cutoff_sec=cutoff_sec, recent_sec=recent_sec, workers=workers)


def install_dashboard(app: FastAPI, table: Callable[[], Table]) -> None:
    """Add the dashboard to `app`: its JSON routes (behind the token, as every route) and the
    page with its assets (open: `DashboardPages` wraps the app as it stands, so call this after
    the token middleware is added). `table` gives the app's table once it has started."""

    @app.get("/dashboard/colormap", response_model=ColormapModel, tags=["dashboard"])
    async def dashboard_colormap() -> ColormapModel:
        """The shared colour map (`ld2.colormap`) and the orientation of a 2-D study's map."""
        lut = colormap.as_json()
        return ColormapModel(
            lut=lut["lut"],
            missing=lut["missing"],
            first_axis_is_rows=colormap.FIRST_AXIS_IS_ROWS,
            first_axis_start_at_top=colormap.FIRST_AXIS_START_AT_TOP,
        )

    @app.get("/dashboard/study", response_model=StudyView, tags=["dashboard"])
    async def dashboard_study(study_id: str | None = None, name: str | None = None) -> StudyView:
        """A study for the page: its axes in plain JSON, its counters and, for find_exact and
        minimize, the answering point (the hit; the best so far) with its parameters and value."""
        return await study_view(table(), await find_study(table(), study_id, name))

    @app.get("/dashboard/failures", response_model=list[FailureView], tags=["dashboard"])
    async def dashboard_failures(
        study_id: str | None = None, name: str | None = None
    ) -> list[FailureView]:
        """The quarantined ranges with their last error and the parameter values of their first
        (and last) point."""
        state = await find_study(table(), study_id, name)
        out = []
        for f in await table().failures(state.study_id):
            last = _point(state, f.start + f.count - 1) if f.count > 1 else None
            out.append(
                FailureView(
                    start=f.start, count=f.count, attempts=f.attempts, error=f.error,
                    first=_point(state, f.start), last=last,
                )
            )  # fmt: skip
        return out

    @app.get("/dashboard/workers", response_model=WorkersView, tags=["dashboard"])
    async def dashboard_workers(
        cutoff_sec: Annotated[int, Query(ge=1, le=86_400)] = 600,
        recent_sec: Annotated[int, Query(ge=1, le=3_600)] = 15,
    ) -> WorkersView:
        """The workers that registered results to an active study within `cutoff_sec` seconds:
        their pace over that window and over the last `recent_sec` seconds (``active``: they
        registered within it)."""
        return await workers_view(table(), cutoff_sec, recent_sec)

    app.add_middleware(DashboardPages)
