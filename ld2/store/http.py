"""`HttpTable`: the `Table` interface over ld2's HTTP API (and lite_dist2 0.6.7's endpoints).

One pooled httpx client; timeouts; retries with exponential backoff and jitter on connection
errors and 5xx (never on 4xx, which are answers). Every call that changes a trial (reserve,
register, cycle, fail) carries a fresh ``Idempotency-Key``, the same on each of its retries, so
that an ld2 server answers a retry whose reply was lost as it answered the first attempt
(the same trial, not a second lease; "ok", not "already registered"). A 409's ``reason`` is
read as `TrialRejected.reason` (lite_dist2 gives only a sentence).

Reserve, register and register-and-reserve use ld2's packed endpoints (`wire_client`): results
go out as the store's packed bytes and a reservation comes back as a few numbers, the study's
spec being fetched once per study. An API without them (an older ld2, lite_dist2) answers 404
for the path; from then on this table speaks lite_dist2's JSON (hex mappings) instead.
Against a lite_dist2 table node, the endpoints it lacks degrade: heartbeats answer "ok" (leases
there cannot be extended), a failure report is dropped (the lease expires there), and study
state comes from ``/status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import random
import re
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import numpy as np

from ld2.core import batch, results
from ld2.core import models as m
from ld2.core.batch import BATCH_BYTES, BATCH_LIMIT
from ld2.core.curriculum import registry_of, result_blocks
from ld2.core.errors import (
    BackendUnavailable,
    InvalidInput,
    NameTaken,
    NotFound,
    StudyConflict,
    TrialRejected,
)
from ld2.core.planning import check_max_size
from ld2.core.study import StudySpec, parse_study, with_limit
from ld2.core.subspace import trial_range
from ld2.store.base import (
    Backlog,
    Deleted,
    FailMode,
    Failure,
    Landed,
    LeaseAnswer,
    Outcome,
    Progress,
    Reservation,
    ResultBlock,
    Settled,
    StudyProgress,
    StudyState,
    Table,
    TrialRef,
    WorkerSeen,
    WorkerSpeed,
    from_ms,
)
from ld2.store.wire_client import (
    JSON_TYPE,
    MAX_WAIT_SECONDS,
    PACKED_BATCH,
    PACKED_CYCLE,
    PACKED_REGISTER,
    PACKED_RESERVE,
    PACKED_TYPE,
    LeanClient,
)


class HttpTable(Table):
    """The table behind an ld2 (or lite_dist2) API at `url`.

    `packed=False` keeps every trial call on lite_dist2's JSON endpoints (an ld2 API serves
    both; the packed ones cost far less on either side)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
        lease_seconds: float = 600.0,
        packed: bool = True,
    ) -> None:
        headers = {"content-type": "application/json; charset=utf-8"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )
        self.retries = retries
        self.backoff = backoff
        self._lean: LeanClient | None = None
        if transport is None and self.url.startswith("http://"):
            self._lean = LeanClient(
                self.url, {k: v for k, v in headers.items() if k != "content-type"}, timeout
            )
        self.lease = timedelta(seconds=lease_seconds)
        self._specs: dict[str, StudySpec] = {}
        self._has_cycle = True
        self._has_batch = True  # False once the API answered 404 for the packed batch
        self._packed = packed  # False once the API answered 404 for a packed endpoint

    async def close(self) -> None:
        await self.client.aclose()
        if self._lean is not None:
            await self._lean.close()

    # -- transport --------------------------------------
    async def _request(
        self,
        method: str,
        path: str,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
        **kw: Any,
    ) -> Any:
        """One call, retried on connection errors and 5xx with backoff and jitter.

        `request_id` goes out as ``Idempotency-Key`` on every attempt: an ld2 server answers a
        retry whose first reply was lost as it answered that first attempt (lite_dist2 ignores
        the header). `timeout` (seconds; default the table's) bounds each attempt. Plain-http
        POSTs of a body, JSON (``json=``) or packed results (``content=``), go through the lean
        client: they are the worker's hot path."""
        ids = {ID_HEADER: request_id} if request_id else {}
        packed = "content" in kw
        headers = ids | {"content-type": PACKED_TYPE} if packed else ids
        lean = self._lean if method == "POST" and (packed or "json" in kw) else None
        body = b""
        target = path
        if lean is not None:
            if packed:
                body = kw["content"]
            else:
                body = json.dumps(kw["json"], separators=(",", ":")).encode()
            if kw.get("params"):
                target = f"{path}?{urlencode(kw['params'], doseq=True)}"
        limit: Any = httpx.USE_CLIENT_DEFAULT if timeout is None else timeout
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                if lean is not None:
                    resp: Any = await lean.post(
                        target, body, ids,
                        content_type=PACKED_TYPE if packed else JSON_TYPE, timeout=timeout,
                    )  # fmt: skip
                else:
                    resp = await self.client.request(
                        method, path, headers=headers or None, timeout=limit, **kw
                    )
            except (httpx.TransportError, OSError, TimeoutError) as err:
                if attempt == self.retries:
                    raise BackendUnavailable(f"ld2 API at {self.url}: {err!r}") from err
            else:
                if resp.status_code < 500 or attempt == self.retries:
                    return _raise_for(resp, path)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        return (await self._request(method, path, **kw)).json()

    # -- studies --------------------------------------
    async def register_study(
        self, registry: m.StudyRegistry, *, priority: int = 0, trial_limit: float | None = None
    ) -> str:
        # refuse locally what the server would refuse, with the same message
        with_limit(parse_study(registry), trial_limit)
        body = _register_body(registry, priority, trial_limit)
        try:
            return str((await self._json("POST", "/study/register", json=body))["study_id"])
        except InvalidInput as err:
            if "already registered" in err.problem:  # lite_dist2 and ld2 say it in words
                raise NameTaken("study.name", err.problem) from None
            raise

    async def _summaries(self) -> list[m.StudySummary]:
        data = await self._json("GET", "/status")
        return m.CurriculumSummaryResponse.model_validate(data).summaries

    async def study_spec(self, study_id: str) -> StudySpec:
        spec = self._specs.get(study_id)
        if spec is None:
            with contextlib.suppress(_NoSuchEndpoint, NotFound):  # ld2's view has the limit
                return self._from_info(
                    await self._json("GET", "/study/info", params={"study_id": study_id})
                ).spec
            for s in await self._summaries():
                self._specs.setdefault(s.study_id, parse_study(registry_of(s, s.parameter_space)))
            spec = self._specs.get(study_id)
            if spec is None:
                raise NotFound(f"Study not found: study_id={study_id}")
        return spec

    async def get_study(self, study_id: str | None = None, name: str | None = None) -> StudyState:
        params = {k: v for k, v in (("study_id", study_id), ("name", name)) if v is not None}
        try:
            data = await self._json("GET", "/study/info", params=params)
        except _NoSuchEndpoint:
            for s in await self._summaries():
                if s.study_id == study_id or (name is not None and s.name == name):
                    return self._from_summary(s)
            raise NotFound("Study not found.") from None
        return self._from_info(data)

    def _from_info(self, data: dict[str, Any]) -> StudyState:
        summary = m.StudySummary.model_validate(data["summary"])
        spec = self._specs.get(summary.study_id)
        if spec is None:
            spec = parse_study(registry_of(summary, summary.parameter_space))
            if data.get("trial_limit_seconds") is not None:
                spec = dataclasses.replace(spec, trial_limit=float(data["trial_limit_seconds"]))
            self._specs[summary.study_id] = spec
        return StudyState(
            study_id=summary.study_id,
            spec=spec,
            status=data["status"],
            done=summary.done_grids,
            failed=data["failed_grids"],
            reserved=data["reserved_grids"],
            registered_at=summary.registered_timestamp,
            started_at=_dt(data.get("started_timestamp")),
            finished_at=_dt(data.get("finished_timestamp")),
            priority=data["priority"],
            hit_flat=data.get("hit_flat_index"),
            best_flat=data.get("best_flat_index"),
            vector_len=data.get("vector_length"),
            live_workers=data.get("live_workers"),
        )

    def _from_summary(self, s: m.StudySummary) -> StudyState:
        spec = self._specs.setdefault(s.study_id, parse_study(registry_of(s, s.parameter_space)))
        return StudyState(
            study_id=s.study_id,
            spec=spec,
            status=s.status,  # type: ignore[arg-type]
            done=s.done_grids,
            failed=0,
            reserved=0,
            registered_at=s.registered_timestamp,
            started_at=None,
            finished_at=None,
        )

    async def list_studies(self) -> list[StudyState]:
        try:
            return [self._from_info(d) for d in await self._json("GET", "/studies")]
        except _NoSuchEndpoint:
            return [self._from_summary(s) for s in await self._summaries()]

    async def cancel(self, study_id: str) -> None:
        await self._request("DELETE", "/study", params={"study_id": study_id})

    async def pause(self, study_id: str) -> None:
        await self._request("POST", "/study/pause", params={"study_id": study_id})

    async def delete(self, study_id: str) -> Deleted:
        try:
            d = await self._json("POST", "/study/delete", params={"study_id": study_id})
        except _NoSuchEndpoint:
            raise NotFound("this API cannot delete studies (lite_dist2 cancels only)") from None
        self._specs.pop(study_id, None)
        return Deleted(d["study_id"], d["name"], d["status"], d["done_grids"], d["failed_grids"])

    async def retry_failures(self, study_id: str) -> int:
        data = await self._json("POST", "/study/retry", params={"study_id": study_id})
        return int(data["requeued_grids"])

    async def submit_study(
        self, registry: m.StudyRegistry, *, priority: int = 0, trial_limit: float | None = None
    ) -> tuple[str, bool]:
        with_limit(parse_study(registry), trial_limit)
        body = _register_body(registry, priority, trial_limit)
        try:
            data = await self._json("POST", "/study/submit", json=body)
        except _NoSuchEndpoint:  # lite_dist2: compare here, then /study/register
            return await super().submit_study(registry, priority=priority, trial_limit=trial_limit)
        except StudyConflict as err:
            raise StudyConflict(registry.name or "", err.study_id, err.differences) from None
        return str(data["study_id"]), bool(data["existed"])

    async def resume(self, study_id: str) -> None:
        await self._request("POST", "/study/resume", params={"study_id": study_id})

    # -- trials --------------------------------------
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
        """`wait` is asked of the API up to its cap (`MAX_WAIT_SECONDS`): a longer one answers
        None after that long, as a wait that found nothing. An API that does not know `wait`
        or `prefetch` (an older ld2, lite_dist2) answers at once."""
        check_max_size(max_size)
        wait = _wait_within(wait)
        rid = request_id or _new_id()
        timeout = self.timeout + wait  # the answer may take the whole wait
        if self._packed:
            params = _lease_params(capacities, max_size, worker_name, lease, prefetch)
            params["worker_node_id"] = worker_id
            if wait:
                params["wait_seconds"] = repr(wait)
            resp = await self._packed_post(PACKED_RESERVE, params, b"", rid, timeout=timeout)
            if resp is not None:
                return await self._packed_reservation(resp, worker_id, worker_name)
        body: dict[str, Any] = {
            "retaining_capacity": sorted(capacities),
            "max_size": max_size,
            "worker_node_name": worker_name,
            "worker_node_id": worker_id,
        }
        _json_extras(body, lease, prefetch)  # ld2's extras, only when set; lite_dist2 ignores them
        if wait:
            body["wait_seconds"] = wait
        resp = await self._request(
            "POST", "/trial/reserve", json=body, request_id=rid, timeout=timeout
        )
        return await self._reservation(resp, worker_id, worker_name)

    async def _reservation(
        self, resp: Any, worker_id: str, worker_name: str | None
    ) -> Reservation | None:
        trial = m.TrialReserveResponse.model_validate_json(resp.content).trial
        if resp.status_code == 202 or trial is None:
            return None
        spec = await self.study_spec(trial.study_id)
        start, count = trial_range(spec.space, trial.parameter_space)
        return Reservation(
            study_id=trial.study_id,
            trial_id=trial.trial_id,
            worker_id=worker_id,
            start=start,
            count=count,
            worker_name=worker_name,
            attempt=0,
            reserved_at=trial.reserved_timestamp,
            deadline=_deadline(resp.content) or trial.reserved_timestamp + self.lease,
            spec=spec,
        )

    async def _packed_reservation(
        self, resp: Any, worker_id: str, worker_name: str | None
    ) -> Reservation | None:
        """A packed endpoint's answer: the lease as numbers; the spec from this table's cache
        (fetched on a study's first trial)."""
        trial = json.loads(resp.content).get("trial")
        if resp.status_code == 202 or trial is None:
            return None
        return await self._packed_lease(trial, worker_id, worker_name)

    async def _packed_lease(
        self, trial: dict[str, Any], worker_id: str, worker_name: str | None
    ) -> Reservation:
        return Reservation(
            study_id=trial["study_id"],
            trial_id=trial["trial_id"],
            worker_id=worker_id,
            start=int(trial["start"]),
            count=int(trial["count"]),
            worker_name=worker_name,
            attempt=int(trial["attempt"]),
            reserved_at=from_ms(int(trial["reserved_ms"])),  # type: ignore[arg-type]
            deadline=from_ms(int(trial["deadline_ms"])),  # type: ignore[arg-type]
            spec=await self.study_spec(trial["study_id"]),
        )

    def _upload(self, trial: TrialRef, values: np.ndarray) -> m.TrialModel:
        if not isinstance(trial, Reservation):
            raise InvalidInput("trial", "registering over HTTP needs the Reservation itself")
        spec = trial.spec
        typed = results.coerce(values, spec.value_type, spec.vector, trial.count)
        model = trial.to_wire()
        model.results = results.to_mappings(spec.space, trial.start, typed, spec.value_type)
        return model

    async def _pack(self, trial: TrialRef, values: np.ndarray) -> bytes:
        """The results as the store keeps them (checked here first, as the store would)."""
        if isinstance(trial, Reservation):
            spec = trial.spec
        else:
            spec = await self.study_spec(trial.study_id)
        return results.pack(results.coerce(values, spec.value_type, spec.vector, trial.count))

    async def _packed_post(
        self,
        path: str,
        params: dict[str, Any],
        body: bytes,
        request_id: str,
        timeout: float | None = None,
    ) -> Any:
        """POST to one of ld2's packed endpoints; None when the API does not serve them (an
        older ld2, lite_dist2): then this table speaks JSON from now on."""
        try:
            return await self._request(
                "POST", path, params=params, content=body, request_id=request_id, timeout=timeout
            )
        except _NoSuchEndpoint:
            self._packed = False
            return None

    async def register(
        self, trial: TrialRef, values: np.ndarray, *, request_id: str | None = None
    ) -> Outcome:
        rid = request_id or _new_id()
        if self._packed:
            params = _trial_params(trial)
            body = await self._pack(trial, values)
            resp = await self._packed_post(PACKED_REGISTER, params, body, rid)
            if resp is not None:
                return _outcome(json.loads(resp.content))
        return await self._post_trial(self._upload(trial, values), request_id=rid)

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
        """One request (``/trial/packed/cycle``, else ``/trial/cycle``) on ld2; two on
        lite_dist2, which lacks both."""
        rid = request_id or _new_id()
        check_max_size(max_size)
        if self._packed:
            params = _trial_params(trial)
            params |= _lease_params(capacities, max_size, worker_name, lease, prefetch)
            body = await self._pack(trial, values)
            resp = await self._packed_post(PACKED_CYCLE, params, body, rid)
            if resp is not None:
                outcome = _outcome(json.loads(resp.content))
                return outcome, await self._packed_reservation(resp, trial.worker_id, worker_name)
        if not self._has_cycle or not isinstance(trial, Reservation):
            return await super().register_and_reserve(
                trial, values, capacities, max_size, worker_name, lease=lease, request_id=rid,
                prefetch=prefetch,
            )  # fmt: skip
        model = self._upload(trial, values)
        body_json: dict[str, Any] = {
            "trial": model.model_dump(mode="json"),
            "retaining_capacity": sorted(capacities),
            "max_size": max_size,
            "worker_node_name": worker_name,
        }
        _json_extras(body_json, lease, prefetch)
        try:
            resp = await self._request("POST", "/trial/cycle", json=body_json, request_id=rid)
        except _NoSuchEndpoint:
            self._has_cycle = False
            return await super().register_and_reserve(
                trial, values, capacities, max_size, worker_name, lease=lease, request_id=rid,
                prefetch=prefetch,
            )  # fmt: skip
        return "ok", await self._reservation(resp, trial.worker_id, worker_name)

    @property
    def batches(self) -> bool:
        """True on an ld2 API with the batch endpoint (as far as this table knows: until it
        answered 404 for it); lite_dist2 knows no prefetch, which keeps a batch's later leases
        from taking the end of a study."""
        return self._packed and self._has_batch

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
        """One request (``/trial/packed/batch``) on ld2. A call per trial instead (what the
        API does with a batch, `Table.register_batch`: the same part ids, so a retry either
        way is answered as the first attempt was) on an API without it, for more than
        `BATCH_LIMIT` trials, for a body over `BATCH_BYTES`, or one the API refused as too
        large (413: its ``max_body_bytes`` is lower)."""
        rid = request_id or _new_id()
        check_max_size(max_size)
        if any(trial.worker_id != worker_id for trial, _ in finished):
            raise InvalidInput("finished", "a batch registers one worker's trials")
        known = [(t, v) for t, v in finished if v is not None]
        if self.batches and len(finished) <= BATCH_LIMIT and len(known) == len(finished):
            parts = [
                batch.Part(t.study_id, t.trial_id, t.start, t.count, await self._pack(t, values))
                for t, values in known
            ]
            body = batch.frame(parts)
            params = _lease_params(capacities, max_size, worker_name, lease, prefetch)
            params |= {"worker_node_id": worker_id, "lease_count": str(lease_count)}
            try:
                if len(body) <= BATCH_BYTES:
                    resp = await self._request(
                        "POST", PACKED_BATCH, params=params, content=body, request_id=rid
                    )
                    return await self._batch_answer(resp, worker_id, worker_name)
            except _NoSuchEndpoint:  # an older ld2: a call per trial from now on
                self._has_batch = False
            except _TooLarge:  # this batch only
                pass
        return await super().register_batch(
            finished, capacities, max_size, worker_id, worker_name, lease=lease,
            request_id=rid, prefetch=prefetch, lease_count=lease_count,
        )  # fmt: skip

    async def _batch_answer(
        self, resp: Any, worker_id: str, worker_name: str | None
    ) -> tuple[list[Settled], list[Reservation]]:
        """A batch's answer; a lease in a study gone since (its spec not found) is left out."""
        answer = json.loads(resp.content)
        leased: list[Reservation] = []
        for trial in answer["trials"]:
            with contextlib.suppress(NotFound):
                leased.append(await self._packed_lease(trial, worker_id, worker_name))
        return [_settled(item) for item in answer["outcomes"]], leased

    async def _post_trial(self, trial: m.TrialModel, *, request_id: str | None = None) -> Outcome:
        """A trial upload in lite_dist2's wire form (``/trial/register``)."""
        body = m.TrialRegisterParam(trial=trial).model_dump(mode="json")
        rid = request_id or _new_id()
        await self._request("POST", "/trial/register", json=body, request_id=rid)
        return "ok"

    async def heartbeat(self, trial_id: str, worker_id: str) -> LeaseAnswer:
        body = {"trial_id": trial_id, "worker_node_id": worker_id}
        try:
            data = await self._json("POST", "/trial/heartbeat", json=body)
        except _NoSuchEndpoint:
            return "ok"  # lite_dist2: no leases to extend
        return "stop" if data["answer"] == "stop" else "ok"

    async def fail(
        self,
        trial_id: str,
        worker_id: str,
        error: str,
        *,
        mode: FailMode = "split",
        request_id: str | None = None,
    ) -> None:
        body = {
            "trial_id": trial_id,
            "worker_node_id": worker_id,
            "error": error,
            "count_attempt": mode != "release",
            "mode": mode,
        }
        rid = request_id or _new_id()
        try:
            await self._request("POST", "/trial/fail", json=body, request_id=rid)
        except _NoSuchEndpoint:
            return  # lite_dist2: the lease simply expires there

    async def reap(self) -> int:
        return int((await self._json("POST", "/trial/reap"))["reaped"])

    async def release_worker(self, worker_id: str) -> int:
        raise InvalidInput("release_worker", "not available over the API")

    # -- reading --------------------------------------
    async def progress(self, cutoff_sec: int = 600) -> Progress:
        data = await self._json("GET", "/status/progress", params={"cutoff_sec": cutoff_sec})
        wire = m.ProgressSummaryResponse.model_validate(data)
        return Progress(
            wire.now,
            wire.cutoff_sec,
            [
                StudyProgress(
                    study_id=p.study_id,
                    name=p.study_name,
                    total=None if p.total_grid == "infinite" else p.total_grid,
                    done=p.done_grid,
                    velocity=p.grid_velocity,
                    eta=None if p.eta == "unpredictable" else p.eta,
                    workers=[
                        WorkerSpeed(w.worker_id, w.worker_name, w.grid_velocity)
                        for w in p.worker_efficiencies
                    ],
                )
                for p in wire.progress_summaries
            ],
        )

    async def results_since(self, study_id: str, after: str | None = None) -> Landed:
        spec = await self.study_spec(study_id)
        params = {"study_id": study_id} | ({} if after is None else {"after": after})
        data = await self._json("GET", "/study/landed", params=params)
        words = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

        def value(v: Any) -> Any:
            return words.get(v, v) if isinstance(v, str) else v

        blocks = [
            ResultBlock(
                b["start"],
                results.coerce(
                    [
                        [value(x) for x in v] if isinstance(v, list) else value(v)
                        for v in b["values"]
                    ],
                    spec.value_type,
                    spec.vector,
                    len(b["values"]),
                ),
            )
            for b in data["blocks"]
        ]
        return Landed(data["cursor"], data["reset"], blocks)

    async def iter_results(self, study_id: str) -> AsyncIterator[ResultBlock]:
        spec = await self.study_spec(study_id)
        params = {"study_id": study_id, "format": "jsonl"}
        run: list[Any] = []
        run_start = prev = -2
        async with self.client.stream("GET", "/study/results", params=params) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                try:
                    _raise_for(resp, "/study/results")
                except _NoSuchEndpoint:  # lite_dist2: results only once done, via GET /study
                    for block in await self._finished_results(spec, study_id):
                        yield block
                    return
            async for line in resp.aiter_lines():
                if not line:
                    continue
                row = json.loads(line)
                flat = row["flat"]
                if flat != prev + 1 and run:
                    yield _block(spec, run_start, run)
                    run = []
                if not run:
                    run_start = flat
                run.append(_unquote(row["result"], spec.value_type))
                prev = flat
        if run:
            yield _block(spec, run_start, run)

    async def _finished_results(self, spec: StudySpec, study_id: str) -> list[ResultBlock]:
        resp = await self._request("GET", "/study", params={"study_id": study_id})
        if resp.status_code == 202:
            return []  # lite_dist2 shows no partial results
        storage = m.StudyResponse.model_validate_json(resp.content).result
        if storage is None:
            return []
        return [
            ResultBlock(start, values) for start, values in result_blocks(spec, storage.results)
        ]

    async def failures(self, study_id: str) -> list[Failure]:
        data = await self._json("GET", "/study/failures", params={"study_id": study_id})
        return [Failure(**f) for f in data]

    async def backlog(self) -> Backlog:
        return Backlog(**await self._json("GET", "/backlog"))

    async def workers(self, within_sec: int = 600) -> list[WorkerSeen]:
        data = await self._json("GET", "/workers", params={"within_sec": within_sec})
        return [
            WorkerSeen(w["worker_id"], w["name"], datetime.fromisoformat(w["last_seen"]))
            for w in data
        ]

    async def export_snapshot(self) -> dict[str, Any]:
        return dict(await self._json("GET", "/snapshot"))

    async def import_snapshot(self, data: dict[str, Any]) -> list[str]:
        return list(await self._json("POST", "/snapshot", json=data))


