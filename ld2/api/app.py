"""The FastAPI app: lite_dist2 0.6.7's endpoints, wire-compatible, and ld2's extras.

A thin shell over a `Table`: every handler validates, calls one table method and maps the
domain errors to lite_dist2's status codes (400 bad input, 404 unknown study, 409 trial not
acceptable, 422 schema). No traceback or server path ever reaches a response.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_origin

import anyio
import numpy as np
from fastapi import Body, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, StringConstraints, ValidationError
from starlette.types import Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from ld2 import __version__
from ld2 import export as encode
from ld2.api.dashboard import install_dashboard
from ld2.api.lookup import find_study
from ld2.api.metrics import install_metrics
from ld2.api.security import (
    DOCS_STATIC,
    BearerAuth,
    BodyLimit,
    StrictJsonRoute,
    declare_bearer,
    validation_errors,
)
from ld2.core import batch, results
from ld2.core import models as m
from ld2.core.errors import (
    BackendUnavailable,
    InvalidInput,
    NotFound,
    StudyConflict,
    TrialRejected,
)
from ld2.core.planning import check_max_size
from ld2.core.study import StudySpec
from ld2.core.subspace import jagged_points_json
from ld2.core.upload import check_upload
from ld2.store.base import (
    FailMode,
    Outcome,
    Progress,
    Reservation,
    Settled,
    StudyState,
    Table,
    TrialRef,
)
from ld2.store.files import reap_periodically, save_periodically, save_snapshot
from ld2.store.wire_client import (
    MAX_WAIT_SECONDS,
    PACKED_BATCH,
    PACKED_CYCLE,
    PACKED_REGISTER,
    PACKED_RESERVE,
    PACKED_TYPE,
)

log = logging.getLogger("ld2.api")


# -- ld2's extra models --------------------------------------


class LeaseParam(BaseModel):
    trial_id: str
    worker_node_id: str


class LeaseAnswer(BaseModel):
    answer: Literal["ok", "stop"]


class FailParam(LeaseParam):
    """``mode`` says how the range goes back (see `ld2.store.base.FailMode`); without it,
    ``count_attempt: false`` means ``release`` and anything else ``split``."""

    error: str = ""
    count_attempt: bool = True
    mode: FailMode | None = None


class SubmitResponse(BaseModel):
    study_id: str
    existed: bool


class DeletedModel(BaseModel):
    study_id: str
    name: str | None
    status: str
    done_grids: int
    failed_grids: int


class RetryResponse(BaseModel):
    requeued_grids: int


class StudyInfo(BaseModel):
    """ld2's full view of a study: lite_dist2's summary plus what ld2 tracks besides."""

    summary: m.StudySummary
    status: Literal["wait", "running", "paused", "done"]
    failed_grids: int
    reserved_grids: int
    priority: int
    started_timestamp: datetime | None = None
    finished_timestamp: datetime | None = None
    hit_flat_index: int | None = None
    best_flat_index: int | None = None
    vector_length: int | None = None
    live_workers: int | None = None
    trial_limit_seconds: float | None = None


class FailureModel(BaseModel):
    start: int
    count: int
    attempts: int
    error: str


class BacklogModel(BaseModel):
    points_waiting: int | None
    ranges_waiting: int
    trials_in_flight: int
    points_in_flight: int
    active_studies: int
    workers_seen: int


class WorkerModel(BaseModel):
    worker_id: str
    name: str | None
    last_seen: datetime


class LandedBlock(BaseModel):
    start: int  # the flat index of the first value
    values: list[Any]


class LandedModel(BaseModel):
    cursor: str
    reset: bool
    blocks: list[LandedBlock]


LeaseSeconds = Annotated[float | None, Field(None, gt=0, le=86_400)]
WaitSeconds = Annotated[
    float,
    Field(
        0.0,
        ge=0,
        le=MAX_WAIT_SECONDS,
        allow_inf_nan=False,
        description=(
            "ld2 extra: with no trial to lease, wait up to this long (seconds) for one to "
            "become available before answering 202: an idle worker's long poll."
        ),
    ),
]
Prefetch = Annotated[
    bool,
    Field(
        False,
        description=(
            "ld2 extra: a trial taken ahead while another one computes; refused (202) when "
            "the study has few points left, so that an idle worker gets them."
        ),
    ),
]


ID_PATTERN = r"^[!-~]+$"
ID_DESCRIPTION = (
    "ld2 extra: one id (1 to 128 visible ASCII characters, e.g. a UUID) for every attempt of "
    "one call; a retry whose first reply was lost is answered as the first attempt was (the "
    "same trial, the same outcome), for a few minutes. lite_dist2 servers ignore it."
)
IdempotencyKey = Annotated[
    str | None, Header(max_length=128, pattern=ID_PATTERN, description=ID_DESCRIPTION)
]


class ReserveParam(m.TrialReserveParam):
    """lite_dist2's reserve request, plus ld2's `lease_seconds`: a client that heartbeats asks
    for a short lease of its own (the answer then ends with ``"lease_deadline_ms"``)."""

    lease_seconds: LeaseSeconds = None
    wait_seconds: WaitSeconds = 0.0
    prefetch: Prefetch = False


class CycleParam(BaseModel):
    """A finished trial and what to reserve next: a worker's steady state in one request."""

    trial: m.TrialModel
    retaining_capacity: list[str]
    max_size: int
    worker_node_name: str | None = None
    lease_seconds: LeaseSeconds = None
    prefetch: Prefetch = False


