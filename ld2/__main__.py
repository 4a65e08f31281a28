"""``python -m ld2`` is the ``ld2`` command."""

from ld2.cli import app

app()
