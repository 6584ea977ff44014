"""Mapping of Stripe's shapes (current and older API versions), built from Stripe's fixtures."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from metering.stripe_sync.objects import (
    InvalidPayload,
    ObjectError,
    map_status,
    parse_checkout_session,
    parse_event,
    parse_invoice,
    parse_line,
    parse_subscription,
)
from metering.stripe_sync.secret import secret_from_value
from tests.support import stripe_events as se

START = datetime(2026, 1, 31, 12, tzinfo=UTC)
END = datetime(2026, 2, 28, 12, tzinfo=UTC)


def test_every_fixture_says_which_api_version_it_follows():
    files = sorted(se.FIXTURES.glob("*.json"))
    assert {f.stem for f in files} >= {"subscription", "invoice", "line_item", "checkout.session", "event"}
    for path in files:
        obj = se.load_fixture(path)
        assert "_source" not in obj and obj["object"] == path.stem  # the Stripe object, as published


@pytest.mark.parametrize(
    "source",
    [None, 42, "copied from somewhere"],
    ids=["no _source", "not text", "no API version"],
)
def test_a_fixture_without_its_provenance_line_is_refused(tmp_path: Path, source: object):
    obj = {"id": "sub_1", "object": "subscription"}
    if source is not None:
        obj = {"_source": source, **obj}
    path = tmp_path / "subscription.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(ValueError, match="no `_source` line naming the Stripe API version"):
        se.load_fixture(path)


def test_subscription_from_current_api_shape():
    obj = se.subscription(
        "sub_1",
        price="price_basic_monthly",
        start=START,
        end=END,
        user_id="u1",
        customer="cus_9",
        created=START - timedelta(days=3),
        cancel_at_period_end=True,
    )
    sub = parse_subscription(obj)
    assert (sub.id, sub.customer, sub.user_id, sub.price_id) == (
        "sub_1",
        "cus_9",
        "u1",
        "price_basic_monthly",
    )
    assert sub.period == (START, END)
    assert sub.created == START - timedelta(days=3)
    assert sub.billing_cycle_anchor == START
    assert sub.cancel_at_period_end is True and sub.cancel_at is None and sub.canceled_at is None
    assert sub.status() == "active"


def test_subscription_period_falls_back_to_top_level_fields():
    obj = se.subscription("sub_1", price="p", start=START, end=END, legacy_periods=True)
    assert "current_period_start" not in obj["items"]["data"][0]
    assert parse_subscription(obj).period == (START, END)


def test_fixture_inconsistent_period_is_treated_as_unknown():
    # Stripe's published fixture has an item period ending before it starts: not a period
    sub = parse_subscription(se.fixture("subscription"))
    assert sub.period is None
    assert sub.price_id == "price_1PgafmB7WZ01zgkW6dKueIc5"
    assert sub.user_id is None


def test_expanded_customer_and_missing_metadata():
    obj = se.subscription("sub_1", price="p", start=START, end=END, user_id=None)
    obj["customer"] = se.fixture("customer")
    sub = parse_subscription(obj)
    assert sub.customer == "cus_QXg1o8vcGmoR32" and sub.user_id is None


@pytest.mark.parametrize("bad", ["", "x" * 256, 42, None])
def test_unusable_user_ids_are_not_users(bad):
    obj = se.subscription("sub_1", price="p", start=START, end=END)
    obj["metadata"] = {"user_id": bad}
    assert parse_subscription(obj).user_id is None


def test_subscription_without_id_is_an_object_error():
    obj = se.subscription("sub_1", price="p", start=START, end=END)
    del obj["id"]
    with pytest.raises(ObjectError):
        parse_subscription(obj)


@pytest.mark.parametrize(
    ("stripe_status", "deleted", "expected"),
    [
        ("active", False, "active"),
        ("trialing", False, "trialing"),
        ("past_due", False, "past_due"),
        ("unpaid", False, "past_due"),
        ("incomplete", False, "incomplete"),
        ("incomplete_expired", False, "canceled"),
        ("paused", False, "paused"),
        ("canceled", False, "canceled"),
        ("active", True, "canceled"),
    ],
)
def test_status_mapping(stripe_status, deleted, expected):
    assert map_status(stripe_status, deleted=deleted) == expected


def test_cycle_invoice_subscription_line_skips_prorations():
    new_end = END + timedelta(days=31)
    obj = se.cycle_invoice(
        "in_1",
        subscription_id="sub_1",
        price="price_plus_monthly",
        ending_start=START,
        new_start=END,
        new_end=new_end,
    )
    inv = parse_invoice(obj)
    assert (inv.id, inv.subscription_id, inv.user_id, inv.customer) == ("in_1", "sub_1", "u1", "cus_test_1")
    assert inv.is_cycle and inv.period_start == START and inv.period_end == END
    assert len(inv.lines) == 2 and inv.lines[0].proration
    line = inv.subscription_line
    assert line is not None and line.period == (END, new_end) and line.price_id == "price_plus_monthly"


def test_invoice_subscription_falls_back_to_top_level_field():
    obj = se.invoice(
        "in_1", subscription_id="sub_old", period_start=START, period_end=END, legacy_subscription=True
    )
    inv = parse_invoice(obj)
    assert inv.subscription_id == "sub_old" and inv.user_id == "u1"


def test_fixture_invoice_lines_are_not_subscription_lines():
    inv = parse_invoice(se.fixture("invoice"))
    assert inv.subscription_id == "subscription"  # the fixture's placeholder
    assert inv.subscription_line is None  # an invoice item line, and a proration
    assert inv.billing_reason == "manual"


def test_legacy_line_shape():
    line = parse_line(
        {
            "type": "subscription",
            "proration": False,
            "period": {"start": 10, "end": 20},
            "price": {"id": "price_x"},
        }
    )
    assert line.bills_subscription and line.price_id == "price_x"
    assert line.period == (datetime.fromtimestamp(10, UTC), datetime.fromtimestamp(20, UTC))
    assert not parse_line({"type": "invoiceitem", "proration": False}).bills_subscription


def test_line_without_price_details():
    line = parse_line(se.fixture("line_item"))
    assert line.price_id is None and line.kind == "invoice_item_details" and line.proration


def test_checkout_session_fields():
    obj = se.checkout_session(
        "cs_1", mode="payment", pack="voice_1k", quantity="3", user_id=None, client_reference_id="u7"
    )
    session = parse_checkout_session(obj)
    assert (session.id, session.mode, session.user_id, session.pack_id, session.quantity) == (
        "cs_1",
        "payment",
        "u7",
        "voice_1k",
        3,
    )
    assert session.is_paid


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, 1), ("", 1), ("2", 2), ("0", None), ("-1", None), ("x", None), ("1.5", None)]
)
def test_checkout_quantity(raw, expected):
    obj = se.checkout_session("cs_1", mode="payment", pack="voice_1k", quantity=raw)
    assert parse_checkout_session(obj).quantity == expected


def test_metadata_user_wins_over_client_reference():
    obj = se.checkout_session(
        "cs_1", mode="subscription", user_id="u1", client_reference_id="u2", subscription_id="sub_1"
    )
    session = parse_checkout_session(obj)
    assert session.user_id == "u1" and session.subscription_id == "sub_1"


def test_parse_event_envelope():
    ev = se.event(
        "customer.subscription.updated", se.subscription("sub_1", price="p", start=START, end=END), 1700
    )
    parsed = parse_event(json.dumps(ev))
    assert (parsed.id, parsed.type, parsed.created, parsed.object_id) == (ev["id"], ev["type"], 1700, "sub_1")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.pop("id"),
        lambda e: e.pop("type"),
        lambda e: e.pop("created"),
        lambda e: e.update(created="yesterday"),
        lambda e: e.update(data={}),
        lambda e: e.update(data={"object": "sub_1"}),
    ],
    ids=["no-id", "no-type", "no-created", "bad-created", "no-object", "object-not-dict"],
)
def test_parse_event_rejects_non_events(mutate):
    ev = se.event("customer.subscription.updated", {"id": "sub_1"}, 1700)
    mutate(ev)
    with pytest.raises(InvalidPayload):
        parse_event(json.dumps(ev))


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '"text"'])
def test_parse_event_rejects_non_json_objects(body):
    with pytest.raises(InvalidPayload):
        parse_event(body)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("whsec_abc", "whsec_abc"),
        ('{"webhook_secret": "whsec_json"}', "whsec_json"),
        (b"whsec_bytes", "whsec_bytes"),
        ('{"other": "x"}', None),
        ("", None),
        (None, None),
    ],
)
def test_secret_value_forms(value, expected):
    assert secret_from_value(value) == expected
