"""Which period a moment belongs to, and which plan governs it (metering.md "Periods and renewal")."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple

ENTITLED_STATUSES = frozenset({"active", "trialing", "past_due"})

PeriodKind = Literal["calendar", "subscription", "assumed"]


class SubscriptionState(NamedTuple):
    """The user's current subscription, as mirrored from Stripe."""

    subscription_id: str
    plan_id: str | None
    status: str
    period_start: datetime | None
    period_end: datetime | None
    anchor: datetime | None = None
    cancel_at_period_end: bool = False
    cancel_at: datetime | None = None
    canceled_at: datetime | None = None

    @property
    def entitled(self) -> bool:
        return (
            self.status in ENTITLED_STATUSES
            and self.plan_id is not None
            and self.period_start is not None
            and self.period_end is not None
        )


class PeriodSpec(NamedTuple):
    start: datetime
    end: datetime
    plan_id: str
    kind: PeriodKind
    subscription_id: str | None = None

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


def calendar_month(moment: datetime) -> tuple[datetime, datetime]:
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return start, datetime(year, month, 1, tzinfo=UTC)


def add_months(moment: datetime, months: int, anchor: datetime) -> datetime:
    """`moment` moved by whole months, on the anchor's day (clamped to the month's end) and time,
    as Stripe anchors billing periods: an anchor on the 31st bills on Feb 28 and then Mar 31."""
    index = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return moment.replace(
        year=year,
        month=month,
        day=day,
        hour=anchor.hour,
        minute=anchor.minute,
        second=anchor.second,
        microsecond=anchor.microsecond,
    )


_MONTH_STEPS = (1, 3, 6, 12, 2, 4)


def next_period(start: datetime, end: datetime, anchor: datetime | None = None) -> tuple[datetime, datetime]:
    """The period that follows [start, end): same interval, anchored as Stripe anchors it."""
    anchor = anchor or start
    for months in _MONTH_STEPS:
        if add_months(start, months, anchor) == end:
            return end, add_months(end, months, anchor)
    step: timedelta = end - start  # daily / weekly / custom intervals are fixed lengths
    return end, end + step


def resolve_period(sub: SubscriptionState | None, moment: datetime, free_plan_id: str) -> PeriodSpec:
    """The period containing `moment`.

    An entitled subscription's period, rolled forward to assumed periods when Stripe's renewal is
    late (no usage is charged to a period that had already ended); otherwise the UTC calendar
    month under the free plan.
    """
    if sub is not None and sub.entitled:
        assert sub.period_start is not None and sub.period_end is not None and sub.plan_id is not None
        start, end = sub.period_start, sub.period_end
        if moment < end:
            return PeriodSpec(start, end, sub.plan_id, "subscription", sub.subscription_id)
        for _ in range(1000):  # bounded: 1000 periods of even a day is years of silence from Stripe
            start, end = next_period(start, end, sub.anchor)
            if moment < end:
                return PeriodSpec(start, end, sub.plan_id, "assumed", sub.subscription_id)
    start, end = calendar_month(moment)
    return PeriodSpec(start, end, free_plan_id, "calendar")


def governing_plan(spec: PeriodSpec, stored_plan: str | None) -> str:
    """The plan whose limits apply in the period `spec` describes. A subscription's period (stored
    or assumed) is governed by the plan its row remembers, which upgrades raise and downgrades do
    not lower (they wait for the next period); a calendar month is governed by the free plan, even
    when its row is the one of an ended subscription period that began at the same instant (rows
    are keyed by user and start)."""
    if spec.kind == "calendar" or stored_plan is None:
        return spec.plan_id
    return stored_plan


type StoredPeriod = tuple[datetime, datetime, str, bool]  # start, end, plan_id, rolled_over


def charged_period(
    sub: SubscriptionState | None,
    moment: datetime,
    now: datetime,
    free_plan_id: str,
    stored: list[StoredPeriod],
) -> PeriodSpec:
    """The period that pays for usage that happened at `moment` and is recorded at `now`
    (metering.md "Second release", late events): the period containing the moment, unless its
    renewal rollover was already applied (settled: never reopened), in which case the current
    one. `stored` are the user's period rows containing the moment.

    A moment before the current subscription period that no stored row covers is charged to the
    current period too: that earlier period had no usage and its bounds are not known here."""
    current = resolve_period(sub, now, free_plan_id)
    if current.contains(moment):
        return current
    expected = resolve_period(sub, moment, free_plan_id)
    if moment >= current.end:  # a little ahead of now (clock skew), past a boundary
        return expected
    rows = sorted((r for r in stored if r[0] <= moment < r[1]), key=lambda r: r[0], reverse=True)
    if expected.contains(moment):
        rows.sort(key=lambda r: r[0] != expected.start)  # the row the rules expect, if stored
    if not rows:
        return expected if expected.contains(moment) else current
    start, end, plan_id, rolled_over = rows[0]
    if rolled_over:
        return current
    if expected.contains(moment) and expected.start == start:
        return expected
    return PeriodSpec(start, end, plan_id, "subscription")
