"""Velocity and ETA of a study from the points its workers registered lately: pure arithmetic.

The window is the last `cutoff` seconds, or the time since the study started if shorter (a
study running for 5 s with 500 points done goes at 100 points/s, not 500 / cutoff).
"""

from __future__ import annotations

from datetime import datetime, timedelta


def window_seconds(now: datetime, started: datetime, cutoff_sec: float) -> float:
    """The seconds over which recent points are averaged."""
    return min(cutoff_sec, max((now - started).total_seconds(), 0.0))


def velocity(points: int, window: float) -> float:
    """Points per second over `window` seconds (0 for an empty window)."""
    return points / window if window > 0 else 0.0


def eta(now: datetime, remaining: int | None, speed: float) -> datetime | None:
    """When the remaining points are done at `speed`; None if that cannot be said (an infinite
    study, or nothing registered lately)."""
    if remaining is None or speed <= 0:
        return None
    return now + timedelta(seconds=remaining / speed)