# -- the packed endpoints (ld2's own clients; see docs/api.md) --------------------------------


class PackedHeaders(BaseModel):
    """The headers a packed endpoint reads (besides the content type)."""

    idempotency_key: Annotated[
        str | None, StringConstraints(max_length=128, pattern=ID_PATTERN)
    ] = Field(None, alias="idempotency-key", description=ID_DESCRIPTION)


class PackedTrialQuery(BaseModel):
    """The trial whose packed results are the body: the query of ``/trial/packed/register``."""

    study_id: str
    trial_id: str
    worker_node_id: str
    start: int = Field(ge=0, description="the trial's first flat index")
    count: int = Field(ge=1, description="the trial's number of points")


class PackedLeaseQuery(BaseModel):
    """What to lease next (as in lite_dist2's reserve, plus ld2's extras)."""

    retaining_capacity: list[str] = Field(
        default_factory=list, description="repeat the parameter for each capacity"
    )
    max_size: int
    worker_node_name: str | None = None
    lease_seconds: LeaseSeconds = None
    prefetch: Prefetch = False


class PackedReserveQuery(PackedLeaseQuery):
    """The query of ``/trial/packed/reserve``."""

    worker_node_id: str
    wait_seconds: WaitSeconds = 0.0


class PackedCycleQuery(PackedTrialQuery, PackedLeaseQuery):
    """The query of ``/trial/packed/cycle``: the trial registered, and what to lease next."""


class PackedBatchQuery(PackedLeaseQuery):
    """The query of ``/trial/packed/batch``: the worker, and how many trials to lease."""

    worker_node_id: str
    lease_count: int = Field(
        1, ge=0, le=batch.BATCH_LIMIT, description="trials to lease at most (0: none)"
    )


class PackedTrial(BaseModel):
    """A lease, as numbers: the trial is the flat range ``[start, start+count)`` of the study
    (whose spec the client fetched once, ``GET /study/info``); times are epoch ms, Redis time."""

    study_id: str
    trial_id: str
    start: int
    count: int
    attempt: int
    reserved_ms: int
    deadline_ms: int


class PackedReserveAnswer(BaseModel):
    trial: PackedTrial | None


class PackedOutcome(BaseModel):
    outcome: Literal["ok", "ignored"]


class PackedCycleAnswer(PackedReserveAnswer):
    outcome: Literal["ok", "ignored"]


class PackedRefusal(BaseModel):
    """A trial of a batch not registered: its study is gone (``not_found``), or the table
    refused it (``rejected``, with the `reason` a 409 names, e.g. the lease was lost)."""

    refused: Literal["not_found", "rejected"]
    reason: str | None = None
    detail: str


class PackedBatchAnswer(BaseModel):
    outcomes: list[PackedOutcome | PackedRefusal]
    trials: list[PackedTrial]


def _binary_body(description: str) -> dict[str, Any]:
    """`openapi_extra` declaring a required binary request body."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "description": description,
                            "content": {PACKED_TYPE: binary}}}  # fmt: skip


PACKED_BODY = _binary_body("The trial's results as `ld2.core.results.pack` writes them.")
BATCH_BODY = _binary_body(
    "The trials' results: a 4-byte big-endian length, a JSON list of {study_id, trial_id, "
    "start, count, bytes}, then each trial's packed results in order (`ld2.core.batch`)."
)
NOTHING_LEFT: dict[int | str, dict[str, Any]] = {
    202: {"model": PackedReserveAnswer, "description": "no trial available"}
}
Q = TypeVar("Q", bound=BaseModel)
E = TypeVar("E", bound=Callable[..., Any])
R = TypeVar("R")
CLIENT_CHECK = 0.25
"""Seconds between looks at whether a long poll's client is still there."""


class DirectRoute(APIRoute):
    """A route whose endpoint takes the `Request` alone: called with it directly, without
    FastAPI's dependency solving (about 30 µs a request, a tenth of the API's CPU for a packed
    cycle). Declared like any route (`direct_post`), so it keeps its place in the OpenAPI
    document; the endpoint parses and checks its input itself (`packed_request`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return endpoint


def direct_post(app: FastAPI, path: str, **kwargs: Any) -> Callable[[E], E]:
    """`app.post(path, **kwargs)` for an endpoint of the `DirectRoute` kind."""

    def declare(endpoint: E) -> E:
        app.router.add_api_route(
            path, endpoint, methods=["POST"], route_class_override=DirectRoute, **kwargs
        )
        return endpoint

    return declare


def _hot_routes_first(app: FastAPI) -> None:
    """Try the trial endpoints first: a request is matched against the routes in order, and
    workers' requests are nearly all of them (each route tried costs ~1.5 µs)."""

    def rank(route: Any) -> int:
        path = str(getattr(route, "path", ""))
        return 0 if path.startswith("/trial/packed/") else 1 if path.startswith("/trial/") else 2

    app.router.routes.sort(key=rank)


