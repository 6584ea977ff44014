"""The effects of Stripe events (api.md section 5, metering.md "Periods and renewal" and "Stripe
subscription lifecycle"), through the real webhook handler, interleaved with real records."""

from datetime import UTC, datetime, timedelta

import pytest

from metering.domain.subscriptions import is_canceling
from tests.support import api
from tests.support import stripe_events as se
from tests.support.state import assert_reconciled, iso, use_test_catalog

pytestmark = pytest.mark.usefixtures("clean")
query = se.sql

NOW = datetime.now(UTC).replace(microsecond=0)
# ended periods, and the current one
P1 = (NOW - timedelta(days=40), NOW - timedelta(days=10))
P2 = (P1[1], P1[1] + timedelta(days=30))
# a current period (usage lands in it) and the one after it
Q1 = (NOW - timedelta(days=20), NOW + timedelta(days=10))
Q2 = (Q1[1], Q1[1] + timedelta(days=31))
BASIC, PLUS = "price_basic_monthly", "price_plus_monthly"


@pytest.fixture(autouse=True)
def setup(clean, monkeypatch):
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", se.SECRET)
    use_test_catalog()
    se.wipe()


def snap(event_type, created, period, *, price=BASIC, sub_id="sub_1", sub_created=None, **fields):
    sub = se.subscription(
        sub_id,
        price=price,
        start=period[0],
        end=period[1],
        created=sub_created if sub_created is not None else P1[0] - timedelta(days=30),
        **fields,
    )
    return se.event(f"customer.subscription.{event_type}", sub, created)


def cycle(event_type, created, ending, new, *, price=BASIC, invoice_id="in_1", sub_id="sub_1", **fields):
    inv = se.cycle_invoice(
        invoice_id,
        subscription_id=sub_id,
        price=price,
        ending_start=ending[0],
        new_start=new[0],
        new_end=new[1],
        **fields,
    )
    return se.event(event_type, inv, created)


def t(moment, seconds=0):
    return se.ts(moment) + seconds


def mirror(sub_id="sub_1"):
    rows = query("SELECT * FROM subscriptions WHERE subscription_id = :s", s=sub_id)
    return rows[0] if rows else None


def account(user="u1"):
    rows = query("SELECT * FROM accounts WHERE user_id = :u", u=user)
    return rows[0] if rows else None


def periods(user="u1"):
    rows = query(
        "SELECT period_start, period_end, plan_id, kind, rolled_over FROM periods WHERE user_id = :u"
        " ORDER BY period_start",
        u=user,
    )
    return [tuple(r) for r in rows]


def pools(usage_type, user="u1"):
    rows = query(
        "SELECT rollover, purchased FROM balances WHERE user_id = :u AND usage_type = :t",
        u=user,
        t=usage_type,
    )
    return tuple(rows[0]) if rows else (0, 0)


def rollover_entries(ref="in_1"):
    rows = query(
        "SELECT usage_type, sum(delta) FROM journal WHERE reason = 'rollover' AND ref = :r"
        " GROUP BY 1 HAVING sum(delta) <> 0 ORDER BY 1",
        r=ref,
    )
    return {r[0]: r[1] for r in rows}


def record(event_id, usage_type, amount, user="u1"):
    status, body = api.record(event_id, user, usage_type, amount)
    assert status == 201, body
    return body


def adjust(ref, usage_type, pool, delta, user="u1"):
    status, body = api.adjust(user, ref, usage_type, pool, delta)
    assert status == 201, body


# --- subscription snapshots ----------------------------------------------------------------------------


def test_created_subscription_is_mirrored_and_starts_its_period():
    se.ok(snap("created", t(P2[0], 5), P2, customer="cus_42"))
    m = mirror()
    assert (m.user_id, m.customer_id, m.price_id, m.plan_id, m.status, m.stripe_status) == (
        "u1",
        "cus_42",
        BASIC,
        "basic",
        "active",
        "active",
    )
    assert (m.current_period_start, m.current_period_end, m.billing_cycle_anchor) == (P2[0], P2[1], P2[0])
    assert (m.cancel_at_period_end, m.cancel_at, m.canceled_at) == (False, None, None)
    a = account()
    assert (a.stripe_customer_id, a.current_subscription_id, a.highest_rank) == ("cus_42", "sub_1", 1)
    assert periods() == [(P2[0], P2[1], "basic", "subscription", False)]
    status, body = api.check("u1", "premium_voice", 5000)
    assert status == 200 and body["allowed"] and body["limit"] == 5000
    assert_reconciled()


