"""Model-based test (issue 7): a hypothesis RuleBasedStateMachine drives the real handlers (check,
record, adjustments, summary, Stripe webhook; real PostgreSQL and Redis) through random interleavings
and compares every answer, and after every step each user's summary, with the pure-Python model of
metering.md in `tests/model/model.py`; after every step `reconcile()` must be clean too.

What is covered (2 users, the test catalog: premium_voice and ocr_tokens pooled, server_kokoro a
plain counter; limits small enough that every branch of the waterfall is reached):
- checks of random amounts, with and without a reservation id from a small pool (re-checks replace a
  hold; a denied re-check keeps the old one); every response field is compared;
- records: new events (naming a reservation or not, of any usage type: a record releases the hold
  it names), exact duplicates (200 with the ORIGINAL breakdown) and conflicting payloads (409);
- adjustments of purchased and rollover, repeated ids (duplicate / conflict), purchased below 0
  (409 insufficient_balance, the id stays free), a plain counter (400);
- records with `occurred_at` (late events inside the current period; a replay with another
  `occurred_at` is a conflict);
- grants (api.md section 7): new ones, replays (duplicate), reused ids (409), plain counters (400),
  spent soonest-expiry-first in the waterfall, and their expiry (the instant moved into the past in
  the database, as time would), sometimes journaled at once by the maintenance job; expiring packs
  credited as grants;
- releases (204 when live, 404 otherwise) and reservation expiry (the hold's deadline is moved into
  the past in Redis, as time would);
- Stripe: subscription created / updated (basic <-> plus, active / past_due) / deleted or canceled,
  Checkout signups (created `incomplete`, updated `active`, in one `created` second), renewals
  whose events share one second,
  mid-period upgrades and scheduled downgrades, renewals (a paid `subscription_cycle` invoice and the
  snapshot that moves the period, in either `created` order, sometimes after a failed first attempt,
  sometimes also as `invoice.payment_succeeded`), failed payments and recovery, top-ups (paid
  checkout, or unpaid checkout then async payment succeeded, sometimes both for one session).
  Generated events wait in a queue and are delivered in RANDOM order, and delivered ones are
  re-delivered (duplicates); the model applies the spec's order-independent rules (see model.py).
- after every step: plan, subscription plan and status, current period start, and per usage type
  limit, used, rollover, purchased, reserved and available, through the real summary handler.

Deliberately left out (each is covered by the integration suites instead):
- one Stripe subscription per user, named by `metadata.user_id` (no checkout linking, no pending
  events of unknown users, no second subscription superseding an older one);
- subscription periods all contain "now" (they start in the past, one minute apart, and end 30 days
  later), because the service uses the real clock: no assumed period after a late renewal, no usage
  in a period that has ended; renewals therefore move between overlapping periods;
- no cancellation flags (cancel_at...), trials, paused subscriptions, unknown prices;
- billing always enabled; Redis always reachable; no concurrency (the steps are sequential, so a
  settled hold never counts); batches and the SQS queue are not driven here.

Settings: derandomized (a failure reproduces), no example database, shrinking on; 100 examples of up
to 50 steps by default (about 45 s on a busy two-core machine). A soak: METERING_MODEL_EXAMPLES=600
METERING_MODEL_STEPS=70; METERING_MODEL_RANDOM=1 explores fresh random examples instead of the fixed
ones; METERING_MODEL_STATS=1 prints what the run did. Failing examples found are kept in
test_regressions.py.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import redis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.model.model import PAID, SNAPSHOTS, CatalogSpec, Model, StripeFact
from tests.support import api
from tests.support import stripe_events as se
from tests.support.state import TEST_CATALOG, iso, use_test_catalog

USERS = ("u1", "u2")
# premium_voice twice as often as the others
USAGE_TYPES = ("premium_voice", "premium_voice", "server_kokoro", "ocr_tokens")
HOLDS = ("r0", "r1", "r2")
PLANS = ("basic", "plus")
RENEWAL_ORDERS = ("snapshot_first", "invoice_first", "failed_first")  # by Stripe's `created`
MAX_RENEWALS = 12
CATALOG = CatalogSpec.load(TEST_CATALOG)
STATS: Counter[str] = Counter()  # what the run did; printed with METERING_MODEL_STATS=1

# The periods: all start in the past (one minute apart) and end 30 days later, so each contains now.
T0 = int(time.time()) - 86400 - 17
SUB_CREATED = T0 - 86400
DAY = 86400


def period(k: int) -> tuple[int, int]:
    return (T0 + 60 * k, T0 + 60 * k + 30 * DAY)


def epoch_of(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


# --- Stripe objects built from the facts -----------------------------------------------------------------


def stripe_event(fact: StripeFact) -> dict:
    """The Stripe event (Stripe's own fixture shapes, tests/support/stripe_events.py) for a fact."""
    customer = f"cus_{fact.user}"
    if fact.type in SNAPSHOTS:
        assert fact.period and fact.plan and fact.sub_id and fact.status
        obj = se.subscription(
            fact.sub_id,
            price=CATALOG.price_of(fact.plan),
            start=fact.period[0],
            end=fact.period[1],
            status=fact.status,
            customer=customer,
            user_id=fact.user,
            created=SUB_CREATED,
            canceled_at=fact.created if fact.status == "canceled" else None,
        )
    elif fact.type in (*PAID, "invoice.payment_failed"):
        assert fact.invoice_id and fact.sub_id
        if fact.period is not None:  # a renewal's cycle invoice
            assert fact.ending_start is not None and fact.plan
            obj = se.cycle_invoice(
                fact.invoice_id,
                subscription_id=fact.sub_id,
                price=CATALOG.price_of(fact.plan),
                ending_start=fact.ending_start,
                new_start=fact.period[0],
                new_end=fact.period[1],
                customer=customer,
                user_id=fact.user,
                status="paid" if fact.type in PAID else "open",
            )
        else:  # a failed retry of an invoice of the current period
            assert fact.ending_start is not None
            obj = se.invoice(
                fact.invoice_id,
                subscription_id=fact.sub_id,
                billing_reason=fact.billing_reason or "subscription_cycle",
                period_start=fact.ending_start,
                period_end=fact.ending_start + 60,
                customer=customer,
                user_id=fact.user,
                status="open",
            )
    else:
        assert fact.session_id and fact.pack
        obj = se.checkout_session(
            fact.session_id,
            mode="payment",
            payment_status=fact.payment_status or "paid",
            user_id=fact.user,
            customer=customer,
            pack=fact.pack,
            quantity=str(fact.quantity),
        )
    return se.event(fact.type, obj, fact.created, event_id=fact.id)


# --- what Stripe itself has done, per user (the generator's side) ------------------------------------------


@dataclass
class StripeWorld:
    subscribed: bool = False
    k: int = 0  # index of the current period
    plan: str = "basic"
    status: str = "active"
    failures: int = 0
    sessions: int = 0

    @property
    def live(self) -> bool:
        return self.subscribed and self.status != "canceled"


@dataclass
class Hold:
    user: str
    id: str


class LedgerMachine(RuleBasedStateMachine):
    """One example = empty database and Redis, two users, a queue of undelivered Stripe events."""

    def __init__(self) -> None:
        super().__init__()
        se.wipe()
        redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
        self.model = Model(CATALOG)
        self.world = {user: StripeWorld() for user in USERS}
        self.pending: list[StripeFact] = []
        self.delivered: list[StripeFact] = []
        self.created = T0 + 3600  # Stripe's `created` of the next generated event
        self.serial = 0
        self.event_ids: list[str] = []  # usage event ids, in order
        self.adjustment_ids: list[str] = []
        STATS["examples"] += 1

    # --- helpers -----------------------------------------------------------------------------------------

    def next_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def emit(self, user: str, event_type: str, *, same_second: bool = False, **fields) -> StripeFact:
        """Queue a Stripe event; `same_second`: with the `created` of the event before it (Stripe's
        `created` has one-second resolution: a signup's or a renewal's events often share one)."""
        if not same_second:
            self.created += 10
        fact = StripeFact(id=self.next_id("evt_"), type=event_type, created=self.created, user=user, **fields)
        self.pending.append(fact)
        return fact

    def snapshot(
        self, user: str, event_type: str, *, k: int, status: str | None = None, same_second: bool = False
    ) -> StripeFact:
        w = self.world[user]
        return self.emit(
            user,
            event_type,
            same_second=same_second,
            sub_id=f"sub_{user}",
            plan=w.plan,
            status=status or w.status,
            period=period(k),
        )

    def pick(self, user: str, eligible) -> str:
        """`user` if Stripe may do this for them, else the other user (the rule's precondition
        guarantees one is eligible): no generated step is wasted."""
        return user if eligible(self.world[user]) else next(u for u in USERS if eligible(self.world[u]))

    @initialize(
        u1=st.sampled_from([None, *PLANS]),
        u2=st.sampled_from([None, *PLANS]),
        change=st.booleans(),
        renewals=st.integers(0, 3),
        order=st.sampled_from(RENEWAL_ORDERS),
        checkout=st.booleans(),
    )
    def start(
        self,
        u1: str | None,
        u2: str | None,
        change: bool = False,
        renewals: int = 0,
        order: str = "snapshot_first",
        checkout: bool = False,
    ) -> None:
        """Most examples begin with subscriptions bought at Stripe, maybe a plan change and a few
        renewals too: all queued, none delivered yet, so usage lands in periods whose renewal is
        still on its way (and an upgrade may arrive after the renewal that ends its period)."""
        for user, plan in (("u1", u1), ("u2", u2)):
            if plan is not None:
                self.stripe_subscribe(user, plan, checkout)
                if change:
                    self.stripe_change_plan(user, "plus" if plan == "basic" else "basic")
                for _ in range(renewals):
                    self.stripe_renew(user, order, also_succeeded=False)

    # --- checks, records, adjustments, reservations ----------------------------------------------------

    @rule(
        user=st.sampled_from(USERS),
        usage_type=st.sampled_from(USAGE_TYPES),
        amount=st.integers(0, 8000),
        hold=st.none() | st.sampled_from(HOLDS),
    )
    def check(self, user: str, usage_type: str, amount: int, hold: str | None) -> None:
        reservation = None if hold is None else {"id": hold, "ttl_seconds": 3600}
        status, body = api.check(user, usage_type, amount, reservation)
        expected = self.model.check(user, usage_type, amount, hold)
        assert status == 200, body
        got = {k: body[k] for k in ("allowed", "limit", "used", "reserved", "available")}
        got["reservation"] = (
            None
            if body["reservation"] is None
            else {"id": body["reservation"]["id"], "amount": body["reservation"]["amount"]}
        )
        assert got == expected, (user, usage_type, amount, hold)
        STATS[f"check allowed={got['allowed']} hold={hold is not None}"] += 1
        assert body["reservations_counted"] is True

    @rule(
        user=st.sampled_from(USERS),
        usage_type=st.sampled_from(USAGE_TYPES),
        over=st.sampled_from([0, 0, 1]),
        hold=st.none() | st.sampled_from(HOLDS),
    )
    def check_boundary(self, user: str, usage_type: str, over: int, hold: str | None) -> None:
        """Exactly what is available (allowed) or one more (denied)."""
        available = self.model.availability(user, usage_type, exclude=hold)["available"]
        self.check(user, usage_type, (available if available is not None else 10**6) + over, hold)

    @rule(
        user=st.sampled_from(USERS),
        usage_type=st.sampled_from(USAGE_TYPES),
        amount=st.integers(1, 8000),
        hold=st.none() | st.sampled_from(HOLDS),
    )
    def record(self, user: str, usage_type: str, amount: int, hold: str | None) -> None:
        event_id = self.next_id("ev-")
        self.event_ids.append(event_id)
        self._record(event_id, user, usage_type, amount, hold)

    @rule(
        user=st.sampled_from(USERS),
        usage_type=st.sampled_from(USAGE_TYPES),
        amount=st.integers(1, 8000),
        seconds_ago=st.sampled_from([0, 30, 3600]),
    )
    def record_late(self, user: str, usage_type: str, amount: int, seconds_ago: int) -> None:
        """A record with `occurred_at` (a late event of the current period: the same period pays)."""
        now = datetime.now(UTC)
        moment = (now - timedelta(seconds=seconds_ago)).replace(microsecond=0)
        if moment < self.model.period_start(user, now):
            moment = now.replace(microsecond=0)
        event_id = self.next_id("ev-")
        self.event_ids.append(event_id)
        self._record(event_id, user, usage_type, amount, None, moment)

    @precondition(lambda self: self.event_ids)
    @rule(
        i=st.integers(0, 1000),
        change=st.sampled_from(["same", "same", "amount", "usage_type", "user", "occurred_at"]),
        hold=st.none() | st.sampled_from(HOLDS),
    )
    def record_again(self, i: int, change: str, hold: str | None) -> None:
        """Redeliver an earlier event id: the same payload (a duplicate) or a different one (a conflict)."""
        event_id = self.event_ids[i % len(self.event_ids)]
        user, usage_type, amount, _ = self.model.events[event_id]
        occurred_at = self.model.occurred.get(event_id)
        if change == "occurred_at":  # given where it was not, or another instant
            occurred_at = (occurred_at or datetime.now(UTC).replace(microsecond=0)) - timedelta(seconds=1)
        if change == "amount":
            amount += 1
        elif change == "usage_type":
            usage_type = next(t for t in USAGE_TYPES if t != usage_type)
        elif change == "user":
            user = next(u for u in USERS if u != user)
        self._record(event_id, user, usage_type, amount, hold, occurred_at)

    def _record(
        self,
        event_id: str,
        user: str,
        usage_type: str,
        amount: int,
        hold: str | None,
        occurred_at: datetime | None = None,
    ) -> None:
        fields: dict[str, str] = {} if hold is None else {"reservation_id": hold}
        if occurred_at is not None:
            fields["occurred_at"] = iso(occurred_at)
        status, body = api.record(event_id, user, usage_type, amount, **fields)
        expected_status, expected = self.model.record(event_id, user, usage_type, amount, hold, occurred_at)
        assert status == expected_status, (event_id, status, body, expected)
        STATS[f"record {status}"] += 1
        if status == 409:
            assert body["error"]["code"] == expected["code"]
            return
        got = {k: body[k] for k in expected}
        assert got == expected, (event_id, user, usage_type, amount)

    @rule(
        user=st.sampled_from(USERS),
        usage_type=st.sampled_from(("premium_voice", "premium_voice", "ocr_tokens", "server_kokoro")),
        pool=st.sampled_from(("purchased", "rollover")),
        delta=st.integers(-6000, 6000).filter(bool),
        reuse=st.booleans(),
    )
    def adjust(self, user: str, usage_type: str, pool: str, delta: int, reuse: bool) -> None:
        """A new adjustment, or (reuse) a new payload under an id already used: a conflict."""
        if reuse and self.adjustment_ids:
            adjustment_id = self.adjustment_ids[delta % len(self.adjustment_ids)]
        else:
            adjustment_id = self.next_id("adj-")
        self._adjust(adjustment_id, user, usage_type, pool, delta)

    @precondition(lambda self: self.model.adjustments)
    @rule(i=st.integers(0, 1000))
    def adjust_again(self, i: int) -> None:
        """The same adjustment delivered again: a duplicate, whatever the balance is now."""
        ids = sorted(self.model.adjustments)
        adjustment_id = ids[i % len(ids)]
        self._adjust(adjustment_id, *self.model.adjustments[adjustment_id])

    def _adjust(self, adjustment_id: str, user: str, usage_type: str, pool: str, delta: int) -> None:
        status, body = api.adjust(user, adjustment_id, usage_type, pool, delta)
        expected_status, code = self.model.adjust(adjustment_id, user, usage_type, pool, delta)
        assert status == expected_status, (adjustment_id, user, usage_type, pool, delta, body)
        STATS[f"adjust {status} {code}"] += 1
        if code:
            assert body["error"]["code"] == code
        elif adjustment_id not in self.adjustment_ids:
            self.adjustment_ids.append(adjustment_id)

    # --- grants (api.md section 7): credit that expires ----------------------------------------------

    @rule(
        user=st.sampled_from(USERS),
        usage_type=st.sampled_from(("premium_voice", "premium_voice", "ocr_tokens", "server_kokoro")),
        amount=st.integers(1, 4000),
        days=st.integers(1, 60),
        reuse=st.booleans(),
    )
    def grant(self, user: str, usage_type: str, amount: int, days: int, reuse: bool) -> None:
        """A new grant, or (reuse) a new payload under a grant id already used: a conflict."""
        ids = sorted(g for u in self.model.users.values() for g in u.grants if not g.startswith("topup:"))
        grant_id = ids[amount % len(ids)] if reuse and ids else self.next_id("grant-")
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=days, seconds=amount)
        self._grant(grant_id, user, usage_type, amount, expires, "promotion")

    @precondition(lambda self: any(u.grants for u in self.model.users.values()))
    @rule(i=st.integers(0, 1000))
    def grant_again(self, i: int) -> None:
        """The same grant delivered again: a duplicate, whatever was drawn from it since."""
        ids = sorted(g for u in self.model.users.values() for g in u.grants)
        found = self.model.grant_owner(ids[i % len(ids)])
        assert found is not None
        user, g = found
        self._grant(ids[i % len(ids)], user, g.usage_type, g.amount, g.expires_at, g.reason)

    def _grant(self, grant_id: str, user: str, usage_type: str, amount: int, expires, reason: str) -> None:
        status, body = api.grant(user, grant_id, usage_type, amount, iso(expires), reason)
        expected_status, expected = self.model.grant(grant_id, user, usage_type, amount, expires, reason)
        assert status == expected_status, (grant_id, user, usage_type, amount, body, expected)
        STATS[f"grant {status}"] += 1
        if status >= 400:
            assert body["error"]["code"] == expected["code"]
            return
        assert {k: v for k, v in body["grant"].items() if k != "expires_at"} == expected["grant"]
        assert body["balance"] == expected["balance"], (grant_id, body, expected)

    @precondition(lambda self: any(self.model.live_grants(u, t) for u in USERS for t in CATALOG.usage_types))
    @rule(i=st.integers(0, 1000), journal_now=st.booleans())
    def grant_expires(self, i: int, journal_now: bool) -> None:
        """Time reaches a live grant's expiry (its instant is moved into the past, as time would):
        checks and summaries stop counting it at once; the maintenance job (sometimes run at once)
        only journals it."""
        live = [
            (gid, g) for u in USERS for t in CATALOG.usage_types for gid, g in self.model.live_grants(u, t)
        ]
        grant_id, g = live[i % len(live)]
        (moved,) = se.sql(
            "UPDATE grants SET expires_at = now() - interval '1 second' WHERE grant_id = :g RETURNING expires_at",
            g=grant_id,
        )
        g.expires_at = moved[0]
        STATS["grant expired"] += 1
        if journal_now:
            from metering.services.grants import expire_due

            assert expire_due() >= 1

    @rule(user=st.sampled_from(USERS), hold=st.sampled_from(HOLDS))
    def release(self, user: str, hold: str) -> None:
        status, body = api.release(user, hold)
        assert status == self.model.release(user, hold), (user, hold, body)
        STATS[f"release {status}"] += 1

    @precondition(lambda self: self.live_holds())
    @rule(i=st.integers(0, 100))
    def release_live(self, i: int) -> None:
        holds = self.live_holds()
        hold = holds[i % len(holds)]
        self.release(hold.user, hold.id)

    def live_holds(self) -> list[Hold]:
        return [Hold(user, rid) for user in USERS for rid in sorted(self.model.users[user].holds)]

    @precondition(lambda self: self.live_holds())
    @rule(i=st.integers(0, 100))
    def expire(self, i: int) -> None:
        """Time passes for one hold: its deadline moves into the past in Redis (as test_check does)."""
        holds = self.live_holds()
        hold = holds[i % len(holds)]
        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        key = f"metering:resv:{len(hold.user)}:{hold.user}"
        value = client.hget(key, hold.id)
        assert value is not None, hold
        usage_type, amount, _, settled = value.decode().split("|")
        client.hset(key, hold.id, f"{usage_type}|{amount}|{int(time.time() * 1000) - 1}|{settled}")
        self.model.expire(hold.user, hold.id)
        STATS["expire"] += 1

    # --- Stripe: what happens at Stripe (events are queued, not delivered) ------------------------------

    @precondition(lambda self: any(not w.subscribed for w in self.world.values()))
    @rule(user=st.sampled_from(USERS), plan=st.sampled_from(PLANS), checkout=st.booleans())
    def stripe_subscribe(self, user: str, plan: str, checkout: bool = False) -> None:
        """With `checkout`, as a Checkout signup: the subscription is created `incomplete` and
        updated to `active` once paid, both in one second."""
        user = self.pick(user, lambda w: not w.subscribed)
        w = self.world[user]
        w.subscribed, w.plan = True, plan
        if checkout:
            self.snapshot(user, "customer.subscription.created", k=0, status="incomplete")
            STATS["signups in one second"] += 1
        w.status = "active"
        kind = "customer.subscription.updated" if checkout else "customer.subscription.created"
        self.snapshot(user, kind, k=0, same_second=checkout)

    @precondition(lambda self: any(w.live for w in self.world.values()))
    @rule(user=st.sampled_from(USERS), plan=st.sampled_from(PLANS))
    def stripe_change_plan(self, user: str, plan: str) -> None:
        """An upgrade (applies at once) or a scheduled downgrade (governs the next period)."""
        user = self.pick(user, lambda w: w.live)
        w = self.world[user]
        w.plan = plan
        self.snapshot(user, "customer.subscription.updated", k=w.k)

    @precondition(lambda self: any(w.live and w.k < MAX_RENEWALS for w in self.world.values()))
    @rule(
        user=st.sampled_from(USERS),
        order=st.sampled_from(RENEWAL_ORDERS),
        also_succeeded=st.booleans(),
        same_second=st.booleans(),
    )
    def stripe_renew(self, user: str, order: str, also_succeeded: bool, same_second: bool = False) -> None:
        """The period ends: Stripe moves the subscription to the next period and pays the cycle
        invoice (after a failed first attempt, with `failed_first`); with `same_second`, all of it
        within one second of Stripe's `created`."""
        user = self.pick(user, lambda w: w.live and w.k < MAX_RENEWALS)
        w = self.world[user]
        invoice = {
            "sub_id": f"sub_{user}",
            "invoice_id": f"in_{user}_{w.k}",
            "plan": w.plan,
            "period": period(w.k + 1),
            "ending_start": period(w.k)[0],
            "billing_reason": "subscription_cycle",
        }
        w.k += 1
        one = {"same_second": same_second}  # for every event after the first
        if same_second:
            STATS["renewals in one second"] += 1
        if order == "failed_first":
            self.emit(user, "invoice.payment_failed", **invoice)
            self.snapshot(user, "customer.subscription.updated", k=w.k, status="past_due", **one)
            self.emit(user, "invoice.paid", **invoice, **one)
            w.status = "active"
            self.snapshot(user, "customer.subscription.updated", k=w.k, **one)
        elif order == "snapshot_first":
            w.status = "active"
            self.snapshot(user, "customer.subscription.updated", k=w.k)
            self.emit(user, "invoice.paid", **invoice, **one)
        else:
            self.emit(user, "invoice.paid", **invoice)
            w.status = "active"
            self.snapshot(user, "customer.subscription.updated", k=w.k, **one)
        if also_succeeded:
            self.emit(user, "invoice.payment_succeeded", **invoice, **one)

    @precondition(lambda self: any(w.live for w in self.world.values()))
    @rule(user=st.sampled_from(USERS), with_snapshot=st.booleans())
    def stripe_payment_fails(self, user: str, with_snapshot: bool) -> None:
        user = self.pick(user, lambda w: w.live)
        w = self.world[user]
        w.failures += 1
        self.emit(
            user,
            "invoice.payment_failed",
            sub_id=f"sub_{user}",
            invoice_id=f"in_{user}_fail{w.failures}",
            ending_start=period(w.k)[0],
            billing_reason="subscription_cycle",
        )
        w.status = "past_due"
        if with_snapshot:
            self.snapshot(user, "customer.subscription.updated", k=w.k)

    @precondition(lambda self: any(w.live and w.status == "past_due" for w in self.world.values()))
    @rule(user=st.sampled_from(USERS))
    def stripe_recovers(self, user: str) -> None:
        user = self.pick(user, lambda w: w.live and w.status == "past_due")
        w = self.world[user]
        w.status = "active"
        self.snapshot(user, "customer.subscription.updated", k=w.k)

    @precondition(lambda self: any(w.live for w in self.world.values()))
    @rule(user=st.sampled_from(USERS), deleted=st.booleans())
    def stripe_cancel(self, user: str, deleted: bool) -> None:
        user = self.pick(user, lambda w: w.live)
        w = self.world[user]
        w.status = "canceled"
        kind = "customer.subscription.deleted" if deleted else "customer.subscription.updated"
        self.snapshot(user, kind, k=w.k)

    @rule(
        user=st.sampled_from(USERS),
        pack=st.sampled_from(("voice_1k", "voice_1k", "ocr_50k", "voice_promo_2k")),
        quantity=st.integers(1, 3),
        flow=st.sampled_from(["paid", "async", "paid_and_async"]),
    )
    def stripe_topup(self, user: str, pack: str, quantity: int, flow: str) -> None:
        w = self.world[user]
        w.sessions += 1
        session = {"session_id": f"cs_{user}_{w.sessions}", "pack": pack, "quantity": quantity}
        completed_status = "unpaid" if flow == "async" else "paid"
        self.emit(user, "checkout.session.completed", payment_status=completed_status, **session)
        if flow != "paid":
            self.emit(user, "checkout.session.async_payment_succeeded", payment_status="paid", **session)

    # --- Stripe: deliveries, in any order, some twice ---------------------------------------------------

    @precondition(lambda self: self.pending)
    @rule(i=st.integers(0, 1000))
    def deliver(self, i: int) -> None:
        fact = self.pending.pop(i % len(self.pending))
        self.delivered.append(fact)
        self._deliver(fact)

    @precondition(lambda self: self.pending)
    @rule()
    def deliver_next(self) -> None:
        """The oldest pending event (by `created`): in-order delivery happens too."""
        self.deliver(min(range(len(self.pending)), key=lambda j: self.pending[j].created))

    @precondition(lambda self: self.delivered)
    @rule(i=st.integers(0, 1000))
    def redeliver(self, i: int) -> None:
        self._deliver(self.delivered[i % len(self.delivered)])

    def _deliver(self, fact: StripeFact) -> None:
        expected = self.model.deliver(fact)
        STATS[f"stripe {fact.type} {expected}"] += 1
        status, body = se.deliver(stripe_event(fact))
        assert (status, body) == (200, {"status": expected}), fact

    def assert_invariants(self) -> None:
        """What hypothesis runs after every step (for replays in test_regressions.py)."""
        self.summaries_match_the_model()
        self.ledger_reconciles()

    # --- after every step ---------------------------------------------------------------------------------

    @invariant()
    def summaries_match_the_model(self) -> None:
        STATS["steps"] += 1
        for user in USERS:
            status, body = api.read("summary", user)
            assert status == 200, body
            sub = body["subscription"]
            got = {
                "plan": body["plan"]["id"],
                "subscription": None if sub is None else {"plan": sub["plan"], "status": sub["status"]},
                "period_start": epoch_of(body["period"]["start"]),
                "usage_types": body["usage_types"],
            }
            expected = self.model.summary(user)
            for name in ("plan", "subscription", "period_start"):
                assert got[name] == expected[name], (user, name)
            for name, numbers in expected["usage_types"].items():
                assert got["usage_types"][name] == numbers, (user, name)

    def teardown(self) -> None:
        STATS.update(self.model.seen)

    @invariant()
    def ledger_reconciles(self) -> None:
        from metering.services.reconcile import reconcile

        report = reconcile()
        assert report.clean, str(report)


RANDOM = bool(os.environ.get("METERING_MODEL_RANDOM"))


def model_settings() -> settings:
    return settings(
        max_examples=int(os.environ.get("METERING_MODEL_EXAMPLES", "100")),
        stateful_step_count=int(os.environ.get("METERING_MODEL_STEPS", "50")),
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )


@pytest.fixture
def model_env(clean, monkeypatch):
    """The test catalog and webhook secret over a clean database and Redis (each example wipes again)."""
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", se.SECRET)
    use_test_catalog()


@pytest.mark.usefixtures("model_env")
class TestLedgerModel(LedgerMachine.TestCase):  # type: ignore[name-defined,misc]
    settings = model_settings()

    @classmethod
    def tearDownClass(cls) -> None:
        if os.environ.get("METERING_MODEL_STATS"):
            print("\nmodel run:", dict(sorted(STATS.items())), file=sys.stderr)
