"""Commands packed by hiredis instead of redis-py's pure-Python packer.

redis-py's asyncio connections pack every command in Python (about 25 µs for a worker's
register-and-reserve call of 30 arguments, several times what hiredis's `pack_command` takes).
The connection classes here use hiredis for the arguments it packs exactly as redis-py does
(str, bytes, int, float, memoryview) and hand anything else to redis-py, which also raises its
own errors for what it refuses. hiredis is a dependency of ld2 (``redis[hiredis]``).
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection

_FAST: dict[type[Any], type[Any]] = {}


def _pack(self: AbstractConnection, *args: Any) -> list[bytes]:
    name = args[0] if args else None
    if (
        isinstance(name, str)
        and " " not in name  # redis-py splits "CONFIG GET" into two arguments
        and self.encoder.encoding == "utf-8"
        and self.encoder.encoding_errors == "strict"
    ):
        try:
            packed: bytes = hiredis.pack_command(args)
            return [packed]
        except TypeError:  # bool, None, bytearray, ...: redis-py's rules
            pass
    return list(AbstractConnection.pack_command(self, *args))


def fast(cls: type[Any]) -> type[Any]:
    """`cls` (a redis-py asyncio connection class) packing with hiredis."""
    if cls not in _FAST:
        _FAST[cls] = type(f"Packed{cls.__name__}", (cls,), {"pack_command": _pack})
    return _FAST[cls]


def pack_fast(client: Any) -> Any:
    """`client` (a single-server asyncio client) with its pool's connections packing with
    hiredis; returned for chaining."""
    pool = client.connection_pool
    pool.connection_class = fast(pool.connection_class)
    return client