def test_cancellation_flags_are_stored_as_stripe_reports_them():
    cancel_at = P2[1] - timedelta(days=3)
    se.ok(snap("updated", t(P2[0], 5), P2, cancel_at=cancel_at, canceled_at=NOW))
    m = mirror()
    assert (m.cancel_at_period_end, m.cancel_at, m.canceled_at) == (False, cancel_at, NOW)
    assert is_canceling(m.cancel_at_period_end, m.cancel_at, m.current_period_end)
    se.ok(snap("updated", t(P2[0], 6), P2, cancel_at_period_end=True))
    m = mirror()
    assert (m.cancel_at_period_end, m.cancel_at) == (True, None)
    se.ok(snap("updated", t(P2[0], 7), P2, cancel_at=P2[1] + timedelta(days=30)))
    m = mirror()
    assert not is_canceling(m.cancel_at_period_end, m.cancel_at, m.current_period_end)
    assert m.status == "active"


@pytest.mark.parametrize(
    ("stripe_status", "status", "entitled"),
    [
        ("trialing", "trialing", True),
        ("unpaid", "past_due", True),
        ("incomplete_expired", "canceled", False),
        ("incomplete", "incomplete", False),
        ("paused", "paused", False),
    ],
)
def test_status_mapping(stripe_status, status, entitled):
    se.ok(snap("updated", t(P2[0], 5), P2, status=stripe_status))
    m = mirror()
    assert (m.status, m.stripe_status) == (status, stripe_status)
    assert bool(periods()) == entitled  # only an entitled subscription starts its period
    assert api.check("u1", "premium_voice", 10)[1]["allowed"] is entitled
    # a subscription that never started (its first payment never went through) sets no rank
    assert account().highest_rank == (None if stripe_status.startswith("incomplete") else 1)


def test_unknown_price_mirrors_without_a_plan():
    se.ok(snap("updated", t(P2[0], 5), P2, price="price_not_in_catalog"))
    m = mirror()
    assert (m.price_id, m.plan_id, m.status) == ("price_not_in_catalog", None, "active")
    assert periods() == [] and account().highest_rank is None
    assert api.check("u1", "premium_voice", 1)[1]["allowed"] is False  # the free plan


def test_older_api_shapes_top_level_period_and_invoice_subscription():
    se.ok(snap("created", t(P1[0], 5), P1, legacy_periods=True))
    assert periods() == [(P1[0], P1[1], "basic", "subscription", False)]
    se.ok(cycle("invoice.paid", t(P2[0], 3600), P1, P2, legacy_subscription=True))
    assert rollover_entries() == {"ocr_tokens": 100000, "premium_voice": 5000}
    assert mirror().current_period_start == P2[0]
    assert periods()[1] == (P2[0], P2[1], "basic", "subscription", False)
    assert_reconciled()


def test_stale_snapshot_is_skipped():
    se.ok(snap("updated", t(P2[0], 100), P2, price=PLUS, cancel_at_period_end=True))
    se.ok(snap("updated", t(P2[0], 50), P2, price=BASIC), "stale")
    m = mirror()
    assert (m.plan_id, m.cancel_at_period_end, m.snapshot_created) == ("plus", True, t(P2[0], 100))
    se.ok(snap("updated", t(P2[0], 100), P2, price=PLUS))  # same second: applied
    assert mirror().cancel_at_period_end is False
    assert (
        query("SELECT outcome FROM stripe_events ORDER BY created, outcome").__len__(),
        sorted(r[0] for r in query("SELECT outcome FROM stripe_events")),
    ) == (3, ["ok", "ok", "stale"])


def test_deleted_subscription_is_canceled_and_balances_stay():
    se.ok(snap("created", t(Q1[0], 5), Q1))
    record("e1", "premium_voice", 1200)
    se.ok(
        se.event(
            "checkout.session.completed",
            se.checkout_session("cs_pack", mode="payment", pack="voice_1k"),
            t(Q1[0], 10),
        )
    )
    se.ok(snap("deleted", t(Q1[0], 20), Q1, status="canceled", canceled_at=Q1[0] + timedelta(seconds=20)))
    assert (mirror().status, mirror().stripe_status) == ("canceled", "canceled")
    assert pools("premium_voice") == (0, 1000)
    status, body = api.check("u1", "premium_voice", 1000)  # free plan: only the purchased credit
    assert body["allowed"] and body["limit"] == 0 and body["available"] == 1000
    assert periods()[0][2] == "basic"  # history stays
    # canceled is final: an older or even newer 'active' snapshot does not bring it back
    se.ok(snap("updated", t(Q1[0], 30), Q1))
    assert mirror().status == "canceled"
    assert_reconciled()


