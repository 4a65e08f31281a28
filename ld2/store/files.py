"""Curriculum snapshots on disk: written atomically, loaded from ld2's or lite_dist2's format."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from ld2.config import read_json_file
from ld2.core.errors import InvalidInput
from ld2.store.base import Table

log = logging.getLogger(__name__)


async def save_snapshot(table: Table, path: Path) -> int:
    """Write the table's snapshot to `path` (temp file + rename: a crash never corrupts it).

    Returns the number of studies written.
    """
    data = await table.export_snapshot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, separators=(",", ":"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(data["studies"])


async def load_snapshot(table: Table, path: Path) -> list[str]:
    """Load an ld2 snapshot or a lite_dist2 ``curriculum.json``; returns the new study ids."""
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise InvalidInput(str(path), "a snapshot is a JSON object")
    return await table.import_snapshot(data)


async def save_periodically(table: Table, path: Path, interval: float) -> None:
    """Save a snapshot every `interval` seconds until cancelled (errors are logged, not fatal)."""
    while True:
        await asyncio.sleep(interval)
        try:
            n = await save_snapshot(table, path)
            log.info("saved %d studies to %s", n, path)
        except (OSError, ConnectionError) as err:
            log.warning("could not save the curriculum to %s: %s", path, err)


async def reap_periodically(
    table: Table, interval: float, stop: asyncio.Event | None = None
) -> None:
    """The reaper's loop: hand back expired leases every `interval` seconds until cancelled or
    `stop` is set."""
    stop = stop or asyncio.Event()
    lost: float | None = None  # an outage is said once when it starts and once when it ends
    while not stop.is_set():
        try:
            n = await table.reap()
        except ConnectionError as err:
            if lost is None:
                lost = time.monotonic()
                log.warning("reaper: %s; trying again every %.1f s", err, interval)
        else:
            if lost is not None:
                log.warning("reaper: the backend is back after %.1f s", time.monotonic() - lost)
                lost = None
            if n:
                log.info("handed back %d expired trial(s)", n)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
