"""hiredis packs commands exactly as redis-py would (and redis-py still refuses what it refuses)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from ld2.store.packing import fast

ARG = st.one_of(
    st.text(),
    st.binary(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.binary().map(memoryview),
)


def _both(*args: Any) -> tuple[bytes, bytes]:
    plain = Connection()
    packed = fast(Connection)()
    return b"".join(plain.pack_command(*args)), b"".join(packed.pack_command(*args))


@given(st.sampled_from(["EVALSHA", "SET", "XADD"]), st.lists(ARG, max_size=30))
def test_any_command_packs_as_redis_py_packs_it(name: str, args: list[Any]) -> None:
    ours, theirs = _both(name, *args)
    assert ours == theirs


@pytest.mark.parametrize(
    "args", [("CONFIG GET", "maxmemory"), ("SET", "k", bytearray(b"v")), ("SET", "k", "é")]
)
def test_what_hiredis_does_not_pack_falls_back(args: tuple[Any, ...]) -> None:
    ours, theirs = _both(*args)
    assert ours == theirs


def test_redis_py_still_refuses_what_it_refuses() -> None:
    with pytest.raises(DataError):
        fast(Connection)().pack_command("SET", "k", True)
    with pytest.raises(DataError):
        fast(Connection)().pack_command("SET", "k", None)


def test_each_connection_class_keeps_its_kind() -> None:
    for cls in (Connection, SSLConnection, UnixDomainSocketConnection):
        assert issubclass(fast(cls), cls) and fast(cls) is fast(cls)
