"""Start-up checks of the Redis a process is about to trust with every study.

An evicting Redis (``maxmemory`` with any policy but ``noeviction``) deletes keys silently
when full: a study's hash, its results or its name simply vanish (seen: all 4,000,000 points
of a study gone, then "Study not found"). ld2 refuses such a server at start-up unless told
otherwise; with ``noeviction`` a full Redis refuses writes instead, which ld2 reports as
"Redis is full" and retries.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import ResponseError

from ld2.core.errors import InvalidInput
from ld2.store.urls import redacted

log = logging.getLogger("ld2")

SAFE_POLICY = "noeviction"


async def eviction_policy(client: Any) -> str | None:
    """The server's ``maxmemory-policy`` (None if it cannot be read, e.g. CONFIG renamed on a
    managed Redis and INFO without it)."""
    try:
        reply = await client.config_get("maxmemory-policy")
        value = reply.get("maxmemory-policy") or reply.get(b"maxmemory-policy")
        if value:
            return value.decode() if isinstance(value, bytes) else str(value)
    except ResponseError:  # CONFIG disabled or renamed (managed Redis): INFO says it too
        pass
    try:
        info = await client.info("memory")
    except ResponseError:
        return None
    value = info.get("maxmemory_policy")
    return None if value is None else str(value)


async def check_eviction(client: Any, url: str, *, allow: bool = False) -> None:
    """Refuse a Redis that may evict keys (InvalidInput: exit 2 / no start), or with `allow`
    say loudly that results may vanish."""
    policy = await eviction_policy(client)
    if policy is None or policy == SAFE_POLICY:
        return
    message = (
        f"Redis at {redacted(url)} has maxmemory-policy {policy}: when full it deletes keys, and a "
        "study's results or the study itself would vanish without a word. Set "
        "`maxmemory-policy noeviction` (redis.conf or CONFIG SET; see docs/store.md)"
    )
    if not allow:
        raise InvalidInput("maxmemory-policy", message + ", or pass --allow-eviction.")
    log.warning("--allow-eviction: %s. Studies may be lost.", message)
