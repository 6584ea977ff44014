"""Given-state helpers: put a user on a plan without going through Stripe, read back the ledger."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.support.servers import reset_caches

TEST_CATALOG = Path(__file__).resolve().parent.parent / "fixtures" / "catalog.yaml"


def use_test_catalog() -> None:
    os.environ["METERING_CATALOG"] = str(TEST_CATALOG)
    reset_caches()


def _engine():
    return create_engine(os.environ["DATABASE_URL"], isolation_level="AUTOCOMMIT")


def subscribe(
    user_id: str,
    plan_id: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    status: str = "active",
    subscription_id: str | None = None,
) -> str:
    """A current subscription for the user, as the Stripe sync would have mirrored it."""
    now = datetime.now(UTC)
    start = start or now - timedelta(days=10)
    end = end or start + timedelta(days=30)
    subscription_id = subscription_id or f"sub_{user_id}"
    engine = _engine()
    with engine.connect() as conn:
        conn.execute(
            text(
                """
                INSERT INTO subscriptions (subscription_id, user_id, customer_id, price_id, plan_id, status,
                    stripe_status, current_period_start, current_period_end, billing_cycle_anchor, created,
                    snapshot_created, status_created)
                VALUES (:s, :u, :c, :price, :plan, :status, :status, :start, :end, :start, :start, 0, 0)
                ON CONFLICT (subscription_id) DO UPDATE SET plan_id = excluded.plan_id, status = excluded.status,
                    current_period_start = excluded.current_period_start,
                    current_period_end = excluded.current_period_end
                """
            ),
            {
                "s": subscription_id,
                "u": user_id,
                "c": f"cus_{user_id}",
                "price": f"price_{plan_id}",
                "plan": plan_id,
                "status": status,
                "start": start,
                "end": end,
            },
        )
        conn.execute(
            text(
                """
                INSERT INTO accounts (user_id, stripe_customer_id, current_subscription_id, current_subscription_created)
                VALUES (:u, :c, :s, :start)
                ON CONFLICT (user_id) DO UPDATE SET current_subscription_id = excluded.current_subscription_id
                """
            ),
            {"u": user_id, "c": f"cus_{user_id}", "s": subscription_id, "start": start},
        )
    engine.dispose()
    return subscription_id


def query(sql: str, **params) -> list:
    engine = _engine()
    with engine.connect() as conn:
        rows = conn.execute(text(sql), params).all()
    engine.dispose()
    return rows


def execute(sql: str, **params) -> None:
    engine = _engine()
    with engine.begin() as conn:
        conn.execute(text(sql), params)
    engine.dispose()


def assert_reconciled(user_id: str | None = None) -> None:
    from metering.services.reconcile import reconcile

    report = reconcile(user_id)
    assert report.clean, str(report)


def iso(moment: datetime) -> str:
    """A moment as the API writes it (ISO-8601, UTC, `Z`)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
