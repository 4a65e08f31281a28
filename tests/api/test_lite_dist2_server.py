"""HttpTable against a table node that has only lite_dist2 0.6.7's endpoints.

lite_dist2 itself is not installable here, so the server is ld2's app with every ld2 extra
route removed: what HttpTable must do without them is exactly what it must do with lite_dist2.
"""

from __future__ import annotations

import httpx

from ld2.api import create_app
from ld2.store.http import HttpTable
from tests.conftest import make_table
from tests.store.helpers import int_axis, registry, square

LITE_DIST2_PATHS = {
    "/ping",
    "/save",
    "/status",
    "/status/progress",
    "/study/register",
    "/trial/reserve",
    "/trial/register",
    "/study",
}


async def test_http_table_against_lite_dist2_endpoints_only(request) -> None:  # type: ignore[no-untyped-def]
    async with make_table(request, "valkey") as inner:
        app = create_app(inner)
        app.router.routes[:] = [
            r for r in app.router.routes if getattr(r, "path", "") in LITE_DIST2_PATHS
        ]
        table = HttpTable(
            "http://lite-dist2.test", transport=httpx.ASGITransport(app=app), retries=0
        )
        try:
            sid = await table.register_study(registry([int_axis("x", 10)], name="old"))
            res = await table.reserve([], 4, "w")
            assert res is not None and (res.start, res.count) == (0, 4)
            assert await table.heartbeat(res.trial_id, "w") == "ok"  # no leases to extend there
            await table.fail(res.trial_id, "w", "boom")  # dropped: the lease expires there
            outcome, nxt = await table.register_and_reserve(res, square(res), [], 4)  # two requests
            assert outcome == "ok" and nxt is not None and nxt.start == 4
            state = await table.get_study(sid)  # from /status
            assert state.done == 4 and state.status == "running" and state.spec.name == "old"
            assert [s.study_id for s in await table.list_studies()] == [sid]
            assert [b.values.tolist() async for b in table.iter_results(sid)] == []  # not done yet
            await table.register(nxt, square(nxt))
            last = await table.reserve([], 4, "w")
            assert last is not None
            await table.register(last, square(last))
            blocks = [b async for b in table.iter_results(sid)]
            assert [v for b in blocks for v in b.values.tolist()] == [x * x for x in range(10)]
            assert (await table.progress(60)).cutoff_sec == 60
        finally:
            await table.close()