def packed_request(request: Request, query: type[Q]) -> tuple[Q, str | None]:
    """A packed endpoint's query string as `query`, and its request id (``Idempotency-Key``).

    Validated by pydantic here rather than by FastAPI's parameter handling, which cost ~0.15 ms
    a request: a fifth of the API's CPU for a packed cycle. A refusal is FastAPI's own 422,
    ``loc`` ``["query", <name>]`` or ``["header", "idempotency-key"]``."""
    params = request.query_params
    data: dict[str, Any] = dict(params.items())
    for name in _list_fields(query):
        data[name] = params.getlist(name)
    try:
        parsed = query.model_validate(data)
    except ValidationError as err:
        raise _refused("query", err) from None
    key = request.headers.get("idempotency-key")
    if key is None:
        return parsed, None
    try:
        return parsed, PackedHeaders.model_validate({"idempotency-key": key}).idempotency_key
    except ValidationError as err:
        raise _refused("header", err) from None


def _refused(where: str, err: ValidationError) -> RequestValidationError:
    return RequestValidationError(
        [{**e, "loc": (where, *e["loc"])} for e in err.errors(include_url=False)]
    )


@cache
def _list_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of `model` given by repeating a query parameter."""
    return tuple(n for n, f in model.model_fields.items() if get_origin(f.annotation) is list)


def query_parameters(model: type[BaseModel], *, body: bool = False) -> dict[str, Any]:
    """`openapi_extra` declaring `model`'s fields as query parameters (and the Idempotency-Key
    header), for the packed endpoints that parse them themselves (`packed_request`); with
    `body`, the packed results as the request body."""
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    parameters = [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        | ({"description": prop["description"]} if "description" in prop else {})
        for name, prop in schema["properties"].items()
    ]
    parameters.append(
        {"name": "idempotency-key", "in": "header", "required": False,
         "schema": {"type": "string", "maxLength": 128, "pattern": ID_PATTERN},
         "description": ID_DESCRIPTION}
    )  # fmt: skip
    return {"parameters": parameters} | (PACKED_BODY if body else {})


class ReapResponse(BaseModel):
    reaped: int


def study_info(state: StudyState) -> StudyInfo:
    return StudyInfo(
        summary=state.summary(),
        status=state.status,
        failed_grids=state.failed,
        reserved_grids=state.reserved,
        priority=state.priority,
        started_timestamp=state.started_at,
        finished_timestamp=state.finished_at,
        hit_flat_index=state.hit_flat,
        best_flat_index=state.best_flat,
        vector_length=state.vector_len,
        live_workers=state.live_workers,
        trial_limit_seconds=state.spec.trial_limit,
    )


# -- the app --------------------------------------


def create_app(
    table: Table | Callable[[], Table],
    *,
    token: str | None = None,
    max_body_bytes: int = 64 * 1024 * 1024,
    curriculum_path: Path = Path("curriculum.json"),
    save_interval: float | None = None,
    reap_interval: float | None = None,
) -> FastAPI:
    """An app over `table` (or a factory called at start-up, for server processes)."""
    holder: dict[str, Table] = {}
    if isinstance(table, Table):
        holder["table"] = table

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if "table" not in holder:
            holder["table"] = table()  # type: ignore[operator]
        tasks = []
        if save_interval:
            tasks.append(
                asyncio.create_task(save_periodically(T(), curriculum_path, save_interval))
            )
        if reap_interval:
            tasks.append(asyncio.create_task(reap_periodically(T(), reap_interval)))
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            if not isinstance(table, Table):
                await holder["table"].close()

    def T() -> Table:
        return holder["table"]

    app = FastAPI(
        title="ld2",
        version=__version__,
        description="Distributed parameter sweeps on Redis; wire-compatible with lite_dist2 0.6.7.",
        lifespan=lifespan,
        docs_url=None,  # our own /docs below: FastAPI's loads Swagger UI from a CDN
        redoc_url=None,
    )
    app.router.route_class = StrictJsonRoute  # every endpoint below: no NaN, lone surrogate, …
    app.add_exception_handler(RequestValidationError, validation_errors)
    _errors(app)

    # -- interactive docs, offline: Swagger UI from the installed swagger-ui-bundle-v2 ----------

    app.mount(DOCS_STATIC, StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon-32x32.png",
        )

    if token:
        declare_bearer(app)  # Swagger UI's "Authorize" button

    # -- lite_dist2 endpoints --------------------------------------

    @app.get("/ping", response_model=m.OkResponse, tags=["lite_dist2"])
    async def ping() -> m.OkResponse:
        return m.OkResponse(ok=True)

    @app.get("/save", response_model=m.OkResponse, tags=["lite_dist2"])
    async def save() -> m.OkResponse:
        """Write the curriculum snapshot to the configured ``curriculum_path``."""
        try:
            await save_snapshot(T(), curriculum_path)
        except OSError as err:
            log.error("cannot write the curriculum snapshot to %s: %s", curriculum_path, err)
            return JSONResponse({"detail": "could not write the curriculum snapshot"}, 500)  # type: ignore[return-value]
        return m.OkResponse(ok=True)

    @app.get("/status", response_model=m.CurriculumSummaryResponse, tags=["lite_dist2"])
    async def status() -> m.CurriculumSummaryResponse:
        return m.CurriculumSummaryResponse(
            summaries=[s.summary() for s in await T().list_studies()]
        )

    @app.get("/status/progress", response_model=m.ProgressSummaryResponse, tags=["lite_dist2"])
    async def progress(cutoff_sec: int = 600) -> m.ProgressSummaryResponse:
        return _progress_wire(await T().progress(cutoff_sec))

    @app.post("/study/register", response_model=m.StudyRegisteredResponse, tags=["lite_dist2"])
    async def register_study(param: m.StudyRegisterParam) -> m.StudyRegisteredResponse:
        sid = await T().register_study(
            param.study, priority=param.priority, trial_limit=param.trial_limit_seconds
        )
        return m.StudyRegisteredResponse(study_id=sid)

    @app.post(
        "/trial/reserve",
        response_model=m.TrialReserveResponse,
        responses={202: {"model": m.TrialReserveResponse, "description": "no trial available"}},
        tags=["lite_dist2"],
    )
    async def reserve(
        request: Request, param: ReserveParam, idempotency_key: IdempotencyKey = None
    ) -> Response:
        res = await _unless_gone(request, param.wait_seconds, T().reserve(
            param.retaining_capacity, param.max_size, param.worker_node_id, param.worker_node_name,
            lease=param.lease_seconds, request_id=idempotency_key, wait=param.wait_seconds,
            prefetch=param.prefetch,
        ))  # fmt: skip
        return await _trial_reply(T(), res, request, with_deadline=param.lease_seconds is not None)

    @app.post("/trial/register", response_model=m.OkResponse, tags=["lite_dist2"])
    async def register_trial(
        param: m.TrialRegisterParam, idempotency_key: IdempotencyKey = None
    ) -> m.OkResponse:
        ref, typed = await _uploaded(T(), param.trial)
        await T().register(ref, typed, request_id=idempotency_key)
        return m.OkResponse(ok=True)

    @app.get(
        "/study",
        response_model=m.StudyResponse,
        responses={202: {"model": m.StudyResponse, "description": "waiting or running"}},
        tags=["lite_dist2"],
    )
    async def get_study(study_id: str | None = None, name: str | None = None) -> Response:
        """The finished study with its results in grid order (streamed); 202 while active."""
        state = await find_study(T(), study_id, name)
        if state.status != "done":
            return JSONResponse({"status": state.wire_status, "result": None}, status_code=202)
        return StreamingResponse(encode.storage_stream(T(), state), media_type="application/json")

    @app.delete("/study", response_model=m.OkResponse, tags=["lite_dist2"])
    async def cancel_study(study_id: str | None = None, name: str | None = None) -> m.OkResponse:
        state = await find_study(T(), study_id, name)
        await T().cancel(state.study_id)
        return m.OkResponse(ok=True)

    # -- ld2 extras --------------------------------------

    @app.post("/trial/heartbeat", response_model=LeaseAnswer, tags=["ld2"])
    async def heartbeat(param: LeaseParam) -> LeaseAnswer:
        """Extend a trial's lease; ``stop`` tells the worker to abandon it."""
        return LeaseAnswer(answer=await T().heartbeat(param.trial_id, param.worker_node_id))

    @app.post("/trial/fail", response_model=m.OkResponse, tags=["ld2"])
    async def fail(param: FailParam, idempotency_key: IdempotencyKey = None) -> m.OkResponse:
        """Hand a trial back: a failure (counts an attempt) or a shutdown (not counted)."""
        mode: FailMode = param.mode or ("split" if param.count_attempt else "release")
        await T().fail(
            param.trial_id, param.worker_node_id, param.error, mode=mode,
            request_id=idempotency_key,
        )  # fmt: skip
        return m.OkResponse(ok=True)

    @app.post("/trial/cycle", response_model=m.TrialReserveResponse, tags=["ld2"])
    async def cycle(
        request: Request, param: CycleParam, idempotency_key: IdempotencyKey = None
    ) -> Response:
        """Register a trial and reserve the next one in one request (202 when none is left)."""
        ref, typed = await _uploaded(T(), param.trial)
        _, nxt = await T().register_and_reserve(
            ref, typed, param.retaining_capacity, param.max_size, param.worker_node_name,
            lease=param.lease_seconds, request_id=idempotency_key, prefetch=param.prefetch,
        )  # fmt: skip
        return await _trial_reply(T(), nxt, request, with_deadline=param.lease_seconds is not None)

    @direct_post(
        app,
        PACKED_RESERVE,
        response_model=PackedReserveAnswer,
        responses=NOTHING_LEFT,
        tags=["ld2"],
        openapi_extra=query_parameters(PackedReserveQuery),
    )
    async def packed_reserve(request: Request) -> Response:
        """``/trial/reserve`` for ld2's own clients: the same lease, answered as numbers
        (no parameter space), 202 ``{"trial": null}`` when none is available."""
        q, request_id = packed_request(request, PackedReserveQuery)
        res = await _unless_gone(request, q.wait_seconds, T().reserve(
            q.retaining_capacity, q.max_size, q.worker_node_id, q.worker_node_name,
            lease=q.lease_seconds, request_id=request_id, wait=q.wait_seconds,
            prefetch=q.prefetch,
        ))  # fmt: skip
        return _packed_reply(T(), res, request)

    @direct_post(
        app,
        PACKED_REGISTER,
        response_model=PackedOutcome,
        tags=["ld2"],
        openapi_extra=query_parameters(PackedTrialQuery, body=True),
    )
    async def packed_register(request: Request) -> Response:
        """``/trial/register`` for ld2's own clients: the body is the trial's results packed
        (``application/octet-stream``), checked as strictly as lite_dist2's mappings.
        ``outcome``: ``ignored`` for a late result of a solved ``find_exact``."""
        q, request_id = packed_request(request, PackedTrialQuery)
        ref, values = await _packed_upload(T(), request, q)
        outcome = await T().register(ref, values, request_id=request_id)
        return JSONResponse({"outcome": outcome})

    @direct_post(
        app,
        PACKED_CYCLE,
        response_model=PackedCycleAnswer,
        responses=NOTHING_LEFT,
        tags=["ld2"],
        openapi_extra=query_parameters(PackedCycleQuery, body=True),
    )
    async def packed_cycle(request: Request) -> Response:
        """``/trial/cycle`` for ld2's own clients: register the packed results of one trial
        and lease the next in one request (202 when none is left)."""
        q, request_id = packed_request(request, PackedCycleQuery)
        check_max_size(q.max_size)  # before anything is stored
        ref, values = await _packed_upload(T(), request, q)
        outcome, nxt = await T().register_and_reserve(
            ref, values, q.retaining_capacity, q.max_size, q.worker_node_name,
            lease=q.lease_seconds, request_id=request_id, prefetch=q.prefetch,
        )  # fmt: skip
        return _packed_reply(T(), nxt, request, outcome)

    @direct_post(
        app,
        PACKED_BATCH,
        response_model=PackedBatchAnswer,
        tags=["ld2"],
        openapi_extra=query_parameters(PackedBatchQuery) | BATCH_BODY,
    )
    async def packed_batch(request: Request) -> Response:
        """Register several trials' packed results and lease up to ``lease_count`` more in one
        request: ld2's workers on trials much shorter than a round trip. ``outcomes`` answers
        each trial in order; a refused one (its study gone, its lease lost) does not stop the
        others. Every upload is checked before anything is stored."""
        q, request_id = packed_request(request, PackedBatchQuery)
        check_max_size(q.max_size)  # before anything is stored
        finished = await _batch_upload(T(), request, q.worker_node_id)
        settled, leased = await T().register_batch(
            finished, q.retaining_capacity, q.max_size, q.worker_node_id, q.worker_node_name,
            lease=q.lease_seconds, request_id=request_id, prefetch=q.prefetch,
            lease_count=q.lease_count,
        )  # fmt: skip
        body = json.dumps(
            {"outcomes": [_settled_wire(s) for s in settled],
             "trials": [_packed_trial(r) for r in leased]},
            separators=(",", ":"),
        ).encode()  # fmt: skip
        return TrialResponse(body, T(), leased, request)

    @app.post("/trial/reap", response_model=ReapResponse, tags=["ld2"])
    async def reap() -> ReapResponse:
        """Hand back every expired lease now (the API also does it periodically)."""
        return ReapResponse(reaped=await T().reap())

    @app.post("/study/pause", response_model=m.OkResponse, tags=["ld2"])
    async def pause(study_id: str | None = None, name: str | None = None) -> m.OkResponse:
        await T().pause((await find_study(T(), study_id, name)).study_id)
        return m.OkResponse(ok=True)

    @app.post("/study/resume", response_model=m.OkResponse, tags=["ld2"])
    async def resume(study_id: str | None = None, name: str | None = None) -> m.OkResponse:
        await T().resume((await find_study(T(), study_id, name)).study_id)
        return m.OkResponse(ok=True)

    @app.post("/study/submit", response_model=SubmitResponse, tags=["ld2"])
    async def submit(param: m.StudyRegisterParam) -> SubmitResponse:
        """Register a study, idempotently: the same study under a taken name answers its id
        (``existed: true``); a different one is 409 with reason ``study_differs`` and the
        ``differences``. (lite_dist2's ``/study/register`` keeps its 400 for a taken name.)"""
        sid, existed = await T().submit_study(
            param.study, priority=param.priority, trial_limit=param.trial_limit_seconds
        )
        return SubmitResponse(study_id=sid, existed=existed)

    @app.post("/study/delete", response_model=DeletedModel, tags=["ld2"])
    async def delete(study_id: str | None = None, name: str | None = None) -> DeletedModel:
        """Forget a study in any state (also a finished one) with all its results."""
        gone = await T().delete((await find_study(T(), study_id, name)).study_id)
        return DeletedModel(
            study_id=gone.study_id, name=gone.name, status=gone.status,
            done_grids=gone.done, failed_grids=gone.failed,
        )  # fmt: skip

    @app.post("/study/retry", response_model=RetryResponse, tags=["ld2"])
    async def retry(study_id: str | None = None, name: str | None = None) -> RetryResponse:
        """Put a study's quarantined points back to work (after its runner was fixed)."""
        n = await T().retry_failures((await find_study(T(), study_id, name)).study_id)
        return RetryResponse(requeued_grids=n)

    @app.get("/study/info", response_model=StudyInfo, tags=["ld2"])
    async def info(study_id: str | None = None, name: str | None = None) -> StudyInfo:
        return study_info(await find_study(T(), study_id, name))

    @app.get("/studies", response_model=list[StudyInfo], tags=["ld2"])
    async def studies() -> list[StudyInfo]:
        return [study_info(s) for s in await T().list_studies()]

    @app.get("/study/failures", response_model=list[FailureModel], tags=["ld2"])
    async def failures(study_id: str | None = None, name: str | None = None) -> list[FailureModel]:
        state = await find_study(T(), study_id, name)
        return [FailureModel(**f.__dict__) for f in await T().failures(state.study_id)]

    @app.get(
        "/study/results",
        tags=["ld2"],
        responses={
            200: {
                "content": {
                    "text/csv": {},
                    "application/x-ndjson": {},
                    "application/octet-stream": {},
                }
            }
        },
    )
    async def study_results(
        study_id: str | None = None,
        name: str | None = None,
        format: Annotated[Literal["csv", "jsonl", "npy"], Query()] = "csv",
    ) -> Response:
        """Registered results in grid order, streamed; also while the study runs (partial).

        csv: axis columns then ``result`` (or ``result_0…``); jsonl: one object per point with
        its ``flat`` index (non-finite floats as the strings "nan", "inf", "-inf"); npy: a 1-D
        structured array (axis fields and ``result``) of the points registered when asked.
        """
        state = await find_study(T(), study_id, name)
        return _results_response(T(), state, format)

    @app.get("/study/landed", response_model=LandedModel, tags=["ld2"])
    async def landed(
        study_id: str | None = None, name: str | None = None, after: str | None = None
    ) -> LandedModel:
        """Results registered since `after` (the `cursor` of an earlier answer), in the order
        they landed — for live views. ``reset``: the blocks are every result so far (a first
        call, or a cursor older than the study's last ~10,000 registrations). Non-finite
        floats are the strings "nan", "inf", "-inf"."""
        state = await find_study(T(), study_id, name)
        got = await T().results_since(state.study_id, after)
        blocks = [LandedBlock(start=b.start, values=_json_values(b.values)) for b in got.blocks]
        return LandedModel(cursor=got.cursor, reset=got.reset, blocks=blocks)

    @app.get("/workers", response_model=list[WorkerModel], tags=["ld2"])
    async def workers(
        within_sec: Annotated[int, Query(ge=1, le=86_400)] = 600,
    ) -> list[WorkerModel]:
        """The workers that reserved within `within_sec` seconds, most recent first (their last
        reserve as the store saw it, to within 5 s)."""
        return [WorkerModel(**w.__dict__) for w in await T().workers(within_sec)]

    @app.get("/backlog", response_model=BacklogModel, tags=["ld2"])
    async def backlog() -> BacklogModel:
        """Work waiting across active studies, for autoscalers."""
        return BacklogModel(**(await T().backlog()).__dict__)

    @app.get("/snapshot", tags=["ld2"])
    async def snapshot() -> dict[str, Any]:
        """The whole curriculum as an ld2 snapshot (what ``/save`` writes to disk)."""
        return await T().export_snapshot()

    @app.post("/snapshot", response_model=list[str], tags=["ld2"])
    async def load(data: Annotated[dict[str, Any], Body()]) -> list[str]:
        """Load an ld2 snapshot or a lite_dist2 ``curriculum.json``; returns the new study ids."""
        return await T().import_snapshot(data)

    # The last added runs first: auth from the headers alone, then the body limit and budget.
    _hot_routes_first(app)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    if token:
        app.add_middleware(BearerAuth, token=token)  # outermost: no body byte read before it
    install_metrics(app, holder)  # GET /metrics; counts requests (401s too: it wraps the token)
    install_dashboard(app, T)  # the page at / (open, ahead of the token) and its JSON routes
    return app