ID_HEADER = "idempotency-key"
"""ld2's request-id header: one id for every attempt of one logical call (see docs/api.md)."""


def _new_id() -> str:
    return uuid.uuid4().hex


def _wait_within(wait: float) -> float:
    """A long poll's `wait` as the API takes it: at most `MAX_WAIT_SECONDS`."""
    if not wait >= 0:  # also NaN
        raise InvalidInput("wait", f"must be >= 0 seconds, got {wait!r}")
    return min(float(wait), MAX_WAIT_SECONDS)


def _json_extras(body: dict[str, Any], lease: float | None, prefetch: bool) -> None:
    """ld2's extras of a JSON reserve or cycle, only when set (lite_dist2 ignores them)."""
    if lease is not None:
        body["lease_seconds"] = lease
    if prefetch:
        body["prefetch"] = True


def _trial_params(trial: TrialRef) -> dict[str, Any]:
    """A trial's identity in a packed endpoint's query."""
    return {
        "study_id": trial.study_id,
        "trial_id": trial.trial_id,
        "worker_node_id": trial.worker_id,
        "start": str(trial.start),
        "count": str(trial.count),
    }


def _lease_params(
    capacities: Collection[str],
    max_size: int,
    worker_name: str | None,
    lease: float | None,
    prefetch: bool,
) -> dict[str, Any]:
    """What to lease next, in a packed endpoint's query (unset options left out)."""
    params: dict[str, Any] = {"max_size": str(max_size)}
    if capacities:
        params["retaining_capacity"] = sorted(capacities)
    if worker_name is not None:
        params["worker_node_name"] = worker_name
    if lease is not None:
        params["lease_seconds"] = repr(float(lease))
    if prefetch:
        params["prefetch"] = "true"
    return params


