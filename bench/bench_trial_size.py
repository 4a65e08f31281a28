"""--max-size auto: how close trials stay to --trial-seconds, per study, and how a fast study
no longer sets the size of the next one.

Runs two `Worker`s (one compute process each) in this process on a private redis-server:
first a fast study (vectorised Mandelbrot 4096×4096, max_iter 255), then a slow one (the
plain-Python kernel over 512×512), and prints the spread of trial durations once the size
has settled, plus the first trial of the slow study.

    uv run python bench/bench_trial_size.py [--trial-seconds 0.25]
"""

from __future__ import annotations

import argparse
import asyncio

from common import mandelbrot_registry, private_redis

from ld2.store.redis import RedisTable
from ld2.worker import runners
from ld2.worker.loop import Worker, WorkerConfig


def weighted(seconds: list[float], q: float) -> float:
    """The duration of the trial that holds the q-quantile of compute time."""
    ordered = sorted(seconds)
    total, acc = sum(ordered), 0.0
    for d in ordered:
        acc += d
        if acc >= q * total:
            return d
    return ordered[-1]


def spread(label: str, seconds: list[float], sizes: list[int], target: float) -> None:
    """Trial durations weighted by compute time (the trial a random compute-second lies in):
    the tail of a study, where the fair-share cap shrinks trials on purpose, is many trials
    but little time, and the first trials grow from 16 points."""
    near = sum(d for d in seconds if target / 2 <= d <= target * 2) / sum(seconds)
    print(
        f"{label}: {len(seconds)} trials, {sum(seconds):.2f} s of compute, sizes "
        f"{sizes[0]}…{max(sizes):,}; by compute time: p10 {weighted(seconds, 0.1):.3f} s, "
        f"median {weighted(seconds, 0.5):.3f} s, p90 {weighted(seconds, 0.9):.3f} s; "
        f"{near:.0%} of it in trials of {target / 2}–{target * 2} s (target {target} s)"
    )


async def main(trial_seconds: float) -> None:
    available = runners.load()
    with private_redis() as url:
        table = RedisTable.from_url(url, fair_share=True, index_ttl=0.2)
        config = WorkerConfig(["mandelbrot", "mandelbrot-scalar"], processes=1, max_size=None,
                              trial_seconds=trial_seconds, exit_when_idle=1.0, idle_wait=0.05)  # fmt: skip
        workers = [Worker(table, available, config) for _ in range(2)]
        await table.register_study(mandelbrot_registry(4096, "fast", "mandelbrot"))
        fast = await asyncio.gather(*(w.run() for w in workers))
        marks = [len(s.durations) for s in fast]
        for k, s in enumerate(fast):
            spread(f"fast study, worker {k}", s.durations, s.sizes, trial_seconds)
        await table.register_study(mandelbrot_registry(512, "slow", "mandelbrot-scalar"))
        slow = await asyncio.gather(*(w.run() for w in workers))
        for k, (s, mark) in enumerate(zip(slow, marks, strict=True)):
            print(f"slow study, worker {k}: first trial {s.sizes[mark]} points "
                  f"(the fast study ended at {fast[k].sizes[mark - 1]:,})")  # fmt: skip
            spread(f"slow study, worker {k}", s.durations[mark:], s.sizes[mark:], trial_seconds)
        await table.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trial-seconds", type=float, default=0.25)
    asyncio.run(main(parser.parse_args().trial_seconds))
