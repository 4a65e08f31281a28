"""Opening a table from settings: a Redis URL, or the embedded backend when there is none."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ld2.core.errors import InvalidInput
from ld2.store.embedded import EmbeddedServer
from ld2.store.redis import RedisTable


def redis_url_from_env() -> str | None:
    """``LD2_REDIS_URL``, else ``REDIS_URL`` (Heroku's name), else None."""
    return os.environ.get("LD2_REDIS_URL") or os.environ.get("REDIS_URL") or None


class EmbeddedTable(RedisTable):
    """A `RedisTable` on the embedded Valkey server.

    On close it stops the server if it owns it (started it, or adopted it from an owner that is
    gone) and no other process uses it; see `EmbeddedServer`.
    """

    def __init__(self, server: EmbeddedServer, **kwargs: Any) -> None:
        import redis.asyncio as aioredis

        from ld2.store.packing import pack_fast

        self.server = server
        url = server.start()
        super().__init__(pack_fast(aioredis.Redis.from_url(url)), url=url, **kwargs)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self.server.stop()


CLUSTER_MODES = {"auto": None, "yes": True, "no": False}
CERT_REQS = ("none", "optional", "required")


def cluster_from_env() -> bool | None:
    """``LD2_REDIS_CLUSTER``: ``auto`` (the default: ask the server), ``yes`` or ``no``."""
    text = (os.environ.get("LD2_REDIS_CLUSTER") or "auto").strip().lower()
    if text not in CLUSTER_MODES:
        raise InvalidInput("LD2_REDIS_CLUSTER", f"must be auto, yes or no, got {text!r}")
    return CLUSTER_MODES[text]


def client_options_from_env(url: str) -> dict[str, Any]:
    """redis-py options for `url`: ``LD2_REDIS_SSL_CERT_REQS`` (none, optional, required) for a
    ``rediss://`` URL, as Heroku's Redis serves a self-signed certificate."""
    reqs = (os.environ.get("LD2_REDIS_SSL_CERT_REQS") or "").strip().lower()
    if not reqs or not url.startswith("rediss://") or "ssl_cert_reqs=" in url:
        return {}
    if reqs not in CERT_REQS:
        raise InvalidInput("LD2_REDIS_SSL_CERT_REQS", f"must be one of {', '.join(CERT_REQS)}")
    return {"ssl_cert_reqs": reqs}


def open_table(
    url: str | None = None, *, state_dir: Path | None = None, **kwargs: Any
) -> RedisTable:
    """A table on `url` (``redis://``, ``rediss://``, ``unix://``; a single server or any node
    of a Redis Cluster), or on the embedded backend.

    The key prefix is `prefix`, else ``$LD2_PREFIX``, else ``ld2``.
    """
    kwargs.setdefault("prefix", os.environ.get("LD2_PREFIX") or "ld2")
    url = url or redis_url_from_env()
    if url is None:
        return EmbeddedTable(EmbeddedServer(state_dir), **kwargs)
    return RedisTable.from_url(
        url, cluster=cluster_from_env(), client_options=client_options_from_env(url), **kwargs
    )