def _outcome(data: Any) -> Outcome:
    return "ignored" if data.get("outcome") == "ignored" else "ok"


def _settled(data: Any) -> Settled:
    """One trial's answer in a packed batch: its outcome, or the error it was refused with."""
    refused = data.get("refused")
    if refused == "not_found":
        return NotFound(str(data.get("detail")))
    if refused is not None:
        return TrialRejected(str(data.get("reason") or refused), str(data.get("detail")))
    return _outcome(data)


class _NoSuchEndpoint(NotFound):
    """A 404 for the path itself (an older or lite_dist2 server), not for a study."""


class _TooLarge(InvalidInput):
    """A 413: the request's body is over the API's ``max_body_bytes``."""


def _raise_for(resp: Any, path: str) -> Any:
    if resp.status_code < 400:
        return resp
    try:
        detail = resp.json().get("detail")
    except ValueError:
        detail = resp.content[:200].decode(errors="replace")
    if resp.status_code == 404:
        if detail == "Not Found":
            raise _NoSuchEndpoint(f"{path} is not served here")
        raise NotFound(str(detail))
    if resp.status_code == 409:
        body = _json_or_none(resp)
        reason = body.get("reason")
        if reason == "study_differs":
            raise StudyConflict("", body.get("study_id", ""), list(body.get("differences", [])))
        if isinstance(reason, str) and reason:  # ld2 names the reason; lite_dist2 says words
            raise TrialRejected(reason, str(detail))
        raise TrialRejected.from_message(str(detail))
    if resp.status_code == 413:
        raise _TooLarge("", f"HTTP 413: {detail}")
    if resp.status_code in (400, 401, 415, 422):
        if isinstance(detail, list):
            detail = "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail
            )
        raise InvalidInput("", f"HTTP {resp.status_code}: {detail}")
    raise BackendUnavailable(f"ld2 API at {path}: HTTP {resp.status_code}: {detail}")