async def _trial_reply(
    table: Table, res: Reservation | None, request: Request, *, with_deadline: bool = False
) -> Response:
    """lite_dist2's reserve answer: 200 with the trial, or 202 ``{"trial": null}``; for an ld2
    client that asked for its own lease, ``"lease_deadline_ms"`` (epoch ms) ends the object.

    A trial whose answer cannot be built or delivered is released at once (`TrialResponse`):
    no lease stays behind for a reply that was never sent.
    """
    if res is None:
        return JSONResponse({"trial": None}, status_code=202)
    try:
        if res.spec.jagged:  # long text to write: off the event loop
            body = await anyio.to_thread.run_sync(_trial_body, res)
        else:
            body = _trial_body(res)
    except BaseException:
        await _release(table, res, "the reserve answer could not be built")
        raise
    if with_deadline:
        ms = int(res.deadline.timestamp() * 1000)
        body = body[:-1] + b',"lease_deadline_ms":' + str(ms).encode() + b"}"
    return TrialResponse(body, table, res, request)


_NO_POINTS = b'"parameters":[],"ambient_indices":[]'


def _trial_body(res: Reservation) -> bytes:
    """The reserve answer: exactly pydantic's JSON of `TrialReserveResponse`, but a jagged
    trial's point lists are written as text straight from the grid (`jagged_points_json`), not
    as a model with Python objects per point (10⁶ points took 14 s and 700 MB that way)."""
    body = m.TrialReserveResponse(trial=res.to_wire(points=False)).model_dump_json().encode()
    if not res.spec.jagged:
        return body
    # the last occurrence is the trial's space: later fields are literals, nulls and strings
    # (in which a quote is escaped)
    at = body.rindex(_NO_POINTS)
    params, indices = jagged_points_json(res.spec.space, res.start, res.count)
    head, tail = body[:at], body[at + len(_NO_POINTS) :]
    return b"".join(
        [head, b'"parameters":[', *params, b'],"ambient_indices":[', *indices, b"]", tail]
    )