# --- current subscription, highest rank --------------------------------------------------------------------


@pytest.mark.parametrize("old_first", [True, False], ids=["old-first", "new-first"])
def test_current_subscription_is_the_most_recently_created(old_first):
    old = snap(
        "updated", t(P2[0], 10), P1, price=PLUS, sub_id="sub_old", sub_created=P1[0] - timedelta(days=60)
    )
    new = snap("created", t(P2[0], 5), P2, price=BASIC, sub_id="sub_new", sub_created=P2[0])
    for ev in [old, new] if old_first else [new, old]:
        se.ok(ev)
    a = account()
    assert (a.current_subscription_id, a.current_subscription_created, a.highest_rank) == (
        "sub_new",
        P2[0],
        2,
    )
    assert mirror("sub_old").user_id == "u1" and mirror("sub_old").plan_id == "plus"
    # the old subscription's later events touch only its own mirror row
    se.ok(
        snap(
            "updated",
            t(P2[0], 20),
            P2,
            price=PLUS,
            sub_id="sub_old",
            sub_created=P1[0] - timedelta(days=60),
            status="past_due",
        )
    )
    se.ok(cycle("invoice.paid", t(P2[0], 30), P1, P2, price=PLUS, sub_id="sub_old", invoice_id="in_old"))
    assert account().current_subscription_id == "sub_new"
    assert query("SELECT count(*) FROM renewals")[0][0] == 0 and rollover_entries("in_old") == {}
    subscription_periods = periods()
    if old_first:  # the old one was current until the new one arrived
        assert subscription_periods[0] == (P1[0], P1[1], "plus", "subscription", False)
    assert subscription_periods[-1] == (P2[0], P2[1], "basic", "subscription", False)
    assert mirror("sub_old").status == "past_due" and mirror("sub_new").status == "active"
    assert api.check("u1", "premium_voice", 5001)[1]["limit"] == 5000  # sub_new's plan governs
    assert_reconciled()


# --- plan changes ------------------------------------------------------------------------------------------


def test_mid_period_upgrade_applies_at_once():
    se.ok(snap("created", t(Q1[0], 5), Q1))
    record("e1", "premium_voice", 4000)
    assert api.check("u1", "premium_voice", 1)[1]["available"] == 1000
    se.ok(snap("updated", t(Q1[0], 86400), Q1, price=PLUS))
    assert periods() == [(Q1[0], Q1[1], "plus", "subscription", False)]
    status, body = api.check("u1", "premium_voice", 16000)
    assert body["allowed"] and body["limit"] == 20000 and body["available"] == 16000
    assert account().highest_rank == 2
    assert_reconciled()


def test_downgrade_takes_effect_with_the_next_period_and_renewal_uses_the_ending_plan():
    # metering.md: "A downgrade arrives from Stripe at period end, so the ended period keeps its plan."
    se.ok(snap("created", t(Q1[0], 5), Q1, price=PLUS))
    record("e1", "premium_voice", 1000)
    se.ok(snap("updated", t(Q1[0], 86400), Q1, price=BASIC))  # scheduled downgrade, same period
    assert periods() == [(Q1[0], Q1[1], "plus", "subscription", False)]
    assert mirror().plan_id == "basic" and account().highest_rank == 2
    se.ok(cycle("invoice.paid", t(Q2[0], 3600), Q1, Q2, price=BASIC))
    se.ok(snap("updated", t(Q2[0], 3601), Q2, price=BASIC))
    assert periods() == [
        (Q1[0], Q1[1], "plus", "subscription", True),
        (Q2[0], Q2[1], "basic", "subscription", False),
    ]
    # under Plus: 19,000 unused premium_voice, capped at 6,000 (under Basic it would be 4,000);
    # ocr_tokens is unlimited on Plus, so nothing rolls over
    assert rollover_entries() == {"premium_voice": 6000}
    assert pools("premium_voice") == (6000, 0)
    assert_reconciled()


# --- renewal and rollover (metering.md "Periods and renewal") ------------------------------------------------


def test_unused_allowance_pays_debt_first():
    se.ok(snap("created", t(Q1[0], 5), Q1))
    adjust("debt", "premium_voice", "rollover", -2000)
    body = record("e1", "premium_voice", 1000)
    assert body["breakdown"]["from_subscription"] == 1000
    record("o1", "ocr_tokens", 30000)
    se.ok(cycle("invoice.paid", t(Q2[0], 3600), Q1, Q2))
    # unused 4,000 pays the 2,000 debt, then 2,000 rolls over; ocr: 70,000 unused
    assert pools("premium_voice") == (2000, 0)
    assert pools("ocr_tokens") == (70000, 0)
    assert rollover_entries() == {"ocr_tokens": 70000, "premium_voice": 4000}
    assert query("SELECT rolled_over FROM periods WHERE period_start = :s", s=Q1[0])[0][0] is True
    assert_reconciled()


