"""The worker: reserve trials, compute them in its compute processes, register the results.

Each of `processes` slots runs its own loop with its own compute process
(`ld2.worker.compute`): while a trial computes, the slot registers the trial before it and
leases the next one in the same round trip (a *prefetch*), so that the next computation starts
the moment this one ends, and keeps the leases it holds alive. Near the end of a study the
store refuses prefetches (a worker holding two trials must not leave another idle); the slot
then registers and reserves in series. An idle slot waits on the store's wake-up (a study
registered or resumed, a range handed back) rather than polling, with `idle_wait` as the
longest wait before it looks again.

A "stop" answer to a heartbeat (solved elsewhere, cancelled, reissued) abandons a trial. Runner
exceptions are trial failures; Redis or network errors are retried with backoff; on stop
(SIGTERM/SIGINT) the computations are ended and every trial in hand, the prefetched one
included, is handed back at once without counting an attempt. A computation longer than the
trial limit (`--trial-limit`, else `LIMIT_FACTOR` times what this worker's average predicts, at
least `LIMIT_FLOOR`) has its process ended and fails the trial.

The loop's concurrency is structured (anyio task groups and cancel scopes): the lease keeper
and the prefetch of a trial live in that trial's task group and never outlive it; a stop
cancels the scopes of the waits and computations in progress, and hand-backs run shielded.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import numpy as np

from ld2.core.errors import BackendUnavailable, NotFound, RunnerMismatch, TrialRejected
from ld2.core.study import StudySpec
from ld2.store.base import FailMode, Reservation, Table
from ld2.worker import runners
from ld2.worker.compute import ComputeDied, ComputeFailed, ComputeProcess
from ld2.worker.metrics import WorkerProbe, probe_for
from ld2.worker.runners import Runner

log = logging.getLogger("ld2.worker")
T = TypeVar("T")
INITIAL_SIZE = 16
"""--max-size auto: the first trial of a study (grows up to 4x a trial towards trial_seconds)."""
SYSTEMATIC = 32
"""Failed trials of a study, with not one success, after which this worker stops halving them
and quarantines its trials whole: every trial failing is a broken runner, not bad points (the
halving towards one bad point fails at most log2(trial size) + attempts times in a row)."""
LIMIT_FACTOR = 20.0
"""Without --trial-limit, a trial may compute this many times as long as this worker's running
average for the study and runner (seconds per point) predicts..."""
LIMIT_FLOOR = 60.0
"""...but never less than this many seconds (short trials vary a lot)..."""
STOP_GRACE = 1.0
"""Seconds a slot whose compute process died of SIGTERM/SIGINT waits for the worker's own
stop (a signal to the process group reaches both, in no set order) before it blames the trial."""
LONGEST_WAIT = 30.0
"""Seconds one reserve of an idle slot may wait for a wake-up (a longer --idle-wait waits in
steps of this: an HTTP API answers long polls of up to 30 s)."""
FIRST_LIMIT = 600.0
"""...and, before this worker has computed a trial of the study with that runner (nothing to
average), this many seconds."""
BATCH_SECONDS = 0.02
"""A slot registers and leases as many trials per call as it computes in about this long
(`WorkerConfig.batch_seconds`): a call per trial costs more than a trial of a millisecond..."""
BATCH_MAX = 8
"""...but never more than this many."""


@dataclass
class WorkerConfig:
    capacities: Sequence[str]
    processes: int = 1
    max_size: int | None = None  # None: adapt so that a trial takes about `trial_seconds`
    trial_seconds: float = 2.0
    name: str | None = None
    exit_when_idle: float | None = None
    idle_wait: float = 1.0  # longest wait for a wake-up before an idle slot looks again
    heartbeat_every: float = 10.0
    lease: float | None = 30.0  # this worker's own lease (it heartbeats); None: the study's
    imports: Sequence[str] = ()
    stop_on_mismatch: bool = False  # a local run: a runner that cannot be called ends it
    trial_limit: float | None = None  # seconds a trial may compute; None: see LIMIT_FACTOR
    metrics_port: int = 0  # serve Prometheus metrics on it while running (0: none)
    metrics_host: str = "127.0.0.1"
    prefetch: bool = True  # lease a slot's next trial while it computes one
    summary_every: float = 30.0  # seconds between INFO summaries (trials, points/s)
    batch_seconds: float = BATCH_SECONDS  # trials a call: as many as compute in this long


@dataclass
class WorkerStats:
    trials: int = 0
    points: int = 0
    failures: int = 0
    abandoned: int = 0
    handed_back: int = 0
    seconds: float = 0.0
    sizes: list[int] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)  # compute seconds of each trial


@dataclass
class _Hold:
    """The trials one slot holds: those it computes in turn (one, or a batch of short ones), those
    it leased ahead, and those computed whose results wait to be registered; the scope of the
    computation in progress, and the trials the table said to abandon."""

    current: list[Reservation] = field(default_factory=list)
    ahead: list[Reservation] = field(default_factory=list)
    finished: list[tuple[Reservation, np.ndarray]] = field(default_factory=list)
    computing: anyio.CancelScope | None = None
    abandoned: list[Reservation] = field(default_factory=list)

    def held(self) -> list[Reservation]:
        return [*self.current, *self.ahead, *(res for res, _ in self.finished)]

    def abandon(self, res: Reservation) -> bool:
        """Whether the table said to abandon `res` (forgotten once asked)."""
        for i, other in enumerate(self.abandoned):
            if other is res:
                del self.abandoned[i]
                return True
        return False

    def told_to_stop(self, res: Reservation) -> None:
        """The table answered "stop" for `res`: the computation in progress ends, a trial
        not started yet is skipped, a trial leased ahead or a result not registered is
        dropped."""
        if any(other is res for other in self.current):
            self.abandoned.append(res)
            if self.current[0] is res and self.computing is not None:
                self.computing.cancel()
        elif any(other is res for other in self.ahead):
            self.ahead = [other for other in self.ahead if other is not res]
            log.info("trial %s (leased ahead) dropped: the table answered stop", res.trial_id)
        elif any(other is res for other, _ in self.finished):
            self.finished = [pair for pair in self.finished if pair[0] is not res]
            log.info("trial %s (computed) dropped: the table answered stop", res.trial_id)


class Worker:
    def __init__(self, table: Table, available: dict[str, Runner], config: WorkerConfig) -> None:
        self.table = table
        self.runners = {name: available[name] for name in config.capacities}
        self.config = config
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.name = config.name or self.id
        self.stats = WorkerStats()
        self._stopping = anyio.Event()
        self._scopes: set[anyio.CancelScope] = set()  # what a stop cancels
        self._sizes: dict[tuple[str, str], int] = {}  # --max-size auto: per study and runner
        self._checked: dict[tuple[str, str], str | None] = {}  # runner/study mismatches
        self.fatal: str | None = None  # why a local run had to stop (stop_on_mismatch)
        self._outcomes: dict[str, list[int]] = {}  # per study: [trials computed, trials failed]
        self._worked_at = time.monotonic()  # --exit-when-idle: when a trial last computed
        self._outage_since: float | None = None  # the backend has been unreachable since
        self._gone: set[str] = set()  # studies found deleted while this worker held a trial
        self._timing: dict[tuple[str, str], list[float]] = {}  # per study, runner: [s, points]
        self._unanswered: list[dict[str, Any]] = []  # reserves a stop cut short (see _reserve)
        self._last_summary = (time.monotonic(), 0, 0)  # when, trials, points
        self.procs = [ComputeProcess(config.imports) for _ in range(config.processes)]
        self.idle_rounds = 0  # times every slot became idle (see wait_idle)
        self._idle_slots = 0
        self._all_idle = anyio.Event()  # set (and replaced) when idle_rounds grows
        self.probe: WorkerProbe = probe_for(self)  # metrics (a no-op without a metrics port)

    def stop(self) -> None:
        """Finish now: hand unfinished trials back and exit (called from a signal handler)."""
        self._stopping.set()
        for scope in list(self._scopes):
            scope.cancel()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- running ---------------------------------------------------------------------------------
    async def run(self) -> WorkerStats:
        stop_metrics = self.probe.serve()
        t0 = time.monotonic()
        self._last_summary = (t0, 0, 0)
        try:
            self.prepare()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._summaries)
                async with anyio.create_task_group() as slots:
                    for k, proc in enumerate(self.procs):
                        slots.start_soon(self._slot, k, proc)
                tg.cancel_scope.cancel()
        finally:
            await self.end()
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(5.0):
                    await self._release_unanswered()
            self.stats.seconds = time.monotonic() - t0
            stop_metrics()
        self._summary(final=True)
        return self.stats

    def prepare(self) -> None:
        """Fork the compute processes now (after the runner modules were imported), so that a
        study submitted next is computed at once; `run` does it if this was not called. Ended by
        `run`, or by `end` if `run` is not called after all."""
        for proc in self.procs:
            proc.start()

    async def end(self) -> None:
        """End the compute processes (what `run` does when it returns)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(10.0):
            async with anyio.create_task_group() as ending:
                for proc in self.procs:
                    ending.start_soon(proc.end)

    async def wait_idle(self, after: int) -> None:
        """Return once every slot has become idle more than `after` times (`idle_rounds`):
        whatever a slot registered came before, so a local run learns that its study may be
        done the moment its last trial lands, not at its next poll."""
        while self.idle_rounds <= after:
            await self._all_idle.wait()

    async def _summaries(self) -> None:
        """A line at INFO every `summary_every` seconds while trials are computed (each trial
        is logged at DEBUG)."""
        while True:
            await anyio.sleep(self.config.summary_every)
            self._summary()

    def _summary(self, *, final: bool = False) -> None:
        last = self._last_summary
        now, trials, points = time.monotonic(), self.stats.trials, self.stats.points
        self._last_summary = (now, trials, points)
        if trials == last[1] and not final:
            return
        span = max(now - last[0], 1e-9)
        log.info(
            "%s%d trials, %d points (%.0f points/s over %.0f s); %d failed, %d handed back",
            "stopping: " if final else "", trials, points, (points - last[2]) / span, span,
            self.stats.failures, self.stats.handed_back,
        )  # fmt: skip

    async def _slot(self, k: int, proc: ComputeProcess) -> None:
        """One compute slot: its trial loop, and beside it the keeper of its leases."""
        hold = _Hold()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._keep_leases, hold)
            try:
                await self._trials(k, proc, hold)
            finally:
                tg.cancel_scope.cancel()

    async def _trials(self, k: int, proc: ComputeProcess, hold: _Hold) -> None:
        caps = list(self.runners)
        self._worked_at = time.monotonic()
        try:
            while not self.stopping:
                if not hold.current:
                    hold.current, hold.ahead = hold.ahead, []
                if not hold.current and hold.finished:  # no prefetch: in series
                    # (with --no-prefetch, or refused near the end of a study)
                    done, hold.finished = hold.finished, []
                    hold.current = await self._settle(done, caps, prefetch=False)
                    continue
                if not hold.current:
                    self.probe.holding(k, None)
                    if not await self._idle(hold, caps):
                        break
                    continue
                self.probe.holding(k, hold.current[0])
                async with anyio.create_task_group() as tg:
                    if self.config.prefetch and hold.finished:
                        done, hold.finished = hold.finished, []
                        tg.start_soon(self._settle_ahead, done, caps, hold)
                    elif self.config.prefetch and not hold.ahead:
                        tg.start_soon(self._reserve_ahead, caps, hold.current[0], hold)
                    while hold.current and not self.stopping:  # the batch, in turn
                        res = hold.current[0]
                        values = await self._compute(res, proc, hold)
                        hold.current.pop(0)
                        if values is not None:
                            hold.finished.append((res, values))
        finally:
            with anyio.CancelScope(shield=True):
                if hold.finished:  # computed: their results are kept
                    done, hold.finished = hold.finished, []
                    await self._settle(done, caps, prefetch=False, reserve=False)
                for held in (*hold.current, *hold.ahead):
                    await self._hand_back(held, "worker stopped", "release")
                    self.stats.handed_back += 1
                hold.current, hold.ahead = [], []
            self.probe.holding(k, None)

    async def _idle(self, hold: _Hold, caps: list[str]) -> bool:
        """Wait for a trial (the store's wake-up, at most `idle_wait` at a time); False when
        the worker should end (stopping, or idle for `exit_when_idle`)."""
        limit = self.config.exit_when_idle
        wait = min(self.config.idle_wait, LONGEST_WAIT)
        if limit is not None:
            left = limit - (time.monotonic() - self._worked_at)
            if left <= 0:
                return False
            wait = min(wait, left)
        self._idle_slots += 1
        if self._idle_slots == len(self.procs):
            self.idle_rounds += 1
            self._all_idle.set()
            self._all_idle = anyio.Event()
        try:
            hold.current = await self._reserve(caps, self._size_for(None), wait=max(wait, 0.001))
        finally:
            self._idle_slots -= 1
        return not self.stopping

    async def _reserve(
        self, caps: list[str], size: int, *, count: int = 1, **options: Any
    ) -> list[Reservation]:
        """A reserve of `count` trials (through `_retry`) that a stop cuts short: then none,
        and the call is remembered so that, when the worker ends, the same request id asks
        again — the store answers a lease its lost reply granted with that lease — and what it
        gets is handed back."""
        ask = {"lease": self.config.lease, "request_id": uuid.uuid4().hex, **options}
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                if self.stopping:
                    scope.cancel()
                return await self._leases(caps, size, count, ask)
            except BackendUnavailable:  # raised by _retry only once stopping
                pass
            finally:
                self._scopes.discard(scope)
        self._unanswered.append({"caps": caps, "size": size, "count": count, "ask": ask})
        return []

    async def _leases(
        self, caps: list[str], size: int, count: int, ask: dict[str, Any], *, retry: bool = True
    ) -> list[Reservation]:
        call: Callable[..., Awaitable[Any]] = self._retry if retry else _once
        if count == 1:
            got = await call(self.table.reserve, caps, size, self.id, self.name, **ask)
            return [] if got is None else [got]
        _, leased = await call(
            self.table.register_batch, [], caps, size, self.id, self.name, lease_count=count,
            **ask,
        )  # fmt: skip
        return list(leased)

    async def _release_unanswered(self) -> None:
        for call in self._unanswered:
            ask = call["ask"] | ({"wait": 0.0} if "wait" in call["ask"] else {})  # an idle wait
            try:
                leased = await self._leases(
                    call["caps"], call["size"], call["count"], ask, retry=False
                )
            except (BackendUnavailable, NotFound) as err:
                log.warning("could not check a reserve cut short by the stop: %s", err)
                return
            for res in leased:
                await self._hand_back(res, "worker stopped", "release")
        self._unanswered.clear()

    async def _reserve_ahead(self, caps: list[str], res: Reservation, hold: _Hold) -> None:
        """Lease the slot's next trials while `res` computes (refused near a study's end)."""
        count = self._batch_for(res)
        hold.ahead = await self._reserve(caps, self._size_for(res), count=count, prefetch=True)

    async def _settle_ahead(
        self, finished: list[tuple[Reservation, np.ndarray]], caps: list[str], hold: _Hold
    ) -> None:
        hold.ahead = await self._settle(finished, caps, prefetch=self.config.prefetch)

    async def _settle(
        self,
        finished: list[tuple[Reservation, np.ndarray]],
        caps: list[str],
        *,
        prefetch: bool,
        reserve: bool = True,
    ) -> list[Reservation]:
        """Register computed trials (never cancelled: results are kept through a stop) and,
        with `reserve`, lease the next ones in the same round trip: one trial and one lease
        (`register_and_reserve`), or a batch of short trials (`register_batch`)."""
        last = finished[-1][0]
        count = self._batch_for(last) if reserve and not self.stopping else 0
        rid = uuid.uuid4().hex
        try:
            with anyio.CancelScope(shield=True):
                if len(finished) > 1 or count > 1:
                    settled, leased = await self._retry(
                        self.table.register_batch, finished, caps, self._size_for(last),
                        self.id, self.name, lease=self.config.lease, request_id=rid,
                        prefetch=prefetch, lease_count=count,
                    )  # fmt: skip
                    for (res, _), answer in zip(finished, settled, strict=True):
                        if isinstance(answer, NotFound | TrialRejected):
                            self._not_registered(res, answer)
                    return list(leased)
                done, values = finished[0]
                if count == 0:
                    await self._retry(self.table.register, done, values, request_id=rid)
                    return []
                _, nxt = await self._retry(
                    self.table.register_and_reserve, done, values, caps, self._size_for(done),
                    self.name, lease=self.config.lease, request_id=rid, prefetch=prefetch,
                )  # fmt: skip
                return [] if nxt is None else [nxt]
        except (NotFound, TrialRejected) as err:
            self._not_registered(finished[0][0], err)
        except BackendUnavailable as err:  # only while stopping (else retried for ever)
            for res, _ in finished:
                log.warning("trial %s not registered before the worker stopped: %s",
                            res.trial_id, err)  # fmt: skip
        return []

    def _not_registered(self, res: Reservation, err: NotFound | TrialRejected) -> None:
        if isinstance(err, TrialRejected):
            log.warning("trial %s not registered: %s", res.trial_id, err)
        elif res.study_id not in self._gone:  # said once per study, not per trial
            self._gone.add(res.study_id)
            log.warning(
                "study %s no longer exists (deleted or cancelled, or Redis lost its data): its "
                "work is dropped; serving the other studies", res.spec.name or res.study_id,
            )  # fmt: skip

    def _batch_for(self, res: Reservation) -> int:
        """Trials to lease per call: as many as this worker computes in `batch_seconds` by its
        running average for the study and runner (at most `BATCH_MAX`); one without prefetch
        (a slot then holds only what it computes) or where the table says not to batch
        (`Table.batches`: lite_dist2, which knows no prefetch)."""
        if not (self.config.prefetch and self.table.batches):
            return 1
        seconds, points = self._timing.get(self._key(res), (0.0, 0.0))
        if points == 0 or seconds <= 0:
            return 1
        per_trial = seconds / points * self._size_for(res)
        return max(1, min(BATCH_MAX, int(self.config.batch_seconds / per_trial)))

    async def _compute(
        self, res: Reservation, proc: ComputeProcess, hold: _Hold
    ) -> np.ndarray | None:
        """Compute `res` in the slot's process while keeping the slot's leases; None when the
        trial ended otherwise (failed, handed back, abandoned: each dealt with here)."""
        run = self._runner_for(res.spec)
        if run is None:  # no runner, or several, named; and this worker serves several
            named = sorted(c for c in res.spec.capacities if c in self.runners)
            why = (
                f"names several runners ({', '.join(named)})"
                if named
                else "names no runner in required_capacity"
            )
            log.warning(
                "study %s %s and this worker serves %s: handing its trial back (a study is "
                "computed by one runner; for a study naming none serve exactly one --capacity)",
                res.spec.name or res.study_id, why, ", ".join(self.runners),
            )  # fmt: skip
            await self._hand_back(res, "no runner chosen for the study", "release")
            await self._sleep(self.config.idle_wait)
            return None
        mismatch = self._mismatch(run, res)
        if mismatch is not None:
            self.stats.failures += 1
            await self._hand_back(res, mismatch, "quarantine")
            if self.config.stop_on_mismatch:
                self.fatal = mismatch
                self.stop()
            return None
        if hold.abandon(res):  # told to before it started
            self.stats.abandoned += 1
            return None
        limit = self._limit_for(res)
        error: str | None = None
        values: np.ndarray | None = None
        t0 = self._worked_at = time.monotonic()  # computing (even failing) is not idle
        # ended by the limit (its deadline), a stop, or a "stop" answer to a heartbeat
        with anyio.CancelScope(deadline=anyio.current_time() + limit) as scope:
            hold.computing = scope
            self._scopes.add(scope)
            if self.stopping:  # (it may have come with the reservation)
                scope.cancel()
            try:
                values = await proc.compute(run.name, res.study_id, res.spec, res.start, res.count)
            except ComputeFailed as err:  # the runner's own error
                error = str(err)
            except ComputeDied as err:  # a runner killed its process, or a stop is coming
                error = f"ComputeDied: {err}"
                if err.stopped:  # the worker's group was signalled: its own signal is due
                    with anyio.move_on_after(STOP_GRACE):
                        await self._stopping.wait()
            finally:
                self._scopes.discard(scope)
                hold.computing = None
        if hold.abandon(res):
            log.info("trial %s abandoned: the table answered stop", res.trial_id)
            self.stats.abandoned += 1
            return None
        if values is None and self.stopping:
            await self._hand_back(res, "worker stopped", "release")
            self.stats.handed_back += 1
            return None
        if scope.cancelled_caught:  # over the limit: a hung runner must not hold its range
            log.warning(
                "trial %s: computation exceeded %.1f s; its compute process was ended "
                "(--trial-limit sets the limit)", res.trial_id, limit,
            )  # fmt: skip
            await self._failed(res, f"TrialTimeout: computation exceeded {limit:.1f} s")
            return None
        if error is not None or values is None:
            await self._failed(res, error or "no values")
            return None
        elapsed = time.monotonic() - t0
        self.probe.computed(elapsed)
        self._worked_at = time.monotonic()
        self._outcomes.setdefault(res.study_id, [0, 0])[0] += 1
        timing = self._timing.setdefault(self._key(res), [0.0, 0.0])
        timing[0] += elapsed
        timing[1] += res.count
        self.stats.trials += 1
        self.stats.points += res.count
        self.stats.sizes.append(res.count)
        self.stats.durations.append(elapsed)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "trial %s: %d points in %.3f s (%.0f points/s)", res.trial_id, res.count,
                elapsed, res.count / elapsed if elapsed > 0 else float("inf"),
            )  # fmt: skip
        self._adapt(res, elapsed)
        return values

    async def _keep_leases(self, hold: _Hold) -> None:
        """Extend the leases of the slot's trials (while the slot lives); a "stop" answer for
        the one computing ends its computation, for the one leased ahead drops it.

        Each trial is heartbeaten every `heartbeat_every` seconds, or a third of its lease if
        shorter, from when this keeper first sees it (short trials never are)."""
        seen: dict[str, float] = {}  # trial id -> when last heartbeaten (or first seen)
        while True:
            held = hold.held()
            await anyio.sleep(min([0.5, *(self._beat_every(res) / 2 for res in held)]))
            now = time.monotonic()
            held = hold.held()
            seen = {res.trial_id: seen.get(res.trial_id, now) for res in held}
            for res in held:
                if now - seen[res.trial_id] < self._beat_every(res):
                    continue
                seen[res.trial_id] = now
                try:
                    answer = await self._retry(self.table.heartbeat, res.trial_id, self.id)
                except BackendUnavailable:  # raised by _retry only once stopping
                    return
                if answer != "stop":
                    continue
                hold.told_to_stop(res)

    def _beat_every(self, res: Reservation) -> float:
        lease = (res.deadline - res.reserved_at).total_seconds()
        return min(self.config.heartbeat_every, max(0.2, lease / 3))

    async def _failed(self, res: Reservation, what: str) -> None:
        """The trial failed (its runner raised, crashed or overran the limit): hand it back."""
        self.stats.failures += 1
        self._worked_at = time.monotonic()
        outcome = self._outcomes.setdefault(res.study_id, [0, 0])
        outcome[1] += 1
        if outcome[0] == 0 and outcome[1] >= SYSTEMATIC:
            if outcome[1] == SYSTEMATIC:
                log.error(
                    "study %s: %d trials failed and none succeeded (%s); its trials are "
                    "now quarantined whole: fix the runner, then `ld2 retry`",
                    res.spec.name or res.study_id, outcome[1], what,
                )  # fmt: skip
            await self._hand_back(res, what, "quarantine")
            return
        if res.count > 1:
            log.warning(
                "trial %s (%d points) failed: %s; its halves are retried to find the "
                "failing points", res.trial_id, res.count, what,
            )  # fmt: skip
        else:
            log.warning("point %d of study %s failed: %s", res.start, res.study_id, what)
        await self._hand_back(res, what, "split")

    def _limit_for(self, res: Reservation) -> float:
        """Seconds the trial may compute: --trial-limit, else the study's trial_limit_seconds,
        else LIMIT_FACTOR times what this
        worker's running average for the study and runner predicts for its points (at least
        LIMIT_FLOOR), else (no trial computed yet) FIRST_LIMIT."""
        if self.config.trial_limit is not None:
            return self.config.trial_limit
        if res.spec.trial_limit is not None:  # the study's own setting
            return res.spec.trial_limit
        seconds, points = self._timing.get(self._key(res), (0.0, 0.0))
        if points == 0:
            return FIRST_LIMIT
        return max(LIMIT_FLOOR, LIMIT_FACTOR * seconds / points * res.count)

    def _runner_for(self, spec: StudySpec) -> Runner | None:
        named = [self.runners[c] for c in spec.capacities if c in self.runners]
        if len(named) == 1:
            return named[0]
        if not named and len(self.runners) == 1:
            return next(iter(self.runners.values()))
        return None

    def _mismatch(self, run: Runner, res: Reservation) -> str | None:
        """Why `run` cannot be called for this study at all (checked once per study)."""
        key = (res.study_id, run.name)
        if key not in self._checked:
            try:
                runners.check_call(run, res.spec)
                self._checked[key] = None
            except RunnerMismatch as err:
                self._checked[key] = f"{type(err).__name__}: {err}"
                log.error("study %s: %s", res.spec.name or res.study_id, err)
        return self._checked[key]

    def _key(self, res: Reservation) -> tuple[str, str]:
        run = self._runner_for(res.spec)
        return (res.study_id, run.name if run else "")

    def _size_for(self, res: Reservation | None) -> int:
        """The trial size to ask for next: the study's own when continuing it (--max-size
        auto adapts per study and runner), else a small first trial."""
        if self.config.max_size is not None:
            return self.config.max_size
        if res is None:
            return INITIAL_SIZE
        return self._sizes.get(self._key(res), INITIAL_SIZE)

    def _adapt(self, res: Reservation, elapsed: float) -> None:
        """--max-size auto: aim at `trial_seconds` a trial, changing at most 4x at a time."""
        if self.config.max_size is not None:
            return
        key = self._key(res)
        size = self._sizes.get(key, INITIAL_SIZE)
        if res.count < size // 2:
            return  # a short trial (the end of a range) says little about the rate
        rate = res.count / max(elapsed, 1e-6)
        target = int(rate * self.config.trial_seconds)
        self._sizes[key] = max(1, min(10_000_000, max(size // 4, min(target, size * 4))))

    async def _hand_back(self, res: Reservation, error: str, mode: FailMode) -> None:
        try:
            await self.table.fail(res.trial_id, self.id, error, mode=mode)
        except (TrialRejected, NotFound, BackendUnavailable) as err:
            log.warning("could not hand trial %s back: %s", res.trial_id, err)

    async def _retry(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Call `fn`, retrying unreachable-backend errors with backoff and jitter; an outage is
        logged once when it starts and once when it ends (not on every retry). Callers that
        change state pass one `request_id` for all attempts, so a retry after a lost answer
        gets that answer replayed (the same lease) instead of a second lease."""
        delay = 0.2
        while True:
            sent = time.monotonic()
            try:
                result = await fn(*args, **kwargs)
            except BackendUnavailable as err:
                if self._stopping.is_set():
                    raise
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    self.probe.outage()
                    log.warning("%s; retrying with backoff until it is back", err)
                await self._sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 10.0)
                continue
            self.probe.round_trip(fn, time.monotonic() - sent)
            if self._outage_since is not None:
                took = time.monotonic() - self._outage_since
                self._outage_since = None
                log.warning("the backend is back after %.1f s", took)
            return result

    async def _sleep(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._stopping.wait()


async def _once(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """`fn(...)`, called once (`Worker._retry`'s signature, without the retries)."""
    return await fn(*args, **kwargs)
