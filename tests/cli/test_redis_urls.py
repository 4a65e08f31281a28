"""Redis URLs as platforms hand them out: TLS with a self-signed certificate, passwords that must
never reach a log, an explicit cluster switch; and a reaper stopped by SIGTERM."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ld2.store.urls import redacted
from tests.cli.test_faults import full_env, ld2_cmd
from tests.cluster import LocalCluster
from tests.conftest import _free_port


def ld2(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ld2_cmd(), *args], env=full_env(env or {}), capture_output=True, text=True, timeout=120
    )


def test_passwords_are_never_shown() -> None:
    assert redacted("redis://:hunter2@h:6379/0") == "redis://:***@h:6379/0"
    assert redacted("rediss://me:hunter2@[::1]:6380") == "rediss://me:***@[::1]:6380"
    assert redacted("redis://h:6379") == "redis://h:6379"
    closed = f"redis://:hunter2@127.0.0.1:{_free_port()}/0"
    out = ld2("status", "--redis", closed)
    assert out.returncode == 1
    assert "hunter2" not in out.stderr + out.stdout and ":***@" in out.stderr, out.stderr


def test_a_bad_cluster_switch_is_named() -> None:
    out = ld2("status", "--redis", "redis://127.0.0.1:1/0", env={"LD2_REDIS_CLUSTER": "maybe"})
    assert out.returncode == 2 and "LD2_REDIS_CLUSTER" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@contextlib.contextmanager
def tls_redis(tmp_path: Path) -> Iterator[int]:
    """A redis-server speaking TLS only, with a self-signed certificate."""
    if not shutil.which("openssl") or not shutil.which("redis-server"):
        pytest.skip("openssl and redis-server are needed for a TLS Redis")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_cert_reqs="none")
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:  # e.g. a redis-server built without TLS
                pytest.skip(f"this redis-server cannot serve TLS: {proc.stdout.read()[-300:]}")  # type: ignore[union-attr]
            with contextlib.suppress(redis.RedisError, OSError):
                if client.ping():
                    break
            assert time.monotonic() < deadline, "the TLS redis-server did not answer"
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    with tls_redis(tmp_path) as port:
        url = f"rediss://127.0.0.1:{port}/0"
        strict = ld2("status", "--redis", url)
        assert strict.returncode == 1 and "certificate verify failed" in strict.stderr
        lenient = ld2("status", "--redis", url, env={"LD2_REDIS_SSL_CERT_REQS": "none"})
        assert lenient.returncode == 0, lenient.stderr
        bad = ld2("status", "--redis", url, env={"LD2_REDIS_SSL_CERT_REQS": "off"})
        assert bad.returncode == 2 and "LD2_REDIS_SSL_CERT_REQS" in bad.stderr


@pytest.mark.parametrize("round_", range(3))
def test_sigterm_ends_the_reaper_cleanly(private_redis_url: str | None, round_: int) -> None:
    """A reaper passing every millisecond, so SIGTERM lands mid-call: a cancellation alone can
    be swallowed there (Python 3.11's wait_for, under redis-py); the stop event is not."""
    if private_redis_url is None:
        pytest.skip("redis-server is needed")
    client = redis.Redis.from_url(private_redis_url)
    before = len(client.client_list())
    proc = subprocess.Popen(
        [*ld2_cmd(), "reaper", "--interval", "0.001", "--redis", private_redis_url],
        env=full_env({}), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(client.client_list()) <= before:  # connected: its loop is running
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.02)
        time.sleep(0.01 * round_)  # a different moment of its loop each round
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cluster_urls_that_cannot_work_are_named(
    local_cluster: LocalCluster, private_redis_url: str | None
) -> None:
    ok = ld2("status", "--redis", local_cluster.url)
    assert ok.returncode == 0, ok.stderr
    db1 = ld2("status", "--redis", f"{local_cluster.url}/1")
    assert db1.returncode == 2 and "cluster mode" in db1.stderr, db1.stderr  # only database 0
    assert "Traceback" not in db1.stderr
    if private_redis_url is not None:  # told it is a cluster, but it is a single server
        single = ld2("status", "--redis", private_redis_url, env={"LD2_REDIS_CLUSTER": "yes"})
        assert single.returncode == 2 and "cluster" in single.stderr.lower(), single.stderr
        assert "Traceback" not in single.stderr
