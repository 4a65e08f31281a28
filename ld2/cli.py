"""The ``ld2`` command line: thin commands over the same core the API and workers use."""

from __future__ import annotations

import typer

from ld2 import __version__

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
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Distributed parameter sweeps on Redis, wire-compatible with lite_dist2."""
