"""The ``ld2`` command line: thin commands over the same core the API and workers use."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from ld2 import __version__
from ld2.config import ApiSettings, MiB, TableConfig
from ld2.core.errors import InvalidInput

app = typer.Typer(
    name="ld2",
    help="Distributed parameter sweeps on Redis, wire-compatible with lite_dist2.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ld2 {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Distributed parameter sweeps on Redis, wire-compatible with lite_dist2."""


def _fail(message: str) -> typer.Exit:
    typer.secho(f"ld2: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(2)


RedisOpt = Annotated[
    str | None,
    typer.Option(
        "--redis",
        help="Redis URL (redis://, rediss://, unix://). Default: $LD2_REDIS_URL or $REDIS_URL; "
        "without any, the embedded backend in the local state directory.",
    ),
]


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(help="Port. Default: $PORT, else the config file's, else 8000.")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="API processes.")] = 1,
    redis: RedisOpt = None,
    config: Annotated[
        Path | None,
        typer.Option("-c", "--config", help="lite_dist2-style table_config.json."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="Require this bearer token (default: $LD2_API_TOKEN).", show_default=False
        ),
    ] = None,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, MiB.")] = 64,
    prefix: Annotated[str, typer.Option(help="Redis key prefix.")] = "ld2",
) -> None:
    """Serve the HTTP API (lite_dist2's endpoints and ld2's extras; docs at /docs)."""
    from ld2.api.server import serve
    from ld2.store.connect import redis_url_from_env

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        table_config = TableConfig.load(config) if config else TableConfig()
    except InvalidInput as err:
        raise _fail(str(err)) from None
    env_port = os.environ.get("PORT")
    chosen = port if port is not None else int(env_port) if env_port else table_config.port
    settings = ApiSettings(
        redis_url=redis or redis_url_from_env(),
        token=token or os.environ.get("LD2_API_TOKEN") or None,
        max_body_bytes=int(max_body_mb * MiB),
        prefix=prefix,
        table=table_config,
    )
    serve(settings, host, chosen, workers)
