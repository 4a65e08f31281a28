"""`RedisTable`: the table in Redis, as Lua script calls. Nothing outside ``ld2.store`` knows a
key: names live in `keys`, the work index in `index`, snapshots in `snapshots`, the mapping of
Redis errors in `errors`.

Every state change is one Lua script call on one study's keys (hash tag ``{study_id}``), with
the clock read from Redis ``TIME``; so it is atomic and runs unchanged on Redis Cluster, which
`from_url` recognises from a plain URL of any node. The global index of studies is only a hint
for finding work: a study's own hash is the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import datetime
from importlib import resources
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.commands.core import AsyncScript
from redis.exceptions import (
    NoScriptError,
    RedisClusterException,
    ResponseError,
)

from ld2.core import eta, results
from ld2.core import models as m
from ld2.core.errors import (
    REJECTIONS,
    InvalidInput,
    NameTaken,
    NotFound,
    TrialRejected,
)
from ld2.core.planning import Permutation, check_max_size
from ld2.core.strategies import best_of, find_hit, order_key
from ld2.core.study import StudySpec, parse_study, with_limit
from ld2.store import health, snapshots
from ld2.store.base import (
    MAX_TOTAL,
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
    clamp_max_size,
    from_ms,
    part_id,
)
from ld2.store.errors import TRANSIENT, cluster_trouble, mapped
from ld2.store.index import StudyIndex
from ld2.store.keys import StudyKeys, global_key, lua_prelude, reply_key
from ld2.store.packing import fast, pack_fast
from ld2.store.replies import Lease, Reply, Word
from ld2.store.wake import WakeReader

_SCRIPTS = (
    "heartbeat", "fail", "reap", "create", "control", "touch_worker", "retry", "name", "live",
    "release_worker",
)  # fmt: skip
_BODIES = ("reserve", "register")  # also used as functions by cycle.lua
DEFAULT_TIMEOUT_S = 600
DEFAULT_MAX_ATTEMPTS = 3
STALE_CLAIM_MS = 60_000
"""A name claimed this long ago by a study that was never created is free again."""
REPLY_TTL_MS = 300_000
"""How long a reply is remembered for a retry of the same request id (see docs/store.md)."""
WAKE_ENTRIES = 64
"""Entries the wake-up stream keeps (a waiting reserve only needs the ones after its mark)."""
WAKE_BLOCK = 2.0
"""Longest single XREAD of a waiting reserve (it blocks again until its wait is over)."""
MAX_WAIT = 60.0
"""Longest `reserve(wait=...)`: a blocked call holds one connection for that long."""


def _load_scripts() -> dict[str, str]:
    """Each script is lib.lua + its body; reserve and register bodies are wrapped as functions
    so that cycle.lua can run both in one call."""
    folder = resources.files("ld2.store") / "scripts"

    def text(name: str) -> str:
        return (folder / f"{name}.lua").read_text()

    lib = f"{lua_prelude()}{text('lib')}"
    out = {name: f"{lib}\n{text(name)}" for name in _SCRIPTS}
    bodies = {
        name: f"local function {name}_body(KEYS, ARGV)\n{text(name)}\nend\n" for name in _BODIES
    }
    for name in _BODIES:
        out[name] = f"{lib}\n{bodies[name]}return {name}_body(KEYS, ARGV)\n"
    out["cycle"] = f"{lib}\n{''.join(bodies.values())}{text('cycle')}"
    return out


_SOURCES = _load_scripts()


MAX_CONNECTIONS = 512
"""Connections of a client to a single server: a call past them waits (up to 20 s) for a free
one — redis-py's own default pool refuses the 101st concurrent call. ``?max_connections=N`` in
the URL overrides it."""
MAX_CLUSTER_CONNECTIONS = 1024
"""Connections of a cluster client to each node; redis-py's cluster client cannot wait for a
free one, so a call past them is `BackendUnavailable` (retried)."""


def _single(url: str, options: dict[str, Any]) -> aioredis.Redis:
    options = {"max_connections": MAX_CONNECTIONS} | options
    pool = aioredis.BlockingConnectionPool.from_url(url, timeout=20, **options)
    return pack_fast(aioredis.Redis(connection_pool=pool))


def _cluster_client(url: str, options: dict[str, Any]) -> RedisCluster:
    options = {"max_connections": MAX_CLUSTER_CONNECTIONS} | options
    if not url.startswith("rediss://"):  # (TLS takes redis-py's own SSL connection class)
        options.setdefault("connection_class", fast(Connection))
    return RedisCluster.from_url(url, **options)


def _s(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def _clean(text: str | None) -> str:
    """Worker ids and names are stored tab-separated: keep them one clean field each."""
    if not text:
        return ""
    if "\t" in text or "\n" in text:
        return text.replace("\t", " ").replace("\n", " ")
    return text


def _stored_spec(raw: bytes, limit_ms: bytes | None) -> StudySpec:
    spec = parse_study(m.StudyRegistry.model_validate_json(raw))
    return spec if limit_ms is None else dataclasses.replace(spec, trial_limit=int(limit_ms) / 1000)


def _lease_ms(lease: float | None) -> int:
    """A reservation's own lease in ms (0: the study's trial timeout)."""
    if lease is None:
        return 0
    if not 0 < lease <= 86_400:
        raise InvalidInput("lease_seconds", f"must be above 0 and at most 86400, got {lease}")
    return max(1, int(lease * 1000))


def _request_id(request_id: str | None) -> str | None:
    """A client's request id (``Idempotency-Key``): 1 to 128 visible ASCII characters."""
    if request_id is not None and not (
        0 < len(request_id) <= 128
        and request_id.isascii()
        and request_id.isprintable()
        and " " not in request_id
    ):
        raise InvalidInput("request_id", "must be 1 to 128 visible ASCII characters")
    return request_id


