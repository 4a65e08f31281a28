"""The `Table` interface: everything API, workers, CLI and reaper ask of the shared state.

Implementations: `RedisTable` (Redis or the embedded Valkey; the only code that knows keys and
Lua) and, over the HTTP API, `HttpTable`. One behaviour suite runs against each.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from ld2.core import models as m
from ld2.core.errors import NameTaken, NotFound, StudyConflict, TrialRejected
from ld2.core.identity import differences
from ld2.core.planning import MAX_JAGGED_REPLY_BYTES, MAX_TRIAL_POINTS, check_max_size
from ld2.core.study import StudySpec, parse_study
from ld2.core.subspace import jagged_point_bytes, space_to_wire, trial_space

Status = Literal["wait", "running", "paused", "done"]
Outcome = Literal["ok", "ignored"]
LeaseAnswer = Literal["ok", "stop"]
Settled = Outcome | NotFound | TrialRejected
"""What became of one trial of a batch (`Table.register_batch`): its outcome, or the refusal
that `register` would have raised for it alone."""
FailMode = Literal["release", "retry", "split", "quarantine"]
"""How a trial is handed back: `release` (a worker stopping; no attempt counted), `retry` (counts
an attempt), `split` (a runner failure: a range of several points goes back as two halves, so
that only points failing on their own are quarantined) or `quarantine` (cannot ever succeed)."""

MAX_TOTAL = 2**53
"""Largest finite study: flat indices stay exact inside Redis's Lua (doubles)."""


