"""``GET /metrics``: the API's Prometheus metrics (see docs/metrics.md).

Three kinds of figures, all in one app-wide `CollectorRegistry` of the app's own (never
prometheus_client's global one, so that any number of apps live in one process):

- what this process saw: requests by method, route template and status
  (``ld2_api_requests_total``), and how long the store took for the calls that reserve and
  register (``ld2_api_store_seconds``, timed around the table call itself);
- the store's state, read at each scrape with one `Table.list_studies` and one
  `Table.backlog`: per study points done / total / failed / in flight / waiting, leases
  expired, lease holders and status; across studies the backlog an autoscaler reads;
- the process itself (CPU, memory, GC; prometheus_client's standard collectors).

prometheus_client's collectors are synchronous, the table is not: the route reads the store
first, then renders the registry together with a collector fed with that snapshot.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Collection, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ld2.core.errors import BackendUnavailable
from ld2.store.base import Backlog, Outcome, Reservation, Settled, StudyState, Table, TrialRef

STORE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Seconds: a reserve or register on a nearby Redis takes about a millisecond."""

STATUSES = ("wait", "running", "paused", "done")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
"""The ``route`` label of a request that matches no route (so any path costs one series)."""
_ROUTE_CACHE = 4096  # (method, path) pairs remembered; unmatched paths are never remembered


class ApiMetrics:
    """The instruments of one app, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # prometheus_client's standard collectors, as instances of this registry's own
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Counter(
            "ld2_api_requests",
            "HTTP requests answered, by method, route template and status (401s and other "
            "answers of the middlewares included).",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.store_seconds = Histogram(
            "ld2_api_store_seconds",
            "Seconds the store took for the table call of /trial/reserve (reserve), "
            "/trial/register (register) and /trial/cycle (register_and_reserve).",
            ["call"],
            buckets=STORE_BUCKETS,
            registry=self.registry,
        )


def install_metrics(app: FastAPI, holder: MutableMapping[str, Table]) -> ApiMetrics:
    """Add ``GET /metrics`` and the request-counting middleware to `app`.

    `holder` is `create_app`'s table holder: on first use its table is replaced by a proxy
    that times reserve, register and register_and_reserve (everything else passes through).
    Call it after the token middleware is added, so that the counting wraps it (a 401 is
    counted too); ``/metrics`` needs the bearer token like any path but the open ones.
    """
    metrics = ApiMetrics()
    app.state.metrics = metrics

    def prepare() -> None:
        current = holder.get("table")  # (set at start-up for a factory: not before)
        if current is not None and not isinstance(current, _TimedTable):
            holder["table"] = cast(Table, _TimedTable(current, metrics.store_seconds))

    async def scrape(request: Request) -> Response:
        """Prometheus metrics: this process's requests and store latencies, and every study's
        figures read from the store now (Prometheus' text format; OpenMetrics when the
        ``Accept`` header asks for it). Needs the bearer token when the API has one."""
        snapshot = await read_store(holder["table"])
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = encoder(_Scrape(metrics.registry, snapshot))
        return Response(body, media_type=content_type)

    app.add_api_route(
        "/metrics",
        scrape,
        methods=["GET"],
        tags=["ld2"],
        response_class=Response,
        responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}},
    )
    app.add_middleware(CountRequests, counter=metrics.requests, prepare=prepare)
    return metrics


# -- the store at scrape time ---------------------------------------------------------------


@dataclass(frozen=True)
class StoreSnapshot:
    studies: list[StudyState]
    backlog: Backlog | None  # None: the store did not answer
    seconds: float  # how long reading it took


async def read_store(table: Table) -> StoreSnapshot:
    """Every study's state and the backlog (one `list_studies`, one `backlog`, together)."""
    t0 = time.perf_counter()
    studies, backlog = await asyncio.gather(
        table.list_studies(), table.backlog(), return_exceptions=True
    )
    for got in (studies, backlog):
        if isinstance(got, BackendUnavailable):  # the scrape still answers: ld2_store_up 0
            return StoreSnapshot([], None, time.perf_counter() - t0)
        if isinstance(got, BaseException):
            raise got
    assert isinstance(studies, list) and isinstance(backlog, Backlog)
    return StoreSnapshot(studies, backlog, time.perf_counter() - t0)


def _inf_if_none(n: int | None) -> float:
    return math.inf if n is None else float(n)


