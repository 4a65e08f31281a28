"""Running the API: settings → app, and uvicorn with any number of worker processes.

Each uvicorn worker process builds its own app and table from the settings (passed as JSON in
``LD2_API_SETTINGS``), so the processes share nothing but Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os

import uvicorn
from fastapi import FastAPI

from ld2.api.app import create_app
from ld2.api.security import is_loopback
from ld2.config import ApiSettings
from ld2.store.base import Table
from ld2.store.connect import open_table

log = logging.getLogger("ld2.api")
ENV = "LD2_API_SETTINGS"


def build_app(settings: ApiSettings) -> FastAPI:
    def table() -> Table:
        return open_table(
            settings.redis_url,
            state_dir=settings.state_dir,
            prefix=settings.prefix,
            trial_timeout=settings.table.trial_timeout_seconds,
        )

    return create_app(
        table,
        token=settings.token,
        max_body_bytes=settings.max_body_bytes,
        curriculum_path=settings.table.curriculum_path,
        save_interval=settings.table.curriculum_save_interval_seconds,
        reap_interval=settings.table.timeout_check_interval_seconds,
    )


def app_from_env() -> FastAPI:
    """uvicorn's factory in each worker process."""
    return build_app(ApiSettings.model_validate_json(os.environ[ENV]))


def binding_warning(host: str, port: int, token: str | None) -> str | None:
    """The warning for a non-loopback bind without a token (None when there is nothing to say)."""
    if is_loopback(host) or token:
        return None
    return (
        f"binding {host} without a token: anyone who can reach port {port} can register, "
        "cancel and forge results. Set LD2_API_TOKEN or --token."
    )


async def check_backend(settings: ApiSettings, *, allow_eviction: bool = False) -> None:
    """Before serving: the backend answers, and does not evict keys (raises InvalidInput /
    BackendUnavailable, which the command line reports without a traceback)."""
    table = open_table(settings.redis_url, state_dir=settings.state_dir, prefix=settings.prefix)
    try:
        await table.ping()
        await table.check_eviction(allow=allow_eviction)
    finally:
        await table.close()


def serve(
    settings: ApiSettings,
    host: str,
    port: int,
    workers: int = 1,
    *,
    allow_eviction: bool = False,
    access_log: bool = False,
) -> None:
    """Serve the API with uvicorn. Its access log is off unless asked for: a line a request
    cost ~45 µs of the API's CPU for each trial of each worker (plus the lines themselves)."""
    asyncio.run(check_backend(settings, allow_eviction=allow_eviction))
    if warning := binding_warning(host, port, settings.token):
        log.warning(warning)
    os.environ[ENV] = settings.model_dump_json()
    uvicorn.run(
        "ld2.api.server:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        server_header=False,
        access_log=access_log,
    )