def clamp_max_size(spec: StudySpec, max_size: int) -> int:
    """`max_size` within what one reservation of this study may hold (clamped, not refused):
    at most `MAX_TRIAL_POINTS` points, and for a jagged study, whose wire form lists every point,
    no more than fit in `MAX_JAGGED_REPLY_BYTES` of point lists."""
    check_max_size(max_size)
    limit = MAX_TRIAL_POINTS
    if spec.jagged:
        limit = min(limit, max(1, MAX_JAGGED_REPLY_BYTES // jagged_point_bytes(spec.space)))
    return min(max_size, limit)


def part_id(request_id: str | None, part: str) -> str | None:
    """The request id of one part of a batch call (`Table.register_batch`): the caller's id and
    the part, hashed (SHA-256) where that is no valid request id (over 128 characters, or not
    visible ASCII: a trial id comes from the client)."""
    if request_id is None:
        return None
    whole = f"{request_id}/{part}"
    if len(whole) <= 128 and whole.isascii() and whole.isprintable() and " " not in whole:
        return whole
    return hashlib.sha256(f"{request_id}\0{part}".encode()).hexdigest()


def from_ms(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True)
class TrialRef:
    """What identifies a leased trial when its results come back."""

    study_id: str
    trial_id: str
    worker_id: str
    start: int
    count: int


@dataclass(frozen=True)
class Reservation(TrialRef):
    """A leased trial: the flat range ``[start, start+count)`` of one study."""

    worker_name: str | None
    attempt: int
    reserved_at: datetime
    deadline: datetime
    spec: StudySpec

    def arrays(self) -> list[np.ndarray]:
        """Per-axis value arrays of the trial's points (what a vectorised runner receives)."""
        return self.spec.space.arrays(self.start, self.count)

    def to_wire(self, *, points: bool = True) -> m.TrialModel:
        """lite_dist2's model of the trial; ``points=False`` leaves a jagged trial's point lists
        empty (the API writes them as JSON text, see `ld2.core.subspace.jagged_points_json`)."""
        reg = self.spec.registry
        space = trial_space(
            self.spec.space, self.start, self.count, self.spec.jagged, points=points
        )
        return m.TrialModel(
            study_id=self.study_id,
            trial_id=self.trial_id,
            reserved_timestamp=self.reserved_at,
            trial_status="running",
            const_param=reg.const_param,
            parameter_space=space,
            result_type=reg.result_type,
            result_value_type=reg.result_value_type,
            worker_node_name=self.worker_name,
            worker_node_id=self.worker_id,
        )


@dataclass(frozen=True)
class StudyState:
    """A study's spec and counters as the table holds them right now."""

    study_id: str
    spec: StudySpec
    status: Status
    done: int
    failed: int
    reserved: int
    registered_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    priority: int = 0
    hit_flat: int | None = None
    best_flat: int | None = None
    vector_len: int | None = None
    live_workers: int | None = None  # workers holding a lease that has not expired (None: unknown)
    expired: int | None = None  # leases that expired and were reaped, ever (None: unknown)

    @property
    def total(self) -> int | None:
        return self.spec.total

    @property
    def label(self) -> str:
        """The name, or the study id for a study registered without one."""
        return self.spec.name or self.study_id

    @property
    def wire_status(self) -> Literal["wait", "running", "done"]:
        """lite_dist2 knows no "paused": a paused study shows as what it was before."""
        if self.status == "paused":
            return "wait" if self.started_at is None else "running"
        return self.status

    def summary(self) -> m.StudySummary:
        reg = self.spec.registry
        return m.StudySummary(
            **_common(reg),
            study_id=self.study_id,
            status=self.wire_status,
            registered_timestamp=self.registered_at,
            parameter_space=space_to_wire(self.spec.space),
            total_grids=self.total,
            done_grids=self.done,
        )


def _common(reg: m.StudyRegistry) -> dict[str, Any]:
    return {name: getattr(reg, name) for name in m.StudyCommon.model_fields}


@dataclass(frozen=True)
class ResultBlock:
    """Registered results of the flat range starting at `start`, in flat order."""

    start: int
    values: np.ndarray

    @property
    def count(self) -> int:
        return int(self.values.shape[0])


@dataclass(frozen=True)
class Landed:
    """Results registered since a cursor (`Table.results_since`), for live views."""

    cursor: str  # pass it back as `after` to get what lands next
    reset: bool  # `blocks` is every result so far: a first call, or `after` is too old
    blocks: list[ResultBlock]


@dataclass(frozen=True)
class Failure:
    """A quarantined range: it failed `attempts` times; `error` is the last reason."""

    start: int
    count: int
    attempts: int
    error: str


@dataclass(frozen=True)
class Deleted:
    """What `Table.delete` removed."""

    study_id: str
    name: str | None
    status: str
    done: int
    failed: int


@dataclass(frozen=True)
class WorkerSpeed:
    worker_id: str
    worker_name: str | None
    velocity: float  # points/s registered within the window
    trials: int = 0  # trials registered within the window (0: unknown, over lite_dist2's wire)


@dataclass(frozen=True)
class WorkerSeen:
    """A worker that reserved lately (as the store saw it, to within 5 s)."""

    worker_id: str
    name: str | None
    last_seen: datetime


@dataclass(frozen=True)
class StudyProgress:
    """An active study's pace over the last `Progress.cutoff_sec` seconds."""

    study_id: str
    name: str | None
    total: int | None  # None: infinite
    done: int
    velocity: float  # points/s, all workers
    eta: datetime | None  # None: unpredictable
    workers: list[WorkerSpeed]


@dataclass(frozen=True)
class Progress:
    now: datetime
    cutoff_sec: int
    studies: list[StudyProgress]


@dataclass(frozen=True)
class Backlog:
    """Work waiting across active studies: what an autoscaler reads."""

    points_waiting: int | None  # never issued or handed back; None when a study is infinite
    ranges_waiting: int  # handed-back ranges (expired, failed, released)
    trials_in_flight: int
    points_in_flight: int
    active_studies: int
    workers_seen: int  # workers that reserved within the last minute


class Table(abc.ABC):
    """The shared state of every study, as API, workers, CLI and reaper see it."""

    @abc.abstractmethod
    async def register_study(
        self, registry: m.StudyRegistry, *, priority: int = 0, trial_limit: float | None = None
    ) -> str:
        """Validate and store a study; returns its id. Invalid input writes nothing.

        `trial_limit` (seconds) is how long a trial of it may compute before a worker ends the
        computation and fails the trial (None: the worker's own limit)."""

    async def submit_study(
        self, registry: m.StudyRegistry, *, priority: int = 0, trial_limit: float | None = None
    ) -> tuple[str, bool]:
        """Register a study, or find the identical one already registered under its name.

        Returns ``(study id, existed)``; a different study under the same name raises
        `StudyConflict` naming the differences. So a submit can be repeated safely.
        """
        spec = parse_study(registry)
        for _ in range(2):
            if spec.name is not None:
                try:
                    state = await self.get_study(name=spec.name)
                except NotFound:
                    pass
                else:
                    diffs = differences(state.spec, spec)
                    if diffs:
                        raise StudyConflict(spec.name, state.study_id, diffs)
                    return state.study_id, True
            try:
                sid = await self.register_study(
                    registry, priority=priority, trial_limit=trial_limit
                )
                return sid, False
            except NameTaken:
                continue  # registered by someone else meanwhile: compare with theirs
        raise NameTaken("study.name", f"the name {spec.name!r} is already registered")

    @abc.abstractmethod
    async def reserve(
        self,
        capacities: Collection[str],
        max_size: int,
        worker_id: str,
        worker_name: str | None = None,
        *,
        lease: float | None = None,
        request_id: str | None = None,
        wait: float = 0.0,
        prefetch: bool = False,
    ) -> Reservation | None:
        """Lease the next trial of the first study these capacities cover, or None.

        `wait` (seconds): with no trial to lease, wait up to this long for a wake-up (a study
        registered or resumed, a range handed back or reaped) and try again before answering
        None; an idle worker's long poll instead of a sleep. `prefetch`: the lease is a trial
        a worker takes ahead, while it still computes another; it is refused (None) when the
        study has few points left, so that a prefetching worker never starves an idle one.

        `lease` (seconds) is this reservation's own lease, for a client that heartbeats;
        None leaves it at the study's trial timeout (lite_dist2's clients never heartbeat).

        `request_id` (here and in every call that changes a trial) names one logical call
        across its retries: a retry whose first reply was lost is answered as the first
        attempt was (the same trial, the same outcome), not done twice. 1 to 128 visible
        ASCII characters; None (lite_dist2's clients) remembers nothing."""

    @abc.abstractmethod
    async def register(
        self, trial: TrialRef, values: np.ndarray, *, request_id: str | None = None
    ) -> Outcome:
        """Register a trial's results (typed array, flat order); "ignored" once solved."""

    async def register_and_reserve(
        self,
        trial: TrialRef,
        values: np.ndarray,
        capacities: Collection[str],
        max_size: int,
        worker_name: str | None = None,
        *,
        lease: float | None = None,
        request_id: str | None = None,
        prefetch: bool = False,
    ) -> tuple[Outcome, Reservation | None]:
        """A worker's steady state: register a trial, then reserve the next one.

        Implementations may do both in one round trip; the result is the same as calling
        `register` and then `reserve` (with the same `request_id` and `prefetch`).
        """
        outcome = await self.register(trial, values, request_id=request_id)
        nxt = await self.reserve(
            capacities, max_size, trial.worker_id, worker_name, lease=lease,
            request_id=request_id, prefetch=prefetch,
        )  # fmt: skip
        return outcome, nxt

    @property
    def batches(self) -> bool:
        """Whether a worker should register and lease short trials several per call
        (`register_batch`): a call per trial costs more than the trial itself."""
        return True

    async def register_batch(
        self,
        finished: Sequence[tuple[TrialRef, np.ndarray | None]],
        capacities: Collection[str],
        max_size: int,
        worker_id: str,
        worker_name: str | None = None,
        *,
        lease: float | None = None,
        request_id: str | None = None,
        prefetch: bool = False,
        lease_count: int = 1,
    ) -> tuple[list[Settled], list[Reservation]]:
        """Register the `finished` trials in order and lease up to `lease_count` more: a
        worker's steady state when its trials are short.

        Part i of `lease_count` is a `register_and_reserve` of trial i (a `register` for the
        trials after `lease_count`), or a `reserve` where there are fewer trials, until one of
        these reserves finds nothing. Every registration leases whatever the others answered,
        so that a retry with the same `request_id` asks what the first attempt asked, each
        part under its own id (`part_id`: a registration's names its trial), and gets each
        lease the first attempt granted that is still held (of the reserves after the trials,
        those up to the first that finds nothing now). A refused trial (`NotFound`,
        `TrialRejected`) is that trial's answer in the list and the others go on; a trial
        given without values (None: its study is known to be gone) is answered `NotFound`,
        its part leasing all the same. An unreachable backend is raised. Only the first lease
        may be other than a prefetch: a worker taking several must not leave another idle at
        the end of a study."""
        leased: list[Reservation] = []
        settled: list[Settled] = []
        for i, (trial, values) in enumerate(finished):
            rid = part_id(request_id, trial.trial_id)
            ahead = prefetch or i > 0
            leasing = i < lease_count
            nxt: Reservation | None = None
            try:
                if values is None:
                    raise NotFound(f"Study not found: study_id={trial.study_id}")
                if leasing:
                    outcome, nxt = await self.register_and_reserve(
                        trial, values, capacities, max_size, worker_name, lease=lease,
                        request_id=rid, prefetch=ahead,
                    )  # fmt: skip
                else:
                    outcome = await self.register(trial, values, request_id=rid)
            except TrialRejected as err:  # (nothing leased: the registration came first)
                settled.append(err)
            except NotFound as err:  # the study is gone, maybe since a first attempt: the
                settled.append(err)  # part leases all the same, so that a retry replays it
                if leasing:
                    nxt = await self.reserve(
                        capacities, max_size, worker_id, worker_name, lease=lease,
                        request_id=rid, prefetch=ahead,
                    )  # fmt: skip
            else:
                settled.append(outcome)
            if nxt is not None:
                leased.append(nxt)
        for j in range(len(finished), lease_count):
            nxt = await self.reserve(
                capacities, max_size, worker_id, worker_name, lease=lease,
                request_id=part_id(request_id, f"r{j}"), prefetch=prefetch or j > 0,
            )  # fmt: skip
            if nxt is None:  # (a reserve has no registration to make: the rest would be
                break  # refused alike, at a round trip each, at the end of every study)
            leased.append(nxt)
        return settled, leased

    @abc.abstractmethod
    async def study_spec(self, study_id: str) -> StudySpec:
        """The study's definition (NotFound if there is no such study)."""

    @abc.abstractmethod
    async def heartbeat(self, trial_id: str, worker_id: str) -> LeaseAnswer:
        """Extend a lease; "stop" means abandon the trial (solved, cancelled or reissued)."""

    @abc.abstractmethod
    async def fail(
        self,
        trial_id: str,
        worker_id: str,
        error: str,
        *,
        mode: FailMode = "split",
        request_id: str | None = None,
    ) -> None:
        """Hand a trial back (see `FailMode`); a retry with the same `request_id` of one
        that went through changes nothing more."""

    @abc.abstractmethod
    async def reap(self) -> int:
        """Hand back every expired lease; returns how many. Safe in any number of copies."""

    @abc.abstractmethod
    async def release_worker(self, worker_id: str) -> int:
        """Hand back at once every trial `worker_id` holds in any active study, counting no
        attempt (the worker is known to be gone); returns how many trials."""

    @abc.abstractmethod
    async def cancel(self, study_id: str) -> None:
        """Remove an active study and everything of it; its name becomes free."""

    @abc.abstractmethod
    async def delete(self, study_id: str) -> Deleted:
        """Remove a study in any state with everything of it; its name becomes free."""

    @abc.abstractmethod
    async def retry_failures(self, study_id: str) -> int:
        """Put quarantined ranges back to work (a finished study becomes active again);
        returns the number of points requeued (0 for a find_exact study already solved)."""

    @abc.abstractmethod
    async def pause(self, study_id: str) -> None: ...

    @abc.abstractmethod
    async def resume(self, study_id: str) -> None: ...

    @abc.abstractmethod
    async def get_study(
        self, study_id: str | None = None, name: str | None = None
    ) -> StudyState: ...

    @abc.abstractmethod
    async def list_studies(self) -> list[StudyState]:
        """Finished studies first (in completion order), then active ones (registration order)."""

    @abc.abstractmethod
    async def progress(self, cutoff_sec: int = 600) -> Progress: ...

    @abc.abstractmethod
    def iter_results(self, study_id: str) -> AsyncIterator[ResultBlock]:
        """Registered results in grid order, block by block (also while the study runs)."""

    @abc.abstractmethod
    async def results_since(self, study_id: str, after: str | None = None) -> Landed:
        """The result blocks registered after `after` (a cursor from an earlier call), in the
        order they landed; all results (``reset``) on a first call or when `after` is older
        than what the study remembers (its last ~10,000 registrations)."""

    @abc.abstractmethod
    async def failures(self, study_id: str) -> list[Failure]: ...

    @abc.abstractmethod
    async def workers(self, within_sec: int = 600) -> list[WorkerSeen]:
        """The workers that reserved within `within_sec` seconds, most recent first."""

    @abc.abstractmethod
    async def backlog(self) -> Backlog: ...

    @abc.abstractmethod
    async def export_snapshot(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def import_snapshot(self, data: dict[str, Any]) -> list[str]:
        """Load an ld2 snapshot or a lite_dist2 ``curriculum.json``; returns the study ids."""

    async def close(self) -> None:  # noqa: B027 (optional for implementations)
        """Release connections."""

    async def __aenter__(self) -> Table:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
