"""The embedded backend: private socket, persistence, reuse of a server left running."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from ld2.store.connect import EmbeddedTable, open_table
from ld2.store.embedded import EmbeddedServer
from ld2.store.files import load_snapshot, save_snapshot
from tests.store.helpers import all_results, int_axis, registry, run_all


def test_socket_only_private_and_reused(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "state")
    url = server.start()
    try:
        assert url.startswith("unix://") and server.owned
        mode = stat.S_IMODE(os.stat(tmp_path / "state").st_mode)
        assert mode == 0o700
        with redis.Redis(unix_socket_path=str(server.socket)) as client:
            assert client.config_get("port")["port"] == "0"  # no TCP listener
            assert client.config_get("appendonly")["appendonly"] == "yes"
        second = EmbeddedServer(tmp_path / "state")
        assert second.start() == url and not second.owned  # reused, not started twice
        second.stop()
        assert server._answers()  # a non-owner does not stop it
    finally:
        server.stop()
    assert not server._answers()


def test_a_server_left_by_a_killed_run_is_reused(tmp_path: Path) -> None:
    code = (
        "import sys; from ld2.store.embedded import EmbeddedServer;"
        f"s = EmbeddedServer({str(tmp_path)!r}); s.start(); print(s.url, flush=True);"
        "import os; os._exit(0)"  # dies without stopping it, like kill -9
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    pid = int((tmp_path / "valkey.pid").read_text())
    again = EmbeddedServer(tmp_path)
    assert again.start() == out.stdout.strip() and not again.owned
    assert int((tmp_path / "valkey.pid").read_text()) == pid
    again.stop(force=True)
    assert not again._answers()


def test_stale_pidfile_is_cleared(tmp_path: Path) -> None:
    (tmp_path / "valkey.pid").write_text("999999\n")
    (tmp_path / "valkey.sock").write_text("")
    server = EmbeddedServer(tmp_path)
    try:
        server.start()
        assert server.owned and server._answers()
    finally:
        server.stop()


async def test_local_run_resumes_after_a_restart(tmp_path: Path) -> None:
    table = open_table(None, state_dir=tmp_path, index_ttl=0.0)
    assert isinstance(table, EmbeddedTable)
    sid = await table.register_study(registry([int_axis("x", 10)], name="resume"))
    res = await table.reserve([], 4, "w")
    await table.register(res, res.arrays()[0])
    await table.close()  # stops the server; the append-only file stays
    table = open_table(None, state_dir=tmp_path, index_ttl=0.0)
    try:
        state = await table.get_study(name="resume")
        assert state.study_id == sid and state.done == 4
        await run_all(table, 4)
        assert (await table.get_study(sid)).status == "done"
    finally:
        await table.close()


async def test_snapshot_file_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("LD2_REDIS_URL", raising=False)
    src = open_table(state_dir=tmp_path / "a", index_ttl=0.0)
    try:
        sid = await src.register_study(registry([int_axis("x", 5)], name="file"))
        await run_all(src, 2)
        assert await save_snapshot(src, tmp_path / "curriculum.json") == 1
        assert not list(tmp_path.glob(".curriculum.json.*"))  # no temp file left behind
    finally:
        await src.close()
    dst = open_table(state_dir=tmp_path / "b", index_ttl=0.0)
    try:
        assert await load_snapshot(dst, tmp_path / "curriculum.json") == [sid]
        assert (await all_results(dst, sid))[0] == list(range(5))
        (tmp_path / "bad.json").write_text("{nope")
        with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
            await load_snapshot(dst, tmp_path / "bad.json")
    finally:
        await dst.close()


async def test_periodic_save_and_reap_loops(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    import asyncio
    import json

    from ld2.store.files import reap_periodically, save_periodically
    from tests.conftest import make_table

    async with make_table(request, "valkey", trial_timeout=0.1) as table:
        sid = await table.register_study(registry([int_axis("x", 4)]))
        await table.reserve([], 4, "crash")
        path = tmp_path / "cur.json"
        tasks = [
            asyncio.create_task(save_periodically(table, path, 0.05)),
            asyncio.create_task(reap_periodically(table, 0.05)),
        ]
        for _ in range(100):
            await asyncio.sleep(0.05)
            if path.exists() and (await table.get_study(sid)).reserved == 0:
                break
        for t in tasks:
            t.cancel()
        assert json.loads(path.read_text())["studies"][0]["hash"]["id"] == sid
        assert (await table.get_study(sid)).reserved == 0


def test_an_existing_state_directory_keeps_its_permissions(tmp_path: Path) -> None:
    open_dir = tmp_path / "open_dir"
    open_dir.mkdir()
    os.chmod(open_dir, 0o1777)
    server = EmbeddedServer(open_dir)
    server.start()
    try:
        assert stat.S_IMODE(os.stat(open_dir).st_mode) == 0o1777  # not locked down to 700
        assert stat.S_IMODE(os.stat(server.socket).st_mode) & 0o077 == 0  # the socket is private
    finally:
        server.stop()
