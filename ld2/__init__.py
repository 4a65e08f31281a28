"""ld2: distributed parameter sweeps on Redis, wire-compatible with lite_dist2.

``@ld2.runner("name", vectorized=True)`` registers a computation under a capacity name.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("ld2")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__", "runner"]


def __getattr__(name: str) -> Any:
    if name == "runner":  # imported on first use: `import ld2` stays light
        from ld2.worker.runners import runner

        return runner
    raise AttributeError(f"module 'ld2' has no attribute {name!r}")
