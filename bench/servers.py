"""The bench's own database and Redis db: created fresh on every run."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

DEFAULT_ADMIN_URL = "postgresql+pg8000://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
DATABASE = "metering_bench"
REFERENCE_USERS = 1000


@dataclass(frozen=True)
class Servers:
    admin_url: str
    database_url: str
    redis_url: str

    def pgbench_args(self) -> tuple[list[str], dict[str, str]]:
        """Connection options and environment for pgbench/psql against the bench database."""
        url = make_url(self.database_url)
        args = ["-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres"]
        env = {"PGPASSWORD": url.password} if url.password else {}
        return [*args, url.database or DATABASE], env


def urls_from_env() -> Servers:
    admin = os.environ.get("BENCH_DATABASE_ADMIN_URL") or DEFAULT_ADMIN_URL
    redis_url = os.environ.get("BENCH_REDIS_URL") or DEFAULT_REDIS_URL
    database = make_url(admin).set(database=DATABASE).render_as_string(hide_password=False)
    for url in (admin, database, redis_url):
        host = make_url(url).host if url.startswith("postgresql") else url.split("//", 1)[1].split(":")[0]
        if host not in ("127.0.0.1", "localhost", "::1") and not url.startswith("unix://"):
            raise SystemExit(f"bench: refusing a non-local server in {url!r} (127.0.0.1 only)")
    return Servers(admin, database, redis_url)


def prepare(servers: Servers) -> str:
    """Drop and create the database, migrate it to head, add the pgbench reference tables and empty
    the Redis db. Returns the schema revision."""
    engine = create_engine(servers.admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    engine.dispose()

    from metering.db.migrate import upgrade_to_head

    revision = upgrade_to_head(servers.database_url)

    engine = create_engine(servers.database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(
            text(
                "CREATE TABLE bench_log (id uuid DEFAULT gen_random_uuid() PRIMARY KEY, user_id int NOT NULL,"
                " amount bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
            )
        )
        conn.execute(text("CREATE TABLE bench_counter (user_id int PRIMARY KEY, used bigint NOT NULL)"))
        conn.execute(
            text("INSERT INTO bench_counter SELECT g, 0 FROM generate_series(1, :n) g"),
            {"n": REFERENCE_USERS},
        )
        conn.execute(text("VACUUM ANALYZE bench_counter"))
    engine.dispose()

    import redis

    client = redis.Redis.from_url(servers.redis_url)
    client.flushdb()
    client.close()
    return revision


def server_info(servers: Servers) -> dict[str, str]:
    engine = create_engine(servers.admin_url, isolation_level="AUTOCOMMIT")
    out: dict[str, str] = {}
    with engine.connect() as conn:
        out["version"] = conn.execute(text("SELECT version()")).scalar_one()
        for name in ("fsync", "synchronous_commit", "shared_buffers", "wal_sync_method", "max_connections"):
            out[name] = conn.execute(text(f"SHOW {name}")).scalar_one()
    engine.dispose()
    import redis

    client = redis.Redis.from_url(servers.redis_url)
    out["redis_version"] = str(client.info("server").get("redis_version"))
    client.close()
    return out
