"""Apply one verified Stripe event: at most once, and to the same final state in any delivery order.

One transaction per event (`run_in_transaction`). Its first statement claims the event id
(`stripe_mirror.claim_event`): a second delivery, even a concurrent one, finds the claim and
answers `duplicate`; a failure rolls the claim back with the effects, so Stripe's retry applies it
cleanly. The merge rules that make the order of delivery irrelevant are plain functions in
`metering.domain.subscriptions`; the SQL is in `metering.db.stripe_mirror` and
`metering.db.ledger`. What this module adds is the sequence of each event type's effects:

- a snapshot (subscription created, updated, deleted) merges into the mirror, may make the
  subscription the account's current one, and states the plan of the period it describes;
- a paid cycle invoice renews: rollover from the ending period, claimed per invoice
  (`renewals`) and per ending period (`periods.rolled_over`). Its inputs are kept
  (`renewal_rollovers`), so when the ending period's plan is corrected afterwards (a mid-period
  upgrade delivered after the invoice) the rollover is recomputed and the difference journaled;
- a failed payment makes the subscription past due; a paid top-up credits `purchased` once per
  checkout session; a subscription-mode checkout links its user, and applies the events kept
  until then.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from metering.catalog import get_catalog
from metering.config import get_settings
from metering.db import ledger, stripe_mirror
from metering.db.engine import run_in_transaction
from metering.db.ledger import GrantRow
from metering.domain import subscriptions as rules
from metering.domain.ledger import rollover_after_renewal
from metering.domain.periods import ENTITLED_STATUSES, PeriodKind, PeriodSpec
from metering.errors import INT64_MAX
from metering.observability import Metric, count, logger
from metering.services import alerts, grants
from metering.services.context import Meter, Standing, locked_standing, meter, standing
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

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from metering.catalog import Catalog, Plan

# Outcomes: the webhook answers them, and stripe_events.outcome stores them. `pending` (kept until a
# checkout session links the event's customer or subscription to a user) is answered `ignored`.
OK, STALE, IGNORED, DUPLICATE, PENDING = "ok", "stale", "ignored", "duplicate", "pending"


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
    if not stripe_mirror.claim_event(conn, event.id, event.type, event.created, event.object_id):
        return DUPLICATE
    outcome = _Sync(conn, catalog, billing_enabled).dispatch(event)
    stripe_mirror.set_outcome(conn, event.id, outcome)
    return outcome


class _Sync:
    """The effects of events inside one open transaction."""

    def __init__(self, conn: Connection, catalog: Catalog, billing_enabled: bool) -> None:
        self.conn = conn
        self.catalog = catalog
        self.billing_enabled = billing_enabled

    def dispatch(self, event: StripeEvent, linked_user: str | None = None) -> str:
        """`linked_user`: the user a checkout session just linked (when applying kept events)."""
        try:
            if event.type in SNAPSHOT_TYPES:
                return self.snapshot(event, parse_subscription(event.object), linked_user)
            if event.type in PAID_TYPES:
                return self.invoice_paid(event, parse_invoice(event.object), linked_user)
            if event.type == INVOICE_PAYMENT_FAILED:
                return self.invoice_failed(event, parse_invoice(event.object), linked_user)
            if event.type in CHECKOUT_TYPES:
                return self.checkout(event, parse_checkout_session(event.object), linked_user)
        except ObjectError as error:
            logger.warning(
                "stripe event ignored: unusable object",
                extra={"event_id": event.id, "type": event.type, "reason": str(error)},
            )
            return IGNORED
        return IGNORED

    # --- shared steps -------------------------------------------------------------------------------

    def user_of(
        self,
        explicit: str | None,
        mirror: dict[str, Any] | None,
        linked_user: str | None,
        customer: str | None,
    ) -> str | None:
        """The event's user, by the one resolution order (`rules.resolve_user`)."""
        return rules.resolve_user(
            explicit,
            mirror["user_id"] if mirror else None,
            linked_user,
            lambda: stripe_mirror.user_by_customer(self.conn, customer),
        )

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

    def keep(self, event: StripeEvent, subscription_id: str | None, customer: str | None) -> str:
        """Keep an event whose user is not known yet, for the checkout session that will link it."""
        if subscription_id is None and customer is None:
            logger.warning("stripe event ignored: no user", extra={"event_id": event.id, "type": event.type})
            return IGNORED
        stripe_mirror.keep_event(self.conn, event.id, subscription_id, customer, event.created, event.raw)
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

    def snapshot(self, event: StripeEvent, sub: Subscription, linked_user: str | None) -> str:
        mirror = stripe_mirror.lock_subscription(self.conn, sub.id, sub.customer)
        user = self.user_of(sub.user_id, mirror, linked_user, sub.customer)
        if user is None:
            return self.keep(event, sub.id, sub.customer)
        account = stripe_mirror.lock_account(self.conn, user)
        watched = self.alert_standings(user)
        plan = self.plan_for_price(sub.price_id, event)
        status = sub.status(deleted=event.type == SUBSCRIPTION_DELETED)

        before = dict(mirror)
        fresh = rules.merge_snapshot(
            mirror,
            user_id=user,
            snapshot=sub,
            plan_id=plan.id if plan else None,
            status=status,
            created=event.created,
            key=rules.order_key(
                event.created, status if status == "canceled" else sub.stripe_status, event.id
            ),
        )
        if mirror != before:
            stripe_mirror.write_subscription(self.conn, mirror)

        is_current = rules.claim_current(account, sub.id, sub.created)
        if account["stripe_customer_id"] is None and sub.customer is not None:
            account["stripe_customer_id"] = sub.customer
        if sub.stripe_status not in NEVER_STARTED:
            rules.raise_rank(account, plan.rank if plan else None)
        stripe_mirror.write_account(self.conn, account)

        if is_current and status in ENTITLED_STATUSES and plan is not None and sub.period is not None:
            self.period_fact(user, sub.period, plan, sub.id, confirmed=True, newest=fresh)
        self.raise_alerts(user, watched)
        return OK if fresh else STALE

    # --- alerts: a change of plan, period or rollover may cross one ---------------------------------

    def _meter(self, usage_type: str) -> Meter:
        return Meter(self.catalog.usage_types[usage_type], self.catalog, self.billing_enabled)

    def alert_standings(self, user: str) -> dict[str, Standing]:
        """Where the user's usage types that have alerts stand now (locked, after the account:
        the order every Stripe event takes its locks in); {} when no usage type has alerts."""
        kinds = [kind for kind in self.catalog.usage_types if self.catalog.alerts_for(kind)]
        if not kinds or not self.billing_enabled:
            return {}
        now = _now()
        states, _ = ledger.lock_pairs(self.conn, [(user, kind) for kind in kinds], now)
        return {kind: standing(self._meter(kind), states[(user, kind)], now) for kind in kinds}

    def raise_alerts(self, user: str, before: dict[str, Standing]) -> None:
        """The alerts this event's changes made the user cross (`alerts.crossed`), in the period
        containing now."""
        if not before:
            return
        after = self.alert_standings(user)
        for kind, was in before.items():
            alerts.crossed(self.conn, self._meter(kind), user, was, after[kind], _now())

    # --- periods ------------------------------------------------------------------------------------

    def period_fact(
        self,
        user: str,
        period: tuple[datetime, datetime],
        plan: Plan,
        subscription_id: str,
        *,
        confirmed: bool,
        newest: bool = False,
    ) -> None:
        """Stripe says `period` is governed by `plan` (`confirmed`; `newest`: by the newest snapshot
        so far), or we guess so (a renewal that knows the period but not its plan): create the row,
        or correct the one there."""
        start, end = period
        row = stripe_mirror.period_at(self.conn, user, start)
        if row is None:
            kind: PeriodKind = "subscription" if confirmed else "assumed"
            ledger.ensure_period(self.conn, user, PeriodSpec(start, end, plan.id, kind, subscription_id))
            row = stripe_mirror.period_at(self.conn, user, start)
            assert row is not None
        if not confirmed:
            return
        corrected = rules.period_correction(row, plan.id, end, self.rank, newest=newest)
        if corrected is None:
            return
        plan_id, new_end = corrected
        stripe_mirror.state_period(self.conn, row["period_id"], plan_id, new_end, subscription_id)
        if plan_id != row["plan_id"] and row["rolled_over"]:
            self.reprice_rollover(user, row["period_id"], plan)

    def reprice_rollover(self, user: str, period_id: UUID, plan: Plan) -> None:
        """The ending period's plan changed after its renewal: recompute that rollover from the
        renewal's own inputs and journal the difference."""
        for r in stripe_mirror.rollovers_of_period(self.conn, period_id):
            kind = self.catalog.usage_type(r.usage_type)
            if kind is None or not kind.pools:
                continue
            after = rollover_after_renewal(
                limit=plan.limit(kind.id), used=r.used, rollover=r.rollover_before, cap=kind.rollover_cap
            )
            delta = after - r.rollover_before
            if delta == r.delta:
                continue
            ledger.lock_pair_in(self.conn, user, kind.id, period_id, _now())
            ledger.post_entry(
                self.conn,
                user_id=user,
                usage_type=kind.id,
                reason="rollover",
                ref=r.invoice_id,
                rollover=delta - r.delta,
            )
            stripe_mirror.set_rollover_delta(self.conn, r.invoice_id, kind.id, delta)

    # --- invoices -----------------------------------------------------------------------------------

    def _invoice_user(
        self, invoice: Invoice, linked_user: str | None
    ) -> tuple[str | None, dict[str, Any] | None]:
        mirror = (
            stripe_mirror.lock_subscription(self.conn, invoice.subscription_id, invoice.customer)
            if invoice.subscription_id
            else None
        )
        return self.user_of(invoice.user_id, mirror, linked_user, invoice.customer), mirror

    def invoice_paid(self, event: StripeEvent, invoice: Invoice, linked_user: str | None) -> str:
        user, mirror = self._invoice_user(invoice, linked_user)
        if user is None:
            return self.keep(event, invoice.subscription_id, invoice.customer)
        account = stripe_mirror.lock_account(self.conn, user)
        watched = self.alert_standings(user)
        outcome = self.paid(invoice, user, account, mirror, event)
        self.raise_alerts(user, watched)
        return outcome

    def paid(
        self,
        invoice: Invoice,
        user: str,
        account: dict[str, Any],
        mirror: dict[str, Any] | None,
        event: StripeEvent,
    ) -> str:
        rules.mark_paid(account, invoice.paid_at or _moment(event.created))
        line = invoice.subscription_line
        line_plan = self.plan_for_price(line.price_id, event) if line else None
        rules.raise_rank(account, line_plan.rank if line_plan else None)
        stripe_mirror.write_account(self.conn, account)
        if mirror is None or not invoice.is_cycle:
            return OK  # other billing reasons only mark the user as having paid

        before = dict(mirror)
        mirror["user_id"] = mirror["user_id"] or user
        new_period = line.period if line else None
        rules.advance_period(mirror, new_period)
        if mirror != before:
            stripe_mirror.write_subscription(self.conn, mirror)

        if account["current_subscription_id"] not in (None, mirror["subscription_id"]):
            logger.info(
                "renewal of a subscription that is not the user's current one: mirror only",
                extra={"event_id": event.id, "invoice": invoice.id},
            )
            return OK
        claimed = stripe_mirror.claim_renewal(
            self.conn, invoice.id, user, mirror["subscription_id"], invoice.period_start, new_period
        )
        if claimed:  # else this invoice was renewed by its other event type already
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
            ending = stripe_mirror.period_at(self.conn, user, ending_start)
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
                    ledger.ensure_period(self.conn, user, spec)
                    ending = stripe_mirror.period_at(self.conn, user, ending_start)
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
                stripe_mirror.mark_rolled_over(self.conn, ending["period_id"])
        if new_period is not None:
            plan = line_plan or known or self.catalog.free_plan
            self.period_fact(
                user, new_period, plan, mirror["subscription_id"], confirmed=line_plan is not None
            )

    def rollover(self, user: str, invoice_id: str, ending: dict[str, Any]) -> None:
        plan = self.catalog.find_plan(ending["plan_id"]) or self.catalog.free_plan
        for kind in self.catalog.usage_types.values():
            if not kind.pools:
                continue  # plain counters never roll over
            # every pooled type's inputs are kept, even at limit 0: a later upgrade may reprice it
            pools = ledger.lock_pair_in(self.conn, user, kind.id, ending["period_id"], _now())
            after = rollover_after_renewal(
                limit=plan.limit(kind.id), used=pools.used, rollover=pools.rollover, cap=kind.rollover_cap
            )
            delta = after - pools.rollover
            if delta:
                ledger.post_entry(
                    self.conn,
                    user_id=user,
                    usage_type=kind.id,
                    reason="rollover",
                    ref=invoice_id,
                    rollover=delta,
                )
            stripe_mirror.record_rollover(
                self.conn, invoice_id, kind.id, user, ending["period_id"], pools.used, pools.rollover, delta
            )

    def invoice_failed(self, event: StripeEvent, invoice: Invoice, linked_user: str | None) -> str:
        if invoice.subscription_id is None:
            return IGNORED  # a one-off invoice: no subscription status to change
        user, mirror = self._invoice_user(invoice, linked_user)
        if user is None:
            return self.keep(event, invoice.subscription_id, invoice.customer)
        assert mirror is not None
        stripe_mirror.lock_account(self.conn, user)
        before = dict(mirror)
        mirror["user_id"] = mirror["user_id"] or user
        key = rules.order_key(event.created, "past_due", event.id)
        current = rules.payment_failed(mirror, invoice.billing_reason, event.created, key)
        if mirror != before:
            stripe_mirror.write_subscription(self.conn, mirror)
        return OK if current else STALE

    # --- checkout sessions --------------------------------------------------------------------------

    def checkout(self, event: StripeEvent, session: CheckoutSession, linked_user: str | None) -> str:
        if session.mode == "subscription":
            return self.link(event, session, linked_user)
        if session.mode != "payment":
            return IGNORED  # setup mode: nothing to meter
        if event.type == CHECKOUT_COMPLETED and not session.is_paid:
            return OK  # an asynchronous payment: credited by async_payment_succeeded
        assert event.type in (CHECKOUT_COMPLETED, CHECKOUT_ASYNC_SUCCEEDED)
        return self.topup(event, session, linked_user)

    def link(self, event: StripeEvent, session: CheckoutSession, linked_user: str | None) -> str:
        """Link the user to the session's customer and subscription, then apply what was kept."""
        mirror = (
            stripe_mirror.lock_subscription(self.conn, session.subscription_id, session.customer)
            if session.subscription_id
            else None
        )
        user = self.user_of(session.user_id, mirror, linked_user, session.customer)
        if user is None:
            logger.warning(
                "checkout session without a user", extra={"event_id": event.id, "session": session.id}
            )
            return IGNORED
        if mirror is not None and mirror["user_id"] != user:
            mirror["user_id"] = user
            stripe_mirror.write_subscription(self.conn, mirror)
        account = stripe_mirror.lock_account(self.conn, user)
        if session.customer is not None and account["stripe_customer_id"] != session.customer:
            account["stripe_customer_id"] = session.customer
            stripe_mirror.write_account(self.conn, account)
        self.apply_kept(session.subscription_id, session.customer, user)
        return OK

    def apply_kept(self, subscription_id: str | None, customer: str | None, user: str) -> None:
        kept = [
            parse_event(payload) for payload in stripe_mirror.take_kept(self.conn, subscription_id, customer)
        ]
        for event in sorted(kept, key=_order):
            outcome = self.dispatch(event, linked_user=user)
            stripe_mirror.set_outcome(self.conn, event.id, outcome)
            logger.info("kept stripe event applied", extra={"event_id": event.id, "outcome": outcome})

    def topup(self, event: StripeEvent, session: CheckoutSession, linked_user: str | None) -> str:
        pack = self.catalog.pack(session.pack_id) if session.pack_id else None
        if pack is None or session.quantity is None:
            logger.warning(
                "top-up ignored: metadata.pack is not a catalog pack or metadata.quantity is invalid",
                extra={"event_id": event.id, "session": session.id, "pack": session.pack_id},
            )
            return IGNORED
        user = self.user_of(session.user_id, None, linked_user, session.customer)
        if user is None:
            return self.keep(event, None, session.customer)
        amount = pack.amount * session.quantity
        stripe_mirror.lock_account(self.conn, user)
        pools = locked_standing(self.conn, meter(pack.usage_type), user, _now()).pools
        if pools.purchased + amount > INT64_MAX:
            logger.warning("top-up ignored: purchased balance would overflow", extra={"event_id": event.id})
            return IGNORED
        if not stripe_mirror.claim_topup(
            self.conn, session.id, user, pack.id, pack.usage_type, session.quantity, amount
        ):
            return OK  # credited already, by the session's other event type
        if pack.expires_in_days is not None:  # an expiring pack: a grant, from the purchase moment
            expires_at = _moment(event.created) + timedelta(days=pack.expires_in_days)
            claimed = GrantRow(f"topup:{session.id}", user, pack.usage_type, amount, 0, expires_at, pack.id)
            if ledger.claim_grant(self.conn, claimed):
                grants.credit(self.conn, claimed, reason="topup")
            return OK
        ledger.post_entry(
            self.conn,
            user_id=user,
            usage_type=pack.usage_type,
            reason="topup",
            ref=session.id,
            purchased=amount,
        )
        return OK


def _order(event: StripeEvent) -> str:
    """Kept events are applied in the order they happened (`rules.order_key`)."""
    status = event.object.get("status") if event.type in SNAPSHOT_TYPES else None
    return rules.order_key(event.created, status if isinstance(status, str) else None, event.id)


def _now() -> datetime:
    return datetime.now(UTC)


def _moment(created: int) -> datetime:
    moment = epoch(created)
    assert moment is not None
    return moment
