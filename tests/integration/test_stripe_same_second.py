"""Stripe events of one `created` second converge to one state in any order (issue 22).

Stripe's `created` has one-second resolution, and a Checkout signup completes within a second:
`checkout.session.completed`, `customer.subscription.created` (status `incomplete`), the first
invoice's `invoice.created` / `invoice.finalized` / `invoice.paid` / `invoice.payment_succeeded`,
then `customer.subscription.updated` (status `active`), all with one `created`. Within a second the
service orders a subscription's events by the stage of Stripe's lifecycle they report (incomplete,
then started, then canceled: a subscription never goes back a stage), then by event id
(`metering.domain.subscriptions.order_key`).

Every order of the handled events is delivered, the two unhandled ones (`invoice.created`,
`invoice.finalized`) put at a different place each time: they are answered `ignored` without the
database being read or written (`test_unhandled_events_touch_nothing`), so where they fall cannot
change the outcome. Each run has its own user, customer, subscription, invoice and session, so
that the runs need no cleaning between them.
"""

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from bench import wire
from metering.db.engine import get_engine
from tests.support import stripe_events as se
from tests.support.state import assert_reconciled, use_test_catalog

BASIC = "price_basic_monthly"
SECOND = int((datetime.now(UTC) - timedelta(hours=1)).timestamp())  # the signup's one second
PERIOD = (SECOND, SECOND + 30 * 86400)  # the first item's period: it contains now


@pytest.fixture(autouse=True)
def setup(clean, monkeypatch):
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", se.SECRET)
    use_test_catalog()


def signup(n: int, *, parked: bool) -> tuple[list[dict], list[dict]]:
    """(handled events, unhandled events) of run n's Checkout signup, all in one second. `parked`:
    only the checkout session names the user (client_reference_id), so the subscription's and the
    invoice's events that arrive before it are kept until it links them."""
    user, customer, sub, invoice, session = f"u{n}", f"cus_{n}", f"sub_{n}", f"in_{n}", f"cs_{n}"
    owner = None if parked else user

    def subscription(status: str) -> dict:
        return se.subscription(
            sub, price=BASIC, start=PERIOD[0], end=PERIOD[1], status=status, customer=customer,
            user_id=owner, created=SECOND,
        )  # fmt: skip

    def first_invoice(status: str) -> dict:
        line = se.line(price=BASIC, start=PERIOD[0], end=PERIOD[1], subscription_id=sub, invoice_id=invoice)
        return se.invoice(
            invoice, subscription_id=sub, billing_reason="subscription_create", period_start=PERIOD[0],
            period_end=PERIOD[0], lines=[line], customer=customer, user_id=owner, status=status,
        )  # fmt: skip

    checkout = se.checkout_session(
        session, mode="subscription", user_id=None, client_reference_id=user, customer=customer,
        subscription_id=sub,
    )  # fmt: skip
    handled = [
        se.event("checkout.session.completed", checkout, SECOND, event_id=f"evt_{n}_checkout"),
        se.event(
            "customer.subscription.created", subscription("incomplete"), SECOND, event_id=f"evt_{n}_created"
        ),
        se.event("invoice.paid", first_invoice("paid"), SECOND, event_id=f"evt_{n}_paid"),
        se.event("invoice.payment_succeeded", first_invoice("paid"), SECOND, event_id=f"evt_{n}_succeeded"),
        se.event("customer.subscription.updated", subscription("active"), SECOND, event_id=f"evt_{n}_active"),
    ]
    unhandled = [
        se.event("invoice.created", first_invoice("draft"), SECOND, event_id=f"evt_{n}_invoice_created"),
        se.event("invoice.finalized", first_invoice("open"), SECOND, event_id=f"evt_{n}_finalized"),
    ]
    return handled, unhandled


