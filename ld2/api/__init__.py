"""The HTTP API: lite_dist2's endpoints and ld2's extras over a `Table`."""

from ld2.api.app import create_app

__all__ = ["create_app"]