def test_rollover_is_capped_and_never_cuts_a_balance_above_the_cap():
    se.ok(snap("created", t(Q1[0], 5), Q1))
    adjust("grant", "premium_voice", "rollover", 5000)
    adjust("grant-ocr", "ocr_tokens", "rollover", 150000)  # above ocr's cap of 100,000
    record("e1", "premium_voice", 1000)
    se.ok(cycle("invoice.paid", t(Q2[0], 3600), Q1, Q2))
    assert pools("premium_voice") == (6000, 0)  # 5,000 + 4,000 unused, capped at 6,000
    assert pools("ocr_tokens") == (150000, 0)  # untouched: never cut by renewal
    assert rollover_entries() == {"premium_voice": 1000}
    assert_reconciled()


def test_plain_counters_and_purchased_credit_are_untouched_by_renewal():
    se.ok(snap("created", t(Q1[0], 5), Q1))
    adjust("buy", "premium_voice", "purchased", 700)
    record("k1", "server_kokoro", 50)
    se.ok(cycle("invoice.paid", t(Q2[0], 3600), Q1, Q2))
    assert pools("premium_voice") == (5000, 700)
    assert pools("server_kokoro") == (0, 0)
    assert "server_kokoro" not in rollover_entries()
    assert_reconciled()


@pytest.mark.parametrize("first", ["invoice.paid", "invoice.payment_succeeded"])
def test_rollover_once_per_invoice_whatever_event_type_and_count(first):
    other = {"invoice.paid": "invoice.payment_succeeded", "invoice.payment_succeeded": "invoice.paid"}[first]
    se.ok(snap("created", t(Q1[0], 5), Q1))
    record("e1", "premium_voice", 1000)
    se.ok(cycle(first, t(Q2[0], 3600), Q1, Q2))
    se.ok(cycle(other, t(Q2[0], 3601), Q1, Q2))
    assert rollover_entries() == {"ocr_tokens": 100000, "premium_voice": 4000}
    assert query("SELECT count(*) FROM journal WHERE reason = 'rollover'")[0][0] == 2
    # a second invoice for the same ending period does not roll it over again
    se.ok(cycle("invoice.paid", t(Q2[0], 7200), Q1, Q2, invoice_id="in_2"))
    assert rollover_entries("in_2") == {}
    assert_reconciled()


RENEWAL_EVENTS = {
    "created": snap("created", t(Q1[0], 5), Q1),
    "snapshot": snap("updated", t(Q2[0], 3601), Q2, price=BASIC),
    "invoice": cycle("invoice.paid", t(Q2[0], 3600), Q1, Q2),
}


def run_renewal(order):
    """Usage in the ending period, then the renewal snapshot and the paid cycle invoice in `order`."""
    se.wipe()
    events = RENEWAL_EVENTS
    se.ok(events["created"])
    record("e1", "premium_voice", 1500)
    record("o1", "ocr_tokens", 99000)
    for name in order:
        se.ok(events[name])
    assert_reconciled()
    return se.final_state()


def test_renewal_before_or_after_the_snapshot_that_moves_the_period():
    after = run_renewal(["snapshot", "invoice"])
    before = run_renewal(["invoice", "snapshot"])
    assert before == after
    assert after["periods"] == [
        ("u1", Q1[0], Q1[1], "basic", "subscription", "sub_1", True),
        ("u1", Q2[0], Q2[1], "basic", "subscription", "sub_1", False),
    ]
    assert after["balances"] == [("u1", "ocr_tokens", 1000, 0), ("u1", "premium_voice", 3500, 0)]


def test_late_mid_period_upgrade_reprices_the_renewal():
    # The upgrade's snapshot is delivered after the invoice that ended its period (and after the
    # renewal snapshot): the ending period's plan is raised and its rollover recomputed.
    se.ok(snap("created", t(Q1[0], 5), Q1))
    record("e1", "premium_voice", 1000)
    se.ok(cycle("invoice.paid", t(Q2[0], 3600), Q1, Q2, price=PLUS))
    assert rollover_entries() == {"ocr_tokens": 100000, "premium_voice": 4000}
    se.ok(snap("updated", t(Q2[0], 3601), Q2, price=PLUS))
    se.ok(snap("updated", t(Q1[0], 86400), Q1, price=PLUS), "stale")  # the late upgrade
    assert periods()[0] == (Q1[0], Q1[1], "plus", "subscription", True)
    # as if in order: Plus for the ending period, 19,000 unused capped at 6,000, ocr unlimited
    assert rollover_entries() == {"premium_voice": 6000}
    assert pools("premium_voice") == (6000, 0) and pools("ocr_tokens") == (0, 0)
    assert_reconciled()


