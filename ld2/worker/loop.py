"""The worker: reserve trials, compute them in a persistent process pool, register results.

Each of `processes` slots runs its own reserve → compute → register loop, so the pool stays
busy. While a trial computes its lease is extended; a "stop" answer (solved elsewhere,
cancelled, reissued) abandons it. Runner exceptions are reported as trial failures; Redis or
network errors are retried with backoff; on stop (SIGTERM/SIGINT) unfinished trials are handed
back at once without counting an attempt.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ld2.core.errors import BackendUnavailable, NotFound, RunnerMismatch, TrialRejected
from ld2.core.study import StudySpec
from ld2.store.base import FailMode, Reservation, Table
from ld2.worker import runners
from ld2.worker.runners import Runner

log = logging.getLogger("ld2.worker")
T = TypeVar("T")
INITIAL_SIZE = 16
"""--max-size auto: the first trial of a study (grows up to 4x a trial towards trial_seconds)."""
SYSTEMATIC = 32
"""Failed trials of a study, with not one success, after which this worker stops halving them
and quarantines its trials whole: every trial failing is a broken runner, not bad points (the
halving towards one bad point fails at most log2(trial size) + attempts times in a row)."""


@dataclass
class WorkerConfig:
    capacities: Sequence[str]
    processes: int = 1
    max_size: int | None = None  # None: adapt so that a trial takes about `trial_seconds`
    trial_seconds: float = 2.0
    name: str | None = None
    exit_when_idle: float | None = None
    idle_wait: float = 1.0
    heartbeat_every: float = 10.0
    imports: Sequence[str] = ()
    stop_on_mismatch: bool = False  # a local run: a runner that cannot be called ends it


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


def _init_child(imports: Sequence[str]) -> None:
    runners.load(imports)


def _compute(name: str, spec: StudySpec, start: int, count: int) -> np.ndarray:
    """Runs in a pool process."""
    return runners.compute(runners.REGISTRY[name], spec, start, count)


class Worker:
    def __init__(self, table: Table, available: dict[str, Runner], config: WorkerConfig) -> None:
        self.table = table
        self.runners = {name: available[name] for name in config.capacities}
        self.config = config
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.name = config.name or self.id
        self.stats = WorkerStats()
        self._stopping = asyncio.Event()
        self._sizes: dict[tuple[str, str], int] = {}  # --max-size auto: per study and runner
        self._checked: dict[tuple[str, str], str | None] = {}  # runner/study mismatches
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.fatal: str | None = None  # why a local run had to stop (stop_on_mismatch)
        self._outcomes: dict[str, list[int]] = {}  # per study: [trials computed, trials failed]
        self._worked_at = time.monotonic()  # --exit-when-idle: when a trial last computed

    def stop(self) -> None:
        """Finish now: hand unfinished trials back and exit (called from a signal handler)."""
        self._stopping.set()

    # -- running ---------------------------------------------------------------------------------
    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.config.processes,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_init_child,
            initargs=(tuple(self.config.imports),),
        )

    async def run(self) -> WorkerStats:
        self._pool = self._new_pool()
        t0 = time.monotonic()
        try:
            await asyncio.gather(*(self._slot(k) for k in range(self.config.processes)))
        finally:
            # a computation of a handed-back trial must not outlive the worker: end the pool's
            # processes (ProcessPoolExecutor has no public way to until Python 3.14)
            procs = list((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
            self.stats.seconds = time.monotonic() - t0
        return self.stats

    async def _slot(self, k: int) -> None:
        caps = list(self.runners)
        res: Reservation | None = None
        self._worked_at = time.monotonic()
        limit = self.config.exit_when_idle
        while not self._stopping.is_set():
            if limit is not None and time.monotonic() - self._worked_at >= limit:
                break
            if res is None:
                res = await self._retry(
                    self.table.reserve, caps, self._size_for(None), self.id, self.name
                )
                if res is None:
                    await self._sleep(self.config.idle_wait)
                    continue
            values = await self._compute(res)
            if values is None:
                res = None
                continue
            done = res
            size = self._size_for(done)
            try:
                _, res = await self._retry(
                    self.table.register_and_reserve, done, values, caps, size, self.name
                )
            except (TrialRejected, NotFound) as err:
                log.warning("trial %s not registered: %s", done.trial_id, err)
                res = None
        if res is not None:  # reserved with the last registration, never started
            await self._hand_back(res, "worker stopped", "release")

    async def _compute(self, res: Reservation) -> np.ndarray | None:
        run = self._runner_for(res.spec)
        if run is None:  # a study naming no runner, and this worker serves several
            log.warning(
                "study %s names no runner in required_capacity and this worker serves %s: "
                "handing its trial back (serve exactly one --capacity for such studies)",
                res.spec.name or res.study_id,
                ", ".join(self.runners),
            )
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
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        t0 = self._worked_at = time.monotonic()  # computing (even failing) is not being idle
        future = loop.run_in_executor(
            self._pool, _compute, run.name, res.spec, res.start, res.count
        )
        lease = asyncio.create_task(self._keep_lease(res))
        stop = asyncio.create_task(self._stopping.wait())
        waiting: set[asyncio.Future[Any]] = {future, lease, stop}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lease.cancel()
            stop.cancel()
        if not future.done():
            future.cancel()
            if self._stopping.is_set():
                await self._hand_back(res, "worker stopped", "release")
                self.stats.handed_back += 1
            else:
                log.info("trial %s abandoned: the table answered stop", res.trial_id)
                self.stats.abandoned += 1
            return None
        try:
            values = future.result()
        except Exception as err:  # the runner's own error: a failure of this trial
            if isinstance(err, concurrent.futures.process.BrokenProcessPool):
                self._pool = self._new_pool()  # a runner killed its process: start afresh
            self.stats.failures += 1
            self._worked_at = time.monotonic()
            what = f"{type(err).__name__}: {err}"
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
                return None
            if res.count > 1:
                log.warning(
                    "trial %s (%d points) failed: %s; its halves are retried to find the "
                    "failing points", res.trial_id, res.count, what,
                )  # fmt: skip
            else:
                log.warning("point %d of study %s failed: %s", res.start, res.study_id, what)
            await self._hand_back(res, what, "split")
            return None
        elapsed = time.monotonic() - t0
        self._worked_at = time.monotonic()
        self._outcomes.setdefault(res.study_id, [0, 0])[0] += 1
        self.stats.trials += 1
        self.stats.points += res.count
        self.stats.sizes.append(res.count)
        self.stats.durations.append(elapsed)
        log.info(
            "trial %s: %d points in %.3f s (%.0f points/s)",
            res.trial_id,
            res.count,
            elapsed,
            res.count / elapsed if elapsed > 0 else float("inf"),
        )
        self._adapt(res, elapsed)
        return values

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

    async def _keep_lease(self, res: Reservation) -> None:
        """Extend the lease until cancelled; return (ending the wait) on a "stop" answer.

        Heartbeats come every `heartbeat_every` seconds, or a third of the lease if shorter."""
        lease = (res.deadline - res.reserved_at).total_seconds()
        every = min(self.config.heartbeat_every, max(0.2, lease / 3))
        while True:
            await asyncio.sleep(every)
            answer = await self._retry(self.table.heartbeat, res.trial_id, self.id)
            if answer == "stop":
                return

    async def _hand_back(self, res: Reservation, error: str, mode: FailMode) -> None:
        try:
            await self.table.fail(res.trial_id, self.id, error, mode=mode)
        except (TrialRejected, NotFound, BackendUnavailable) as err:
            log.warning("could not hand trial %s back: %s", res.trial_id, err)

    async def _retry(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Call `fn`, retrying unreachable-backend errors with backoff and jitter."""
        delay = 0.2
        while True:
            try:
                return await fn(*args)
            except BackendUnavailable as err:
                if self._stopping.is_set():
                    raise
                log.warning("%s; retrying in %.1f s", err, delay)
                await self._sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 30.0)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return
