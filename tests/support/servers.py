"""Where the tests' PostgreSQL and Redis come from, and how they are reset between tests."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

# Every table the service writes, dependents first (the order TRUNCATE and counts can use).
LEDGER_TABLES = (
    "grants",
    "renewal_rollovers",
    "topups",
    "renewals",
    "stripe_pending_events",
    "stripe_events",
    "lifetime_stats",
    "adjustments",
    "usage_events",
    "journal",
    "balances",
    "period_usage",
    "periods",
    "subscriptions",
    "accounts",
)
TABLES = ", ".join(LEDGER_TABLES)  # for TRUNCATE


def _admin_url(state_dir: Path) -> str:
    if os.environ.get("TEST_DATABASE_URL"):
        return os.environ["TEST_DATABASE_URL"]
    from metering_dev.embedded import ensure_database_url, server_reachable_postgres

    if server_reachable_postgres():
        return "postgresql+pg8000://postgres@127.0.0.1:5432/postgres"
    saved = os.environ.pop("DATABASE_URL", None)
    try:
        return ensure_database_url(state_dir)
    finally:
        if saved is not None:
            os.environ["DATABASE_URL"] = saved


def _redis_base(state_dir: Path) -> str:
    if os.environ.get("TEST_REDIS_URL"):
        return os.environ["TEST_REDIS_URL"]
    from metering_dev.embedded import ensure_redis_url, server_reachable_redis

    if server_reachable_redis():
        return "redis://127.0.0.1:6379/0"
    saved = os.environ.pop("REDIS_URL", None)
    try:
        return ensure_redis_url(state_dir)
    finally:
        if saved is not None:
            os.environ["REDIS_URL"] = saved


def prepare_services(worker: int, state_dir: Path) -> dict[str, str]:
    """A fresh database at the latest schema and a Redis db of this worker's own.

    METERING_TEST_SLOT (0-4) separates test runs that share one machine's servers at once.
    """
    slot = int(os.environ.get("METERING_TEST_SLOT", "0"))
    admin = _admin_url(state_dir)
    name = f"metering_test_s{slot}_{worker}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        # a test database need not survive a crash of its server: commits without waiting for the
        # WAL flush (the tests' outcomes do not depend on it; the bench measures with it on)
        conn.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    engine.dispose()
    database_url = make_url(admin).set(database=name).render_as_string(hide_password=False)

    from metering.db.migrate import upgrade_to_head

    upgrade_to_head(database_url)

    base = _redis_base(state_dir)
    db = 1 + slot * 3 + worker  # Redis has 16 dbs: slots 0-4 with up to 3 workers each
    if base.startswith("unix://"):
        redis_url = f"{base.split('?')[0]}?db={db}"
    else:
        redis_url = f"{base.rsplit('/', 1)[0]}/{db}"
    return {"database_url": database_url, "redis_url": redis_url}


def reset_caches() -> None:
    from metering import reservations
    from metering.catalog import get_catalog
    from metering.config import get_settings
    from metering.db.engine import reset_engine

    reset_engine()
    reservations.reset_client()
    get_settings.cache_clear()
    get_catalog.cache_clear()


def reset_state(urls: dict[str, str], *, wipe: bool = True) -> None:
    os.environ["DATABASE_URL"] = urls["database_url"]
    os.environ["REDIS_URL"] = urls["redis_url"]
    for var in ("METERING_CATALOG", "STRIPE_WEBHOOK_SECRET", "BILLING_ENABLED", "USAGE_DLQ_URL"):
        os.environ.pop(var, None)
    reset_caches()
    if not wipe:
        return
    engine = create_engine(urls["database_url"], isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"TRUNCATE {TABLES}"))
    engine.dispose()
    import redis

    redis.Redis.from_url(urls["redis_url"]).flushdb()