def test_periods_never_move_backwards():
    se.ok(snap("created", t(P1[0], 5), P1))
    se.ok(cycle("invoice.paid", t(P2[0], 3600), P1, P2))
    assert (mirror().current_period_start, mirror().current_period_end) == P2
    # a newer snapshot that still shows the old period updates the other fields only
    se.ok(snap("updated", t(P2[0], 3700), P1, cancel_at_period_end=True))
    m = mirror()
    assert (m.current_period_start, m.current_period_end, m.cancel_at_period_end) == (P2[0], P2[1], True)
    assert_reconciled()


def test_renewal_with_no_period_row_yet_creates_the_ending_period():
    # nothing has been seen of the subscription but its cycle invoice (metadata names the user)
    se.ok(cycle("invoice.paid", t(P2[0], 3600), P1, P2))
    assert periods() == [
        (P1[0], P1[1], "basic", "assumed", True),
        (P2[0], P2[1], "basic", "subscription", False),
    ]
    assert rollover_entries() == {"ocr_tokens": 100000, "premium_voice": 5000}
    assert account().current_subscription_id is None  # only a snapshot makes it current
    se.ok(snap("updated", t(P1[0], 5), P1, price=BASIC), "ok")
    assert periods()[0] == (P1[0], P1[1], "basic", "subscription", True)
    assert account().current_subscription_id == "sub_1"
    assert_reconciled()


def test_usage_after_period_end_goes_to_an_assumed_period_that_the_renewal_confirms():
    ended = NOW - timedelta(hours=1)
    previous = (ended - timedelta(days=30), ended)
    se.ok(snap("created", t(previous[0], 5), previous))
    record("e1", "premium_voice", 300)  # Stripe's renewal is late: the next period is assumed
    (assumed,) = [p for p in periods() if p[0] == ended]
    assert assumed[2:4] == ("basic", "assumed")
    real_end = ended + timedelta(days=31)  # Stripe's period differs from the assumed one
    se.ok(snap("updated", t(ended, 60), (ended, real_end)))
    se.ok(cycle("invoice.paid", t(ended, 3600), previous, (ended, real_end)))
    assert periods() == [
        (previous[0], previous[1], "basic", "subscription", True),
        (ended, real_end, "basic", "subscription", False),
    ]
    used = query(
        "SELECT u.used FROM period_usage u JOIN periods p USING (period_id)"
        " WHERE p.period_start = :s AND u.usage_type = 'premium_voice'",
        s=ended,
    )
    assert used[0][0] == 300
    assert pools("premium_voice") == (5000, 0)  # nothing was used in the ended period
    assert_reconciled()


def test_renewal_with_billing_disabled_rolls_nothing_over(monkeypatch):
    monkeypatch.setenv("BILLING_ENABLED", "false")
    from metering.config import get_settings

    get_settings.cache_clear()
    se.ok(snap("created", t(P1[0], 5), P1))
    se.ok(cycle("invoice.paid", t(P2[0], 3600), P1, P2))
    assert rollover_entries() == {} and periods()[0][4] is True
    assert_reconciled()


# --- invoices: failed payments, other billing reasons -------------------------------------------------------


def test_failed_payment_sets_past_due_which_stays_entitled():
    se.ok(snap("created", t(Q1[0], 5), Q1))
    failed = cycle("invoice.payment_failed", t(Q1[0], 3600), Q1, Q2)
    se.ok(failed)
    m = mirror()
    assert (m.status, m.status_created) == ("past_due", failed["created"])
    status, body = api.check("u1", "premium_voice", 5000)
    assert body["allowed"] and body["limit"] == 5000
    se.ok(snap("updated", t(Q1[0], 7200), Q1))  # the retry succeeded: active again
    assert mirror().status == "active"
    se.ok(cycle("invoice.payment_failed", t(Q1[0], 3700), Q1, Q2, invoice_id="in_late"), "stale")
    assert mirror().status == "active"
    assert query("SELECT count(*) FROM renewals")[0][0] == 0


def test_failed_first_payment_leaves_the_subscription_incomplete():
    se.ok(snap("created", t(Q1[0], 5), Q1, status="incomplete"))
    inv = se.invoice(
        "in_first",
        subscription_id="sub_1",
        billing_reason="subscription_create",
        period_start=Q1[0],
        period_end=Q1[0],
        status="open",
    )
    se.ok(se.event("invoice.payment_failed", inv, t(Q1[0], 10)))
    assert mirror().status == "incomplete"