class TrialResponse(Response):
    """A reserve answer that hands its trial back (``release``: no attempt counted) when the
    client is gone before it is sent or sending fails. A client that vanishes once the bytes
    left is not seen by any server; its lease expires as usual."""

    media_type = "application/json"

    def __init__(
        self, body: bytes, table: Table, leased: Reservation | list[Reservation], request: Request
    ) -> None:
        super().__init__(body)
        self.table = table
        self.leased = leased if isinstance(leased, list) else [leased]
        self.request = request  # the endpoint's: its body read, so a disconnect is seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.leased:
            await super().__call__(scope, receive, send)
            return
        try:
            if await _gone(self.request):
                for res in self.leased:
                    log.info("client gone before trial %s was sent: released", res.trial_id)
                    await _release(self.table, res, "the client disconnected")
                return
            await super().__call__(scope, receive, send)
        except BaseException:
            for res in self.leased:
                await _release(self.table, res, "the reserve answer could not be sent")
            raise


def _packed_reply(
    table: Table, res: Reservation | None, request: Request, outcome: Outcome | None = None
) -> Response:
    """A packed endpoint's answer: the lease as numbers (`PackedTrial`), or 202 without one;
    after a registration its ``outcome`` first. Released if it cannot be sent (`TrialResponse`)."""
    answer: dict[str, Any] = {} if outcome is None else {"outcome": outcome}
    if res is None:
        return JSONResponse(answer | {"trial": None}, status_code=202)
    answer["trial"] = _packed_trial(res)
    return TrialResponse(json.dumps(answer, separators=(",", ":")).encode(), table, res, request)


