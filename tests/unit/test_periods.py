"""Period resolution: calendar months, Stripe periods, assumed periods after a late renewal."""

from datetime import UTC, datetime

import pytest

from metering.domain.periods import (
    SubscriptionState,
    add_months,
    calendar_month,
    next_period,
    resolve_period,
)


def dt(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def sub(status="active", start=dt(2026, 1, 31, 10), end=dt(2026, 2, 28, 10), anchor=dt(2026, 1, 31, 10)):
    return SubscriptionState("sub_1", "plus", status, start, end, anchor)


def test_calendar_month_including_december():
    assert calendar_month(dt(2026, 12, 31, 23, 59)) == (dt(2026, 12, 1), dt(2027, 1, 1))
    assert calendar_month(dt(2026, 2, 1)) == (dt(2026, 2, 1), dt(2026, 3, 1))


def test_month_end_anchor_clamps_and_recovers():
    anchor = dt(2026, 1, 31, 10)
    assert add_months(anchor, 1, anchor) == dt(2026, 2, 28, 10)
    assert add_months(dt(2026, 2, 28, 10), 1, anchor) == dt(2026, 3, 31, 10)
    assert add_months(dt(2027, 12, 31, 10), 2, anchor) == dt(2028, 2, 29, 10)


@pytest.mark.parametrize(
    ("start", "end", "anchor", "expected"),
    [
        (dt(2026, 1, 31), dt(2026, 2, 28), dt(2026, 1, 31), (dt(2026, 2, 28), dt(2026, 3, 31))),
        (dt(2026, 3, 15), dt(2027, 3, 15), None, (dt(2027, 3, 15), dt(2028, 3, 15))),
        (dt(2026, 3, 1), dt(2026, 3, 8), None, (dt(2026, 3, 8), dt(2026, 3, 15))),
        (dt(2026, 5, 10), dt(2026, 8, 10), None, (dt(2026, 8, 10), dt(2026, 11, 10))),
    ],
    ids=["monthly month-end", "yearly", "weekly", "quarterly"],
)
def test_next_period_keeps_interval_and_anchor(start, end, anchor, expected):
    assert next_period(start, end, anchor) == expected


def test_entitled_subscription_period():
    spec = resolve_period(sub(), dt(2026, 2, 10), "free")
    assert (spec.start, spec.end, spec.plan_id, spec.kind) == (
        dt(2026, 1, 31, 10),
        dt(2026, 2, 28, 10),
        "plus",
        "subscription",
    )


def test_late_renewal_assumes_the_next_period_from_the_boundary():
    # the period ended at Feb 28 10:00; Stripe's renewal has not arrived yet
    spec = resolve_period(sub(), dt(2026, 2, 28, 10), "free")
    assert (spec.start, spec.end, spec.kind) == (dt(2026, 2, 28, 10), dt(2026, 3, 31, 10), "assumed")
    much_later = resolve_period(sub(), dt(2026, 5, 1), "free")
    assert (much_later.start, much_later.end) == (dt(2026, 4, 30, 10), dt(2026, 5, 31, 10))


@pytest.mark.parametrize("status", ["canceled", "incomplete", "paused", "incomplete_expired"])
def test_not_entitled_falls_back_to_free_calendar_month(status):
    spec = resolve_period(sub(status=status), dt(2026, 2, 10), "free")
    assert (spec.start, spec.end, spec.plan_id, spec.kind) == (
        dt(2026, 2, 1),
        dt(2026, 3, 1),
        "free",
        "calendar",
    )


@pytest.mark.parametrize("status", ["active", "trialing", "past_due"])
def test_entitled_statuses(status):
    assert resolve_period(sub(status=status), dt(2026, 2, 10), "free").plan_id == "plus"


def test_no_subscription_is_free_calendar_month():
    spec = resolve_period(None, dt(2026, 7, 4), "free")
    assert (spec.start, spec.plan_id) == (dt(2026, 7, 1), "free")
