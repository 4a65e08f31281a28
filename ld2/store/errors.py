"""Redis errors as ld2's callers handle them: "not now" (`BackendUnavailable`, retried with
backoff by every process) or "this cannot work" (`InvalidInput`: exit 2). `mapped` routes every
public call of a table class through that mapping, so no redis-py exception escapes the store.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import (
    BusyLoadingError,
    ClusterError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ld2.core.errors import BackendUnavailable, InvalidInput
from ld2.store.urls import redacted

T = TypeVar("T")

TRANSIENT = (
    RedisConnectionError, RedisTimeoutError, OSError, BusyLoadingError, ReadOnlyError,
    OutOfMemoryError, ClusterError, TryAgainError, SlotNotCoveredError,
)  # fmt: skip
"""Redis errors that say "not now" rather than "no": every caller retries them (a cluster with
a master down says CLUSTERDOWN, TRYAGAIN or "slot not covered" until it is back)."""

_CLUSTER_TRANSIENT = ("Redis Cluster cannot be connected", "All slots are not covered")


def cluster_trouble(err: RedisClusterException, url: str) -> Exception:
    """redis-py's cluster client says both "unreachable now" and "this cannot work" (a db
    number, a node that is not in cluster mode) with one exception type: tell them apart."""
    text = str(err)
    if isinstance(err, SlotNotCoveredError) or (
        text.startswith(_CLUSTER_TRANSIENT) and "Cluster mode is not enabled" not in text
    ):
        return BackendUnavailable(f"the Redis Cluster at {redacted(url)} is not whole: {err}")
    return InvalidInput("--redis", f"{redacted(url)}: {err}")


_REDIS_IO = os.path.join("redis", "asyncio", "connection.py")


def closed_under_it(err: BaseException) -> bool:
    """redis-py's asyncio client writing on a connection that another task closed meanwhile
    (its cluster client drops a failed node's connections while other requests use them)
    raises RuntimeError under uvloop, which uvicorn runs the API on ("the handler is closed",
    MagicStack/uvloop#506), or AttributeError (its writer already None), not ConnectionError:
    the same "not now" when it comes from redis-py's connection code."""
    if not isinstance(err, (RuntimeError, AttributeError)):
        return False
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(_REDIS_IO):
            return True
        tb = tb.tb_next
    return False


def unavailable(err: BaseException, url: str) -> BackendUnavailable:
    """The one mapping of a Redis error to what ld2's callers handle (and retry)."""
    where = f"Redis at {redacted(url) if url else 'the given client'}"
    if isinstance(err, OutOfMemoryError):
        return BackendUnavailable(
            f"{where} is full (maxmemory reached; ld2 needs maxmemory-policy noeviction, so "
            "writes wait until memory is freed or raised): {err}"
        )
    if isinstance(err, BusyLoadingError):
        return BackendUnavailable(f"{where} is loading its data after a restart: {err}")
    if isinstance(err, ReadOnlyError):
        return BackendUnavailable(f"{where} is a read-only replica (failover in progress?): {err}")
    return BackendUnavailable(f"cannot reach {where}: {err}")


def mapped(cls: type[T]) -> type[T]:
    """Route every Redis error of every public call (coroutines and result streams) through
    `unavailable`, so no redis-py exception ever escapes the store."""
    for name, fn in list(vars(cls).items()):
        if name.startswith("_") or not callable(fn):  # private ones run inside public ones
            continue
        if inspect.iscoroutinefunction(fn):
            setattr(cls, name, _map_coroutine(fn))
        elif inspect.isasyncgenfunction(fn):
            setattr(cls, name, _map_stream(fn))
    return cls


def translated(err: BaseException, url: str) -> BaseException:
    """What the store raises for `err`: `BackendUnavailable` for "not now", `InvalidInput` for
    a cluster URL that cannot work, else `err` itself (a bug, not Redis)."""
    if isinstance(err, BackendUnavailable):
        return err  # already said (it is an OSError too: never wrap it twice)
    if isinstance(err, TRANSIENT) or closed_under_it(err):
        return unavailable(err, url)
    if isinstance(err, RedisClusterException):
        return cluster_trouble(err, url)
    return err


def _map_coroutine(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            if not self._ready:
                await self._connect()
            return await fn(self, *args, **kwargs)
        except Exception as err:
            mapped = translated(err, self.url)
            if mapped is err:
                raise
            raise mapped from err

    return call


def _map_stream(fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    @functools.wraps(fn)
    async def stream(self: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        try:
            if not self._ready:
                await self._connect()
            async for item in fn(self, *args, **kwargs):
                yield item
        except Exception as err:
            mapped = translated(err, self.url)
            if mapped is err:
                raise
            raise mapped from err

    return stream
