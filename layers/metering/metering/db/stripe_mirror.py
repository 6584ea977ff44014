"""The Stripe mirror's SQL: applied event ids, subscriptions, accounts, events kept until their
user is known, renewals (and the inputs of their rollovers) and top-ups.

Rows travel as plain dicts of their columns: `metering.domain.subscriptions` merges events into
them, and the `write_*` functions store them back. Per subscription, events serialize on the
mirror row (`lock_subscription`, which inserts a placeholder when an invoice or a checkout names a
subscription before its first snapshot); per user, on the accounts row. Lock order:
subscription, account, balances (`metering.db.ledger`).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from metering.db.sql import Statement, first, one, queue, rows

if TYPE_CHECKING:
    from sqlalchemy import Connection

# --- event ids ----------------------------------------------------------------------------------------

_CLAIM_EVENT = Statement(
    """
    INSERT INTO stripe_events (event_id, type, created, outcome, object_id)
    VALUES (:id, :type, :created, 'applying', :object_id)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
    """
)
_SET_OUTCOME = Statement("UPDATE stripe_events SET outcome = :outcome WHERE event_id = :id")


def claim_event(conn: Connection, event_id: str, type_: str, created: int, object_id: str | None) -> bool:
    """Claim a Stripe event id for this transaction; False if it was applied before."""
    params = {"id": event_id, "type": type_, "created": created, "object_id": object_id}
    return first(conn, _CLAIM_EVENT, params) is not None


def set_outcome(conn: Connection, event_id: str, outcome: str) -> None:
    queue(conn, _SET_OUTCOME, {"id": event_id, "outcome": outcome})


# --- subscriptions and accounts ------------------------------------------------------------------------

_LOCK_SUBSCRIPTION = Statement(
    """
    INSERT INTO subscriptions (subscription_id, customer_id, status, stripe_status, created,
                               snapshot_created, status_created)
    VALUES (:subscription_id, :customer_id, 'incomplete', 'incomplete', to_timestamp(0), 0, 0)
    ON CONFLICT (subscription_id) DO UPDATE
        SET customer_id = coalesce(subscriptions.customer_id, excluded.customer_id)
    RETURNING subscription_id, user_id, customer_id, price_id, plan_id, status, stripe_status,
              current_period_start, current_period_end, billing_cycle_anchor, cancel_at_period_end,
              cancel_at, canceled_at, created, snapshot_created, status_created, snapshot_key, status_key
    """
)
_WRITE_SUBSCRIPTION = Statement(
    """
    UPDATE subscriptions SET user_id = :user_id, customer_id = :customer_id, price_id = :price_id,
        plan_id = :plan_id, status = :status, stripe_status = :stripe_status,
        current_period_start = :current_period_start, current_period_end = :current_period_end,
        billing_cycle_anchor = :billing_cycle_anchor, cancel_at_period_end = :cancel_at_period_end,
        cancel_at = :cancel_at, canceled_at = :canceled_at, created = :created,
        snapshot_created = :snapshot_created, status_created = :status_created,
        snapshot_key = :snapshot_key, status_key = :status_key, updated_at = now()
    WHERE subscription_id = :subscription_id
    """
)
_LOCK_ACCOUNT = Statement(
    """
    INSERT INTO accounts (user_id) VALUES (:user_id)
    ON CONFLICT (user_id) DO UPDATE SET updated_at = accounts.updated_at
    RETURNING user_id, stripe_customer_id, current_subscription_id, current_subscription_created,
              highest_rank, last_paid_at
    """
)
_WRITE_ACCOUNT = Statement(
    """
    UPDATE accounts SET stripe_customer_id = :stripe_customer_id,
        current_subscription_id = :current_subscription_id,
        current_subscription_created = :current_subscription_created, highest_rank = :highest_rank,
        last_paid_at = :last_paid_at, updated_at = now()
    WHERE user_id = :user_id
    """
)
_USER_BY_CUSTOMER = Statement(
    "SELECT user_id FROM accounts WHERE stripe_customer_id = :customer_id"
    " ORDER BY updated_at DESC, user_id LIMIT 1"
)


def lock_subscription(conn: Connection, subscription_id: str, customer_id: str | None) -> dict[str, Any]:
    """The mirror row of a subscription, locked (a placeholder, status `incomplete`, if new)."""
    row = one(conn, _LOCK_SUBSCRIPTION, {"subscription_id": subscription_id, "customer_id": customer_id})
    return dict(row._asdict())


def write_subscription(conn: Connection, mirror: dict[str, Any]) -> None:
    queue(conn, _WRITE_SUBSCRIPTION, mirror)


def lock_account(conn: Connection, user_id: str) -> dict[str, Any]:
    """The accounts row of a user, locked (created if new)."""
    return dict(one(conn, _LOCK_ACCOUNT, {"user_id": user_id})._asdict())


def write_account(conn: Connection, account: dict[str, Any]) -> None:
    queue(conn, _WRITE_ACCOUNT, account)


def user_by_customer(conn: Connection, customer_id: str | None) -> str | None:
    """The user most recently linked to a Stripe customer."""
    if customer_id is None:
        return None
    row = first(conn, _USER_BY_CUSTOMER, {"customer_id": customer_id})
    return None if row is None else str(row.user_id)


# --- periods as Stripe states them -----------------------------------------------------------------------

_PERIOD_AT = Statement(
    """
    SELECT period_id, period_start, period_end, plan_id, kind, rolled_over FROM periods
    WHERE user_id = :user_id AND period_start = :start
    FOR UPDATE
    """
)
_STATE_PERIOD = Statement(
    """
    UPDATE periods SET kind = 'subscription', plan_id = :plan, period_end = :end,
        subscription_id = :subscription_id
    WHERE period_id = :period_id
    """
)
_MARK_ROLLED_OVER = Statement("UPDATE periods SET rolled_over = true WHERE period_id = :period_id")


def period_at(conn: Connection, user_id: str, start: datetime) -> dict[str, Any] | None:
    """The period row of (user, start), locked; None if there is none."""
    row = first(conn, _PERIOD_AT, {"user_id": user_id, "start": start})
    return None if row is None else dict(row._asdict())


def state_period(
    conn: Connection, period_id: UUID, plan_id: str, end: datetime, subscription_id: str
) -> None:
    """A period row as Stripe states it: a subscription's period, its plan and its end."""
    queue(
        conn,
        _STATE_PERIOD,
        {"period_id": period_id, "plan": plan_id, "end": end, "subscription_id": subscription_id},
    )


