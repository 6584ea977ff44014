"""`python -m metering migrate` and `reconcile` as an operator runs them."""

import os

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.support import api
from tests.support.cli import metering
from tests.support.state import query, subscribe, use_test_catalog


def test_migrate_twice_on_a_fresh_database(services):
    admin = make_url(services["database_url"]).set(database="postgres")
    name = f"metering_migrate_{os.getpid()}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.set(database=name).render_as_string(hide_password=False)
    try:
        first, second = (
            metering("migrate", env={"DATABASE_URL": url}),
            metering("migrate", env={"DATABASE_URL": url}),
        )
        assert first.returncode == 0, first.stderr
        assert second.returncode == 0, second.stderr
        assert first.stdout == second.stdout
        check = create_engine(url)
        with check.connect() as conn:
            tables = set(
                conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars()
            )
        check.dispose()
        assert {
            "usage_events",
            "journal",
            "balances",
            "periods",
            "stripe_events",
            "alembic_version",
        } <= tables
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def test_reconcile_clean_then_reports_every_drift(clean):
    use_test_catalog()
    subscribe("u1", "basic")
    api.record("e1", "u1", "premium_voice", 5200)
    api.adjust("u1", "a1", "premium_voice", "purchased", 50)
    ok = metering("reconcile", env={"METERING_CATALOG": os.environ["METERING_CATALOG"]})
    assert ok.returncode == 0 and "clean" in ok.stdout

    # tamper with the ledger behind the service's back
    engine = create_engine(os.environ["DATABASE_URL"], isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("UPDATE balances SET purchased = purchased + 7 WHERE user_id = 'u1'"))
        conn.execute(text("UPDATE period_usage SET used = used - 1"))
        conn.execute(
            text("INSERT INTO balances (user_id, usage_type, rollover) VALUES ('u2', 'ocr_tokens', 3)")
        )
    engine.dispose()
    bad = metering("reconcile")
    assert bad.returncode == 1
    assert "3 drift(s)" in bad.stdout
    assert "u1 / premium_voice / purchased: stored 57, but journal sum 50" in bad.stdout
    assert "u1 / premium_voice / used in period" in bad.stdout and "stored 4999" in bad.stdout
    assert "u2 / ocr_tokens / rollover: stored 3, but journal sum 0" in bad.stdout
    one = metering("reconcile", "--user", "u2")
    assert one.returncode == 1 and "u1" not in one.stdout
    assert query("SELECT count(*) FROM journal")[0][0] >= 2


def test_journal_is_append_only(clean):
    api.record("e1", "u1", "server_kokoro", 3)
    engine = create_engine(os.environ["DATABASE_URL"], isolation_level="AUTOCOMMIT")
    with engine.connect() as conn, pytest.raises(Exception, match="append-only"):
        conn.execute(text("UPDATE journal SET delta = 4"))
    engine.dispose()