def _packed_trial(res: Reservation) -> dict[str, Any]:
    """A lease as `PackedTrial`'s numbers."""
    return {
        "study_id": res.study_id,
        "trial_id": res.trial_id,
        "start": res.start,
        "count": res.count,
        "attempt": res.attempt,
        "reserved_ms": _epoch_ms(res.reserved_at),
        "deadline_ms": _epoch_ms(res.deadline),
    }


def _settled_wire(settled: Settled) -> dict[str, Any]:
    """One trial's answer in a batch (`PackedOutcome` or `PackedRefusal`)."""
    if isinstance(settled, NotFound):
        return {"refused": "not_found", "detail": str(settled)}
    if isinstance(settled, TrialRejected):
        return {"refused": "rejected", "reason": settled.reason, "detail": str(settled)}
    return {"outcome": settled}


def _epoch_ms(when: datetime) -> int:
    return round(when.timestamp() * 1000)


async def _packed_upload(
    table: Table, request: Request, q: PackedTrialQuery
) -> tuple[TrialRef, np.ndarray]:
    """A packed upload checked against its study: the trial's range within the study, then the
    body (`results.unpack_checked`). Nothing reaches the table before both pass."""
    _check_packed_type(request)
    spec = await table.study_spec(q.study_id)
    values = _checked_values(spec, q.start, q.count, await request.body())
    return TrialRef(q.study_id, q.trial_id, q.worker_node_id, q.start, q.count), values


