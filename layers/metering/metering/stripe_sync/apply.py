"""Apply one verified Stripe event: at most once, and to the same final state in any delivery order.

One transaction per event (`run_in_transaction`). Its first statement claims the event id in
`stripe_events` (ON CONFLICT DO NOTHING): a second delivery, even a concurrent one, finds the claim
and answers `duplicate`; a failure rolls the claim back with the effects, so Stripe's retry applies
it cleanly. Per subscription, events serialize on the mirror row (inserted as a placeholder when
an invoice or a checkout names a subscription before its first snapshot); per user, on the
accounts row. Lock order: subscription, account, balances.

Why the order of delivery does not matter (api.md section 5, metering.md "Stripe subscription
lifecycle"):
- the mirror's fields come from the newest snapshot (`snapshot_created`); its status from the newest
  status change (`status_created`: snapshots and failed payments), except that `canceled` is final,
  as it is in Stripe; its period only ever moves forward;
- a snapshot, even a stale one, is a fact about the period it describes: that period's plan is the
  highest-ranked plan any entitled snapshot reported for it (an upgrade applies at once, a downgrade
  leaves the period's plan alone and governs the next period). Rows that were only guessed (created
  by usage, or by a renewal before any snapshot named the period: kind 'assumed') take the plan of
  the first snapshot that does;
- a renewal is claimed per invoice (`renewals`) and per ending period (`periods.rolled_over`). Its
  inputs are kept (`renewal_rollovers`), so when the ending period's plan is corrected afterwards
  (a mid-period upgrade delivered after the invoice) the rollover is recomputed and the difference
  journaled; the balance ends as if the events had arrived in order;
- the account's current subscription is the one with the greatest Stripe `created`; the highest rank
  and `last_paid_at` only ever grow.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, RowMapping, text

from metering.catalog import Catalog, Plan, get_catalog
from metering.config import get_settings
from metering.db.engine import run_in_transaction
from metering.db.store import ensure_period, lock_current, lock_pools, post_entry
from metering.domain.ledger import rollover_after_renewal
from metering.domain.periods import ENTITLED_STATUSES, PeriodKind, PeriodSpec
from metering.errors import INT64_MAX
from metering.observability import Metric, count, logger
from metering.stripe_sync.objects import (
    CHECKOUT_ASYNC_SUCCEEDED,
    CHECKOUT_COMPLETED,
    CHECKOUT_TYPES,
    HANDLED_TYPES,
    INVOICE_PAYMENT_FAILED,
    NEVER_STARTED,
    PAID_TYPES,
    SNAPSHOT_TYPES,
    SUBSCRIPTION_DELETED,
    TERMINAL_STATUS,
    CheckoutSession,
    Invoice,
    ObjectError,
    StripeEvent,
    Subscription,
    epoch,
    parse_checkout_session,
    parse_event,
    parse_invoice,
    parse_subscription,
)

# Outcomes: the webhook answers them, and stripe_events.outcome stores them. `pending` (kept until a
# checkout session links the event's customer or subscription to a user) is answered `ignored`.
OK, STALE, IGNORED, DUPLICATE, PENDING = "ok", "stale", "ignored", "duplicate", "pending"

_CLAIM_SQL = text(
    """
    INSERT INTO stripe_events (event_id, type, created, outcome, object_id)
    VALUES (:id, :type, :created, 'applying', :object_id)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
    """
)
_OUTCOME_SQL = text("UPDATE stripe_events SET outcome = :outcome WHERE event_id = :id")

_LOCK_SUBSCRIPTION_SQL = text(
    """
    INSERT INTO subscriptions (subscription_id, customer_id, status, stripe_status, created,
                               snapshot_created, status_created)
    VALUES (:s, :c, 'incomplete', 'incomplete', to_timestamp(0), 0, 0)
    ON CONFLICT (subscription_id) DO UPDATE
        SET customer_id = coalesce(subscriptions.customer_id, excluded.customer_id)
    RETURNING subscription_id, user_id, customer_id, price_id, plan_id, status, stripe_status,
              current_period_start, current_period_end, billing_cycle_anchor, cancel_at_period_end,
              cancel_at, canceled_at, created, snapshot_created, status_created
    """
)
_WRITE_SUBSCRIPTION_SQL = text(
    """
    UPDATE subscriptions SET user_id = :user_id, customer_id = :customer_id, price_id = :price_id,
        plan_id = :plan_id, status = :status, stripe_status = :stripe_status,
        current_period_start = :current_period_start, current_period_end = :current_period_end,
        billing_cycle_anchor = :billing_cycle_anchor, cancel_at_period_end = :cancel_at_period_end,
        cancel_at = :cancel_at, canceled_at = :canceled_at, created = :created,
        snapshot_created = :snapshot_created, status_created = :status_created, updated_at = now()
    WHERE subscription_id = :subscription_id
    """
)
_LOCK_ACCOUNT_SQL = text(
    """
    INSERT INTO accounts (user_id) VALUES (:u)
    ON CONFLICT (user_id) DO UPDATE SET updated_at = accounts.updated_at
    RETURNING user_id, stripe_customer_id, current_subscription_id, current_subscription_created,
              highest_rank, last_paid_at
    """
)
_WRITE_ACCOUNT_SQL = text(
    """
    UPDATE accounts SET stripe_customer_id = :stripe_customer_id,
        current_subscription_id = :current_subscription_id,
        current_subscription_created = :current_subscription_created, highest_rank = :highest_rank,
        last_paid_at = :last_paid_at, updated_at = now()
    WHERE user_id = :user_id
    """
)
_USER_BY_CUSTOMER_SQL = text(
    "SELECT user_id FROM accounts WHERE stripe_customer_id = :c ORDER BY updated_at DESC, user_id LIMIT 1"
)
_PERIOD_AT_SQL = text(
    """
    SELECT period_id, period_start, period_end, plan_id, kind, rolled_over FROM periods
    WHERE user_id = :u AND period_start = :start
    FOR UPDATE
    """
)
_CONFIRM_PERIOD_SQL = text(
    """
    UPDATE periods SET kind = 'subscription', plan_id = :plan, period_end = :end, subscription_id = :s
    WHERE period_id = :p
    """
)
_RAISE_PERIOD_PLAN_SQL = text("UPDATE periods SET plan_id = :plan WHERE period_id = :p")
_ROLLED_OVER_SQL = text("UPDATE periods SET rolled_over = true WHERE period_id = :p")
_CLAIM_RENEWAL_SQL = text(
    """
    INSERT INTO renewals (invoice_id, user_id, subscription_id, ending_period_start, new_period_start,
                          new_period_end)
    VALUES (:invoice, :u, :s, :ending, :new_start, :new_end)
    ON CONFLICT (invoice_id) DO NOTHING
    RETURNING invoice_id
    """
)
_RECORD_ROLLOVER_SQL = text(
    """
    INSERT INTO renewal_rollovers (invoice_id, usage_type, user_id, period_id, used, rollover_before, delta)
    VALUES (:invoice, :t, :u, :p, :used, :before, :delta)
    ON CONFLICT (invoice_id, usage_type) DO UPDATE SET user_id = excluded.user_id,
        period_id = excluded.period_id, used = excluded.used, rollover_before = excluded.rollover_before,
        delta = excluded.delta
    """
)
_ROLLOVERS_OF_PERIOD_SQL = text(
    """
    SELECT invoice_id, usage_type, used, rollover_before, delta FROM renewal_rollovers
    WHERE period_id = :p ORDER BY invoice_id, usage_type
    FOR UPDATE
    """
)
_SET_ROLLOVER_DELTA_SQL = text(
    "UPDATE renewal_rollovers SET delta = :delta WHERE invoice_id = :invoice AND usage_type = :t"
)
_PEND_SQL = text(
    """
    INSERT INTO stripe_pending_events (event_id, subscription_id, customer_id, created, payload)
    VALUES (:id, :s, :c, :created, CAST(:payload AS jsonb))
    ON CONFLICT (event_id) DO NOTHING
    """
)
_TAKE_PENDING_SQL = text(
    """
    DELETE FROM stripe_pending_events
    WHERE (CAST(:s AS text) IS NOT NULL AND subscription_id = :s)
       OR (CAST(:c AS text) IS NOT NULL AND customer_id = :c)
    RETURNING event_id, created, payload
    """
)
_CLAIM_TOPUP_SQL = text(
    """
    INSERT INTO topups (checkout_session_id, user_id, pack_id, usage_type, quantity, amount)
    VALUES (:session, :u, :pack, :t, :quantity, :amount)
    ON CONFLICT (checkout_session_id) DO NOTHING
    RETURNING checkout_session_id
    """
)


def apply_event(event: StripeEvent) -> str:
    """Apply a verified event; returns the status the webhook answers."""
    if event.type not in HANDLED_TYPES:
        logger.info("stripe event ignored: unhandled type", extra={"event_id": event.id, "type": event.type})
        return IGNORED
    catalog = get_catalog()
    billing_enabled = get_settings().billing_enabled
    outcome = run_in_transaction(lambda conn: _claim_and_apply(conn, event, catalog, billing_enabled))
    logger.info("stripe event", extra={"event_id": event.id, "type": event.type, "outcome": outcome})
    if outcome == OK:
        count(Metric.STRIPE_EVENT)
    elif outcome == STALE:
        count(Metric.STRIPE_STALE)
    return IGNORED if outcome == PENDING else outcome


def _claim_and_apply(conn: Connection, event: StripeEvent, catalog: Catalog, billing_enabled: bool) -> str:
    params = {"id": event.id, "type": event.type, "created": event.created, "object_id": event.object_id}
    if conn.execute(_CLAIM_SQL, params).first() is None:
        return DUPLICATE
    outcome = _Sync(conn, catalog, billing_enabled).dispatch(event)
    conn.execute(_OUTCOME_SQL, {"id": event.id, "outcome": outcome})
    return outcome


class _Sync:
    """The effects of events inside one open transaction."""

    def __init__(self, conn: Connection, catalog: Catalog, billing_enabled: bool) -> None:
        self.conn = conn
        self.catalog = catalog
        self.billing_enabled = billing_enabled

    def dispatch(self, event: StripeEvent, hint: str | None = None) -> str:
        """`hint`: the user a checkout session just linked (when applying kept events)."""
        try:
            if event.type in SNAPSHOT_TYPES:
                return self.snapshot(event, parse_subscription(event.object), hint)
            if event.type in PAID_TYPES:
                return self.invoice_paid(event, parse_invoice(event.object), hint)
            if event.type == INVOICE_PAYMENT_FAILED:
                return self.invoice_failed(event, parse_invoice(event.object), hint)
            if event.type in CHECKOUT_TYPES:
                return self.checkout(event, parse_checkout_session(event.object), hint)
        except ObjectError as error:
            logger.warning(
                "stripe event ignored: unusable object",
                extra={"event_id": event.id, "type": event.type, "reason": str(error)},
            )
            return IGNORED
        return IGNORED

    # --- rows -------------------------------------------------------------------------------------

    def lock_subscription(self, subscription_id: str, customer: str | None) -> dict[str, Any]:
        row = self.conn.execute(_LOCK_SUBSCRIPTION_SQL, {"s": subscription_id, "c": customer}).one()
        return dict(row._mapping)

    def write_subscription(self, mirror: dict[str, Any]) -> None:
        self.conn.execute(_WRITE_SUBSCRIPTION_SQL, mirror)

    def lock_account(self, user_id: str) -> dict[str, Any]:
        return dict(self.conn.execute(_LOCK_ACCOUNT_SQL, {"u": user_id}).one()._mapping)

    def write_account(self, account: dict[str, Any]) -> None:
        self.conn.execute(_WRITE_ACCOUNT_SQL, account)

    def user_by_customer(self, customer: str | None) -> str | None:
        if customer is None:
            return None
        row = self.conn.execute(_USER_BY_CUSTOMER_SQL, {"c": customer}).first()
        return None if row is None else str(row.user_id)

    def period_at(self, user_id: str, start: datetime) -> RowMapping | None:
        row = self.conn.execute(_PERIOD_AT_SQL, {"u": user_id, "start": start}).first()
        return None if row is None else row._mapping

    def rank(self, plan_id: str | None) -> int:
        plan = self.catalog.find_plan(plan_id)
        return -1 if plan is None else plan.rank

    def plan_for_price(self, price_id: str | None, event: StripeEvent) -> Plan | None:
        if price_id is None:
            return None
        plan = self.catalog.plan_for_price(price_id)
        if plan is None:
            logger.warning(
                "stripe price matches no catalog plan", extra={"event_id": event.id, "price_id": price_id}
            )
        return plan

    @staticmethod
    def raise_rank(account: dict[str, Any], plan: Plan | None) -> None:
        if plan is not None:
            account["highest_rank"] = max(account["highest_rank"] or 0, plan.rank)

    @staticmethod
    def mark_paid(account: dict[str, Any], moment: datetime) -> None:
        current = account["last_paid_at"]
        account["last_paid_at"] = moment if current is None else max(current, moment)

    def pend(self, event: StripeEvent, subscription_id: str | None, customer: str | None) -> str:
        """Keep an event whose user is not known yet, for the checkout session that will link it."""
        if subscription_id is None and customer is None:
            logger.warning("stripe event ignored: no user", extra={"event_id": event.id, "type": event.type})
            return IGNORED
        self.conn.execute(
            _PEND_SQL,
            {
                "id": event.id,
                "s": subscription_id,
                "c": customer,
                "created": event.created,
                "payload": json.dumps(event.raw, separators=(",", ":")),
            },
        )
        logger.warning(
            "stripe event kept until a checkout session links its user",
            extra={
                "event_id": event.id,
                "type": event.type,
                "subscription": subscription_id,
                "customer": customer,
            },
        )
        return PENDING

    # --- subscription snapshots ----------------------------------------------------------------------

    def snapshot(self, event: StripeEvent, sub: Subscription, hint: str | None) -> str:
        mirror = self.lock_subscription(sub.id, sub.customer)
        user = sub.user_id or mirror["user_id"] or hint or self.user_by_customer(sub.customer)
        if user is None:
            return self.pend(event, sub.id, sub.customer)
        account = self.lock_account(user)
        plan = self.plan_for_price(sub.price_id, event)
        status = sub.status(deleted=event.type == SUBSCRIPTION_DELETED)
        fresh = event.created >= mirror["snapshot_created"]

        before = dict(mirror)
        mirror["user_id"] = user
        if sub.created is not None:
            mirror["created"] = sub.created  # immutable in Stripe: any snapshot may fill it in
        if sub.customer is not None and (fresh or mirror["customer_id"] is None):
            mirror["customer_id"] = sub.customer
        if fresh:
            mirror.update(
                price_id=sub.price_id,
                plan_id=plan.id if plan else None,
                billing_cycle_anchor=sub.billing_cycle_anchor,
                cancel_at_period_end=sub.cancel_at_period_end,
                cancel_at=sub.cancel_at,
                canceled_at=sub.canceled_at,
                snapshot_created=event.created,
            )
        self._set_status(mirror, status, sub.stripe_status, event.created)
        if sub.period is not None:
            start, end = sub.period
            if mirror["current_period_start"] is None or start > mirror["current_period_start"]:
                mirror.update(current_period_start=start, current_period_end=end)
            elif fresh and start == mirror["current_period_start"]:
                mirror["current_period_end"] = end
        if mirror != before:
            self.write_subscription(mirror)

        is_current = self._claim_current(account, sub)
        if account["stripe_customer_id"] is None and sub.customer is not None:
            account["stripe_customer_id"] = sub.customer
        if sub.stripe_status not in NEVER_STARTED:
            self.raise_rank(account, plan)
        self.write_account(account)

        if is_current and status in ENTITLED_STATUSES and plan is not None and sub.period is not None:
            self.period_fact(user, sub.period, plan, sub.id, confirmed=True)
        return OK if fresh else STALE

    @staticmethod
    def _set_status(mirror: dict[str, Any], status: str, stripe_status: str, created: int) -> None:
        """The newest status change wins, except that canceled is final (as in Stripe)."""
        final = mirror["status"] == TERMINAL_STATUS
        if status == TERMINAL_STATUS or (not final and created >= mirror["status_created"]):
            mirror.update(status=status, stripe_status=stripe_status)
            mirror["status_created"] = max(mirror["status_created"], created)

    @staticmethod
    def _claim_current(account: dict[str, Any], sub: Subscription) -> bool:
        """Make `sub` the account's current subscription if it is the most recently created one."""
        current, created = account["current_subscription_id"], account["current_subscription_created"]
        if current == sub.id:
            if sub.created is not None:
                account["current_subscription_created"] = sub.created
            return True
        newer = current is None or (
            sub.created is not None and (created is None or (sub.created, sub.id) > (created, current))
        )
        if newer:
            account.update(current_subscription_id=sub.id, current_subscription_created=sub.created)
        return newer

    # --- periods ------------------------------------------------------------------------------------

    def period_fact(
        self,
        user: str,
        period: tuple[datetime, datetime],
        plan: Plan,
        subscription_id: str,
        *,
        confirmed: bool,
    ) -> None:
        """Stripe says `period` is governed by `plan` (`confirmed`), or we guess so (a renewal that
        knows the period but not its plan): create the row, or correct the one there."""
        start, end = period
        row = self.period_at(user, start)
        if row is None:
            kind: PeriodKind = "subscription" if confirmed else "assumed"
            ensure_period(self.conn, user, PeriodSpec(start, end, plan.id, kind, subscription_id))
            row = self.period_at(user, start)
            assert row is not None
        if not confirmed or (row["plan_id"] == plan.id and row["kind"] == "subscription"):
            return
        if row["kind"] != "subscription":
            # a guessed row (usage before Stripe's renewal arrived, or a renewal before any snapshot)
            self.conn.execute(
                _CONFIRM_PERIOD_SQL,
                {"p": row["period_id"], "plan": plan.id, "end": end, "s": subscription_id},
            )
        elif plan.rank > self.rank(row["plan_id"]):
            # a mid-period upgrade applies at once; a downgrade waits for the next period's row
            self.conn.execute(_RAISE_PERIOD_PLAN_SQL, {"p": row["period_id"], "plan": plan.id})
        else:
            return
        if row["plan_id"] != plan.id and row["rolled_over"]:
            self.reprice_rollover(user, row["period_id"], plan)

    def reprice_rollover(self, user: str, period_id: UUID, plan: Plan) -> None:
        """The ending period's plan changed after its renewal: recompute that rollover from the
        renewal's own inputs and journal the difference."""
        for r in self.conn.execute(_ROLLOVERS_OF_PERIOD_SQL, {"p": period_id}).all():
            kind = self.catalog.usage_type(r.usage_type)
            if kind is None or not kind.pools:
                continue
            after = rollover_after_renewal(
                limit=plan.limit(kind.id), used=r.used, rollover=r.rollover_before, cap=kind.rollover_cap
            )
            delta = after - r.rollover_before
            if delta == r.delta:
                continue
            lock_pools(self.conn, user, kind.id, period_id)
            post_entry(
                self.conn,
                user_id=user,
                usage_type=kind.id,
                reason="rollover",
                ref=r.invoice_id,
                rollover=delta - r.delta,
            )
            self.conn.execute(
                _SET_ROLLOVER_DELTA_SQL, {"invoice": r.invoice_id, "t": kind.id, "delta": delta}
            )

    # --- invoices -----------------------------------------------------------------------------------

    def _invoice_user(
        self, event: StripeEvent, invoice: Invoice, hint: str | None
    ) -> tuple[str | None, dict[str, Any] | None]:
        mirror = (
            self.lock_subscription(invoice.subscription_id, invoice.customer)
            if invoice.subscription_id
            else None
        )
        user = (
            invoice.user_id
            or (mirror["user_id"] if mirror else None)
            or hint
            or self.user_by_customer(invoice.customer)
        )
        return user, mirror

    def invoice_paid(self, event: StripeEvent, invoice: Invoice, hint: str | None) -> str:
        user, mirror = self._invoice_user(event, invoice, hint)
        if user is None:
            return self.pend(event, invoice.subscription_id, invoice.customer)
        account = self.lock_account(user)
        self.mark_paid(account, invoice.paid_at or _moment(event.created))
        line = invoice.subscription_line
        line_plan = self.plan_for_price(line.price_id, event) if line else None
        self.raise_rank(account, line_plan)
        self.write_account(account)
        if mirror is None or not invoice.is_cycle:
            return OK  # other billing reasons only mark the user as having paid

        before = dict(mirror)
        mirror["user_id"] = mirror["user_id"] or user
        new_period = line.period if line else None
        if new_period is not None and (
            mirror["current_period_start"] is None or new_period[0] > mirror["current_period_start"]
        ):
            mirror.update(current_period_start=new_period[0], current_period_end=new_period[1])
        if mirror != before:
            self.write_subscription(mirror)

        if account["current_subscription_id"] not in (None, mirror["subscription_id"]):
            logger.info(
                "renewal of a subscription that is not the user's current one: mirror only",
                extra={"event_id": event.id, "invoice": invoice.id},
            )
            return OK
        claimed = self.conn.execute(
            _CLAIM_RENEWAL_SQL,
            {
                "invoice": invoice.id,
                "u": user,
                "s": mirror["subscription_id"],
                "ending": invoice.period_start,
                "new_start": new_period[0] if new_period else None,
                "new_end": new_period[1] if new_period else None,
            },
        ).first()
        if claimed is not None:  # else this invoice was renewed by its other event type already
            self.renew(event, invoice, user, mirror, new_period, line_plan)
        return OK

    def renew(
        self,
        event: StripeEvent,
        invoice: Invoice,
        user: str,
        mirror: dict[str, Any],
        new_period: tuple[datetime, datetime] | None,
        line_plan: Plan | None,
    ) -> None:
        """Rollover from the ending period (under its own plan), then start the new period."""
        known = self.catalog.find_plan(mirror["plan_id"])
        ending_start = invoice.period_start
        if ending_start is not None:
            ending = self.period_at(user, ending_start)
            if ending is None:
                ends = [
                    moment
                    for moment in (new_period[0] if new_period else None, invoice.period_end)
                    if moment is not None and moment > ending_start
                ]
                if ends:
                    # neither usage nor a snapshot created it: the mirror's plan is the best guess,
                    # corrected (and the rollover with it) when a snapshot of that period arrives
                    guess = known or line_plan or self.catalog.free_plan
                    spec = PeriodSpec(ending_start, ends[0], guess.id, "assumed", mirror["subscription_id"])
                    ensure_period(self.conn, user, spec)
                    ending = self.period_at(user, ending_start)
            if ending is None:
                logger.warning("renewal without an ending period", extra={"event_id": event.id})
            elif ending["rolled_over"]:
                logger.warning(
                    "ending period already rolled over by another invoice",
                    extra={"event_id": event.id, "invoice": invoice.id},
                )
            else:
                if self.billing_enabled:
                    self.rollover(user, invoice.id, ending)
                self.conn.execute(_ROLLED_OVER_SQL, {"p": ending["period_id"]})
        if new_period is not None:
            plan = line_plan or known or self.catalog.free_plan
            self.period_fact(
                user, new_period, plan, mirror["subscription_id"], confirmed=line_plan is not None
            )

    def rollover(self, user: str, invoice_id: str, ending: RowMapping) -> None:
        plan = self.catalog.find_plan(ending["plan_id"]) or self.catalog.free_plan
        for kind in self.catalog.usage_types.values():
            if not kind.pools:
                continue  # plain counters never roll over
            # every pooled type's inputs are kept, even at limit 0: a later upgrade may reprice it
            pools = lock_pools(self.conn, user, kind.id, ending["period_id"])
            after = rollover_after_renewal(
                limit=plan.limit(kind.id), used=pools.used, rollover=pools.rollover, cap=kind.rollover_cap
            )
            delta = after - pools.rollover
            if delta:
                post_entry(
                    self.conn,
                    user_id=user,
                    usage_type=kind.id,
                    reason="rollover",
                    ref=invoice_id,
                    rollover=delta,
                )
            self.conn.execute(
                _RECORD_ROLLOVER_SQL,
                {
                    "invoice": invoice_id,
                    "t": kind.id,
                    "u": user,
                    "p": ending["period_id"],
                    "used": pools.used,
                    "before": pools.rollover,
                    "delta": delta,
                },
            )

    def invoice_failed(self, event: StripeEvent, invoice: Invoice, hint: str | None) -> str:
        if invoice.subscription_id is None:
            return IGNORED  # a one-off invoice: no subscription status to change
        user, mirror = self._invoice_user(event, invoice, hint)
        if user is None:
            return self.pend(event, invoice.subscription_id, invoice.customer)
        assert mirror is not None
        self.lock_account(user)
        before = dict(mirror)
        mirror["user_id"] = mirror["user_id"] or user
        if invoice.billing_reason == "subscription_create":
            outcome = OK  # the first payment failed: Stripe keeps the subscription `incomplete`
        elif event.created < mirror["status_created"]:
            outcome = STALE
        else:
            outcome = OK
            if mirror["status"] != TERMINAL_STATUS:
                mirror.update(status="past_due", stripe_status="past_due", status_created=event.created)
        if mirror != before:
            self.write_subscription(mirror)
        return outcome

    # --- checkout sessions --------------------------------------------------------------------------

    def checkout(self, event: StripeEvent, session: CheckoutSession, hint: str | None) -> str:
        if session.mode == "subscription":
            return self.link(event, session, hint)
        if session.mode != "payment":
            return IGNORED  # setup mode: nothing to meter
        if event.type == CHECKOUT_COMPLETED and not session.is_paid:
            return OK  # an asynchronous payment: credited by async_payment_succeeded
        assert event.type in (CHECKOUT_COMPLETED, CHECKOUT_ASYNC_SUCCEEDED)
        return self.topup(event, session, hint)

    def link(self, event: StripeEvent, session: CheckoutSession, hint: str | None) -> str:
        """Link the user to the session's customer and subscription, then apply what was kept."""
        mirror = (
            self.lock_subscription(session.subscription_id, session.customer)
            if session.subscription_id
            else None
        )
        user = (
            session.user_id
            or hint
            or (mirror["user_id"] if mirror else None)
            or self.user_by_customer(session.customer)
        )
        if user is None:
            logger.warning(
                "checkout session without a user", extra={"event_id": event.id, "session": session.id}
            )
            return IGNORED
        if mirror is not None and mirror["user_id"] != user:
            mirror["user_id"] = user
            self.write_subscription(mirror)
        account = self.lock_account(user)
        if session.customer is not None and account["stripe_customer_id"] != session.customer:
            account["stripe_customer_id"] = session.customer
            self.write_account(account)
        self.apply_kept(session.subscription_id, session.customer, user)
        return OK

    def apply_kept(self, subscription_id: str | None, customer: str | None, user: str) -> None:
        kept = self.conn.execute(_TAKE_PENDING_SQL, {"s": subscription_id, "c": customer}).all()
        for row in sorted(kept, key=lambda r: (r.created, r.event_id)):
            payload = row.payload if isinstance(row.payload, dict) else json.loads(row.payload)
            event = parse_event(payload)
            outcome = self.dispatch(event, hint=user)
            self.conn.execute(_OUTCOME_SQL, {"id": event.id, "outcome": outcome})
            logger.info("kept stripe event applied", extra={"event_id": event.id, "outcome": outcome})

    def topup(self, event: StripeEvent, session: CheckoutSession, hint: str | None) -> str:
        pack = self.catalog.pack(session.pack_id) if session.pack_id else None
        if pack is None or session.quantity is None:
            logger.warning(
                "top-up ignored: metadata.pack is not a catalog pack or metadata.quantity is invalid",
                extra={"event_id": event.id, "session": session.id, "pack": session.pack_id},
            )
            return IGNORED
        user = session.user_id or hint or self.user_by_customer(session.customer)
        if user is None:
            return self.pend(event, None, session.customer)
        amount = pack.amount * session.quantity
        self.lock_account(user)
        _, pools = lock_current(
            self.conn, user, pack.usage_type, datetime.now(UTC), self.catalog.free_plan.id
        )
        if pools.purchased + amount > INT64_MAX:
            logger.warning("top-up ignored: purchased balance would overflow", extra={"event_id": event.id})
            return IGNORED
        claimed = self.conn.execute(
            _CLAIM_TOPUP_SQL,
            {
                "session": session.id,
                "u": user,
                "pack": pack.id,
                "t": pack.usage_type,
                "quantity": session.quantity,
                "amount": amount,
            },
        ).first()
        if claimed is None:
            return OK  # credited already, by the session's other event type
        post_entry(
            self.conn,
            user_id=user,
            usage_type=pack.usage_type,
            reason="topup",
            ref=session.id,
            purchased=amount,
        )
        return OK


def _moment(created: int) -> datetime:
    moment = epoch(created)
    assert moment is not None
    return moment
