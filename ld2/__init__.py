"""ld2: distributed parameter sweeps on Redis, wire-compatible with lite_dist2.

``ld2.sweep(f, x=ld2.linspace(0, 1, 11), y=ld2.arange(0, 4))`` computes a function over a grid
on this machine; ``ld2.Client()`` submits studies to a backend and fetches their results (see
docs/python.md); ``@ld2.runner("name", vectorized=True)`` registers a computation under a
capacity name for ``ld2 worker``.

Everything here is imported on first use, so ``import ld2`` (and ``ld2 --version``) stays light:
no numpy, no redis.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("ld2")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from ld2.client import (  # noqa: F401 (the lazy exports, for type checkers)
        AsyncClient,
        AsyncStudy,
        Client,
        Study,
        StudyFailed,
        arange,
        linspace,
        sweep,
    )
    from ld2.worker.runners import runner  # noqa: F401

_LAZY = {
    "runner": "ld2.worker.runners",
    "Client": "ld2.client",
    "AsyncClient": "ld2.client",
    "Study": "ld2.client",
    "AsyncStudy": "ld2.client",
    "StudyFailed": "ld2.client",
    "sweep": "ld2.client",
    "linspace": "ld2.client",
    "arange": "ld2.client",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ld2' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups find it directly
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
