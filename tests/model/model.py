"""A small pure-Python model of metering.md, the oracle of the model-based test (test_ledger_model.py).

Written from the spec (metering.md, api.md section 5) and the decisions it defers to
(docs/decisions.md), never from the service's code: nothing here imports `metering`. The catalog is
read straight from its YAML file.

Scope (the test restricts what it generates to this):
- billing enabled; users with at most one Stripe subscription each, whose `metadata.user_id` names
  the user (no checkout linking, no unknown users, no second subscription);
- usage types of the test catalog (pooled and plain counters);
- subscription periods that all contain "now" (they start in the past and end in the future), so
  usage always belongs to the subscription's current period as the service sees it, and no period
  is ever "assumed" after a missed renewal.

How Stripe facts are derived: the subscription mirror is computed from the set of delivered events
(metering.md "Stripe subscription lifecycle": the result must not depend on delivery order):
- events are ordered by `created`, then, within one second (Stripe's `created` has one-second
  resolution), by the stage of Stripe's lifecycle they report (incomplete, then started: trialing,
  active or past_due, then canceled: a subscription never goes back a stage), then by event id (a
  fixed rule for what Stripe leaves unordered);
- plan: the plan of the newest delivered snapshot (in that order);
- status: `canceled` once any canceled snapshot arrived (final, as in Stripe), else the status of the
  newest delivered status change (snapshots and failed payments);
- current period: the latest period start any delivered snapshot or paid renewal names (a period
  never moves backwards);
- the plan governing one period: the highest-ranked plan that an entitled snapshot of that period or
  a renewal invoice starting it reported (an upgrade applies at once, a downgrade waits for the next
  period); a period first created by a renewal as its *ending* period, with no such fact yet, is
  governed by the best guess (the subscription's plan, else the invoice line's) until a fact arrives;
  a calendar month (no entitled subscription) is governed by the free plan. The summary's `plan` is
  the plan governing the current period (docs/decisions.md, 2026-12-03).
Balances are event-sourced: records, adjustments, top-ups and renewals change them when delivered.
A renewal rolls over once per ending period, from that period's plan and usage at the time; if the
ending period's plan changes later (a late upgrade snapshot), the rollover is recomputed from the
renewal's own inputs and the difference applied (docs/decisions.md "A late upgrade re-prices a
renewal").
"""

from __future__ import annotations

import calendar
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

ENTITLED = frozenset({"active", "trialing", "past_due"})
CALENDAR = "calendar"  # the key of the calendar-month period of a user without an entitlement


# --- the catalog -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageTypeSpec:
    id: str
    pools: bool
    cap: int


@dataclass(frozen=True)
class PlanSpec:
    id: str
    rank: int
    free: bool
    limits: dict[str, int | None]
    prices: tuple[str, ...]


@dataclass(frozen=True)
class PackSpec:
    id: str
    usage_type: str
    amount: int
    expires_in_days: int | None = None  # credited as a grant (api.md section 7)


@dataclass(frozen=True)
class CatalogSpec:
    usage_types: dict[str, UsageTypeSpec]
    plans: dict[str, PlanSpec]
    packs: dict[str, PackSpec]

    @classmethod
    def load(cls, path: Path) -> CatalogSpec:
        data = yaml.safe_load(path.read_text())
        usage_types = {
            name: UsageTypeSpec(name, bool(spec.get("pools", False)), int(spec.get("rollover_cap", 0) or 0))
            for name, spec in data["usage_types"].items()
        }
        plans = {
            p["id"]: PlanSpec(
                p["id"],
                int(p["rank"]),
                bool(p.get("free", False)),
                dict(p["limits"]),
                tuple(p.get("stripe_prices", ())),
            )
            for p in data["plans"]
        }
        packs = {
            p["id"]: PackSpec(p["id"], p["usage_type"], int(p["amount"]), p.get("expires_in_days"))
            for p in data.get("packs", [])
        }
        return cls(usage_types, plans, packs)

    @property
    def free(self) -> PlanSpec:
        return next(p for p in self.plans.values() if p.free)

    def limit(self, plan_id: str | None, usage_type: str) -> int | None:
        plan = self.plans.get(plan_id) if plan_id else None
        return (plan or self.free).limits[usage_type]

    def plan_of_price(self, price: str) -> str:
        return next(p.id for p in self.plans.values() if price in p.prices)

    def price_of(self, plan_id: str) -> str:
        return self.plans[plan_id].prices[0]

    def highest(self, plan_ids: list[str]) -> str:
        return max(plan_ids, key=lambda p: self.plans[p].rank)


