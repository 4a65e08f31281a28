"""A worker's own Prometheus metrics: ``ld2 worker --metrics-port N`` (see docs/metrics.md).

The loop reports to a `WorkerProbe` as it goes (store round trips, compute times, the trials
its slots hold, outages); the base class ignores it all, so a worker without a metrics port
pays nothing but a method call. `WorkerMetrics` records it in a registry of its own and
serves it over HTTP (prometheus_client's server, in a thread: a scrape is answered even while
the event loop is busy) from `Worker.run`'s start to its end. Counts the worker keeps anyway
(`WorkerStats`: trials, points, failures) are read from it at scrape time.

prometheus_client is imported only when metrics are served.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ld2.core.errors import InvalidInput

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from ld2.worker.loop import Worker

CALLS = ("reserve", "register_and_reserve", "register_batch", "heartbeat")
"""The store calls whose round trips are timed (anything else is labelled ``other``)."""
STORE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
COMPUTE_BUCKETS = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
)  # fmt: skip
"""Seconds a trial computes (--max-size auto aims at --trial-seconds, 2 s by default)."""


def _nothing() -> None:
    return None


class WorkerProbe:
    """What the worker loop reports; this one ignores it (no metrics port)."""

    def round_trip(self, call: Callable[..., Any], seconds: float) -> None:
        """A store call (`call`, a bound method of the table) answered after `seconds`."""

    def computed(self, seconds: float) -> None:
        """A trial computed successfully in `seconds`."""

    def holding(self, slot: int, trial: object | None) -> None:
        """Slot `slot` now holds `trial` (None: none)."""

    def outage(self) -> None:
        """The backend became unreachable (once per outage, not per retry)."""

    def serve(self) -> Callable[[], None]:
        """Start serving; returns what stops it."""
        return _nothing


def probe_for(worker: Worker) -> WorkerProbe:
    """`WorkerMetrics` when the worker's config asks for a metrics port, else a no-op probe."""
    if worker.config.metrics_port:
        return WorkerMetrics(worker)
    return WorkerProbe()


class WorkerMetrics(WorkerProbe):
    """The worker's metrics, in a registry of their own, served on
    ``config.metrics_host:config.metrics_port`` while `Worker.run` runs."""

    def __init__(self, worker: Worker) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram
        from prometheus_client.gc_collector import GCCollector
        from prometheus_client.platform_collector import PlatformCollector
        from prometheus_client.process_collector import ProcessCollector

        self.worker = worker
        self.registry: CollectorRegistry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.compute_seconds = Histogram(
            "ld2_worker_compute_seconds",
            "Seconds a trial computed (successful trials).",
            buckets=COMPUTE_BUCKETS,
            registry=self.registry,
        )
        store = Histogram(
            "ld2_worker_store_seconds",
            "Round trip to the store (Redis, or the API with --api) of a reserve, a "
            "register_and_reserve (register a trial, reserve the next) or a heartbeat.",
            ["call"],
            buckets=STORE_BUCKETS,
            registry=self.registry,
        )
        self._store = {name: store.labels(name) for name in (*CALLS, "other")}
        self.outages = Counter(
            "ld2_worker_backend_outages",
            "Times the store became unreachable (each outage once, however many retries).",
            registry=self.registry,
        )
        self._held: dict[int, bool] = {}
        self.registry.register(_FromWorker(self))

    # -- the probe ---------------------------------------------------------------------------

    def round_trip(self, call: Callable[..., Any], seconds: float) -> None:
        name = getattr(call, "__name__", "other")
        self._store.get(name, self._store["other"]).observe(seconds)

    def computed(self, seconds: float) -> None:
        self.compute_seconds.observe(seconds)

    def holding(self, slot: int, trial: object | None) -> None:
        self._held[slot] = trial is not None

    def outage(self) -> None:
        self.outages.inc()

    @property
    def held(self) -> int:
        return sum(self._held.values())

    # -- serving -----------------------------------------------------------------------------

    def serve(self) -> Callable[[], None]:
        from prometheus_client import start_http_server

        host, port = self.worker.config.metrics_host, self.worker.config.metrics_port
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except (OSError, socket.gaierror) as err:
            raise InvalidInput(
                "--metrics-port", f"cannot serve metrics on {host}:{port}: {err}"
            ) from None

        def stop() -> None:
            server.shutdown()  # (returns within its poll interval, half a second)
            server.server_close()
            thread.join()
            self._held.clear()

        return stop


class _FromWorker:
    """Figures read from the worker at scrape time (from the server's thread: plain reads)."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        worker = self.metrics.worker
        stats = worker.stats
        for name, value, doc in (
            ("ld2_worker_trials_done", stats.trials, "Trials computed successfully."),
            ("ld2_worker_points_done", stats.points, "Points of the trials computed."),
            ("ld2_worker_trials_failed", stats.failures,
             "Trials failed: the runner raised, crashed, overran its limit, or cannot be "
             "called for the study."),
            ("ld2_worker_trials_abandoned", stats.abandoned,
             "Trials dropped while computing: the store answered stop (solved elsewhere, "
             "cancelled, reissued)."),
            ("ld2_worker_trials_handed_back", stats.handed_back,
             "Trials handed back unfinished because the worker was stopping."),
        ):  # fmt: skip
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(
            "ld2_worker_trials_held",
            "Trials this worker holds now (leased: computing, or registering).",
            value=self.metrics.held,
        )
        yield GaugeMetricFamily(
            "ld2_worker_processes",
            "Compute processes (--processes).",
            value=worker.config.processes,
        )
        yield GaugeMetricFamily(
            "ld2_worker_backend_down",
            "1 while the store is unreachable (the worker retries with backoff), else 0.",
            value=0 if worker._outage_since is None else 1,
        )
        info = InfoMetricFamily("ld2_worker", "The worker's id, name and capacities.")
        info.add_metric(
            [],
            {"worker_id": worker.id, "worker_name": worker.name,
             "capacities": ",".join(worker.runners)},
        )  # fmt: skip
        yield info
