"""Period resolution: calendar months, Stripe periods, assumed periods after a late renewal."""

from datetime import UTC, datetime

import pytest

from metering.domain.periods import (
    PeriodSpec,
    SubscriptionState,
    add_months,
    calendar_month,
    charged_period,
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


# --- late events: which period pays (api.md section 7) -------------------------------------------------

OLD = (datetime(2026, 11, 3, 9, tzinfo=UTC), datetime(2026, 12, 3, 9, tzinfo=UTC))
NEW = (OLD[1], datetime(2027, 1, 3, 9, tzinfo=UTC))
LATE = datetime(2026, 12, 3, 8, 59, tzinfo=UTC)  # a minute before the boundary
NOW = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)


def renewing(period):
    return SubscriptionState("sub_1", "basic", "active", period[0], period[1], anchor=OLD[0])


def test_a_moment_of_the_current_period_is_charged_to_it():
    assert charged_period(renewing(NEW), NOW, NOW, "free", []) == PeriodSpec(
        *NEW, "basic", "subscription", "sub_1"
    )


def test_before_the_renewal_webhook_the_ended_period_pays():
    # the mirror still has OLD: now lies in an assumed next period, the moment in OLD
    assert charged_period(renewing(OLD), LATE, NOW, "free", []) == PeriodSpec(
        *OLD, "basic", "subscription", "sub_1"
    )
    stored = [(*OLD, "basic", False)]
    assert charged_period(renewing(NEW), LATE, NOW, "free", stored) == PeriodSpec(
        *OLD, "basic", "subscription"
    )


def test_once_rolled_over_the_current_period_pays():
    stored = [(*OLD, "basic", True)]
    for mirror in (OLD, NEW):
        assert charged_period(renewing(mirror), LATE, NOW, "free", stored).start == NEW[0]


def test_an_unstored_earlier_subscription_period_is_charged_to_the_current_one():
    assert charged_period(renewing(NEW), LATE, NOW, "free", []).start == NEW[0]


def test_a_free_users_last_month_pays_for_its_late_usage():
    now = datetime(2026, 12, 1, 0, 10, tzinfo=UTC)
    moment = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
    got = charged_period(None, moment, now, "free", [])
    assert (got.start, got.end, got.kind) == (
        datetime(2026, 11, 1, tzinfo=UTC),
        datetime(2026, 12, 1, tzinfo=UTC),
        "calendar",
    )


def test_a_moment_just_ahead_past_a_boundary_is_charged_to_the_next_period():
    moment = datetime(2026, 12, 3, 9, 2, tzinfo=UTC)
    got = charged_period(renewing(OLD), moment, datetime(2026, 12, 3, 8, 58, tzinfo=UTC), "free", [])
    assert (got.start, got.kind) == (NEW[0], "assumed")
