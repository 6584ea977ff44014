"""Late events (api.md section 7 "Late events: occurred_at"; metering.md "Second release"): usage is
charged to the period containing `occurred_at` while that period is open, to the current one once
its renewal rollover was applied, and every record response and batch result says which."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from metering.api.models import UsageRequest
from metering.services import record
from metering_dev.context import make_context
from metering_dev.events import sqs_event
from tests.support import api
from tests.support import stripe_events as se
from tests.support.lambda_events import handler
from tests.support.state import assert_reconciled, iso, query, use_test_catalog

NOW = datetime.now(UTC).replace(microsecond=0)
# the subscription's period ended an hour ago; the renewal's webhooks have not all arrived
OLD = (NOW - timedelta(days=30, hours=1), NOW - timedelta(hours=1))
NEW = (OLD[1], OLD[1] + timedelta(days=30))


@pytest.fixture(autouse=True)
def setup(clean, monkeypatch):
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", se.SECRET)
    use_test_catalog()
    se.wipe()


def subscribed(period=OLD):
    sub = se.subscription(
        "sub_1", price="price_basic_monthly", start=period[0], end=period[1], created=OLD[0]
    )
    se.ok(se.event("customer.subscription.created", sub, OLD[0] + timedelta(seconds=5)))


def renewal_paid():
    inv = se.cycle_invoice(
        "in_1",
        subscription_id="sub_1",
        price="price_basic_monthly",
        ending_start=OLD[0],
        new_start=NEW[0],
        new_end=NEW[1],
    )
    se.ok(se.event("invoice.paid", inv, NEW[0] + timedelta(minutes=5)))


def period(p):
    return {"start": iso(p[0]), "end": iso(p[1])}


def used_in(start):
    rows = query(
        "SELECT u.used FROM period_usage u JOIN periods p USING (period_id)"
        " WHERE p.period_start = :s AND u.usage_type = 'premium_voice'",
        s=start,
    )
    return rows[0][0] if rows else 0


def test_an_event_of_an_ended_period_is_charged_to_it_until_its_renewal_is_applied():
    subscribed()
    assert api.record("before", "u1", "premium_voice", 1000, occurred_at=iso(OLD[1] - timedelta(hours=2)))[1][
        "period"
    ] == period(OLD)
    # delivered after the boundary, before the renewal webhook: still the period it happened in
    status, body = api.record(
        "late-1", "u1", "premium_voice", 500, occurred_at=iso(OLD[1] - timedelta(minutes=1))
    )
    assert status == 201, body
    assert body["period"] == period(OLD)
    assert body["balance"]["used"] == 1500
    renewal_paid()
    # the renewal counted it: 5,000 - 1,500 unused rolled over
    assert api.read("summary", "u1")[1]["usage_types"]["premium_voice"]["rollover"] == 3500
    # after the renewal webhook the ended period is settled: the current one pays
    status, body = api.record(
        "late-2", "u1", "premium_voice", 200, occurred_at=iso(OLD[1] - timedelta(minutes=1))
    )
    assert status == 201, body
    assert body["period"] == period(NEW)
    assert (used_in(OLD[0]), used_in(NEW[0])) == (1500, 200)
    assert query("SELECT rolled_over FROM periods WHERE period_start = :s", s=OLD[0]) == [(True,)]
    assert_reconciled()


def test_the_queue_charges_a_late_message_to_its_period_before_and_after_the_renewal():
    subscribed()
    late = {
        "event_id": "q1",
        "user_id": "u1",
        "usage_type": "premium_voice",
        "amount": 300,
        "occurred_at": iso(OLD[1] - timedelta(minutes=10)),
    }
    queue = handler("record", "queue_handler")
    assert queue(sqs_event([json.dumps(late)]), make_context("RecordQueueFunction")) == {
        "batchItemFailures": []
    }
    assert used_in(OLD[0]) == 300
    renewal_paid()
    again = {**late, "event_id": "q2"}
    assert queue(sqs_event([json.dumps(again)]), make_context("RecordQueueFunction")) == {
        "batchItemFailures": []
    }
    assert (used_in(OLD[0]), used_in(NEW[0])) == (300, 300)
    assert query(
        "SELECT e.event_id, p.period_start FROM usage_events e JOIN periods p USING (period_id)"
        " ORDER BY e.event_id"
    ) == [("q1", OLD[0]), ("q2", NEW[0])]
    assert_reconciled()


def test_a_batch_mixing_periods_says_which_period_paid_each_event():
    subscribed(NEW)  # known only from its renewed period: no row of OLD
    events = [
        {"event_id": "b1", "user_id": "u1", "usage_type": "premium_voice", "amount": 10},
        {
            "event_id": "b2",
            "user_id": "u1",
            "usage_type": "premium_voice",
            "amount": 20,
            "occurred_at": iso(NEW[0] - timedelta(minutes=30)),
        },
        {
            "event_id": "b3",
            "user_id": "u1",
            "usage_type": "premium_voice",
            "amount": 30,
            "occurred_at": iso(NEW[0] + timedelta(minutes=1)),
        },
        {
            "event_id": "b4",
            "user_id": "u1",
            "usage_type": "premium_voice",
            "amount": 40,
            "occurred_at": iso(NOW - timedelta(days=3)),
        },  # outside the default grace of one day
    ]
    status, body = api.batch(events)
    assert status == 200
    results = body["results"]
    assert [r["status"] for r in results] == ["recorded", "recorded", "recorded", "rejected"]
    assert results[0]["period"] == period(NEW)
    assert results[2]["period"] == period(NEW)
    # OLD has no stored row and the subscription has moved on: its bounds are unknown, so the
    # current period pays (charged_period)
    assert results[1]["period"] == period(NEW)
    assert results[3]["error"]["code"] == "occurred_at_out_of_range" and results[3].get("period") is None
    assert_reconciled()


def test_a_free_users_event_of_last_month_is_charged_to_last_month():
    use_test_catalog()
    now = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)
    moment = datetime(2026, 11, 30, 23, 50, tzinfo=UTC)
    outcome = record.record(
        UsageRequest(event_id="k1", user_id="u1", usage_type="server_kokoro", amount=7, occurred_at=moment),
        now=now,
    )
    assert outcome.period == (datetime(2026, 11, 1, tzinfo=UTC), now.replace(minute=0))
    current = record.record(
        UsageRequest(event_id="k2", user_id="u1", usage_type="server_kokoro", amount=1), now=now
    )
    assert current.period == (now.replace(minute=0), datetime(2027, 1, 1, tzinfo=UTC))
    assert_reconciled()


@pytest.mark.parametrize(
    "moment",
    [
        NOW - timedelta(days=1, seconds=60),  # past the grace window
        NOW + timedelta(seconds=600),  # more than 300 s ahead
    ],
)
def test_occurred_at_outside_the_window_is_refused_and_writes_nothing(moment):
    status, body = api.record("w1", "u1", "server_kokoro", 5, occurred_at=iso(moment))
    assert (status, body["error"]["code"]) == (400, "occurred_at_out_of_range"), body
    assert "occurred_at" in body["error"]["message"]
    assert query("SELECT count(*) FROM usage_events") == [(0,)]
    assert query("SELECT count(*) FROM journal") == [(0,)]


@pytest.mark.parametrize("value", ["yesterday", "2026-12-01T10:00:00", 1764583200])
def test_occurred_at_that_is_not_an_instant_is_a_validation_error(value):
    status, body = api.record("w1", "u1", "server_kokoro", 5, occurred_at=value)
    assert (status, body["error"]["code"]) == (400, "validation_error"), body
    assert "occurred_at" in body["error"]["message"]


def test_the_grace_window_is_configured_by_late_event_grace_seconds(monkeypatch):
    monkeypatch.setenv("LATE_EVENT_GRACE_SECONDS", "60")
    use_test_catalog()  # settings are read afresh
    moment = iso(datetime.now(UTC) - timedelta(seconds=120))
    assert api.record("g1", "u1", "server_kokoro", 5, occurred_at=moment)[1]["error"]["code"] == (
        "occurred_at_out_of_range"
    )
    monkeypatch.setenv("LATE_EVENT_GRACE_SECONDS", "600")
    use_test_catalog()
    assert api.record("g1", "u1", "server_kokoro", 5, occurred_at=moment)[0] == 201


def test_occurred_at_is_part_of_the_payload_a_duplicate_is_compared_on():
    subscribed()
    moment = iso(OLD[1] - timedelta(minutes=5))
    first = api.record("d1", "u1", "premium_voice", 100, occurred_at=moment)
    assert first[0] == 201
    replay = api.record("d1", "u1", "premium_voice", 100, occurred_at=moment)
    assert replay[0] == 200 and replay[1]["period"] == period(OLD)
    assert replay[1]["breakdown"] == first[1]["breakdown"]
    for other in (iso(OLD[1] - timedelta(minutes=6)), None):
        fields = {"occurred_at": other} if other else {}
        status, body = api.record("d1", "u1", "premium_voice", 100, **fields)
        assert (status, body["error"]["code"]) == (409, "event_id_conflict"), body
        assert "occurred_at" in body["error"]["message"]
    # without occurred_at both times: a duplicate, whenever it is retried
    assert api.record("d2", "u1", "premium_voice", 1)[0] == 201
    assert api.record("d2", "u1", "premium_voice", 1)[0] == 200
    assert query("SELECT count(*) FROM usage_events") == [(2,)]
    assert_reconciled()
