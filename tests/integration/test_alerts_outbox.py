"""Usage alerts, the writing side (api.md section 7): the transaction that makes a user cross an
alert writes it (a transactional outbox), at most once per user, alert and period, also under
concurrent records; a record that crosses nothing sends no extra statement, and one that crosses
sends one more statement but no extra round trip."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bench import wire
from metering.api.models import UsageRequest
from metering.db.engine import get_engine
from metering.services.record import record
from metering_dev.context import make_context
from metering_dev.events import sqs_event
from tests.support import api
from tests.support.alerts import alert_rows, fired, use_alert_catalog
from tests.support.containers import record_events, run_containers
from tests.support.lambda_events import handler
from tests.support.state import assert_reconciled, query, subscribe

pytestmark = pytest.mark.xdist_group("concurrency")


@pytest.fixture(autouse=True)
def catalog(clean, tmp_path):
    use_alert_catalog(tmp_path)


def test_a_record_that_crosses_80_percent_writes_one_alert_with_its_snapshot():
    subscribe("u1", "basic")  # premium_voice: 5,000
    assert api.record("e1", "u1", "premium_voice", 3999)[0] == 201
    assert fired() == []
    status, body = api.record("e2", "u1", "premium_voice", 1)
    assert status == 201
    (row,) = alert_rows()
    assert (row.user_id, row.alert_id, row.usage_type) == ("u1", "voice_80", "premium_voice")
    assert row.threshold == {"at_percent": 80}
    assert (row.used, row.allowance, row.available) == (4000, 5000, 1000)
    assert (row.state, row.attempts) == ("pending", 0)
    # the period of the record, as stored
    (period,) = query("SELECT period_start, period_end FROM periods WHERE user_id = 'u1'")
    assert (row.period_start, row.period_end) == (period.period_start, period.period_end)
    api.record("e3", "u1", "premium_voice", 500)  # 90 %: nothing new
    assert fired() == ["voice_80"]


def test_one_record_can_cross_several_alerts_and_runs_out():
    subscribe("u1", "basic")
    api.adjust("u1", "p", "premium_voice", "purchased", 100)
    api.record("e1", "u1", "premium_voice", 5100)  # allowance and purchased: all gone
    rows = alert_rows()
    assert [r.alert_id for r in rows] == ["voice_100", "voice_80", "voice_out"]
    assert {(r.used, r.allowance, r.available) for r in rows} == {(5000, 5000, 0)}
    assert rows[2].threshold == {"when": "available_depleted"}
    api.record("e2", "u1", "premium_voice", 10)  # into debt: nothing crossed again
    assert len(alert_rows()) == 3
    assert_reconciled()


def test_at_most_once_per_period_even_when_crossed_again():
    subscribe("u1", "basic")
    api.record("e1", "u1", "premium_voice", 5000)
    assert sorted(fired()) == ["voice_100", "voice_80", "voice_out"]
    api.adjust("u1", "p1", "premium_voice", "purchased", 50)  # available again
    api.record("e2", "u1", "premium_voice", 50)  # and gone again: the same period
    assert sorted(fired()) == ["voice_100", "voice_80", "voice_out"]


def test_each_period_fires_again():
    # no subscription: the free plan's calendar month, server_kokoro 1,000 (a plain counter)
    jan, feb = datetime(2026, 1, 10, tzinfo=UTC), datetime(2026, 2, 10, tzinfo=UTC)
    record(UsageRequest(event_id="j", user_id="f", usage_type="server_kokoro", amount=950), jan)
    record(UsageRequest(event_id="f", user_id="f", usage_type="server_kokoro", amount=1200), feb)
    rows = alert_rows()
    assert [(r.alert_id, r.period_start, r.used, r.allowance) for r in rows] == [
        ("tts_90", jan.replace(day=1), 950, 1000),
        ("tts_90", feb.replace(day=1), 1200, 1000),
    ]
    assert [r.occurred_at for r in rows] == [jan, feb]


def test_a_batch_that_crosses_writes_the_alerts_of_its_end_state():
    subscribe("u1", "basic")
    subscribe("u2", "basic")
    events = [
        {"event_id": f"b{i}", "user_id": "u1", "usage_type": "premium_voice", "amount": 1000}
        for i in range(5)
    ] + [{"event_id": "c1", "user_id": "u2", "usage_type": "ocr_tokens", "amount": 10}]
    status, body = api.batch(events)
    assert status == 200 and [r["status"] for r in body["results"]] == ["recorded"] * 6
    assert fired("u1") == ["voice_100", "voice_80", "voice_out"]
    assert {(r.used, r.available) for r in alert_rows("u1")} == {(5000, 0)}
    assert fired("u2") == []


def test_the_queue_writes_alerts_in_its_transaction():
    subscribe("q1", "basic")
    result = handler("record", "queue_handler")(
        sqs_event([{"event_id": "m1", "user_id": "q1", "usage_type": "ocr_tokens", "amount": 50000}]),
        make_context("RecordQueueFunction"),
    )
    assert result == {"batchItemFailures": []}
    assert fired("q1") == ["ocr_50"]


def test_an_adjustment_that_takes_the_last_credit_writes_available_depleted():
    subscribe("u1", "basic")
    api.adjust("u1", "p", "premium_voice", "purchased", 300)
    api.record("e1", "u1", "premium_voice", 5000)  # allowance spent, 300 purchased left
    assert sorted(fired()) == ["voice_100", "voice_80"]
    assert api.adjust("u1", "take", "premium_voice", "purchased", -300)[0] == 201
    (out,) = [r for r in alert_rows() if r.alert_id == "voice_out"]
    assert (out.used, out.allowance, out.available) == (5000, 5000, 0)
    assert api.adjust("u1", "take", "premium_voice", "purchased", -300)[0] == 200  # a replay: nothing new
    assert len(alert_rows()) == 3


def test_a_failed_record_writes_no_alert():
    subscribe("u1", "basic")
    api.record("e1", "u1", "premium_voice", 3000)
    # the same event id with another amount: rejected, nothing applied, nothing crossed
    assert api.record("e1", "u1", "premium_voice", 4500)[0] == 409
    assert fired() == []


def _statements(call) -> tuple[dict[str, int], list[str]]:
    with wire.measure(get_engine()) as delta:
        call()
    return delta.counts(), [wire.statement_label(sql) for sql in delta.sql]


def test_a_record_that_crosses_nothing_sends_no_extra_statement():
    subscribe("u1", "basic")
    api.record("warm", "u1", "premium_voice", 10)
    counts, labels = _statements(lambda: api.record("e1", "u1", "premium_voice", 10))
    assert counts == {"db": 2, "redis": 0}
    assert not any("alerts" in label for label in labels), labels
    assert fired() == []

    # crossing: one more statement, queued with COMMIT: still two round trips
    counts, labels = _statements(lambda: api.record("e2", "u1", "premium_voice", 4000))
    assert counts == {"db": 2, "redis": 0}
    assert sum("INSERT INTO alerts" in label for label in labels) == 1, labels
    assert fired() == ["voice_80"]


def test_concurrent_records_for_one_user_cross_each_alert_exactly_once():
    subscribe("hot", "basic")  # 5,000 allowance, no credit: depleted at 5,000
    events = [
        {"event_id": f"e{i}", "user_id": "hot", "usage_type": "premium_voice", "amount": 50}
        for i in range(160)
    ]  # 8,000 in all, from 4 processes at once
    results = run_containers(record_events, [(events[c::4],) for c in range(4)])
    assert [status for per in results for status, _ in per] == [201] * len(events)
    rows = alert_rows("hot")
    assert [r.alert_id for r in rows] == ["voice_100", "voice_80", "voice_out"]
    by_id = {r.alert_id: r for r in rows}
    # each was written by the record that crossed it, with the state right after that record
    assert by_id["voice_80"].used == 4000 and by_id["voice_80"].available == 1000
    assert by_id["voice_100"].used == 5000 and by_id["voice_out"].available == 0
    assert_reconciled()
