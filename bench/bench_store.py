"""Store benchmark: ld2 reserve+register cycles against the raw EVALSHA round-trip limit.

Run by hand (starts its own private redis-server on a free loopback port):

    uv run python bench/bench_store.py                 # quick: history of 10^5 trials
    uv run python bench/bench_store.py --history 1000000

Prints, from one run: raw EVALSHA/s of a trivial script (1 and 8 clients), ld2 cycles/s with an
empty computation (1 and 8 clients), cycles/s after 10^3 vs after --history registered trials,
and Redis memory per stored int result point for 1,000-point trials. Raw and ld2 calls go through
the client every ld2 process makes (`RedisTable.from_url`: commands packed by hiredis), on the
event loop ld2's commands use (uvloop when installed), in `--rounds` interleaved rounds of
`--seconds` each: medians, the per-round ratios' range beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from ld2.cli import run_loop
from ld2.store.redis import RedisTable

sys.path.insert(0, str(Path(__file__).parent))
from common import private_redis, rate, registry


async def main(history: int, seconds: float, rounds: int) -> None:
    with private_redis() as url:
        await _measure(url, history, seconds, rounds)


async def _measure(url: str, history: int, seconds: float, rounds: int) -> None:
    # the client every ld2 process makes (commands packed by hiredis), for both sides
    table = RedisTable.from_url(url, cluster=False, prefix="bench")
    client = table.client
    try:
        trivial = client.register_script("return 1")
        await table.register_study(registry(None, "cycles"))

        async def raw(i: int) -> None:
            await trivial(keys=["k"], args=[])

        async def cycle(i: int) -> None:
            res = await table.reserve([], 1, f"w{i}")
            assert res is not None
            await table.register(res, np.zeros(1, dtype=np.int64))

        held: dict[int, object] = {}

        async def chained(i: int) -> None:  # the worker's loop: register + next reserve at once
            res = held.get(i) or await table.reserve([], 1, f"c{i}")
            _, held[i] = await table.register_and_reserve(res, np.zeros(1, dtype=np.int64), [], 1)  # type: ignore[arg-type]

        # interleaved rounds: a raw second, then ld2's, so that both see the same machine
        for clients in (1, 8):
            got: dict[str, list[float]] = {"raw": [], "two": [], "one": []}
            for _ in range(rounds):
                got["raw"].append(await rate(raw, clients, seconds))
                got["one"].append(await rate(chained, clients, seconds))
                got["two"].append(await rate(cycle, clients, seconds / 2))
            ratios = sorted(o / r for o, r in zip(got["one"], got["raw"], strict=True))
            med = {k: statistics.median(v) for k, v in got.items()}
            n = f"{clients} client{'s' if clients > 1 else ''}"
            goal = "; goal ≥ 50%" if clients == 1 else ""
            print(f"raw EVALSHA (trivial script), {n}: {med['raw']:9.0f} /s")
            print(
                f"ld2 register_and_reserve (1 call), {n}: {med['one']:9.0f} /s  "
                f"({statistics.median(ratios):.0%} of raw, rounds {ratios[0]:.0%}–{ratios[-1]:.0%}{goal})"
            )
            print(
                f"ld2 reserve, register (2 calls), {n}: {med['two']:9.0f} /s  "
                f"({med['two'] / med['raw']:.0%} of raw)"
            )

        # cost must not grow with history: a fresh study, measured after 10^3 and after `history`
        hist = RedisTable(client, prefix="hist")
        await hist.register_study(registry(None, "history"))

        hist_held: dict[int, object] = {}

        async def hist_cycle(i: int) -> None:
            res = hist_held.get(i) or await hist.reserve([], 1, f"h{i}")
            _, hist_held[i] = await hist.register_and_reserve(
                res, np.zeros(1, dtype=np.int64), [], 1
            )  # type: ignore[arg-type]

        for _ in range(1000):
            await hist_cycle(0)
        early = await rate(hist_cycle, 1, seconds)
        done = (await hist.get_study(name="history")).done
        t0 = time.perf_counter()
        while done < history:
            batch = min(20_000, history - done)
            shares = [batch // 8 + (1 if i < batch % 8 else 0) for i in range(8)]
            await asyncio.gather(*(_n_cycles(hist_cycle, i, n) for i, n in enumerate(shares)))
            done = (await hist.get_study(name="history")).done
            print(f"  … {done} trials registered ({time.perf_counter() - t0:.0f} s)", flush=True)
        late = await rate(hist_cycle, 1, seconds)
        print(
            f"\ncycles/s after 10^3 trials: {early:9.0f}; after {done}: {late:9.0f}  "
            f"(ratio {late / early:.2f}; goal ≥ 0.8)"
        )

        # memory per stored int result point, 1,000-point trials
        mem = RedisTable(client, prefix="mem")
        sid = await mem.register_study(registry(2_000_000, "memory"))
        before = (await client.info("memory"))["used_memory"]
        rng = np.random.default_rng(1)
        for kind, values in (
            ("counts 0..255", lambda n: rng.integers(0, 256, n)),
            ("ints < 2^31", lambda n: rng.integers(-(2**31), 2**31, n)),
        ):
            points = 0
            b0 = (await client.info("memory"))["used_memory"]
            for _ in range(500):
                res = await mem.reserve([], 1000, "m")
                assert res is not None
                await mem.register(res, values(res.count))
                points += res.count
            used = (await client.info("memory"))["used_memory"] - b0
            print(f"memory per int result point ({kind}): {used / points:5.2f} bytes  (goal ≤ 10)")
        keys = mem.study_keys(sid).all()
        usage = sum([await client.memory_usage(k) or 0 for k in keys])
        print(
            f"  MEMORY USAGE of the study's keys: {usage} bytes for "
            f"{(await mem.get_study(sid)).done} points ({usage / (await mem.get_study(sid)).done:.2f} B/pt)"
        )
        del before
    finally:
        await table.close()


async def _n_cycles(fn, i: int, n: int) -> None:  # type: ignore[no-untyped-def]
    for _ in range(n):
        await fn(i)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=1.0, help="a measurement (s)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    args = parser.parse_args()
    run_loop(main(args.history, args.seconds, args.rounds))
