"""Any order: one set of related Stripe events delivered in every permutation leaves one final state,
the state of the in-order delivery (api.md section 5, metering.md "Stripe subscription lifecycle")."""

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from tests.support import stripe_events as se
from tests.support.state import assert_reconciled, use_test_catalog

NOW = datetime.now(UTC).replace(microsecond=0)
P1 = (NOW - timedelta(days=40), NOW - timedelta(days=10))
P2 = (P1[1], P1[1] + timedelta(days=30))
T1, T2 = se.ts(P1[0]), se.ts(P2[0])


@pytest.fixture(autouse=True)
def setup(clean, monkeypatch):
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", se.SECRET)
    use_test_catalog()


def snapshot(event_type, created, *, price, period, status="active"):
    sub = se.subscription("sub_1", price=price, start=period[0], end=period[1], status=status, created=P1[0])
    return se.event(event_type, sub, created)


def story():
    """Basic from P1, upgraded to Plus mid-period; the renewal's first charge fails (Stripe moves the
    period and marks it past_due), the retry pays the cycle invoice, the subscription is active again."""
    cycle = se.cycle_invoice(
        "in_cycle_1",
        subscription_id="sub_1",
        price="price_plus_monthly",
        ending_start=P1[0],
        new_start=P2[0],
        new_end=P2[1],
    )
    return [
        snapshot("customer.subscription.created", T1 + 10, price="price_basic_monthly", period=P1),
        snapshot("customer.subscription.updated", T1 + 5 * 86400, price="price_plus_monthly", period=P1),
        se.event("invoice.payment_failed", cycle, T2 + 3600),
        snapshot(
            "customer.subscription.updated",
            T2 + 3601,
            price="price_plus_monthly",
            period=P2,
            status="past_due",
        ),
        se.event("invoice.paid", cycle, T2 + 2 * 86400),
        snapshot("customer.subscription.updated", T2 + 2 * 86400 + 1, price="price_plus_monthly", period=P2),
    ]


def expected_state(events):
    last = events[-1]["created"]
    return {
        "subscriptions": [
            (
                "sub_1",
                "u1",
                "cus_test_1",
                "price_plus_monthly",
                "plus",
                "active",
                "active",
                P2[0],
                P2[1],
                P2[0],
                False,
                None,
                None,
                P1[0],
                last,
                last,
            )
        ],
        "accounts": [("u1", "cus_test_1", "sub_1", P1[0], 2, se.at(events[4]["created"]))],
        "periods": [
            ("u1", P1[0], P1[1], "plus", "subscription", "sub_1", True),
            ("u1", P2[0], P2[1], "plus", "subscription", "sub_1", False),
        ],
        "used": [],
        # Plus: premium_voice 20,000 unused, capped at 6,000; ocr_tokens unlimited, so no rollover
        "balances": [("u1", "premium_voice", 6000, 0)],
        "journal": [("u1", "premium_voice", "rollover", "rollover", "in_cycle_1", 6000)],
        "renewals": [("in_cycle_1", "u1", "sub_1", P1[0], P2[0], P2[1])],
        "topups": [],
        "pending": [],
        "events": sorted((e["id"],) for e in events),
    }


def test_every_delivery_order_leaves_the_in_order_state():
    events = story()
    expected = expected_state(events)
    orders = list(itertools.permutations(range(len(events))))
    assert len(orders) == 720
    for order in orders:
        se.wipe()
        for index in order:
            status, body = se.deliver(events[index])
            assert status == 200 and body["status"] in ("ok", "stale"), (order, index, body)
        state = se.final_state()
        assert state == expected, f"delivery order {order}"
    assert_reconciled()


def test_every_order_with_duplicates_and_both_paid_event_types():
    """A shorter set, each event delivered twice and the invoice also as payment_succeeded."""
    events = story()
    cycle = events[4]["data"]["object"]
    succeeded = se.event("invoice.payment_succeeded", cycle, events[4]["created"] + 5)
    chosen = [events[0], events[1], events[4], succeeded, events[5]]
    for order in itertools.permutations(range(len(chosen))):
        se.wipe()
        for index in order:
            se.deliver(chosen[index])
            assert se.deliver(chosen[index]) == (200, {"status": "duplicate"})
        state = se.final_state()
        assert state["periods"] == [
            ("u1", P1[0], P1[1], "plus", "subscription", "sub_1", True),
            ("u1", P2[0], P2[1], "plus", "subscription", "sub_1", False),
        ], order
        assert state["journal"] == [("u1", "premium_voice", "rollover", "rollover", "in_cycle_1", 6000)], (
            order
        )
        assert state["subscriptions"][0][5] == "active", order
    assert_reconciled()