def _check_packed_type(request: Request) -> None:
    given = request.headers.get("content-type", "")
    if given.partition(";")[0].strip().lower() != PACKED_TYPE:
        raise HTTPException(415, f"content-type: must be {PACKED_TYPE}, got {given!r}")


def _checked_values(spec: StudySpec, start: int, count: int, body: bytes) -> np.ndarray:
    """One trial's packed results, checked: its range within the study, then the bytes."""
    if spec.total is not None and start + count > spec.total:
        raise InvalidInput(
            "count",
            f"the trial [{start}, {start + count}) runs past the study's {spec.total} points",
        )
    return results.unpack_checked(body, spec.value_type, spec.vector, count)


async def _batch_upload(
    table: Table, request: Request, worker_id: str
) -> list[tuple[TrialRef, np.ndarray | None]]:
    """A packed batch's trials, each checked against its study as `_packed_upload` checks one;
    nothing reaches the table before every trial passes. A trial whose study is gone is kept,
    without values: the table answers it `NotFound`, and its part of the batch leases as it
    would have (a retry replays that lease)."""
    _check_packed_type(request)
    parts: list[tuple[TrialRef, np.ndarray | None]] = []
    for i, part in enumerate(batch.unframe(await request.body())):
        ref = TrialRef(part.study_id, part.trial_id, worker_id, part.start, part.count)
        try:
            spec = await table.study_spec(part.study_id)
        except NotFound:
            parts.append((ref, None))
            continue
        try:
            values = _checked_values(spec, part.start, part.count, part.body)
        except InvalidInput as err:  # named within the batch: body.trials[i].<field>
            field = err.field.removeprefix("body.").removeprefix("body")
            raise InvalidInput(f"body.trials[{i}].{field or 'results'}", err.problem) from None
        parts.append((ref, values))
    return parts


