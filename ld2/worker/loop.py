"""The worker: reserve trials, compute them in a persistent process pool, register results.

Each of `processes` slots runs its own reserve → compute → register loop, so the pool stays
busy. While a trial computes its lease is extended; a "stop" answer (solved elsewhere,
cancelled, reissued) abandons it. Runner exceptions are reported as trial failures; Redis or
network errors are retried with backoff; on stop (SIGTERM/SIGINT) unfinished trials are handed
back at once without counting an attempt, and the pool's processes are ended.

Compute processes die with the worker: they take the default SIGTERM (so ending them works),
ignore SIGINT (Ctrl-C reaches the whole process group; the worker decides) and, on Linux, are
killed by the kernel when the worker dies (PR_SET_PDEATHSIG), even by SIGKILL. A computation
longer than the trial limit (`--trial-limit`, else `LIMIT_FACTOR` times what this worker's
average predicts, at least `LIMIT_FLOOR`) has its process ended and fails the trial.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import random
import signal
import socket
import sys
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ld2.core.errors import BackendUnavailable, NotFound, RunnerMismatch, TrialRejected
from ld2.core.study import StudySpec
from ld2.store.base import FailMode, Reservation, Table
from ld2.worker import runners
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
average for the study and runner (seconds per point, times the trial's points) predicts..."""
LIMIT_FLOOR = 60.0
"""...but never less than this many seconds (short trials vary a lot)..."""
FIRST_LIMIT = 600.0
"""...and, before this worker has computed a trial of the study with that runner (nothing to
average), this many seconds."""
GRACE = 1.0
"""Seconds a compute process has to end after SIGTERM before it is sent SIGKILL."""
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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
    lease: float | None = 30.0  # this worker's own lease (it heartbeats); None: the study's
    imports: Sequence[str] = ()
    stop_on_mismatch: bool = False  # a local run: a runner that cannot be called ends it
    trial_limit: float | None = None  # seconds a trial may compute; None: see LIMIT_FACTOR
    metrics_port: int = 0  # serve Prometheus metrics on it while running (0: none)
    metrics_host: str = "127.0.0.1"


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


