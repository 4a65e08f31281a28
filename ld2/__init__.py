"""ld2: distributed parameter sweeps on Redis, wire-compatible with lite_dist2."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ld2")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
