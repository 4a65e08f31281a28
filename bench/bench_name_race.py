"""Unique study names under concurrency: rounds of 32 registrations of one name at once.

Counts the rounds in which more than one registration was accepted (must be 0). Run it on the
current tree and, for comparison, on an older checkout with `--repo DIR`:

    uv run python bench/bench_name_race.py [--rounds 50] [--repo DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid


async def main(rounds: int) -> None:
    from common import private_redis, registry

    from ld2.store.redis import RedisTable

    with private_redis() as url:
        table = RedisTable.from_url(url, prefix=f"race{uuid.uuid4().hex[:6]}")
        doubled = 0
        for r in range(rounds):
            got = await asyncio.gather(
                *(table.register_study(registry(10, f"n{r}")) for _ in range(32)),
                return_exceptions=True,
            )
            doubled += sum(isinstance(g, str) for g in got) != 1
        print(f"rounds with more than one of 32 registrations accepted: {doubled} of {rounds}")
        await table.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--repo", help="run against the ld2 package of another checkout")
    args = parser.parse_args()
    if args.repo:
        sys.path.insert(0, args.repo)
    asyncio.run(main(args.rounds))
