"""Fixtures of the reliability suite: private PostgreSQL and Redis servers that the fault tests may
stop, restart, reconfigure and kill connections on (the machine's shared servers are never touched),
and small helpers to look at the server while a request is blocked in it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.private_servers import PrivatePostgres, PrivateRedis, wait_for
from tests.support.servers import TABLES, reset_caches

CATALOG = Path(__file__).resolve().parents[1] / "fixtures" / "catalog.yaml"
DB = "metering"


@dataclass
class Private:
    pg: PrivatePostgres
    redis: PrivateRedis
    database_url: str

    @property
    def env(self) -> dict[str, str]:
        """What a container of this test needs in its environment."""
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis.url,
            "METERING_CATALOG": str(CATALOG),
            "STRIPE_WEBHOOK_SECRET": os.environ.get("STRIPE_WEBHOOK_SECRET", ""),
        }

    def sql(self, statement: str, **params: Any) -> list[Any]:
        return self.pg.sql(statement, DB, **params)

    def backends(self, condition: str = "true", **params: Any) -> list[Any]:
        """Client backends of the metering database (pid, state, wait_event_type, wait_event, query)."""
        return self.sql(
            "SELECT pid, state, wait_event_type, wait_event, query FROM pg_stat_activity "
            f"WHERE datname = current_database() AND pid <> pg_backend_pid() AND ({condition})",
            **params,
        )

    def waiting_pid(self, query_part: str, exclude: tuple[int, ...] = (), timeout: float = 30) -> int:
        """The pid of the backend blocked on a lock while running a statement containing
        `query_part` (polled until there is one, other than `exclude`). The service's hot paths
        call routines: pg_stat_activity shows the call (`metering.lock_pairs_v2(...)`)."""

        def find() -> int | None:
            rows = self.backends("wait_event_type = 'Lock' AND position(:q in query) > 0", q=query_part)
            pids = [r.pid for r in rows if r.pid not in exclude]
            return pids[0] if pids else None

        return wait_for(find, timeout, f"a backend waiting on a lock in {query_part!r}")

    def terminate(self, pid: int) -> None:
        assert self.sql("SELECT pg_terminate_backend(:p)", p=pid) == [(True,)]
        wait_for(lambda: not self.backends("pid = :p", p=pid), 30, f"backend {pid} to exit")


@pytest.fixture(scope="module")
def private_servers() -> Iterator[Private]:
    """One private PostgreSQL (with a migrated `metering` database) and one private Redis per module;
    always stopped at the end, whatever happened."""
    pg = PrivatePostgres()
    redis = PrivateRedis()
    try:
        pg.start()
        redis.start()
        yield Private(pg, redis, pg.create_database(DB))
    finally:
        redis.stop()
        pg.destroy()


@pytest.fixture
def private(private_servers: Private, monkeypatch: pytest.MonkeyPatch) -> Iterator[Private]:
    """Each test: both servers up and empty, default settings, this process pointed at them (and
    pointed back afterwards)."""
    p = private_servers
    if not p.pg.running():
        p.pg.start()
    if not p.redis.ping():
        p.redis.stop()
        p.redis.start()
    p.sql(f"ALTER DATABASE {DB} RESET ALL")
    p.sql("ALTER SYSTEM RESET ALL")
    p.sql("SELECT pg_reload_conf()")
    p.sql(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{DB}' AND pid <> pg_backend_pid()"
    )
    p.sql(f"TRUNCATE {TABLES}")
    import redis

    redis.Redis.from_url(p.redis.url).flushall()
    for var in ("BILLING_ENABLED", "USAGE_DLQ_URL", "STRIPE_WEBHOOK_SECRET_ARN"):
        monkeypatch.delenv(var, raising=False)
    from tests.support.stripe_events import SECRET

    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("DATABASE_URL", p.database_url)
    monkeypatch.setenv("REDIS_URL", p.redis.url)
    monkeypatch.setenv("METERING_CATALOG", str(CATALOG))
    reset_caches()
    yield p
    reset_caches()
    monkeypatch.undo()
    reset_caches()