# --- the rules (metering.md "Check", "Record", "Periods and renewal") -----------------------------------


def waterfall(
    amount: int,
    *,
    limit: int | None,
    used: int,
    rollover: int,
    purchased: int,
    pools: bool,
    grants: list[Grant] | None = None,
) -> dict[str, int]:
    """Allowance first (only while the period has some left), then positive rollover, then live
    grants (soonest expiry first; `grants` given in that order, drawn from in place), then
    purchased credit, the rest as debt. A plain counter takes it all from the allowance."""
    if not pools:
        return {
            "from_subscription": amount,
            "from_rollover": 0,
            "from_grants": 0,
            "from_purchased": 0,
            "overflow_to_debt": 0,
        }
    allowance = amount if limit is None else min(amount, max(0, limit - used))
    left = amount - allowance
    from_rollover = min(left, rollover) if rollover > 0 else 0
    left -= from_rollover
    from_grants = 0
    for g in grants or []:
        take = min(left, g.remaining)
        g.remaining -= take
        from_grants += take
        left -= take
    from_purchased = min(left, purchased)
    left -= from_purchased
    return {
        "from_subscription": allowance,
        "from_rollover": from_rollover,
        "from_grants": from_grants,
        "from_purchased": from_purchased,
        "overflow_to_debt": left,
    }


def rollover_at_renewal(*, limit: int | None, used: int, before: int, cap: int) -> int:
    """metering.md: only a positive finite limit rolls over; rollover = min(rollover + unused, cap).
    docs/decisions.md: a balance already above the cap is left as it is, never cut."""
    if limit is None or limit <= 0:
        return before
    if before > cap:
        return before
    return min(before + max(0, limit - used), cap)


def calendar_month_start(moment: datetime) -> int:
    return calendar.timegm((moment.year, moment.month, 1, 0, 0, 0))


# --- Stripe facts, as the test generates them ----------------------------------------------------------


@dataclass(frozen=True)
class StripeFact:
    """One Stripe event, reduced to what the spec reads from it. Times are epoch seconds."""

    id: str
    type: str
    created: int
    user: str
    sub_id: str | None = None
    plan: str | None = None  # a snapshot's plan, or a renewal invoice line's
    status: str | None = None  # a snapshot's Stripe status
    period: tuple[int, int] | None = None  # a snapshot's period, or the new period of a renewal
    invoice_id: str | None = None
    ending_start: int | None = None  # a renewal invoice's period_start
    billing_reason: str | None = None
    session_id: str | None = None
    pack: str | None = None
    quantity: int = 1
    payment_status: str | None = None

    def label(self) -> str:
        return f"{self.type}#{self.id}"


SNAPSHOTS = (
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
)
PAID = ("invoice.paid", "invoice.payment_succeeded")


type Order = tuple[int, int, str]  # created, lifecycle stage, event id
STAGES = {"incomplete": 0, "canceled": 2}  # every other status: 1, started


def order(fact: StripeFact, status: str | None) -> Order:
    return (fact.created, STAGES.get(status or "", 1), fact.id)


# --- per-user state ----------------------------------------------------------------------------------


@dataclass
class Period:
    facts: list[str] = field(default_factory=list)  # plans Stripe reported for this period
    guess: str | None = None  # the plan assumed before any fact
    used: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rolled_over: bool = False


@dataclass
class Renewal:
    ending: int | str
    inputs: dict[str, list[int]] = field(default_factory=dict)  # usage type -> [used, before, delta]


@dataclass
class Grant:
    usage_type: str
    amount: int
    remaining: int
    expires_at: datetime
    reason: str


