"""How Stripe's events merge into the subscription mirror, so that the final state does not depend
on their delivery order (metering.md "Stripe subscription lifecycle"). Plain functions over the
mirror's rows (dicts of their columns, `metering.db.stripe_mirror`); no database here.

- The mirror's fields come from the newest snapshot (`snapshot_created`); its status from the
  newest status change (`status_created`: snapshots and failed payments), except that `canceled`
  is final, as it is in Stripe; its period only ever moves forward.
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


def apply_status(mirror: Row, status: str, stripe_status: str, created: int) -> None:
    """The newest status change wins, except that canceled is final (as in Stripe)."""
    final = mirror["status"] == TERMINAL_STATUS
    if status == TERMINAL_STATUS or (not final and created >= mirror["status_created"]):
        mirror.update(status=status, stripe_status=stripe_status)
        mirror["status_created"] = max(mirror["status_created"], created)


def merge_snapshot(
    mirror: Row,
    *,
    user_id: str,
    snapshot: Any,  # metering.stripe_sync.objects.Subscription
    plan_id: str | None,
    status: str,
    created: int,
) -> bool:
    """A subscription snapshot of event time `created` into its mirror row; True if it is the
    newest snapshot so far (fresh), False if a newer one was applied already (stale: only the facts
    that do not depend on order are kept)."""
    fresh = created >= mirror["snapshot_created"]
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
        )
    apply_status(mirror, status, snapshot.stripe_status, created)
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


def payment_failed(mirror: Row, billing_reason: str | None, created: int) -> bool:
    """A failed invoice payment: the subscription is past due (still entitled), unless it was the
    first payment (Stripe keeps such a subscription `incomplete`) or it is canceled (final).
    False if a newer status change was applied already (stale)."""
    if billing_reason == "subscription_create":
        return True
    if created < mirror["status_created"]:
        return False
    if mirror["status"] != TERMINAL_STATUS:
        mirror.update(status="past_due", stripe_status="past_due", status_created=created)
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