def mark_rolled_over(conn: Connection, period_id: UUID) -> None:
    queue(conn, _MARK_ROLLED_OVER, {"period_id": period_id})


# --- renewals ---------------------------------------------------------------------------------------------

_CLAIM_RENEWAL = Statement(
    """
    INSERT INTO renewals (invoice_id, user_id, subscription_id, ending_period_start, new_period_start,
                          new_period_end)
    VALUES (:invoice_id, :user_id, :subscription_id, :ending, :new_start, :new_end)
    ON CONFLICT (invoice_id) DO NOTHING
    RETURNING invoice_id
    """
)
_RECORD_ROLLOVER = Statement(
    """
    INSERT INTO renewal_rollovers (invoice_id, usage_type, user_id, period_id, used, rollover_before, delta)
    VALUES (:invoice_id, :usage_type, :user_id, :period_id, :used, :before, :delta)
    ON CONFLICT (invoice_id, usage_type) DO UPDATE SET user_id = excluded.user_id,
        period_id = excluded.period_id, used = excluded.used, rollover_before = excluded.rollover_before,
        delta = excluded.delta
    """
)
_ROLLOVERS_OF_PERIOD = Statement(
    """
    SELECT invoice_id, usage_type, used, rollover_before, delta FROM renewal_rollovers
    WHERE period_id = :period_id ORDER BY invoice_id, usage_type
    FOR UPDATE
    """
)
_SET_ROLLOVER_DELTA = Statement(
    "UPDATE renewal_rollovers SET delta = :delta WHERE invoice_id = :invoice_id AND usage_type = :usage_type"
)