def state(n: int) -> tuple:
    """What run n's events left: the mirror, the account, the periods, what is still kept, and
    the summary (run n's own ids replaced by their role)."""
    from metering.services.reads import summary

    (mirror,) = se.sql(
        "SELECT user_id, customer_id, price_id, plan_id, status, stripe_status, current_period_start,"
        " current_period_end FROM subscriptions WHERE subscription_id = :s",
        s=f"sub_{n}",
    )
    (account,) = se.sql(
        "SELECT stripe_customer_id, current_subscription_id, highest_rank, last_paid_at IS NOT NULL"
        " FROM accounts WHERE user_id = :u",
        u=f"u{n}",
    )
    periods = se.sql(
        "SELECT period_start, period_end, plan_id, kind FROM periods WHERE user_id = :u ORDER BY 1", u=f"u{n}"
    )
    kept = se.sql(
        "SELECT count(*) FROM stripe_pending_events WHERE subscription_id = :s OR customer_id = :c",
        s=f"sub_{n}",
        c=f"cus_{n}",
    )[0][0]
    body = summary(f"u{n}").model_dump(mode="json")
    names = {f"u{n}": "user", f"cus_{n}": "customer", f"sub_{n}": "subscription"}
    return (
        tuple(names.get(v, v) for v in mirror),
        tuple(names.get(v, v) for v in account),
        [tuple(p) for p in periods],
        kept,
        body["plan"]["id"],
        body["subscription"]["status"],
        (body["period"]["start"], body["period"]["end"]),
    )


EXPECTED = (
    ("user", "customer", BASIC, "basic", "active", "active", se.at(PERIOD[0]), se.at(PERIOD[1])),
    ("customer", "subscription", 1, True),  # basic's rank in the test catalog
    [(se.at(PERIOD[0]), se.at(PERIOD[1]), "basic", "subscription")],
    0,
    "basic",
    "active",
    (
        se.at(PERIOD[0]).isoformat().replace("+00:00", "Z"),
        se.at(PERIOD[1]).isoformat().replace("+00:00", "Z"),
    ),
)


def test_unhandled_events_touch_nothing():
    handled, unhandled = signup(0, parked=True)
    for ev in unhandled:
        with wire.measure(get_engine()) as sent:
            assert se.deliver(ev) == (200, {"status": "ignored"})
        assert sent.pg == 0 and sent.sql == []
    assert se.sql("SELECT count(*) FROM stripe_events") == [(0,)]


def _deliver_in(order: tuple[int, ...], handled: list[dict], unhandled: list[dict], run: int) -> None:
    """The handled events in `order`, with the unhandled ones at a place that varies by run."""
    sequence = [handled[i] for i in order]
    for k, ev in enumerate(unhandled):
        sequence.insert((run * (k + 2)) % (len(sequence) + 1), ev)
    for ev in sequence:
        status, body = se.deliver(ev)
        assert status == 200 and body["status"] in ("ok", "stale", "ignored"), (order, ev["type"], body)


@pytest.mark.parametrize("parked", [False, True], ids=["user-in-metadata", "parked-until-checkout"])
def test_a_checkout_signup_in_one_second_converges_in_every_order(parked):
    in_order, unhandled = signup(0, parked=parked)
    for ev in [*in_order[:2], *unhandled, *in_order[2:]]:  # the order Stripe emits them in
        assert se.deliver(ev)[0] == 200
    assert state(0) == EXPECTED
    orders = list(itertools.permutations(range(len(in_order))))
    assert len(orders) == 120
    for run, order in enumerate(orders, start=1):
        handled, unhandled = signup(run, parked=parked)
        _deliver_in(order, handled, unhandled, run)
        assert state(run) == EXPECTED, f"delivery order {[handled[i]['type'] for i in order]}"
    assert_reconciled()