async def _gone(request: Request) -> bool:
    """Whether the client has disconnected. The request's body is read first (cached): until
    it is, the server's next message is the body, not the disconnect."""
    await request.body()
    step = request.receive()
    if inspect.iscoroutine(step):
        return _disconnected_now(step)
    with contextlib.suppress(AttributeError):  # not a coroutine: Starlette's own look
        step.close()  # type: ignore[attr-defined]
    return await request.is_disconnected()


def _disconnected_now(step: Coroutine[Any, Any, Any]) -> bool:
    """Whether a receive (`step`, not started) answers a disconnect without waiting.

    Run to its first suspension here and closed if it would wait (the server has no message:
    the client is still there). Starlette's `Request.is_disconnected` does the same with a
    cancelled cancel scope, which cost ~40 µs a reserve answer, a tenth of the API's CPU."""
    try:
        step.send(None)
    except StopIteration as done:
        message = done.value or {}
        return bool(message.get("type") == "http.disconnect")
    step.close()
    return False


async def _unless_gone(request: Request, wait: float, reserve: Awaitable[R]) -> R | None:
    """A reserve that may wait (a long poll), given up when the client disconnects: a worker
    stopped or killed during its long poll must not have a trial leased for it afterwards
    (its lease would hold the trial until it expired). None then."""
    if wait <= 0:
        return await reserve
    got: list[R] = []
    failed: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while not await _gone(request):
                await anyio.sleep(CLIENT_CHECK)
            log.info("a long-poll reserve's client is gone: given up")
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            got.append(await reserve)
        except Exception as err:  # raised as itself (a task group would wrap it in a group)
            failed.append(err)
        tg.cancel_scope.cancel()
    if failed:
        raise failed[0]
    return got[0] if got else None


async def _release(table: Table, res: Reservation, why: str) -> None:
    """Hand a trial back at once (also when the request is being cancelled)."""
    with anyio.CancelScope(shield=True):
        try:
            await table.fail(res.trial_id, res.worker_id, why, mode="release")
        except Exception:  # then the lease simply expires
            log.exception("could not release trial %s", res.trial_id)


def _progress_wire(progress: Progress) -> m.ProgressSummaryResponse:
    """ld2's `Progress` in lite_dist2's words."""
    return m.ProgressSummaryResponse(
        now=progress.now,
        cutoff_sec=progress.cutoff_sec,
        progress_summaries=[
            m.StudyProgressSummary(
                study_id=p.study_id,
                study_name=p.name,
                total_grid="infinite" if p.total is None else p.total,
                done_grid=p.done,
                grid_velocity=p.velocity,
                eta="unpredictable" if p.eta is None else p.eta,
                worker_efficiencies=[
                    m.WorkerEfficiency(
                        worker_id=w.worker_id, worker_name=w.worker_name, grid_velocity=w.velocity
                    )
                    for w in p.workers
                ],
            )
            for p in progress.studies
        ],
    )


def _json_values(values: np.ndarray) -> list[Any]:
    """An array as JSON values (non-finite floats as strings, as the jsonl results)."""
    if values.dtype.kind != "f":
        return values.tolist()  # type: ignore[no-any-return]

    def one(v: float) -> float | str:
        return v if math.isfinite(v) else ("nan" if v != v else "inf" if v > 0 else "-inf")

    return [[one(v) for v in row] if isinstance(row, list) else one(row) for row in values.tolist()]


async def _uploaded(table: Table, trial: m.TrialModel) -> tuple[TrialRef, np.ndarray]:
    """A lite_dist2 upload checked against its study (`check_upload`), as ld2's own types."""
    start, count, typed = check_upload(await table.study_spec(trial.study_id), trial)
    return TrialRef(trial.study_id, trial.trial_id, trial.worker_node_id, start, count), typed


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact UTF-8 one (RFC 6266, 5987)."""
    fallback = "".join(c if c.isascii() and (c.isalnum() or c in "._- ") else "_" for c in filename)
    exact = urllib.parse.quote(filename, safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{exact}"


def _results_response(table: Table, state: StudyState, fmt: str) -> Response:
    headers = {"content-disposition": content_disposition(f"{state.label}.{fmt}")}
    media = {"csv": "text/csv", "jsonl": "application/x-ndjson"}.get(
        fmt, "application/octet-stream"
    )
    stream = encode.results_stream(table, state, fmt)
    return StreamingResponse(stream, media_type=media, headers=headers)


def _errors(app: FastAPI) -> None:
    def handler(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
        async def handle(request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)

        return handle

    app.add_exception_handler(InvalidInput, handler(400))
    app.add_exception_handler(NotFound, handler(404))

    async def rejected(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TrialRejected)  # lite_dist2's detail, and ld2's code for it
        return JSONResponse({"detail": str(exc), "reason": exc.reason}, status_code=409)

    app.add_exception_handler(TrialRejected, rejected)
    app.add_exception_handler(BackendUnavailable, handler(503))

    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StudyConflict)
        body = {"detail": str(exc), "reason": "study_differs", "study_id": exc.study_id,
                "differences": exc.differences}  # fmt: skip
        return JSONResponse(body, status_code=409)

    app.add_exception_handler(StudyConflict, conflict)

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    app.add_exception_handler(Exception, internal)