_DEADLINE = re.compile(rb'"lease_deadline_ms":(\d+)\}\s*$')


def _deadline(content: bytes) -> datetime | None:
    """The lease's real deadline, which ld2's API appends to a reserve answer for a client
    that asked for its own lease (lite_dist2 says nothing: then the lease is assumed)."""
    found = _DEADLINE.search(content[-64:])
    if found is None:
        return None
    return datetime.fromtimestamp(int(found.group(1)) / 1000, tz=UTC)


def _register_body(
    registry: m.StudyRegistry, priority: int, trial_limit: float | None
) -> dict[str, Any]:
    """lite_dist2's register body; ld2's extras only when set (lite_dist2 ignores them)."""
    param = m.StudyRegisterParam(study=registry, priority=priority, trial_limit_seconds=trial_limit)
    unset = {"trial_limit_seconds"} if trial_limit is None else set()
    return param.model_dump(mode="json", exclude=unset)


def _json_or_none(resp: Any) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _unquote(v: Any, value_type: str) -> Any:
    if isinstance(v, list):
        return [_unquote(x, value_type) for x in v]
    if isinstance(v, str):
        return float(v)  # "nan", "inf", "-inf"
    if value_type == "float" and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    return v


def _block(spec: StudySpec, start: int, values: list[Any]) -> ResultBlock:
    return ResultBlock(start, results.coerce(values, spec.value_type, spec.vector, len(values)))


def _dt(value: Any) -> Any:
    from datetime import datetime

    return None if value is None else datetime.fromisoformat(value)
