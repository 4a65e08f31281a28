"""ld2: distributed parameter sweeps on Redis, wire-compatible with lite_dist2.

``ld2.sweep(f, x=ld2.linspace(0, 1, 11), y=ld2.arange(0, 4))`` computes a function over a grid
on this machine; ``ld2.Client()`` submits studies to a backend and fetches their results (see
docs/python.md); ``@ld2.runner("name", vectorized=True)`` registers a computation under a
capacity name for ``ld2 worker``.

Everything here is imported on first use, ``__version__`` included, so ``import ld2`` (and
``ld2 --version``) stays light: no numpy, no redis, not even importlib.metadata.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    __version__: str  # read from the installed package's metadata on first use
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # ~40 ms: only when asked

    try:
        return version("ld2")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif (module := _LAZY.get(name)) is not None:
        value = getattr(import_module(module), name)
    else:
        raise AttributeError(f"module 'ld2' has no attribute {name!r}")
    globals()[name] = value  # later lookups find it directly
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), "__version__", *_LAZY})