def test_failed_payment_before_the_first_snapshot_still_counts():
    se.ok(cycle("invoice.payment_failed", t(P2[0], 3600), P1, P2))
    se.ok(snap("updated", t(P2[0], 100), P2))  # older than the failure: status stays past_due
    m = mirror()
    assert (m.status, m.plan_id, m.snapshot_created) == ("past_due", "basic", t(P2[0], 100))


def test_other_billing_reasons_only_mark_the_user_as_having_paid():
    se.ok(snap("created", t(Q1[0], 5), Q1))
    inv = se.invoice(
        "in_first",
        subscription_id="sub_1",
        billing_reason="subscription_create",
        period_start=Q1[0],
        period_end=Q1[0],
        lines=[se.line(price=BASIC, start=Q1[0], end=Q1[1], subscription_id="sub_1")],
    )
    paid = se.event("invoice.paid", inv, t(Q1[0], 10))
    se.ok(paid)
    assert account().last_paid_at == se.at(paid["created"])
    assert query("SELECT count(*) FROM renewals")[0][0] == 0 and rollover_entries("in_first") == {}
    assert periods() == [(Q1[0], Q1[1], "basic", "subscription", False)]
    one_off = se.invoice(
        "in_oneoff",
        subscription_id=None,
        billing_reason="manual",
        period_start=Q1[0],
        period_end=Q1[0],
        user_id=None,
        customer="cus_test_1",
    )
    se.ok(se.event("invoice.paid", one_off, t(Q1[0], 20)))  # resolved by the customer id
    assert account().last_paid_at == se.at(t(Q1[0], 20))


# --- users not known yet, checkout links ------------------------------------------------------------------


def test_events_of_an_unknown_user_are_kept_until_a_checkout_links_them():
    created = snap("created", t(P1[0], 5), P1, user_id=None, customer="cus_new", sub_id="sub_x")
    updated = snap(
        "updated", t(P1[0], 86400), P1, price=PLUS, user_id=None, customer="cus_new", sub_id="sub_x"
    )
    paid = cycle(
        "invoice.paid",
        t(P2[0], 3600),
        P1,
        P2,
        price=PLUS,
        user_id=None,
        customer="cus_new",
        sub_id="sub_x",
        invoice_id="in_x",
    )
    for ev in (paid, updated, created):
        assert se.deliver(ev) == (200, {"status": "ignored"})
    assert se.deliver(created) == (200, {"status": "duplicate"})
    assert len(query("SELECT * FROM stripe_pending_events")) == 3
    assert {r[0] for r in query("SELECT outcome FROM stripe_events")} == {"pending"}
    assert account("u9") is None and periods("u9") == []

    session = se.checkout_session(
        "cs_link",
        mode="subscription",
        user_id=None,
        client_reference_id="u9",
        customer="cus_new",
        subscription_id="sub_x",
    )
    se.ok(se.event("checkout.session.completed", session, t(P1[0], 4)))
    assert query("SELECT count(*) FROM stripe_pending_events")[0][0] == 0
    # applied in the order Stripe created them, whatever the order they arrived in
    outcomes = dict(query("SELECT event_id, outcome FROM stripe_events"))
    assert [outcomes[e["id"]] for e in (created, updated, paid)] == ["ok", "ok", "ok"]
    a = account("u9")
    assert (a.stripe_customer_id, a.current_subscription_id, a.highest_rank) == ("cus_new", "sub_x", 2)
    assert periods("u9") == [
        (P1[0], P1[1], "plus", "subscription", True),
        (P2[0], P2[1], "plus", "subscription", False),
    ]
    assert rollover_entries("in_x") == {"premium_voice": 6000}
    assert pools("premium_voice", "u9") == (6000, 0)
    assert_reconciled()


def test_checkout_link_first_then_snapshots_resolve_by_subscription_and_customer():
    session = se.checkout_session(
        "cs_link", mode="subscription", user_id="u5", customer="cus_5", subscription_id="sub_5"
    )
    se.ok(se.event("checkout.session.completed", session, t(P2[0], 1)))
    assert account("u5").stripe_customer_id == "cus_5"
    se.ok(snap("created", t(P2[0], 5), P2, sub_id="sub_5", user_id=None, customer="cus_5"))
    assert mirror("sub_5").user_id == "u5" and account("u5").current_subscription_id == "sub_5"
    # another subscription of the same customer, never linked itself: resolved by the customer id
    se.ok(snap("created", t(P2[0], 6), P2, sub_id="sub_6", user_id=None, customer="cus_5", sub_created=P2[0]))
    assert mirror("sub_6").user_id == "u5" and account("u5").current_subscription_id == "sub_6"