def store_families(snap: StoreSnapshot) -> Iterator[Metric]:
    """The metric families of a snapshot (see docs/metrics.md for their meaning)."""
    up = GaugeMetricFamily("ld2_store_up", "1 if the store answered this scrape, else 0.")
    up.add_metric([], 0.0 if snap.backlog is None else 1.0)
    yield up
    took = GaugeMetricFamily("ld2_store_scrape_seconds", "Seconds reading the store took.")
    took.add_metric([], snap.seconds)
    yield took
    if snap.backlog is None:
        return
    b = snap.backlog
    for name, value, doc in (
        ("ld2_points_waiting", _inf_if_none(b.points_waiting),
         "Points of active studies never issued or handed back (+Inf: a study is infinite)."),
        ("ld2_ranges_waiting", b.ranges_waiting,
         "Handed-back ranges (expired, failed, released) waiting to be reserved again."),
        ("ld2_trials_in_flight", b.trials_in_flight, "Trials leased now, all active studies."),
        ("ld2_points_in_flight", b.points_in_flight, "Points leased now, all active studies."),
        ("ld2_active_studies", b.active_studies, "Studies waiting, running or paused."),
        ("ld2_workers_seen", b.workers_seen, "Workers that reserved within the last minute."),
    ):  # fmt: skip
        g = GaugeMetricFamily(name, doc)
        g.add_metric([], float(value))
        yield g

    labels = ["study_id", "name"]
    done = GaugeMetricFamily("ld2_study_points_done", "Points registered.", labels=labels)
    total = GaugeMetricFamily(
        "ld2_study_points_total", "Points in the study (absent: infinite).", labels=labels
    )
    failed = GaugeMetricFamily(
        "ld2_study_points_failed",
        "Points quarantined after failing (back to 0 when `ld2 retry` requeues them).",
        labels=labels,
    )
    in_flight = GaugeMetricFamily(
        "ld2_study_points_in_flight", "Points in trials leased now.", labels=labels
    )
    waiting = GaugeMetricFamily(
        "ld2_study_points_waiting",
        "Points neither done, failed nor leased (+Inf for an infinite study).",
        labels=labels,
    )
    expired = CounterMetricFamily(
        "ld2_study_leases_expired",
        "Leases that expired (a worker died or hung) and were handed back or quarantined.",
        labels=labels,
    )
    holders = GaugeMetricFamily(
        "ld2_study_workers", "Workers holding a lease of the study now.", labels=labels
    )
    status = GaugeMetricFamily(
        "ld2_study_status",
        "1 for the study's status (wait, running, paused, done), 0 for the others.",
        labels=[*labels, "status"],
    )
    for s in snap.studies:
        key = [s.study_id, s.spec.name or ""]
        done.add_metric(key, s.done)
        failed.add_metric(key, s.failed)
        in_flight.add_metric(key, s.reserved)
        if s.total is not None:
            total.add_metric(key, s.total)
        if s.status == "done":
            left = 0.0
        elif s.total is None:
            left = math.inf
        else:
            left = max(0, s.total - s.done - s.failed - s.reserved)
        waiting.add_metric(key, left)
        if s.expired is not None:
            expired.add_metric(key, s.expired)
        if s.live_workers is not None:
            holders.add_metric(key, s.live_workers)
        for name in STATUSES:
            status.add_metric([*key, name], 1.0 if s.status == name else 0.0)
    yield from (done, total, failed, in_flight, waiting, expired, holders, status)


class _Scrape:
    """What one scrape renders: the app's registry, then the store's snapshot."""

    def __init__(self, registry: CollectorRegistry, snapshot: StoreSnapshot) -> None:
        self.registry = registry
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        yield from self.registry.collect()
        yield from store_families(self.snapshot)


# -- store latencies ------------------------------------------------------------------------


class _TimedTable:
    """The table, with reserve, register, register_and_reserve and register_batch timed;
    everything else is the table's own (attribute look-ups fall through to it)."""

    def __init__(self, inner: Table, seconds: Histogram) -> None:
        self._inner = inner
        self._reserve = seconds.labels("reserve")
        self._register = seconds.labels("register")
        self._cycle = seconds.labels("register_and_reserve")
        self._batch = seconds.labels("register_batch")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def reserve(
        self,
        capacities: Collection[str],
        max_size: int,
        worker_id: str,
        worker_name: str | None = None,
        **kw: Any,
    ) -> Reservation | None:
        with self._reserve.time():
            return await self._inner.reserve(capacities, max_size, worker_id, worker_name, **kw)

    async def register(self, trial: TrialRef, values: np.ndarray, **kw: Any) -> Outcome:
        with self._register.time():
            return await self._inner.register(trial, values, **kw)

    async def register_and_reserve(
        self, trial: TrialRef, values: np.ndarray, *args: Any, **kw: Any
    ) -> tuple[Outcome, Reservation | None]:
        with self._cycle.time():
            return await self._inner.register_and_reserve(trial, values, *args, **kw)

    async def register_batch(
        self, finished: Sequence[tuple[TrialRef, np.ndarray | None]], *args: Any, **kw: Any
    ) -> tuple[list[Settled], list[Reservation]]:
        with self._batch.time():
            return await self._inner.register_batch(finished, *args, **kw)


# -- request counts -------------------------------------------------------------------------


class CountRequests:
    """Count every HTTP request by method, route template and status (pure ASGI: streamed
    answers pass through untouched). A request that raises counts as 500, as it is answered."""

    def __init__(self, app: ASGIApp, *, counter: Counter, prepare: Callable[[], None]) -> None:
        self.app = app
        self.counter = counter
        self.prepare = prepare
        self.routes: dict[tuple[str, str], str] = {}  # (method, path) → route template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.prepare()  # the store calls are timed from the first request on
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            self._count(scope, status or 500)
            raise
        if status:
            self._count(scope, status)

    def _count(self, scope: Scope, status: int) -> None:
        method = str(scope.get("method", "")).upper()
        self.counter.labels(
            method if method in METHODS else "other", self._route(scope), str(status)
        ).inc()

    def _route(self, scope: Scope) -> str:
        """The template of the route the request matches (a path with its ``{parameters}``),
        found as the router would; `UNMATCHED` when none does."""
        key = (str(scope.get("method", "")), str(scope["path"]))
        found = self.routes.get(key)
        if found is not None:
            return found
        app = scope.get("app")  # the Starlette app, set before any middleware runs
        routes = getattr(getattr(app, "router", None), "routes", ())
        partial = None
        for route in routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                found = str(getattr(route, "path", UNMATCHED))
                break
            if match is Match.PARTIAL and partial is None:  # another method: a 405
                partial = str(getattr(route, "path", UNMATCHED))
        found = found or partial
        if found is None:
            return UNMATCHED
        if len(self.routes) >= _ROUTE_CACHE:
            self.routes.clear()
        self.routes[key] = found
        return found