def test_a_checkout_signup_in_one_second_converges_in_every_order_with_duplicates():
    """Every order, then every event again in the reverse order: each second delivery is a
    duplicate and changes nothing; kept events are linked by the checkout wherever it falls."""
    for run, order in enumerate(itertools.permutations(range(5)), start=1):
        handled, unhandled = signup(run, parked=run % 2 == 0)
        _deliver_in(order, handled, unhandled, run)
        for i in reversed(order):
            assert se.deliver(handled[i]) == (200, {"status": "duplicate"}), (order, handled[i]["type"])
        assert state(run) == EXPECTED, f"delivery order {[handled[i]['type'] for i in order]}"
    assert_reconciled()


# --- a renewal whose events share one second -------------------------------------------------------------

P1 = (SECOND - 30 * 86400, SECOND)
P2 = (SECOND, SECOND + 30 * 86400)


def renewal(n: int) -> tuple[list[dict], list[dict], dict]:
    """(handled, unhandled, the subscription's snapshot before the renewal) of run n: the cycle
    invoice created, finalized, paid (and payment_succeeded), and the subscription moved to the
    next period, all in the second the period ended."""
    user, sub, invoice = f"u{n}", f"sub_{n}", f"in_{n}"

    def snapshot(period: tuple[int, int]) -> dict:
        return se.subscription(
            sub, price=BASIC, start=period[0], end=period[1], customer=f"cus_{n}", user_id=user,
            created=P1[0],
        )  # fmt: skip

    def cycle(status: str) -> dict:
        return se.cycle_invoice(
            invoice, subscription_id=sub, price=BASIC, ending_start=P1[0], new_start=P2[0], new_end=P2[1],
            customer=f"cus_{n}", user_id=user, status=status,
        )  # fmt: skip

    before = se.event("customer.subscription.created", snapshot(P1), P1[0] + 5, event_id=f"evt_{n}_p1")
    handled = [
        se.event("invoice.paid", cycle("paid"), SECOND, event_id=f"evt_{n}_paid"),
        se.event("invoice.payment_succeeded", cycle("paid"), SECOND, event_id=f"evt_{n}_succeeded"),
        se.event("customer.subscription.updated", snapshot(P2), SECOND, event_id=f"evt_{n}_p2"),
    ]
    unhandled = [
        se.event("invoice.created", cycle("draft"), SECOND, event_id=f"evt_{n}_invoice_created"),
        se.event("invoice.finalized", cycle("open"), SECOND, event_id=f"evt_{n}_finalized"),
    ]
    return handled, unhandled, before


def renewed(n: int) -> tuple:
    periods = se.sql(
        "SELECT period_start, period_end, plan_id, kind, rolled_over FROM periods WHERE user_id = :u ORDER BY 1",
        u=f"u{n}",
    )
    rollover = se.sql(
        "SELECT usage_type, CAST(sum(delta) AS bigint) FROM journal WHERE user_id = :u AND reason = 'rollover'"
        " GROUP BY 1",
        u=f"u{n}",
    )
    (mirror,) = se.sql(
        "SELECT status, current_period_start, current_period_end FROM subscriptions WHERE subscription_id = :s",
        s=f"sub_{n}",
    )
    return [tuple(p) for p in periods], sorted(tuple(r) for r in rollover), tuple(mirror)


def test_a_renewal_in_one_second_converges_in_every_order_with_duplicates():
    outcomes = set()
    for run, order in enumerate(itertools.permutations(range(3))):
        handled, unhandled, before = renewal(run)
        se.ok(before)
        _deliver_in(order, handled, unhandled, run)
        for i in order:
            assert se.deliver(handled[i]) == (200, {"status": "duplicate"})
        outcomes.add(repr(renewed(run)))
        assert renewed(run) == (
            [
                (se.at(P1[0]), se.at(P1[1]), "basic", "subscription", True),
                (se.at(P2[0]), se.at(P2[1]), "basic", "subscription", False),
            ],
            [("ocr_tokens", 100_000), ("premium_voice", 5000)],  # basic's unused allowances, rolled over once
            ("active", se.at(P2[0]), se.at(P2[1])),
        ), order
    assert len(outcomes) == 1
    assert_reconciled()