def test_checkout_without_any_user_is_ignored():
    session = se.checkout_session(
        "cs_anon", mode="subscription", user_id=None, customer="cus_anon", subscription_id="sub_anon"
    )
    assert se.deliver(se.event("checkout.session.completed", session, t(P2[0], 1))) == (
        200,
        {"status": "ignored"},
    )
    assert query("SELECT outcome FROM stripe_events")[0][0] == "ignored"


# --- top-ups ----------------------------------------------------------------------------------------------


def test_paid_checkout_credits_the_pack_once():
    session = se.checkout_session(
        "cs_pack", mode="payment", pack="voice_1k", quantity="3", user_id=None, client_reference_id="u1"
    )
    se.ok(se.event("checkout.session.completed", session, t(Q1[0], 5)))
    assert pools("premium_voice") == (0, 3000)
    (entry,) = query("SELECT usage_type, account, delta, reason, ref FROM journal")
    assert tuple(entry) == ("premium_voice", "purchased", 3000, "topup", "cs_pack")
    # the same session announced again as an async success (another event id): not credited twice
    se.ok(se.event("checkout.session.async_payment_succeeded", session, t(Q1[0], 6)))
    assert pools("premium_voice") == (0, 3000)
    body = record("e1", "premium_voice", 2500)  # free plan: the credit is spent
    assert body["breakdown"]["from_purchased"] == 2500
    assert_reconciled()


def test_async_payment_is_credited_when_it_succeeds():
    session = se.checkout_session("cs_async", mode="payment", payment_status="unpaid", pack="ocr_50k")
    se.ok(se.event("checkout.session.completed", session, t(Q1[0], 5)))
    assert pools("ocr_tokens") == (0, 0)
    session["payment_status"] = "paid"
    se.ok(se.event("checkout.session.async_payment_succeeded", session, t(Q1[0], 600)))
    assert pools("ocr_tokens") == (0, 50000)
    assert query("SELECT pack_id, quantity, amount FROM topups")[0] == ("ocr_50k", 1, 50000)
    assert_reconciled()


@pytest.mark.parametrize(("pack", "quantity"), [("no_such_pack", None), (None, None), ("voice_1k", "zero")])
def test_bad_pack_metadata_is_recorded_and_ignored(pack, quantity):
    session = se.checkout_session("cs_bad", mode="payment", pack=pack, quantity=quantity)
    ev = se.event("checkout.session.completed", session, t(Q1[0], 5))
    assert se.deliver(ev) == (200, {"status": "ignored"})
    assert query("SELECT outcome FROM stripe_events")[0][0] == "ignored"
    assert query("SELECT count(*) FROM journal")[0][0] == 0
    assert se.deliver(ev) == (200, {"status": "duplicate"})


def test_setup_mode_checkout_is_ignored():
    session = se.checkout_session("cs_setup", mode="setup", payment_status="no_payment_required")
    assert se.deliver(se.event("checkout.session.completed", session, t(Q1[0], 5))) == (
        200,
        {"status": "ignored"},
    )


# --- issue 23: periods Stripe reshapes, cancellation at a month start, decisions -------------------------


def _summary(user="u1", now=None):
    from metering.services.reads import summary

    return summary(user, now).model_dump(mode="json", by_alias=True)


def _record_at(event_id, usage_type, amount, now, user="u1"):
    from metering.api.models import UsageRequest
    from metering.services.record import record as record_one

    event = UsageRequest(event_id=event_id, user_id=user, usage_type=usage_type, amount=amount)
    return record_one(event, now)


def test_a_period_stripe_extends_keeps_its_usage():
    """A 3-day trial with 40,000 used, then a snapshot with the same period start and a later
    end (the trial became a monthly subscription): the stored period follows Stripe's end."""
    trial = (NOW - timedelta(days=1), NOW + timedelta(days=2))
    se.ok(snap("created", t(trial[0], 5), trial, status="trialing"))
    record("e1", "ocr_tokens", 40_000)
    month = (trial[0], trial[0] + timedelta(days=31))
    se.ok(snap("updated", t(trial[0], 60), month))
    body = api.read("summary", "u1")[1]
    assert body["period"] == {"start": iso(month[0]), "end": iso(month[1])}
    ocr = body["usage_types"]["ocr_tokens"]
    assert (ocr["used"], ocr["available"]) == (40_000, 60_000)
    assert record("e2", "ocr_tokens", 1000)["balance"]["used"] == 41_000
    assert periods() == [(month[0], month[1], "basic", "subscription", False)]
    assert_reconciled()


