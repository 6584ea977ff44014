"""How Stripe's events merge into the subscription mirror, so that the final state does not depend
on their delivery order (metering.md "Stripe subscription lifecycle"). Plain functions over the
mirror's rows (dicts of their columns, `metering.db.stripe_mirror`); no database here.

- Events are ordered by `order_key`: their `created` second, then their stage of Stripe's
  lifecycle, then their id. The mirror's fields come from the newest snapshot (`snapshot_key`);
  its status from the newest status change (`status_key`: snapshots and failed payments), except
  that `canceled` is final, as it is in Stripe; its period only ever moves forward.
- A snapshot, even a stale one, is a fact about the period it describes: the period's plan is the
  highest-ranked plan any entitled snapshot reported for it (`period_correction`).
- The account's current subscription is the one with the greatest Stripe `created`; the highest
  rank and `last_paid_at` only ever grow.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

TERMINAL_STATUS = "canceled"  # Stripe never reactivates a canceled subscription

# Stripe's lifecycle of a subscription, in stages it never goes back from: it starts `incomplete`
# (the first payment not made yet), is started once paid or trialing (trialing, active, past_due,
# unpaid and paused move back and forth), and ends canceled (or incomplete_expired).
LIFECYCLE = {
    "incomplete": 0,
    "trialing": 1,
    "active": 1,
    "past_due": 1,
    "unpaid": 1,
    "paused": 1,
    "canceled": 2,
    "incomplete_expired": 2,
}
STARTED = 1

type Row = dict[str, Any]


def resolve_user(
    explicit: str | None,
    linked_to_subscription: str | None,
    linked_by_checkout: str | None,
    linked_to_customer: Callable[[], str | None],
) -> str | None:
    """Whose event this is, in this order (api.md, "Mapping from Stripe objects"):
    1. the object's own `metadata.user_id` (a checkout session's, or its `client_reference_id`);
    2. the user already linked to the event's subscription;
    3. the user a checkout session has just linked (when it applies the events kept for it);
    4. the user linked to the event's customer (read only when the others are unknown).
    None: nobody yet (a subscription event is then kept until a checkout links it)."""
    return explicit or linked_to_subscription or linked_by_checkout or linked_to_customer()


def order_key(created: int, stripe_status: str | None, event_id: str) -> str:
    """Where an event of a subscription stands among its others, as text that sorts in the order
    they happened: its `created` second; within one second (Stripe's `created` cannot tell a
    signup's `incomplete` snapshot from its `active` one) the stage of the lifecycle the event
    reports (`stripe_status`; None, or a status not listed, counts as started); and last its id,
    a fixed rule for what Stripe leaves unordered, so that no result depends on delivery order."""
    return f"{created:020d}:{LIFECYCLE.get(stripe_status or '', STARTED)}:{event_id}"


def apply_status(mirror: Row, status: str, stripe_status: str, created: int, key: str) -> None:
    """The newest status change (by `order_key`) wins, except that canceled is final (as in Stripe)."""
    final = mirror["status"] == TERMINAL_STATUS
    if status == TERMINAL_STATUS or (not final and key >= mirror["status_key"]):
        mirror.update(status=status, stripe_status=stripe_status)
        mirror["status_created"] = max(mirror["status_created"], created)
        mirror["status_key"] = max(mirror["status_key"], key)


def merge_snapshot(
    mirror: Row,
    *,
    user_id: str,
    snapshot: Any,  # metering.stripe_sync.objects.Subscription
    plan_id: str | None,
    status: str,
    created: int,
    key: str,
) -> bool:
    """A subscription snapshot of event time `created` (and `order_key` `key`) into its mirror
    row; True if it is the newest snapshot so far (fresh), False if a newer one was applied
    already (stale: only the facts that do not depend on order are kept)."""
    fresh = key >= mirror["snapshot_key"]
    mirror["user_id"] = user_id
    if snapshot.created is not None:
        mirror["created"] = snapshot.created  # immutable in Stripe: any snapshot may fill it in
    if snapshot.customer is not None and (fresh or mirror["customer_id"] is None):
        mirror["customer_id"] = snapshot.customer
    if fresh:
        mirror.update(
            price_id=snapshot.price_id,
            plan_id=plan_id,
            billing_cycle_anchor=snapshot.billing_cycle_anchor,
            cancel_at_period_end=snapshot.cancel_at_period_end,
            cancel_at=snapshot.cancel_at,
            canceled_at=snapshot.canceled_at,
            snapshot_created=created,
            snapshot_key=key,
        )
    apply_status(mirror, status, snapshot.stripe_status, created, key)
    if snapshot.period is not None:
        start, end = snapshot.period
        if mirror["current_period_start"] is None or start > mirror["current_period_start"]:
            mirror.update(current_period_start=start, current_period_end=end)
        elif fresh and start == mirror["current_period_start"]:
            mirror["current_period_end"] = end
    return fresh


def advance_period(mirror: Row, period: tuple[datetime, datetime] | None) -> None:
    """A renewal's new period, if it is later than the mirror's (the period never moves back)."""
    if period is not None and (
        mirror["current_period_start"] is None or period[0] > mirror["current_period_start"]
    ):
        mirror.update(current_period_start=period[0], current_period_end=period[1])


def payment_failed(mirror: Row, billing_reason: str | None, created: int, key: str) -> bool:
    """A failed invoice payment: the subscription is past due (still entitled), unless it was the
    first payment (Stripe keeps such a subscription `incomplete`) or it is canceled (final).
    False if a newer status change was applied already (stale)."""
    if billing_reason == "subscription_create":
        return True
    if key < mirror["status_key"]:
        return False
    if mirror["status"] != TERMINAL_STATUS:
        mirror.update(status="past_due", stripe_status="past_due", status_created=created, status_key=key)
    return True


def claim_current(account: Row, subscription_id: str, created: datetime | None) -> bool:
    """Make the subscription the account's current one if it is the most recently created one;
    True if it is the current one (now or already)."""
    current, current_created = account["current_subscription_id"], account["current_subscription_created"]
    if current == subscription_id:
        if created is not None:
            account["current_subscription_created"] = created
        return True
    newer = current is None or (
        created is not None
        and (current_created is None or (created, subscription_id) > (current_created, current))
    )
    if newer:
        account.update(current_subscription_id=subscription_id, current_subscription_created=created)
    return newer


def is_canceling(cancel_at_period_end: bool, cancel_at: datetime | None, period_end: datetime | None) -> bool:
    """metering.md: true if `cancel_at_period_end`, or `cancel_at` is set and not after the period
    end (with the end unknown, a set `cancel_at` counts)."""
    if cancel_at_period_end:
        return True
    if cancel_at is None:
        return False
    return period_end is None or cancel_at <= period_end


def raise_rank(account: Row, rank: int | None) -> None:
    """The highest plan rank the user ever subscribed to (trial eligibility) only grows."""
    if rank is not None:
        account["highest_rank"] = max(account["highest_rank"] or 0, rank)


def mark_paid(account: Row, moment: datetime) -> None:
    current = account["last_paid_at"]
    account["last_paid_at"] = moment if current is None else max(current, moment)


def period_correction(
    row: Row, plan_id: str, end: datetime, rank: Callable[[str | None], int], *, newest: bool
) -> tuple[str, datetime] | None:
    """The (plan, end) a stored period row should have once a snapshot states that `plan_id`
    governs the period starting at the row's start and ending at `end`; None when nothing changes.
    `newest`: no later snapshot of the subscription was applied before (a fresh one).
    - A guessed row (created by usage, kind calendar or assumed, or by a renewal before any
      snapshot) takes Stripe's plan and end.
    - A subscription row: an upgrade applies at once, a downgrade waits for the next period; its
      end follows the newest snapshot (Stripe extends a trial, or switches the interval, without
      moving the start: the row must go on containing the moments it covers)."""
    if row["kind"] != "subscription":
        return plan_id, end
    plan = plan_id if rank(plan_id) > rank(row["plan_id"]) else row["plan_id"]
    new_end = end if newest else row["period_end"]
    if (plan, new_end) == (row["plan_id"], row["period_end"]):
        return None
    return plan, new_end