def claim_renewal(
    conn: Connection,
    invoice_id: str,
    user_id: str,
    subscription_id: str,
    ending: datetime | None,
    new_period: tuple[datetime, datetime] | None,
) -> bool:
    """Claim an invoice's renewal; False if the invoice was renewed before (by its other event)."""
    params = {
        "invoice_id": invoice_id,
        "user_id": user_id,
        "subscription_id": subscription_id,
        "ending": ending,
        "new_start": new_period[0] if new_period else None,
        "new_end": new_period[1] if new_period else None,
    }
    return first(conn, _CLAIM_RENEWAL, params) is not None


def record_rollover(
    conn: Connection,
    invoice_id: str,
    usage_type: str,
    user_id: str,
    period_id: UUID,
    used: int,
    rollover_before: int,
    delta: int,
) -> None:
    """The inputs and result of one usage type's rollover at a renewal (to reprice it later)."""
    queue(
        conn,
        _RECORD_ROLLOVER,
        {
            "invoice_id": invoice_id,
            "usage_type": usage_type,
            "user_id": user_id,
            "period_id": period_id,
            "used": used,
            "before": rollover_before,
            "delta": delta,
        },
    )


def rollovers_of_period(conn: Connection, period_id: UUID) -> list[Any]:
    """The rollovers applied when `period_id` ended, locked: (invoice_id, usage_type, used,
    rollover_before, delta)."""
    return rows(conn, _ROLLOVERS_OF_PERIOD, {"period_id": period_id})


def set_rollover_delta(conn: Connection, invoice_id: str, usage_type: str, delta: int) -> None:
    queue(conn, _SET_ROLLOVER_DELTA, {"invoice_id": invoice_id, "usage_type": usage_type, "delta": delta})


# --- events kept until a checkout links their user --------------------------------------------------------

_KEEP_EVENT = Statement(
    """
    INSERT INTO stripe_pending_events (event_id, subscription_id, customer_id, created, payload)
    VALUES (:id, :subscription_id, :customer_id, :created, CAST(:payload AS jsonb))
    ON CONFLICT (event_id) DO NOTHING
    """
)
_TAKE_KEPT = Statement(
    """
    DELETE FROM stripe_pending_events
    WHERE (CAST(:subscription_id AS text) IS NOT NULL AND subscription_id = :subscription_id)
       OR (CAST(:customer_id AS text) IS NOT NULL AND customer_id = :customer_id)
    RETURNING event_id, created, payload
    """
)


def keep_event(
    conn: Connection,
    event_id: str,
    subscription_id: str | None,
    customer_id: str | None,
    created: int,
    payload: dict[str, Any],
) -> None:
    queue(
        conn,
        _KEEP_EVENT,
        {
            "id": event_id,
            "subscription_id": subscription_id,
            "customer_id": customer_id,
            "created": created,
            "payload": json.dumps(payload, separators=(",", ":")),
        },
    )


def take_kept(conn: Connection, subscription_id: str | None, customer_id: str | None) -> list[dict[str, Any]]:
    """Remove and return the payloads of the events kept for a subscription or a customer."""
    found = rows(conn, _TAKE_KEPT, {"subscription_id": subscription_id, "customer_id": customer_id})
    return [row.payload if isinstance(row.payload, dict) else json.loads(row.payload) for row in found]


# --- top-ups ----------------------------------------------------------------------------------------------

_CLAIM_TOPUP = Statement(
    """
    INSERT INTO topups (checkout_session_id, user_id, pack_id, usage_type, quantity, amount)
    VALUES (:session_id, :user_id, :pack_id, :usage_type, :quantity, :amount)
    ON CONFLICT (checkout_session_id) DO NOTHING
    RETURNING checkout_session_id
    """
)


def claim_topup(
    conn: Connection, session_id: str, user_id: str, pack_id: str, usage_type: str, quantity: int, amount: int
) -> bool:
    """Claim a checkout session's top-up; False if it was credited before (by its other event)."""
    params = {
        "session_id": session_id,
        "user_id": user_id,
        "pack_id": pack_id,
        "usage_type": usage_type,
        "quantity": quantity,
        "amount": amount,
    }
    return first(conn, _CLAIM_TOPUP, params) is not None
