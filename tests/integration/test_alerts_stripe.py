"""Usage alerts written by Stripe events (api.md section 7): a renewal that lowers the allowance of
the period the user is in, and a cancellation that leaves nothing available, cross alerts in the
event's own transaction; a renewal that raises it crosses nothing."""

from datetime import UTC, datetime, timedelta

import pytest

from tests.support import api
from tests.support import stripe_events as se
from tests.support.alerts import alert_rows, fired, use_alert_catalog
from tests.support.state import assert_reconciled

NOW = datetime.now(UTC).replace(microsecond=0)
P1 = (NOW - timedelta(days=40), NOW - timedelta(days=10))  # ended
P2 = (P1[1], P1[1] + timedelta(days=30))  # current
BASIC, PLUS = "price_basic_monthly", "price_plus_monthly"


@pytest.fixture(autouse=True)
def setup(clean, monkeypatch, tmp_path):
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", se.SECRET)
    use_alert_catalog(tmp_path)
    se.wipe()


def snap(event_type, created, period, *, price=BASIC, **fields):
    sub = se.subscription(
        "sub_1", price=price, start=period[0], end=period[1], created=P1[0] - timedelta(days=30), **fields
    )
    return se.event(f"customer.subscription.{event_type}", sub, created)


def cycle(created, price):
    inv = se.cycle_invoice(
        "in_1", subscription_id="sub_1", price=price, ending_start=P1[0], new_start=P2[0], new_end=P2[1]
    )
    return se.event("invoice.paid", inv, created)


def test_a_renewal_onto_a_smaller_plan_crosses_the_share_already_used():
    se.ok(snap("created", se.ts(P1[0]) + 5, P1, price=PLUS))
    # Stripe's renewal is late: usage lands in the assumed next period, under plus (20,000)
    assert api.record("e1", "u1", "premium_voice", 4500)[0] == 201
    assert fired() == []
    renewal = cycle(se.ts(P2[0]) + 60, BASIC)
    se.ok(renewal)  # renewed onto basic: 4,500 of 5,000 is 90 %
    (row,) = alert_rows()
    # available: 500 of the allowance and P1's unused plus allowance rolled over (capped at 6,000)
    assert (row.alert_id, row.used, row.allowance, row.available) == ("voice_80", 4500, 5000, 6500)
    assert (row.period_start, row.period_end) == P2
    se.ok(renewal, "duplicate")  # redelivered: nothing new
    se.ok(cycle(se.ts(P2[0]) + 61, BASIC))  # the invoice's other event: renewed already
    assert fired() == ["voice_80"]
    assert_reconciled()


def test_a_renewal_onto_a_bigger_plan_crosses_nothing():
    se.ok(snap("created", se.ts(P1[0]) + 5, P1, price=BASIC))
    assert api.record("e1", "u1", "premium_voice", 3000)[0] == 201  # 60 % of basic
    se.ok(cycle(se.ts(P2[0]) + 60, PLUS))
    assert fired() == []


def test_a_cancellation_that_leaves_nothing_available_writes_available_depleted():
    se.ok(snap("created", se.ts(P2[0]) + 5, P2, price=BASIC))
    assert api.record("e1", "u1", "premium_voice", 1000)[0] == 201
    se.ok(
        snap("deleted", se.ts(P2[0]) + 20, P2, status="canceled", canceled_at=P2[0] + timedelta(seconds=20))
    )
    (row,) = alert_rows()
    # the free plan's month: premium_voice is not included (0), nothing purchased
    assert (row.alert_id, row.allowance, row.available) == ("voice_out", 0, 0)
