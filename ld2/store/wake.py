"""One reader of the wake-up stream per table, shared by every reserve that waits on it.

A waiting reserve (`RedisTable.reserve(wait=...)`, an idle worker, an API long poll) used to
block on its own ``XREAD``, one Redis connection each: an API process serving many idle HTTP
workers had as many connections blocked, and its other calls queued for the rest. Here one task
blocks on the stream for all of them and wakes them through an event; a waiter compares the
stream's position with the mark it took before looking for work, so a wake-up after that mark
is never missed, and an error of the read reaches every waiter (which retries as before).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

StreamId = tuple[int, int]


def stream_id(raw: bytes | str) -> StreamId:
    """A stream entry id (``<ms>-<seq>``) as a comparable pair."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class WakeReader:
    """Blocks on `key` while anybody waits (`woken_after`), at most `block()` seconds a read."""

    def __init__(
        self, client: Callable[[], Any], key: str, block: Callable[[], float], count: int = 64
    ) -> None:
        self._client = client  # looked up at each read: a table may swap its client
        self._key = key
        self._count = count
        self._block = block
        self._last: bytes | str = "0-0"
        self._changed: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiters = 0

    @property
    def waiters(self) -> int:
        return self._waiters

    async def woken_after(self, mark: bytes | str, timeout: float) -> bytes | str | None:
        """The stream's newest id once it is past `mark`, or None after `timeout` seconds."""
        self._waiters += 1
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if stream_id(self._last) > stream_id(mark):
                        return self._last
                    changed = self._ensure_reading(mark)
                    await changed.wait()
                    if self._error is not None:
                        raise self._error
        except TimeoutError:
            return None
        finally:
            self._waiters -= 1

    def _ensure_reading(self, mark: bytes | str) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._changed is None or self._task is None or self._task.get_loop() is not loop:
            self._changed = asyncio.Event()  # (a reader of a closed loop is gone with it)
            self._error = None
            if stream_id(mark) > stream_id(self._last):
                self._last = mark  # read on from the newest mark known
            self._task = loop.create_task(self._read())
        return self._changed

    async def _read(self) -> None:
        try:
            while self._waiters > 0:
                block = max(1, int(self._block() * 1000))
                streams = {self._key: self._last}
                got = await self._client().xread(streams, count=self._count, block=block)
                if got:
                    self._last = got[0][1][-1][0]
                    self._wake()
        except Exception as err:  # every waiter raises it (and looks again after its retry)
            self._error = err
            self._wake()
        finally:
            self._task = None

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        if changed is not None:
            changed.set()

    async def close(self) -> None:
        """Stop reading (a table being closed)."""
        task, self._task = self._task, None
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