@dataclass
class User:
    rollover: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    purchased: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    periods: dict[int | str, Period] = field(default_factory=dict)
    holds: dict[str, tuple[str, int]] = field(default_factory=dict)  # live reservations
    snapshots: list[tuple[Order, str, tuple[int, int]]] = field(default_factory=list)  # order, plan, period
    status_changes: list[tuple[Order, str]] = field(default_factory=list)
    status_order: Order = (0, 0, "")  # of the last status change applied (for `stale` answers)
    snapshot_order: Order = (0, 0, "")  # of the newest snapshot applied
    period_ends: dict[int, int] = field(default_factory=dict)  # every period start named -> its end
    renewals: dict[str, Renewal] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)


class Model:
    def __init__(self, catalog: CatalogSpec) -> None:
        self.catalog = catalog
        self.users: dict[str, User] = defaultdict(User)
        self.events: dict[str, tuple[str, str, int, dict[str, int]]] = {}  # event_id -> payload, split
        self.occurred: dict[str, datetime | None] = {}  # event_id -> occurred_at as given
        self.adjustments: dict[str, tuple[str, str, str, int]] = {}
        self.stripe_applied: set[str] = set()
        self.topups: set[str] = set()
        self.seen: Counter[str] = Counter()  # which rules fired (for the test's statistics)

    # --- the subscription mirror, derived from the delivered events ------------------------------------

    def subscribed(self, user: str) -> bool:
        """Only a snapshot makes a subscription the user's current one."""
        return bool(self.users[user].snapshots)

    def mirror_plan(self, user: str) -> str | None:
        snaps = self.users[user].snapshots
        return max(snaps)[1] if snaps else None

    def status(self, user: str) -> str | None:
        changes = self.users[user].status_changes
        if not changes:
            return None
        if any(status == "canceled" for _, status in changes):
            return "canceled"
        return max(changes)[1]

    def current_start(self, user: str) -> int | None:
        ends = self.users[user].period_ends
        return max(ends) if ends else None

    def entitled(self, user: str) -> bool:
        return (
            self.subscribed(user)
            and self.status(user) in ENTITLED
            and self.mirror_plan(user) is not None
            and self.current_start(user) is not None
        )

    def period_start(self, user: str, now: datetime) -> datetime:
        """Where the period containing now begins."""
        key = self.period_key(user)
        return datetime.fromtimestamp(calendar_month_start(now) if key == CALENDAR else int(key), UTC)

    def period_key(self, user: str) -> int | str:
        """The period containing now: the subscription's current one, else the calendar month."""
        if self.entitled(user):
            start = self.current_start(user)
            assert start is not None
            return start
        return CALENDAR

    def effective_plan(self, user: str) -> str:
        plan = self.mirror_plan(user) if self.entitled(user) else None
        return plan or self.catalog.free.id

    def period_plan(self, period: Period) -> str | None:
        return self.catalog.highest(period.facts) if period.facts else period.guess

    def current_period(self, user: str, *, create: bool) -> tuple[Period | None, str]:
        """(the current period, if it exists or `create`, and the plan governing it)."""
        key = self.period_key(user)
        period = self.users[user].periods.get(key)
        if period is None and create:  # created by a record, adjustment or top-up: the plan of now
            period = self.users[user].periods[key] = Period(facts=[self.effective_plan(user)])
        if not self.entitled(user):  # a calendar month: the free plan, whatever its row says
            return period, self.catalog.free.id
        plan = self.period_plan(period) if period is not None else None
        return period, plan or self.effective_plan(user)

    # --- check, reservations ---------------------------------------------------------------------

    def availability(self, user: str, usage_type: str, *, exclude: str | None = None) -> dict[str, Any]:
        u = self.users[user]
        kind = self.catalog.usage_types[usage_type]
        period, plan = self.current_period(user, create=False)
        limit = self.catalog.limit(plan, usage_type)
        used = period.used[usage_type] if period is not None else 0
        rollover, purchased = (u.rollover[usage_type], u.purchased[usage_type]) if kind.pools else (0, 0)
        granted = sum(g.remaining for _, g in self.live_grants(user, usage_type)) if kind.pools else 0
        reserved = sum(a for rid, (t, a) in u.holds.items() if t == usage_type and rid != exclude)
        if limit is None:
            available = None
        else:
            total = max(0, limit - used) + (rollover + granted + purchased if kind.pools else 0)
            available = max(0, total - reserved)
        return {
            "limit": limit,
            "used": used,
            "rollover": rollover,
            "purchased": purchased,
            "granted": granted,
            "reserved": reserved,
            "available": available,
        }

    def check(self, user: str, usage_type: str, amount: int, reservation: str | None) -> dict[str, Any]:
        numbers = self.availability(user, usage_type, exclude=reservation)
        allowed = numbers["available"] is None or amount <= numbers["available"]
        if allowed and reservation is not None:
            self.users[user].holds[reservation] = (usage_type, amount)  # replaces one of the same id
        return {
            "allowed": allowed,
            "limit": numbers["limit"],
            "used": numbers["used"],
            "reserved": numbers["reserved"],
            "available": numbers["available"],
            "reservation": {"id": reservation, "amount": amount} if allowed and reservation else None,
        }

    def release(self, user: str, reservation: str) -> int:
        return 204 if self.users[user].holds.pop(reservation, None) is not None else 404

    def expire(self, user: str, reservation: str) -> None:
        del self.users[user].holds[reservation]

    # --- record ----------------------------------------------------------------------------------------

    def record(
        self,
        event_id: str,
        user: str,
        usage_type: str,
        amount: int,
        reservation: str | None,
        occurred_at: datetime | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """(status, expected body: breakdown and, when applied, balance; or the error code).
        `occurred_at` lies in the current period (the test keeps it there): the same period pays,
        and it is part of the payload a duplicate is compared on (api.md section 7)."""
        if event_id in self.events:
            first_user, first_type, first_amount, split = self.events[event_id]
            first = (first_user, first_type, first_amount, self.occurred.get(event_id))
            if first != (user, usage_type, amount, occurred_at):
                return 409, {"code": "event_id_conflict"}
            self._settle(user, reservation)
            return 200, {"recorded": False, "duplicate": True, "breakdown": split}
        u = self.users[user]
        kind = self.catalog.usage_types[usage_type]
        period, plan = self.current_period(user, create=True)
        assert period is not None
        split = waterfall(
            amount,
            limit=self.catalog.limit(plan, usage_type),
            used=period.used[usage_type],
            rollover=u.rollover[usage_type],
            purchased=u.purchased[usage_type],
            pools=kind.pools,
            grants=[g for _, g in self.live_grants(user, usage_type)],
        )
        self.seen.update(f"waterfall {part}" for part, value in split.items() if value and kind.pools)
        period.used[usage_type] += split["from_subscription"]
        u.rollover[usage_type] -= split["from_rollover"] + split["overflow_to_debt"]
        u.purchased[usage_type] -= split["from_purchased"]
        self.events[event_id] = (user, usage_type, amount, split)
        self.occurred[event_id] = occurred_at
        self._settle(user, reservation)
        balance = {
            "used": period.used[usage_type],
            "rollover": u.rollover[usage_type] if kind.pools else 0,
            "purchased": u.purchased[usage_type] if kind.pools else 0,
            "granted": self.availability(user, usage_type)["granted"],
        }
        return 201, {"recorded": True, "duplicate": False, "breakdown": split, "balance": balance}

    # --- grants (api.md section 7) ----------------------------------------------------------------

    def live_grants(self, user: str, usage_type: str) -> list[tuple[str, Grant]]:
        """Grants of the pair with credit left whose expiry lies ahead, soonest expiry first."""
        now = datetime.now(UTC)
        found = [
            (gid, g)
            for gid, g in self.users[user].grants.items()
            if g.usage_type == usage_type and g.remaining > 0 and g.expires_at > now
        ]
        return sorted(found, key=lambda item: (item[1].expires_at, item[0]))

    def grant_owner(self, grant_id: str) -> tuple[str, Grant] | None:
        for user, u in self.users.items():
            if grant_id in u.grants:
                return user, u.grants[grant_id]
        return None

    def grant(
        self, grant_id: str, user: str, usage_type: str, amount: int, expires_at: datetime, reason: str
    ) -> tuple[int, dict[str, Any]]:
        """(status, expected body, or the error code) of POST /v1/users/{user}/grants."""
        if not self.catalog.usage_types[usage_type].pools:
            return 400, {"code": "pools_not_supported"}
        known = self.grant_owner(grant_id)
        if known is not None:
            owner, g = known
            if (owner, g.usage_type, g.amount, g.expires_at, g.reason) != (
                user,
                usage_type,
                amount,
                expires_at,
                reason,
            ):
                return 409, {"code": "grant_id_conflict"}
            live = g.remaining if g.expires_at > datetime.now(UTC) else 0
            return 200, self._grant_body(grant_id, g, live, user)
        if expires_at <= datetime.now(UTC):
            return 400, {"code": "validation_error"}
        g = self.users[user].grants[grant_id] = Grant(usage_type, amount, amount, expires_at, reason)
        return 201, self._grant_body(grant_id, g, amount, user)

    def _grant_body(self, grant_id: str, g: Grant, remaining: int, user: str) -> dict[str, Any]:
        numbers = self.availability(user, g.usage_type)
        return {
            "grant": {"id": grant_id, "usage_type": g.usage_type, "amount": g.amount, "remaining": remaining},
            "balance": {k: numbers[k] for k in ("used", "rollover", "purchased", "granted")},
        }

    def _settle(self, user: str, reservation: str | None) -> None:
        """metering.md Record 5: a record naming a reservation releases it (whatever its usage type)."""
        if reservation is not None:
            self.users[user].holds.pop(reservation, None)

    # --- adjustments -------------------------------------------------------------------------------------

    def adjust(
        self, adjustment_id: str, user: str, usage_type: str, pool: str, delta: int
    ) -> tuple[int, str]:
        """(status, error code or '')."""
        if not self.catalog.usage_types[usage_type].pools:
            return 400, "pools_not_supported"
        if adjustment_id in self.adjustments:
            same = self.adjustments[adjustment_id] == (user, usage_type, pool, delta)
            return (200, "") if same else (409, "adjustment_id_conflict")
        u = self.users[user]
        if pool == "purchased":
            if u.purchased[usage_type] + delta < 0:
                return 409, "insufficient_balance"  # and the id stays free
            u.purchased[usage_type] += delta
        else:
            u.rollover[usage_type] += delta
        self.current_period(user, create=True)
        self.adjustments[adjustment_id] = (user, usage_type, pool, delta)
        return 201, ""

    # --- Stripe ------------------------------------------------------------------------------------------

    def deliver(self, fact: StripeFact) -> str:
        """Apply one delivery; returns the webhook's expected status."""
        if fact.id in self.stripe_applied:
            return "duplicate"
        self.stripe_applied.add(fact.id)
        if fact.type in SNAPSHOTS:
            return self._snapshot(fact)
        if fact.type in PAID:
            return self._paid(fact)
        if fact.type == "invoice.payment_failed":
            return self._failed(fact)
        if fact.type in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
            return self._checkout(fact)
        raise AssertionError(f"not generated: {fact.type}")

    def _status_change(self, u: User, key: Order, status: str) -> None:
        u.status_changes.append((key, status))
        final = any(s == "canceled" for _, s in u.status_changes[:-1])
        if status == "canceled" or (not final and key >= u.status_order):
            u.status_order = max(u.status_order, key)

    def _snapshot(self, fact: StripeFact) -> str:
        assert fact.plan is not None and fact.status is not None and fact.period is not None
        u = self.users[fact.user]
        status = "canceled" if fact.type.endswith(".deleted") else fact.status
        key = order(fact, status)
        fresh = key >= u.snapshot_order
        u.snapshot_order = max(u.snapshot_order, key)
        u.snapshots.append((key, fact.plan, fact.period))
        self._status_change(u, key, status)
        u.period_ends[fact.period[0]] = fact.period[1]
        if status in ENTITLED:
            self._period_fact(fact.user, fact.period[0], fact.plan)
        return "ok" if fresh else "stale"

    def _period_fact(self, user: str, start: int, plan: str) -> None:
        periods = self.users[user].periods
        period = periods.setdefault(start, Period())
        before = self.period_plan(period)
        period.facts.append(plan)
        if period.rolled_over and self.period_plan(period) != before:
            self._reprice(user, start)

    def _paid(self, fact: StripeFact) -> str:
        assert fact.invoice_id and fact.period and fact.ending_start is not None and fact.plan
        u = self.users[fact.user]
        u.period_ends[fact.period[0]] = fact.period[1]
        if fact.invoice_id in u.renewals:
            return "ok"  # renewed already, by this invoice's other event type
        renewal = u.renewals[fact.invoice_id] = Renewal(fact.ending_start)
        ending = u.periods.get(fact.ending_start)
        if ending is None:
            guess = self.mirror_plan(fact.user) or fact.plan
            self.seen["renewal of a period no fact named yet"] += 1
            ending = u.periods[fact.ending_start] = Period(guess=guess)
        if not ending.rolled_over:
            plan = self.period_plan(ending)
            for kind in self.catalog.usage_types.values():
                if not kind.pools:
                    continue
                used, before = ending.used[kind.id], u.rollover[kind.id]
                after = rollover_at_renewal(
                    limit=self.catalog.limit(plan, kind.id), used=used, before=before, cap=kind.cap
                )
                u.rollover[kind.id] = after
                renewal.inputs[kind.id] = [used, before, after - before]
                self.seen[
                    f"rollover {'debt' if before < 0 else 'capped' if after == kind.cap else 'other'}"
                ] += 1
            ending.rolled_over = True
        self._period_fact(fact.user, fact.period[0], fact.plan)
        return "ok"

    def _reprice(self, user: str, start: int) -> None:
        u = self.users[user]
        plan = self.period_plan(u.periods[start])
        for renewal in u.renewals.values():
            if renewal.ending != start:
                continue
            for usage_type, inputs in renewal.inputs.items():
                used, before, delta = inputs
                kind = self.catalog.usage_types[usage_type]
                after = rollover_at_renewal(
                    limit=self.catalog.limit(plan, usage_type), used=used, before=before, cap=kind.cap
                )
                u.rollover[usage_type] += (after - before) - delta
                self.seen[f"renewal re-priced ({'changed' if after - before != delta else 'same'})"] += 1
                inputs[2] = after - before

    def _failed(self, fact: StripeFact) -> str:
        u = self.users[fact.user]
        if fact.billing_reason == "subscription_create":
            return "ok"
        if order(fact, "past_due") < u.status_order:
            return "stale"
        self._status_change(u, order(fact, "past_due"), "past_due")
        return "ok"

    def _checkout(self, fact: StripeFact) -> str:
        assert fact.session_id and fact.pack
        if fact.type == "checkout.session.completed" and fact.payment_status != "paid":
            return "ok"  # paid later: credited by async_payment_succeeded
        if fact.session_id in self.topups:
            return "ok"
        self.topups.add(fact.session_id)
        pack = self.catalog.packs[fact.pack]
        if pack.expires_in_days is not None:  # a grant, expiring that many days after the purchase
            expires = datetime.fromtimestamp(fact.created, UTC) + timedelta(days=pack.expires_in_days)
            amount = pack.amount * fact.quantity
            self.users[fact.user].grants[f"topup:{fact.session_id}"] = Grant(
                pack.usage_type, amount, amount, expires, pack.id
            )
        else:
            self.users[fact.user].purchased[pack.usage_type] += pack.amount * fact.quantity
        self.current_period(fact.user, create=True)
        return "ok"

    # --- reads -------------------------------------------------------------------------------------------

    def summary(self, user: str, now: datetime | None = None) -> dict[str, Any]:
        now = now or datetime.now(UTC)
        subscription = (
            {"plan": self.mirror_plan(user), "status": self.status(user)} if self.subscribed(user) else None
        )
        if self.entitled(user):
            start = self.current_start(user)
            assert start is not None
            period = (start, self.users[user].period_ends[start])
        else:
            period = (calendar_month_start(now), None)
        return {
            "plan": self.current_period(user, create=False)[1],  # the plan whose limits these are
            "subscription": subscription,
            "period_start": period[0],
            "usage_types": {name: self.availability(user, name) for name in self.catalog.usage_types},
        }