def _cursor(text: str) -> tuple[str, int]:
    """A `results_since` cursor (``<ms>-<seq>/<n>``) checked before Redis sees it."""
    sid, _, seen = text.partition("/")
    ms, _, seq = sid.partition("-")
    if not (ms.isdigit() and seq.isdigit() and seen.isdigit()):
        raise InvalidInput("after", f"not a cursor from an earlier call: {text!r}")
    return sid, int(seen)


def study_id_of(trial_id: str) -> str:
    """Trial ids are ``<study id>-0x<n>``, so the study follows from the trial."""
    sid, sep, _ = trial_id.rpartition("-")
    if not sep or not sid:
        raise NotFound(f"Not a trial id: {trial_id!r}")
    return sid


@dataclasses.dataclass(frozen=True, slots=True)
class _Part:
    """One script call of a pipelined batch (`RedisTable.register_batch`)."""

    script: str  # "cycle" or "register"
    args: list[Any]
    request_id: str | None
    prefetch: bool
    trial: TrialRef


@mapped
class RedisTable(Table):
    """The table over a redis-py asyncio client.

    `trial_timeout` is the lease length in seconds; `max_attempts` how often a range may fail
    or expire before it is quarantined; `index_ttl` how long the list of active studies may be
    cached by this process before a reserve reads it again. With `fair_share` (ld2's workers
    sizing their own trials) no reservation takes more than the points left divided by twice
    the number of workers seen in the last 30 s.

    A call with a `request_id` (an ld2 client's ``Idempotency-Key``) has its reply remembered
    for `reply_ttl_ms` in the same script call as its change, and a retry gets that reply
    again: the same trial, the same outcome (see docs/store.md, "Request ids").
    """

    reply_ttl_ms: int = REPLY_TTL_MS

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "ld2",
        trial_timeout: float = DEFAULT_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        index_ttl: float = 1.0,
        url: str = "",
        fair_share: bool = False,
    ) -> None:
        if trial_timeout <= 0:
            raise InvalidInput("trial_timeout_seconds", "must be positive")
        if max_attempts < 1:
            raise InvalidInput("max_attempts", "must be at least 1")
        self.client = client
        self.prefix = prefix
        self.url = url
        self.trial_timeout_ms = int(trial_timeout * 1000)
        self.max_attempts = max_attempts
        self.index_ttl = index_ttl
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(text) for name, text in _SOURCES.items()
        }
        self._specs: dict[str, StudySpec] = {}
        self._keys: dict[str, StudyKeys] = {}
        self.index = StudyIndex(client, prefix, index_ttl)
        self._workers_seen: dict[str, float] = {}
        self.fair_share = fair_share
        self._live_workers = 0
        self._cluster: bool | None = isinstance(client, RedisCluster)
        self._ready = not self._cluster  # a cluster client is initialised on first use
        self._connecting: asyncio.Lock | None = None
        self._client_options: dict[str, Any] = {}
        self.waking = WakeReader(
            lambda: self.client, self._g("wake"), self._longest_block, WAKE_ENTRIES
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool | None = None,
        client_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> RedisTable:
        """A table on `url`. With `cluster` None the server is asked on first use (``INFO
        cluster``) whether it is a node of a Redis Cluster, as managed platforms hand out a
        plain ``redis://`` URL of one node; True or False says so instead. `client_options`
        go to redis-py's client (e.g. ``ssl_cert_reqs``)."""
        options = client_options or {}
        try:
            client: Any = _cluster_client(url, options) if cluster else _single(url, options)
        except RedisClusterException as err:  # e.g. a database number: a cluster has only 0
            raise cluster_trouble(err, url) from None
        table = cls(client, url=url, **kwargs)
        table._cluster = cluster
        table._ready = False
        table._client_options = options
        return table

    @property
    def is_cluster(self) -> bool | None:
        """Whether the table runs on a Redis Cluster (None until its first call says)."""
        return self._cluster

    async def _connect(self) -> None:
        """Settle, once, what a URL given without `cluster` points at: on a cluster node the
        cluster client takes over (each study's keys live in one slot, found by its hash tag).
        A cluster client learns the slots before its first command: many first calls at once
        on an uninitialised one fail inside redis-py (seen with 1,000 concurrent workers)."""
        self._connecting = self._connecting or asyncio.Lock()
        async with self._connecting:
            if self._ready:
                return
            if self._cluster is None:
                try:
                    enabled = bool((await self.client.info("cluster")).get("cluster_enabled"))
                except ResponseError:  # INFO refused (a restricted managed Redis): one server
                    enabled = False
                if enabled:
                    cluster = _cluster_client(self.url, self._client_options)
                    single, self.client = self.client, cluster
                    self.index.client = self.client
                    self._scripts = {n: self.client.register_script(t) for n, t in _SOURCES.items()}
                    await single.aclose()
                self._cluster = enabled
            if self._cluster:
                await self.client.initialize()
            self._ready = True

    # -- keys -----------------------------------------------
    def _g(self, name: str) -> str:
        return global_key(self.prefix, name)

    def study_keys(self, sid: str) -> StudyKeys:
        keys = self._keys.get(sid)
        if keys is None:
            keys = self._keys[sid] = StudyKeys.of(self.prefix, sid)
        return keys

    async def _call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._scripts[name](keys=list(keys), args=list(args))

    async def _study_call(
        self, name: str, sid: str, args: Sequence[Any], request_id: str | None = None
    ) -> Any:
        """Script `name` on study `sid` (see `_study_script`)."""
        keys, full = self._study_script(name, sid, args, request_id)
        return await self._scripts[name](keys=keys, args=full)

    def _study_script(
        self, name: str, sid: str, args: Sequence[Any], request_id: str | None
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of script `name` on study `sid`: its keys (`SCRIPT_KEYS`),
        then with a request id the reply key, and the reply's expiry after `args`."""
        keys = self.study_keys(sid).for_script(name)
        if request_id is None:
            return keys, list(args)
        keys.append(reply_key(self.prefix, sid, request_id))
        return keys, [*args, self.reply_ttl_ms]

    async def ping(self) -> None:
        await self.client.ping()

    async def check_eviction(self, *, allow: bool = False) -> None:
        """Refuse a Redis that may evict keys (see `ld2.store.health`)."""
        await health.check_eviction(self.client, self.url, allow=allow)

    async def close(self) -> None:
        await self.waking.close()
        await self.client.aclose()

    # -- studies -----------------------------------------------
    async def register_study(
        self, registry: m.StudyRegistry, *, priority: int = 0, trial_limit: float | None = None
    ) -> str:
        spec = with_limit(parse_study(registry), trial_limit)
        if spec.total is not None and spec.total > MAX_TOTAL:
            raise InvalidInput(
                "study.parameter_space",
                f"{spec.total} points is more than ld2's limit of 2**53 for a finite study",
            )
        if not -1000 <= priority <= 1000:
            raise InvalidInput("priority", "must be between -1000 and 1000")
        sid, seq = await self.new_study_id(spec)
        fields = self.study_fields(spec, sid, seq, priority)
        if trial_limit is not None:
            fields["limit_ms"] = str(int(trial_limit * 1000))
        flat_args = [x for kv in fields.items() for x in kv]
        try:
            if _s(await self._study_call("create", sid, flat_args)) == Word.EXISTS:
                raise RuntimeError(f"study id {sid} exists already (a UUID collision)")
        except BaseException:
            if spec.name is not None:  # best effort; a claim left behind goes stale
                with contextlib.suppress(*TRANSIENT):
                    await self._release_name(spec.name, sid)
            raise
        await self.index.add(sid, spec.capacities, priority, seq, workable=True)
        self._specs[sid] = spec
        await self._wake(sid)
        return sid

    async def new_study_id(self, spec: StudySpec) -> tuple[str, int]:
        """A fresh study id (its name claimed) and its registration sequence number."""
        sid = str(uuid.uuid4())
        if spec.name is not None:
            await self.claim_name(spec.name, sid)
        return sid, int(await self.client.incr(self._g("seq")))

    def study_fields(self, spec: StudySpec, sid: str, seq: int, priority: int) -> dict[str, str]:
        """The study hash of a newly registered study (see docs/store.md)."""
        space = spec.space
        seed = uuid.UUID(sid).int & 0xFFFFFFFF
        keys27 = [k % (1 << 27) for k in Permutation(2**54, seed).keys]
        return {
            "id": sid,
            "spec": spec.registry.model_dump_json(),
            "status": "wait",
            "total": str(-1 if spec.total is None else spec.total),
            "cursor": "0",
            "done": "0",
            "failed": "0",
            "reserved": "0",
            "tseq": "0",
            "sizes": ",".join(str(-1 if n is None else n) for n in space.sizes),
            "strides": ",".join(str(n) for n in space.strides),
            "jagged": "1" if spec.jagged else "0",
            "order": "random" if spec.order == "random" else "seq",
            "r_n": "0",
            "r_keys": ",".join(str(k) for k in keys27),
            "timeout_ms": str(self.trial_timeout_ms),
            "max_attempts": str(self.max_attempts),
            "strategy": spec.strategy,
            "vlen": "0",
            "priority": str(priority),
            "seq": str(seq),
        }

    async def claim_name(self, name: str, sid: str) -> None:
        """Claim `name` for `sid`, atomically: of any number of concurrent registrations of
        one name exactly one gets it. A claim whose study was never created is taken over
        once it is `STALE_CLAIM_MS` old (its registration died half-way)."""
        names = [self._g("names")]
        reply = Reply.of(await self._call("name", names, ["claim", name, sid, ""]))
        if reply.word is Word.OK:
            return
        seen, now = reply.fields[0], int(reply.fields[1])
        holder, _, claimed = seen.partition("|")
        taken = NameTaken("study.name", f"the name {name!r} is already registered")
        if await self.client.exists(self.study_keys(holder).s):
            raise taken
        if claimed and now - int(claimed) < STALE_CLAIM_MS:
            raise taken  # being registered right now
        args = ["takeover", name, sid, seen]
        if Reply.of(await self._call("name", names, args)).word is not Word.OK:
            raise taken

    async def _release_name(self, name: str, sid: str) -> None:
        await self._call("name", [self._g("names")], ["release", name, sid, ""])

    async def study_spec(self, sid: str) -> StudySpec:
        spec = self._specs.get(sid)
        if spec is None:
            raw, limit_ms = await self.client.hmget(self.study_keys(sid).s, "spec", "limit_ms")
            if raw is None:
                raise NotFound(f"Study not found: study_id={sid}")
            spec = _stored_spec(raw, limit_ms)
            self._specs[sid] = spec
        return spec

    async def _resolve(self, study_id: str | None, name: str | None) -> str:
        if (study_id is None) == (name is None):
            raise InvalidInput("study_id", "give exactly one of study_id and name")
        if study_id is not None:
            return study_id
        claim = _s(await self.client.hget(self._g("names"), name or ""))
        if claim is None:
            raise NotFound(f"Study not found: name={name}")
        return claim.partition("|")[0]

    async def _lease_holders(self, sid: str) -> int:
        return int(await self._study_call("live", sid, []))

    def _state(
        self, sid: str, h: dict[bytes, bytes], spec: StudySpec, live: int | None = None
    ) -> StudyState:
        def num(key: str) -> int | None:
            v = h.get(key.encode())
            return None if v is None else int(v)

        vlen = num("vlen")
        return StudyState(
            study_id=sid,
            spec=spec,
            status=h[b"status"].decode(),  # type: ignore[arg-type]
            done=num("done") or 0,
            failed=num("failed") or 0,
            reserved=num("reserved") or 0,
            registered_at=from_ms(num("registered_ms")),  # type: ignore[arg-type]
            started_at=from_ms(num("started_ms")),
            finished_at=from_ms(num("finished_ms")),
            priority=num("priority") or 0,
            hit_flat=num("hit_flat"),
            best_flat=num("best_flat"),
            vector_len=vlen or None,
            live_workers=live,
            expired=num("expired") or 0,
        )

    async def get_study(self, study_id: str | None = None, name: str | None = None) -> StudyState:
        sid = await self._resolve(study_id, name)
        h = await self.client.hgetall(self.study_keys(sid).s)
        if not h:
            raise NotFound(f"Study not found: study_id={sid}")
        return self._state(sid, h, await self.study_spec(sid), await self._lease_holders(sid))

    async def list_studies(self) -> list[StudyState]:
        sids = await self.index.studies()
        async with self.client.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hgetall(self.study_keys(sid).s)
            hashes = await pipe.execute()
        states = [
            self._state(sid, h, await self.study_spec(sid), await self._lease_holders(sid))
            for sid, h in zip(sids, hashes, strict=True)
            if h
        ]
        finished = sorted(
            (s for s in states if s.status == "done"),
            key=lambda s: s.finished_at or s.registered_at,
        )
        return finished + [s for s in states if s.status != "done"]

    async def _control(self, study_id: str, action: str) -> Reply:
        reply = Reply.of(await self._study_call("control", study_id, [action]))
        if reply.word is Word.MISSING:
            raise NotFound(f"Study not found: study_id={study_id}")
        if reply.word is Word.INACTIVE:
            raise NotFound(f"Study {study_id} is {reply.status}, not active")
        if action in ("cancel", "delete"):
            spec = self._specs.pop(study_id, None)
            await self.index.finish(study_id, forget=True)
            if spec is not None and spec.name is not None:
                await self._release_name(spec.name, study_id)
        elif action == "pause":
            await self.index.park(study_id, (await self.study_spec(study_id)).capacities)
        elif action == "resume":
            await self._reindex(study_id)
        return reply

    async def delete(self, study_id: str) -> Deleted:
        spec = await self.study_spec(study_id)  # so the name can be freed
        status, done, failed = (await self._control(study_id, "delete")).fields[:3]
        return Deleted(study_id, spec.name, status, int(done or 0), int(failed or 0))

    async def retry_failures(self, study_id: str) -> int:
        reply = Reply.of(await self._study_call("retry", study_id, []))
        points, status = reply.fields[:2]
        if reply.word is Word.MISSING:
            raise NotFound(f"Study not found: study_id={study_id}")
        if int(points) and status != "done":
            await self._reindex(study_id)
        return int(points)

    async def _reindex(self, sid: str) -> None:
        """Put a study back in the index as its hash says (resumed, or failures retried)."""
        status, seq, priority = await self.client.hmget(
            self.study_keys(sid).s, "status", "seq", "priority"
        )
        if status is not None and status != b"done":
            caps = (await self.study_spec(sid)).capacities
            workable = status != b"paused"
            await self.index.add(sid, caps, int(priority or 0), int(seq or 0), workable=workable)
            if workable:
                await self._wake(sid)

    async def _wake(self, sid: str) -> None:
        """Tell idle workers (blocked in `reserve(wait=...)`) that `sid` may have work: a
        study registered or resumed, a range handed back or reaped. One entry in a short
        global stream that every waiting reserve reads; best effort, as a waiting reserve
        also looks again when its wait runs out."""
        await self.client.xadd(self._g("wake"), {"s": sid}, maxlen=WAKE_ENTRIES, approximate=True)

    async def cancel(self, study_id: str) -> None:
        if study_id not in self._specs:
            await self.study_spec(study_id)  # so the name can be freed
        await self._control(study_id, "cancel")

    async def pause(self, study_id: str) -> None:
        await self._control(study_id, "pause")

    async def resume(self, study_id: str) -> None:
        await self._control(study_id, "resume")

    # -- reserve -----------------------------------------------
    async def _candidates(self, capacities: frozenset[str], *, fresh: bool = False) -> list[str]:
        """The studies a worker with `capacities` may reserve in, best first (cached for
        `index_ttl` seconds unless `fresh`)."""
        cached = None if fresh else self.index.cached(capacities)
        if cached is not None:
            return cached
        out = await self.index.candidates(capacities)
        if self.fair_share:
            now = await self.server_time()
            since = int(now.timestamp() * 1000) - 30_000
            self._live_workers = int(await self.client.zcount(self._g("workers"), since, "+inf"))
        return out

    async def _touch_worker(self, worker_id: str, worker_name: str | None) -> None:
        now = time.monotonic()
        if now - self._workers_seen.get(worker_id, -1e9) < 5.0:
            return
        self._workers_seen[worker_id] = now
        await self._call(
            "touch_worker",
            [self._g("workers"), self._g("worker_names")],
            [worker_id, _clean(worker_name)],
        )

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
        check_max_size(max_size)
        lease_ms = _lease_ms(lease)
        rid = _request_id(request_id)
        if not worker_id:
            raise InvalidInput("worker_node_id", "must not be empty")
        if not 0 <= wait <= MAX_WAIT:
            raise InvalidInput("wait", f"must be between 0 and {MAX_WAIT:g} seconds")
        retained = frozenset(capacities)
        await self._touch_worker(worker_id, worker_name)
        ask = (retained, max_size, worker_id, worker_name, lease_ms, rid, prefetch)
        if wait <= 0:
            return await self._reserve_once(*ask)
        # the stream's last entry before looking: a wake-up after it is never missed
        deadline = time.monotonic() + wait
        mark = await self._wake_mark()
        got = await self._reserve_once(*ask)
        while got is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None  # nothing woke it: the caller looks again after its own wait
            woken = await self.waking.woken_after(mark, left)  # one XREAD for every waiter
            if woken is not None:
                mark = woken
                got = await self._reserve_once(*ask, fresh=True)
        return got

    def _longest_block(self) -> float:
        """Seconds one XREAD may block: well inside the client's socket timeout (redis-py's
        default is 5 s, and a blocking read does not extend it)."""
        kwargs: dict[str, Any] = {}
        with contextlib.suppress(AttributeError):
            kwargs = self.client.connection_pool.connection_kwargs
        with contextlib.suppress(AttributeError):
            kwargs = self.client.nodes_manager.connection_kwargs
        timeout = kwargs.get("socket_timeout", 5.0)
        return WAKE_BLOCK if timeout is None else min(WAKE_BLOCK, timeout / 2)

    async def _wake_mark(self) -> bytes | str:
        """The id of the wake stream's last entry (``0-0`` while it has none)."""
        last = await self.client.xrevrange(self._g("wake"), count=1)
        return last[0][0] if last else "0-0"

    async def _reserve_once(
        self,
        retained: frozenset[str],
        max_size: int,
        worker_id: str,
        worker_name: str | None,
        lease_ms: int,
        rid: str | None,
        prefetch: bool,
        *,
        fresh: bool = False,
    ) -> Reservation | None:
        """One look through the studies these capacities cover, best first (the cached order,
        then, if none had a trial, the index read afresh: maybe a study arrived since)."""
        cached = None if fresh else self.index.cached(retained)
        fresh = cached is None
        order = await self._candidates(retained, fresh=True) if cached is None else cached
        for attempt in range(2):
            if rid is not None and len(order) > 1:
                order = await self._holder_first(order, rid)
            for sid in order:
                try:
                    size = clamp_max_size(await self.study_spec(sid), max_size)
                except NotFound:  # gone meanwhile: the script says so and the index forgets it
                    size = max_size
                got = await self._reserve_in(
                    sid, size, worker_id, worker_name, lease_ms, rid, prefetch
                )
                if got is not None:
                    return got
            if fresh or attempt:
                return None
            order = await self._candidates(retained, fresh=True)  # maybe a study arrived since
            fresh = True
        return None

    async def _holder_first(self, sids: list[str], request_id: str) -> list[str]:
        """`sids` with the study that remembers a lease for `request_id` first, if any.

        A retried reserve whose first reply was lost may have leased in any study; trying
        the studies in order, an earlier one that has work now would hand out a second trial
        before the script of the holder replays the first. One round trip of GETs."""
        async with self.client.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.get(reply_key(self.prefix, sid, request_id))
            found = await pipe.execute()
        for sid, value in zip(sids, found, strict=True):
            if (_s(value) or "").partition("\n")[2]:
                return [sid, *(s for s in sids if s != sid)]
        return sids

    async def _reserve_in(
        self,
        sid: str,
        max_size: int,
        worker_id: str,
        worker_name: str | None,
        lease_ms: int = 0,
        request_id: str | None = None,
        prefetch: bool = False,
    ) -> Reservation | None:
        args = [sid, max_size, _clean(worker_id), _clean(worker_name), self._live_workers,
                lease_ms, int(prefetch)]  # fmt: skip
        reply = Reply.of(await self._study_call("reserve", sid, args, request_id))
        return await self._reservation(sid, reply, worker_id, worker_name)

    async def _reservation(
        self, sid: str, reply: Reply, worker_id: str, worker_name: str | None
    ) -> Reservation | None:
        """A reserve script's reply as a Reservation; None (and index upkeep) if no trial."""
        if reply.word is Word.OK:
            lease = Lease.of(reply)
            return Reservation(
                study_id=sid,
                trial_id=lease.trial_id,
                worker_id=worker_id,
                start=lease.start,
                count=lease.count,
                worker_name=worker_name,
                attempt=lease.attempt,
                reserved_at=from_ms(lease.now_ms),  # type: ignore[arg-type]
                deadline=from_ms(lease.deadline_ms),  # type: ignore[arg-type]
                spec=await self.study_spec(sid),
            )
        if reply.study_gone:
            await self.index.finish(sid)
        elif reply.word is Word.INACTIVE and reply.status == "paused":
            await self.index.park(sid, (await self.study_spec(sid)).capacities)
        return None

    # -- register -----------------------------------------------
    async def register(
        self, trial: TrialRef, values: np.ndarray, *, request_id: str | None = None
    ) -> Outcome:
        rid = _request_id(request_id)
        spec = await self.study_spec(trial.study_id)
        typed = results.coerce(values, spec.value_type, spec.vector, trial.count)
        return await self._register_typed(spec, trial, typed, rid)

    def _register_args(self, spec: StudySpec, trial: TrialRef, typed: np.ndarray) -> list[Any]:
        hit = -1
        if spec.strategy == "find_exact" and spec.target is not None:
            found = find_hit(typed, spec.target)
            hit = -1 if found is None else found
        best_key, best_offset = "", 0
        if spec.strategy == "minimize":
            off = best_of(typed)
            if off is not None:
                value = typed[off : off + 1].tolist()[0]
                best_key = order_key(value, spec.value_type, trial.start + off)
                best_offset = off
        vlen = int(typed.shape[1]) if typed.ndim == 2 else 0
        return [
            trial.trial_id,
            _clean(trial.worker_id),
            trial.start,
            trial.count,
            results.pack(typed),
            hit,
            best_key,
            best_offset,
            vlen,
        ]

    async def _outcome(self, trial: TrialRef, reply: Reply) -> Outcome:
        """A register reply as the caller's outcome: stored, ignored, or an exception."""
        if reply.word in (Word.OK, Word.IGNORED):
            if reply.status == "done":
                await self.index.finish(trial.study_id)
            return "ignored" if reply.word is Word.IGNORED else "ok"
        if reply.word in (Word.MISSING, Word.INACTIVE):
            raise NotFound(f"Study not found: study_id={trial.study_id}")
        if reply.word.rejects:
            raise TrialRejected(reply.word.value, REJECTIONS[reply.word.value])
        raise RuntimeError(f"register answered {reply}")

    async def _register_typed(
        self, spec: StudySpec, trial: TrialRef, typed: np.ndarray, request_id: str | None = None
    ) -> Outcome:
        sid = trial.study_id
        args = self._register_args(spec, trial, typed)
        reply = Reply.of(await self._study_call("register", sid, args, request_id))
        return await self._outcome(trial, reply)

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
        """Register, then lease the next trial of the same study in the same round trip, as
        long as that study is still the first one these capacities should work on."""
        rid = _request_id(request_id)
        spec = await self.study_spec(trial.study_id)
        typed = results.coerce(values, spec.value_type, spec.vector, trial.count)
        return await self._register_and_reserve_typed(
            spec, trial, typed, capacities, max_size, worker_name, lease, rid, prefetch
        )

    async def _register_and_reserve_typed(
        self,
        spec: StudySpec,
        trial: TrialRef,
        typed: np.ndarray,
        capacities: Collection[str],
        max_size: int,
        worker_name: str | None,
        lease: float | None = None,
        request_id: str | None = None,
        prefetch: bool = False,
    ) -> tuple[Outcome, Reservation | None]:
        """With a request id, the registration is remembered in the trial's study and the
        reservation in the study it came from (one script call each, or both in cycle.lua); a
        retry replays both, looking for the lease in every study (`reserve`)."""
        size = clamp_max_size(spec, max_size)  # this study's limit; another's may differ
        retained = frozenset(capacities)
        order = await self._candidates(retained)
        if not order or order[0] != trial.study_id:
            outcome = await self._register_typed(spec, trial, typed, request_id)
            nxt = await self.reserve(
                capacities, max_size, trial.worker_id, worker_name, lease=lease,
                request_id=request_id, prefetch=prefetch,
            )  # fmt: skip
            return outcome, nxt
        args = [
            *self._register_args(spec, trial, typed),
            trial.study_id,
            size,
            _clean(trial.worker_id),
            _clean(worker_name),
            self._live_workers,
            _lease_ms(lease),
            int(prefetch),
        ]
        sid = trial.study_id
        raw = await self._study_call("cycle", sid, args, request_id)
        outcome = await self._outcome(trial, Reply.of(raw[:2]))
        ask = (capacities, max_size, trial.worker_id, worker_name, lease, request_id, prefetch)
        return outcome, await self._leased_or_elsewhere(sid, order, Reply.of(raw[2:]), *ask)

    async def _leased_or_elsewhere(
        self,
        sid: str,
        order: list[str],
        answer: Reply,
        capacities: Collection[str],
        max_size: int,
        worker_id: str,
        worker_name: str | None,
        lease: float | None,
        request_id: str | None,
        prefetch: bool,
    ) -> Reservation | None:
        """The lease a reserve in study `sid` (the first of `order`) answered, else a reserve
        through every study: another may have a trial (or, on a retry, hold this id's lease).
        Not when `sid` is the only study and it refused the lease already (near its end a
        batch's parts all ask)."""
        nxt = await self._reservation(sid, answer, worker_id, worker_name)
        if nxt is None and (order != [sid] or answer.word not in (Word.LATER, Word.EMPTY)):
            nxt = await self.reserve(
                capacities, max_size, worker_id, worker_name, lease=lease,
                request_id=request_id, prefetch=prefetch,
            )  # fmt: skip
        return nxt

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
        """`Table.register_batch` with its registrations in one round trip in a worker's
        steady state, every trial of the study these capacities work on first: the parts'
        script calls (the same calls, each under its own request id) go in one pipeline
        (registrations past `lease_count` in a second, `_pipelined`), and only a part that
        leased nothing there asks again alone, as `register_and_reserve` does. The reserves
        after the trials follow one by one (a retry of one must look for its lease in every
        study first). Otherwise the whole batch goes part by part."""
        ask = (capacities, max_size, worker_id, worker_name)
        sid = finished[0][0].study_id if finished else ""
        typed: list[np.ndarray] = []
        order: list[str] = []
        if sid and all(t.study_id == sid and v is not None for t, v in finished):
            try:
                spec = await self.study_spec(sid)
                typed = [
                    results.coerce(v, spec.value_type, spec.vector, t.count)
                    for t, v in finished
                    if v is not None  # (every one, as checked above)
                ]
                order = await self._candidates(frozenset(capacities))
            except (NotFound, InvalidInput):  # said part by part, where the caller expects it
                order = []
        if not order or order[0] != sid:
            return await super().register_batch(
                finished, *ask, lease=lease, request_id=request_id, prefetch=prefetch,
                lease_count=lease_count,
            )  # fmt: skip
        settled: list[Settled] = []
        leased: list[Reservation] = []
        lease_ask = [sid, clamp_max_size(spec, max_size), _clean(worker_id), _clean(worker_name),
                     self._live_workers, _lease_ms(lease)]  # fmt: skip
        parts = self._batch_parts(spec, finished, typed, lease_ask, request_id, prefetch,
                                  lease_count)  # fmt: skip
        for group in (parts[:lease_count], parts[lease_count:]):  # cycles, then registers
            for part, raw in zip(group, await self._pipelined(sid, group), strict=True):
                try:
                    settled.append(await self._outcome(part.trial, Reply.of(raw[:2])))
                except TrialRejected as err:  # (nothing leased: the registration came first)
                    settled.append(err)
                    continue
                except NotFound as err:  # the study is gone: the part leases all the same
                    settled.append(err)
                    if part.script == "cycle":
                        nxt = await self.reserve(*ask, lease=lease, request_id=part.request_id,
                                                 prefetch=part.prefetch)  # fmt: skip
                        leased.extend([nxt] if nxt is not None else [])
                    continue
                if part.script == "cycle":
                    nxt = await self._leased_or_elsewhere(
                        sid, order, Reply.of(raw[2:]), *ask, lease, part.request_id, part.prefetch
                    )
                    leased.extend([nxt] if nxt is not None else [])
        for j in range(len(finished), lease_count):
            nxt = await self.reserve(
                *ask, lease=lease, request_id=part_id(request_id, f"r{j}"),
                prefetch=prefetch or j > 0,
            )  # fmt: skip
            if nxt is None:
                break
            leased.append(nxt)
        return settled, leased

    async def _pipelined(self, sid: str, parts: list[_Part]) -> list[Any]:
        """The replies of `parts` (one script each: a server that lost its scripts answers
        NOSCRIPT to all of them alike, and they are sent again alone, in order, which loads
        it), sent to study `sid` as one pipeline. Any other error is raised, as a call alone
        would raise it. A cycle's fallback reserve (`_leased_or_elsewhere`) must come before
        the registrations after it, as part by part: hence cycles and registers are sent as
        two pipelines (`register_batch`)."""
        if not parts:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for part in parts:
                keys, args = self._study_script(part.script, sid, part.args, part.request_id)
                sha = self._scripts[part.script].sha  # (a cluster pipeline has no .evalsha)
                pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            raws: list[Any] = await pipe.execute(raise_on_error=False)
        for i, (part, raw) in enumerate(zip(parts, raws, strict=True)):
            if isinstance(raw, NoScriptError):
                raws[i] = await self._study_call(part.script, sid, part.args, part.request_id)
            elif isinstance(raw, Exception):
                raise raw
        return raws

    def _batch_parts(
        self,
        spec: StudySpec,
        finished: Sequence[tuple[TrialRef, np.ndarray | None]],
        typed: list[np.ndarray],
        lease_ask: list[Any],
        request_id: str | None,
        prefetch: bool,
        lease_count: int,
    ) -> list[_Part]:
        """A batch's registrations as script calls, each under `Table.register_batch`'s part
        id: a cycle (register, then lease with `lease_ask`, reserve.lua's arguments but the
        last) for the first `lease_count`."""
        parts: list[_Part] = []
        for i, ((trial, _), values) in enumerate(zip(finished, typed, strict=True)):
            rid = _request_id(part_id(request_id, trial.trial_id))
            args = self._register_args(spec, trial, values)
            ahead = prefetch or i > 0
            if i < lease_count:
                parts.append(_Part("cycle", [*args, *lease_ask, int(ahead)], rid, ahead, trial))
            else:
                parts.append(_Part("register", args, rid, ahead, trial))
        return parts

    # -- leases -----------------------------------------------
    async def heartbeat(self, trial_id: str, worker_id: str) -> LeaseAnswer:
        sid = study_id_of(trial_id)
        reply = Reply.of(await self._study_call("heartbeat", sid, [trial_id, _clean(worker_id)]))
        return "ok" if reply.word is Word.OK else "stop"

    async def fail(
        self,
        trial_id: str,
        worker_id: str,
        error: str,
        *,
        mode: FailMode = "split",
        request_id: str | None = None,
    ) -> None:
        if mode not in ("release", "retry", "split", "quarantine"):
            raise InvalidInput("mode", f"unknown mode {mode!r}")
        rid = _request_id(request_id)
        sid = study_id_of(trial_id)
        args: list[Any] = [trial_id, _clean(worker_id), _clean(error)[:500], mode]
        reply = Reply.of(await self._study_call("fail", sid, args, rid))
        if reply.word is Word.MISSING:
            raise NotFound(f"Study not found: study_id={sid}")
        if reply.word.rejects:
            raise TrialRejected(reply.word.value, REJECTIONS[reply.word.value])
        if reply.status == "done":
            await self.index.finish(sid)
        elif mode != "quarantine":
            await self._wake(sid)

    async def reap(self) -> int:
        sids = await self.index.active()
        total, finished = 0, []
        for sid in sids:
            n, status = await self._study_call("reap", sid, [])
            total += int(n)
            if _s(status) in ("done", ""):
                finished.append(sid)
            elif int(n):
                await self._wake(sid)
        await self.index.finish(*finished)
        return total

    async def release_worker(self, worker_id: str) -> int:
        wid = _clean(worker_id)
        if not wid:
            raise InvalidInput("worker_id", "must not be empty")
        sids = await self.index.active()
        total = 0
        for sid in sids:
            n, _status = await self._study_call("release_worker", sid, [wid])
            total += int(n)
            if int(n):
                await self._wake(sid)
        return total

    # -- reading -----------------------------------------------
    async def iter_results(self, study_id: str, batch: int = 256) -> AsyncIterator[ResultBlock]:
        keys = self.study_keys(study_id)
        if not await self.client.exists(keys.s):
            raise NotFound(f"Study not found: study_id={study_id}")
        low: float | str = "-inf"
        while True:
            rows = await self.client.zrangebyscore(
                keys.done, low, "+inf", start=0, num=batch, withscores=True
            )
            if not rows:
                return
            payloads = await self.client.hmget(keys.res, [tid for tid, _ in rows])
            for (_, score), payload in zip(rows, payloads, strict=True):
                if payload is not None:
                    yield ResultBlock(int(score), results.unpack(payload))
            low = f"({int(rows[-1][1])}"

    async def results_since(
        self, study_id: str, after: str | None = None, limit: int = 4096
    ) -> Landed:
        """A cursor is ``<stream id>/<n>``: the last registration delivered and its ordinal in
        the study's events stream. The stream keeps its last ~10,000 entries; when more than
        `n` were trimmed, some were never delivered, and everything is sent again (reset)."""
        keys = self.study_keys(study_id)
        if after is not None:
            after_id, seen = _cursor(after)
            added, length = await self._stream_counts(keys.events)
            if added - length <= seen:
                entries = await self.client.xrange(keys.events, min=f"({after_id}", count=limit)
                if all(b"t" in fields for _, fields in entries):  # else: written by older ld2
                    if not entries and not await self.client.exists(keys.s):
                        raise NotFound(f"Study not found: study_id={study_id}")
                    tids = [fields[b"t"] for _, fields in entries]
                    payloads = await self.client.hmget(keys.res, tids) if tids else []
                    blocks = [
                        ResultBlock(int(fields[b"s"]), results.unpack(payload))
                        for (_, fields), payload in zip(entries, payloads, strict=True)
                        if payload is not None
                    ]
                    last = _s(entries[-1][0]) if entries else after_id
                    return Landed(f"{last}/{seen + len(entries)}", False, blocks)
        if await self.client.exists(keys.events):  # the position first: no gap after it
            info = await self.client.xinfo_stream(keys.events)
            cursor = f"{_s(info['last-generated-id'])}/{int(info['entries-added'])}"
        else:
            cursor = "0-0/0"
        blocks = [block async for block in self.iter_results(study_id)]
        return Landed(cursor, True, blocks)

    async def _stream_counts(self, key: str) -> tuple[int, int]:
        """(entries ever added, entries kept) of a stream; (0, 0) if there is none yet."""
        if not await self.client.exists(key):
            return 0, 0
        info = await self.client.xinfo_stream(key)
        return int(info["entries-added"]), int(info["length"])

    async def workers(self, within_sec: int = 600) -> list[WorkerSeen]:
        now = await self.server_time()
        since = int(now.timestamp() * 1000) - within_sec * 1000
        rows = await self.client.zrevrangebyscore(
            self._g("workers"), "+inf", since, withscores=True
        )
        if not rows:
            return []
        names = await self.client.hmget(self._g("worker_names"), [wid for wid, _ in rows])
        return [
            WorkerSeen(_s(wid) or "", _s(name) or None, from_ms(int(ms)))  # type: ignore[arg-type]
            for (wid, ms), name in zip(rows, names, strict=True)
        ]

    async def failures(self, study_id: str) -> list[Failure]:
        out = []
        for member in await self.client.zrange(self.study_keys(study_id).failed, 0, -1):
            start, count, attempts, _tid, error = (_s(member) or "").split(":", 4)
            out.append(Failure(int(start), int(count), int(attempts), error))
        return out

    async def backlog(self) -> Backlog:
        sids = await self.index.active()
        now = await self.server_time()
        async with self.client.pipeline(transaction=False) as pipe:
            for sid in sids:
                keys = self.study_keys(sid)
                pipe.hmget(keys.s, "total", "done", "failed", "reserved")
                pipe.zcard(keys.back)
                pipe.zcard(keys.leases)
            pipe.zcount(self._g("workers"), int(now.timestamp() * 1000) - 60_000, "+inf")
            replies = await pipe.execute()
        points: int | None = 0
        ranges = trials = in_flight = active = 0
        for k in range(len(sids)):
            (total, done, failed, reserved), back, leases = replies[3 * k : 3 * k + 3]
            if total is None:
                continue
            active += 1
            ranges += int(back)
            trials += int(leases)
            in_flight += int(reserved)
            if points is not None:
                t = int(total)
                points = None if t < 0 else points + t - int(done) - int(failed) - int(reserved)
        return Backlog(points, ranges, trials, in_flight, active, int(replies[-1]))

    async def server_time(self) -> datetime:
        sec, usec = await self.client.time()
        return from_ms(int(sec) * 1000 + int(usec) // 1000)  # type: ignore[return-value]

    async def progress(self, cutoff_sec: int = 600) -> Progress:
        now = await self.server_time()
        since_ms = int(now.timestamp() * 1000) - cutoff_sec * 1000
        out = []
        for state in await self.list_studies():
            if state.status == "done":
                continue
            window = eta.window_seconds(now, state.started_at or state.registered_at, cutoff_sec)
            per_worker: dict[str, list[Any]] = {}
            if cutoff_sec > 0:
                events = await self.client.xrange(
                    self.study_keys(state.study_id).events, min=f"{max(since_ms, -1) + 1}", max="+"
                )
                for _eid, fields in events:
                    wid = _s(fields[b"w"]) or ""
                    entry = per_worker.setdefault(wid, [_s(fields.get(b"wn")) or None, 0, 0])
                    entry[1] += int(fields[b"n"])
                    entry[2] += 1
            workers = sorted(
                (
                    WorkerSpeed(w, name, eta.velocity(n, window), trials)
                    for w, (name, n, trials) in per_worker.items()
                ),
                key=lambda w: -w.velocity,
            )
            speed = sum(w.velocity for w in workers)
            remaining = None if state.total is None else state.total - state.done - state.failed
            out.append(
                StudyProgress(
                    study_id=state.study_id,
                    name=state.spec.name,
                    total=state.total,
                    done=state.done,
                    velocity=speed,
                    eta=eta.eta(now, remaining, speed),
                    workers=workers,
                )
            )
        return Progress(now, cutoff_sec, out)

    # -- snapshots (see ld2/store/snapshots.py) ------------------------------------------------
    async def export_snapshot(self) -> dict[str, Any]:
        return await snapshots.export_snapshot(self)

    async def import_snapshot(self, data: dict[str, Any]) -> list[str]:
        return await snapshots.import_snapshot(self, data)

    async def index_study(self, sid: str, spec: StudySpec, h: dict[str, str]) -> None:
        seq, priority = int(h.get("seq", "0")), int(h.get("priority", "0"))
        if h["status"] == "done":
            await self.index.add_done(sid, seq)
        else:
            workable = h["status"] != "paused"
            await self.index.add(sid, spec.capacities, priority, seq, workable=workable)
            if workable:
                await self._wake(sid)