def test_a_period_whose_interval_switches_without_moving_its_start_keeps_its_usage_after_the_old_end():
    start = NOW - timedelta(days=5)
    weekly = (start, start + timedelta(days=7))
    se.ok(snap("created", t(start, 5), weekly))
    _record_at("e1", "ocr_tokens", 40_000, start + timedelta(days=1))
    yearly = (start, start + timedelta(days=365))
    se.ok(snap("updated", t(start, 60), yearly))
    after_the_old_end = weekly[1] + timedelta(hours=1)
    body = _summary(now=after_the_old_end)
    assert (body["period"]["start"], body["period"]["end"]) == (iso(yearly[0]), iso(yearly[1]))
    assert body["usage_types"]["ocr_tokens"]["used"] == 40_000
    assert _record_at("e2", "ocr_tokens", 1000, after_the_old_end).balance.used == 41_000
    assert_reconciled()


def test_a_stale_snapshot_does_not_move_a_periods_end_back():
    start = NOW - timedelta(days=1)
    se.ok(snap("updated", t(start, 60), (start, start + timedelta(days=31))))
    se.ok(snap("created", t(start, 5), (start, start + timedelta(days=3)), status="trialing"), "stale")
    assert periods() == [(start, start + timedelta(days=31), "basic", "subscription", False)]


def test_a_canceled_subscriber_whose_period_began_at_a_month_start_gets_the_free_limits():
    """The calendar month and the subscription period that began at its first instant share one
    stored row (same user, same start): once the subscription is canceled, the free plan governs."""
    start = datetime(NOW.year, NOW.month, 1, tzinfo=UTC)
    end = datetime(NOW.year + NOW.month // 12, NOW.month % 12 + 1, 1, tzinfo=UTC)
    se.ok(snap("created", t(start, 5), (start, end)))
    record("e1", "ocr_tokens", 1000)
    assert api.check("u1", "ocr_tokens", 5000)[1]["allowed"] is True  # basic: 100,000
    se.ok(snap("deleted", t(start, 60), (start, end), status="canceled", canceled_at=NOW))
    body = api.read("summary", "u1")[1]
    assert body["plan"]["id"] == "free" and body["subscription"]["status"] == "canceled"
    ocr = body["usage_types"]["ocr_tokens"]
    assert (ocr["limit"], ocr["used"], ocr["available"]) == (100, 1000, 0)
    status, check = api.check("u1", "ocr_tokens", 5000)
    assert (check["allowed"], check["limit"], check["available"]) == (False, 100, 0)
    assert_reconciled()


def test_a_downgrade_snapshot_mid_period_keeps_the_higher_plan_until_the_period_ends():
    """Decision (docs/decisions.md 2026-12-03): the current period keeps the plan that governed
    it; the summary's `plan` is that plan, `subscription.plan` Stripe's new one."""
    se.ok(snap("created", t(Q1[0], 5), Q1, price=PLUS))
    se.ok(snap("updated", t(Q1[0], 60), Q1))  # basic, same period start
    body = api.read("summary", "u1")[1]
    assert (body["plan"]["id"], body["subscription"]["plan"]) == ("plus", "basic")
    assert body["usage_types"]["premium_voice"]["limit"] == 20_000  # plus's, as the check says
    assert api.check("u1", "premium_voice", 20_000)[1]["allowed"] is True
    # the next period is basic's
    se.ok(snap("updated", t(Q2[0], 5), Q2))
    later = _summary(now=Q2[0] + timedelta(hours=1))
    assert (later["plan"]["id"], later["usage_types"]["premium_voice"]["limit"]) == ("basic", 5000)


@pytest.mark.parametrize("order", ["deleted-first", "failed-first"])
def test_a_payment_failure_does_not_revive_a_canceled_subscription(order):
    """Decision: canceled is final, whichever arrives first (Stripe may still report the failure
    of the last invoice's final retry after it deleted the subscription)."""
    deleted = snap("deleted", t(Q1[0], 600), Q1, status="canceled", canceled_at=NOW)
    failed = cycle("invoice.payment_failed", t(Q1[0], 900), Q1, Q2)
    se.ok(snap("created", t(Q1[0], 5), Q1))
    for event in (deleted, failed) if order == "deleted-first" else (failed, deleted):
        assert se.deliver(event)[0] == 200
    assert mirror().status == "canceled"
    assert api.read("summary", "u1")[1]["plan"]["id"] == "free"