def _init_child(imports: Sequence[str], parent: int) -> None:
    """Runs first in each pool process (forked from the worker, with its signal handlers)."""
    signal.set_wakeup_fd(-1)  # the worker's event loop's, inherited
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # terminate() ends a computation
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the worker decides
    if sys.platform == "linux":
        # SIGKILL when the thread that forked this process ends: the worker's main thread (the
        # event loop's, which submits; ProcessPoolExecutor forks all its processes then), so
        # when the worker exits or is killed
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG): %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:  # the worker died before the prctl: no signal will come
        os._exit(1)
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
        self._outage_since: float | None = None  # the backend has been unreachable since
        self._gone: set[str] = set()  # studies found deleted while this worker held a trial
        self._timing: dict[tuple[str, str], list[float]] = {}  # per study, runner: [s, points]
        # pools ended on purpose (a trial over its limit): their other trials are recomputed
        self._ended: weakref.WeakSet[concurrent.futures.ProcessPoolExecutor] = weakref.WeakSet()
        self.probe: WorkerProbe = probe_for(self)  # metrics (a no-op without a metrics port)

    def stop(self) -> None:
        """Finish now: hand unfinished trials back and exit (called from a signal handler)."""
        self._stopping.set()

    # -- running ---------------------------------------------------------------------------------
    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=self.config.processes,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_init_child,
            initargs=(tuple(self.config.imports), os.getpid()),
        )

    async def run(self) -> WorkerStats:
        stop_metrics = self.probe.serve()
        self._pool = self._new_pool()
        t0 = time.monotonic()
        ender = asyncio.create_task(self._end_on_stop())
        try:
            await asyncio.gather(*(self._slot(k) for k in range(self.config.processes)))
        finally:
            if self._stopping.is_set():
                await ender  # it ends the pool's processes (within GRACE)
            else:  # idle, or an error: end them here (run() may be called again)
                ender.cancel()
                await _end_pool(self._pool)
            self.stats.seconds = time.monotonic() - t0
            stop_metrics()
        return self.stats

    async def _end_on_stop(self) -> None:
        """On stop, end the pool's processes at once, while the slots hand their trials back:
        a computation of a handed-back trial must not outlive the worker."""
        await self._stopping.wait()
        assert self._pool is not None
        await _end_pool(self._pool)

    def _replace_pool(self, pool: concurrent.futures.ProcessPoolExecutor) -> bool:
        """A fresh pool instead of `pool` (broken or to be ended), unless another slot has already
        replaced it: one rebuild, however many slots see it broken."""
        if self._pool is not pool or self._stopping.is_set():
            return False
        self._pool = self._new_pool()
        return True

    async def _slot(self, k: int) -> None:
        caps = list(self.runners)
        res: Reservation | None = None
        self._worked_at = time.monotonic()
        limit = self.config.exit_when_idle
        while not self._stopping.is_set():
            self.probe.holding(k, res)
            if limit is not None and time.monotonic() - self._worked_at >= limit:
                break
            if res is None:
                res = await self._retry(
                    self.table.reserve, caps, self._size_for(None), self.id, self.name,
                    lease=self.config.lease, request_id=uuid.uuid4().hex,
                )  # fmt: skip
                self.probe.holding(k, res)
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
                    self.table.register_and_reserve, done, values, caps, size, self.name,
                    lease=self.config.lease, request_id=uuid.uuid4().hex,
                )  # fmt: skip
            except NotFound:
                if done.study_id not in self._gone:  # said once per study, not per trial
                    self._gone.add(done.study_id)
                    log.warning(
                        "study %s no longer exists (deleted or cancelled, or Redis lost its "
                        "data): its work is dropped; serving the other studies",
                        done.spec.name or done.study_id,
                    )
                res = None
            except TrialRejected as err:
                log.warning("trial %s not registered: %s", done.trial_id, err)
                res = None
        if res is not None:  # reserved with the last registration, never started
            await self._hand_back(res, "worker stopped", "release")
        self.probe.holding(k, None)

    async def _compute(self, res: Reservation) -> np.ndarray | None:
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
        loop = asyncio.get_running_loop()
        limit = self._limit_for(res)
        lease = asyncio.create_task(self._keep_lease(res))
        stop = asyncio.create_task(self._stopping.wait())
        pool = self._pool
        future: asyncio.Future[np.ndarray] | None = None
        try:
            while not self._stopping.is_set():  # (it may have come with the reservation)
                pool = self._pool
                assert pool is not None
                t0 = self._worked_at = time.monotonic()  # computing (even failing) is not idle
                try:
                    future = loop.run_in_executor(
                        pool, _compute, run.name, res.spec, res.start, res.count
                    )
                except concurrent.futures.process.BrokenProcessPool:
                    self._replace_pool(pool)  # broken before a slot has seen it
                    continue
                waiting: set[asyncio.Future[Any]] = {future, lease, stop}
                await asyncio.wait(waiting, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
                if pool in self._ended and _broken(future) and not self._stopping.is_set():
                    log.info("trial %s: computed again in a fresh pool", res.trial_id)
                    continue  # another trial's process was ended: this one is not at fault
                break
        finally:
            lease.cancel()
            stop.cancel()
        if (
            future is None
            or future.cancelled()  # its pool ended before it started: not this trial's fault
            or (self._stopping.is_set() and (not future.done() or _broken(future)))
        ):
            if future is not None:
                future.cancel()  # (the computation itself is ended with the pool)
            await self._hand_back(res, "worker stopped", "release")
            self.stats.handed_back += 1
            return None
        if not future.done():
            future.cancel()
            if lease.done():
                log.info("trial %s abandoned: the table answered stop", res.trial_id)
                self.stats.abandoned += 1
                # its computation would go on in the pool, and the next trial wait behind it
                # (and be blamed for the time): end it with its pool, as for a hung runner
                assert pool is not None
                self._ended.add(pool)
                self._replace_pool(pool)
                await _end_pool(pool)
                return None
            # over the limit: a hung runner must not hold its range (heartbeats renew it)
            log.warning(
                "trial %s: computation exceeded %.1f s; ending its process and restarting the "
                "pool (--trial-limit sets the limit)", res.trial_id, limit,
            )  # fmt: skip
            assert pool is not None
            self._ended.add(pool)  # before any await: its other trials are computed again
            self._replace_pool(pool)
            await _end_pool(pool)
            await self._failed(res, f"TrialTimeout: computation exceeded {limit:.1f} s")
            return None
        try:
            values = future.result()
        except Exception as err:  # the runner's own error: a failure of this trial
            if isinstance(err, concurrent.futures.process.BrokenProcessPool):
                assert pool is not None
                self._replace_pool(pool)  # a runner killed its process: start afresh
            await self._failed(res, f"{type(err).__name__}: {err}")
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
        log.info(
            "trial %s: %d points in %.3f s (%.0f points/s)",
            res.trial_id,
            res.count,
            elapsed,
            res.count / elapsed if elapsed > 0 else float("inf"),
        )
        self._adapt(res, elapsed)
        return values

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
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return


def _broken(future: asyncio.Future[Any]) -> bool:
    """Whether the computation ended with its pool: a process of the pool died, or the pool was
    ended before the computation started (cancelled)."""
    if not future.done():
        return False
    return future.cancelled() or isinstance(
        future.exception(), concurrent.futures.process.BrokenProcessPool
    )


def _running(
    procs: Sequence[multiprocessing.process.BaseProcess],
) -> list[multiprocessing.process.BaseProcess]:
    """The processes not yet ended (their sentinels are not ready; nothing is reaped here)."""
    alive = []
    for proc in procs:
        try:
            if not multiprocessing.connection.wait([proc.sentinel], timeout=0):
                alive.append(proc)
        except (ValueError, OSError):  # closed: ended
            continue
    return alive


async def _end_pool(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """End the pool's processes: SIGTERM, then SIGKILL to those still there after GRACE seconds
    (ProcessPoolExecutor has no public way to end a running computation until Python 3.14)."""
    procs: list[multiprocessing.process.BaseProcess] = list(
        (getattr(pool, "_processes", None) or {}).values()
    )
    manager = getattr(pool, "_executor_manager_thread", None)  # shutdown() forgets it
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()
    try:
        deadline = time.monotonic() + GRACE
        while _running(procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        for proc in _running(procs):
            proc.kill()
        if manager is not None:  # let it close its wakeup pipe now: Python 3.11's exit hook
            # writes to that pipe without a lock, racing a close ("OSError: [Errno 9]" at exit)
            await asyncio.to_thread(manager.join, GRACE)
