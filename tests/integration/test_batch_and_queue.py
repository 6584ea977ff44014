"""POST /v1/usage/batch and the SQS RecordQueueFunction: per-event outcomes, partial failures,
the dead-letter queue (moto), duplicates inside one batch."""

import json

import boto3
import pytest
from moto import mock_aws

from metering_dev.context import make_context
from metering_dev.events import sqs_event
from tests.support import api
from tests.support.lambda_events import handler
from tests.support.state import assert_reconciled, execute, query, subscribe, use_test_catalog


@pytest.fixture(autouse=True)
def catalog(clean):
    use_test_catalog()


def ev(event_id, user="u1", usage_type="premium_voice", amount=100, **extra):
    return {"event_id": event_id, "user_id": user, "usage_type": usage_type, "amount": amount, **extra}


def test_batch_outcomes_in_request_order():
    subscribe("u1", "basic")
    status, body = api.batch(
        [
            ev("a", amount=4000),
            {"event_id": "bad", "user_id": "u1", "usage_type": "premium_voice"},  # amount missing
            ev("b", amount=1500),  # spills: 1000 from allowance, 500 debt
            ev("a", amount=4000),  # duplicate of the first, inside the same batch
            ev("a", amount=4001),  # conflict with it
            ev("c", usage_type="nope"),
            ev("d", user="u2", usage_type="server_kokoro", amount=7),
        ]
    )
    assert status == 200
    results = body["results"]
    assert [(r["event_id"], r["status"]) for r in results] == [
        ("a", "recorded"),
        ("bad", "rejected"),
        ("b", "recorded"),
        ("a", "duplicate"),
        ("a", "rejected"),
        ("c", "rejected"),
        ("d", "recorded"),
    ]
    assert (
        results[0]["breakdown"]
        == results[3]["breakdown"]
        == {
            "from_subscription": 4000,
            "from_rollover": 0,
            "from_grants": 0,
            "from_purchased": 0,
            "overflow_to_debt": 0,
        }
    )
    assert results[2]["breakdown"] == {
        "from_subscription": 1000,
        "from_rollover": 0,
        "from_grants": 0,
        "from_purchased": 0,
        "overflow_to_debt": 500,
    }
    assert results[1]["error"]["code"] == "validation_error" and "amount" in results[1]["error"]["message"]
    assert results[4]["error"]["code"] == "event_id_conflict"
    assert results[5]["error"]["code"] == "unknown_usage_type"
    assert query("SELECT count(*) FROM usage_events")[0][0] == 3
    assert (
        query("SELECT rollover FROM balances WHERE user_id = 'u1' AND usage_type = 'premium_voice'")[0][0]
        == -500
    )
    assert_reconciled()


def test_a_database_error_fails_only_the_event_that_caused_it():
    """A batch is one transaction; when the database refuses one event (here a CHECK constraint
    added for the test), the set falls back to one transaction per user, then per event: the
    guilty event is rejected (500-class, retryable), every other event of every user is recorded."""
    subscribe("u1", "basic")
    execute("ALTER TABLE usage_events ADD CONSTRAINT poison CHECK (event_id <> 'poison')")
    try:
        status, body = api.batch(
            [
                ev("a"),
                ev("b", user="u2"),
                ev("poison"),
                ev("c"),
                ev("d", user="u3", usage_type="server_kokoro"),
            ]
        )
    finally:
        execute("ALTER TABLE usage_events DROP CONSTRAINT poison")
    assert status == 200
    assert [(r["event_id"], r["status"]) for r in body["results"]] == [
        ("a", "recorded"),
        ("b", "recorded"),
        ("poison", "rejected"),
        ("c", "recorded"),
        ("d", "recorded"),
    ]
    assert body["results"][2]["error"]["code"] == "internal_error"
    assert [r[0] for r in query("SELECT event_id FROM usage_events ORDER BY event_id")] == [
        "a",
        "b",
        "c",
        "d",
    ]
    assert query(
        "SELECT used FROM period_usage pu JOIN periods p USING (period_id) WHERE p.user_id = 'u1'"
    ) == [(200,)]
    assert_reconciled()
    assert api.batch([ev("poison")])[1]["results"][0]["status"] == "recorded"  # the retry succeeds


def test_details_that_are_not_json_are_rejected_by_name():
    """Python's JSON parser accepts NaN and Infinity; JSON and jsonb do not: a 400 naming the field,
    never a 500, and the other events of a batch are recorded."""
    status, body = api.record("n1", "u1", "premium_voice", 10, details={"duration_ms": float("nan")})
    assert (status, body["error"]["code"]) == (400, "validation_error")
    assert "details" in body["error"]["message"] and "NaN" in body["error"]["message"]
    status, body = api.batch([ev("n2", details={"x": float("inf")}), ev("ok")])
    assert [(r["event_id"], r["status"]) for r in body["results"]] == [("n2", "rejected"), ("ok", "recorded")]
    assert body["results"][0]["error"]["code"] == "validation_error"
    assert [r[0] for r in query("SELECT event_id FROM usage_events")] == ["ok"]


def test_a_batch_item_that_is_not_an_object_is_rejected_on_its_own():
    """api.md: each event is applied or rejected on its own; one bad event does not stop the rest
    (decisions.md, 2026-12-03), even one that is not an object at all."""
    status, body = api.batch([ev("a"), "not an object", None, [1], ev("b")])
    assert status == 200
    assert [r["status"] for r in body["results"]] == [
        "recorded",
        "rejected",
        "rejected",
        "rejected",
        "recorded",
    ]
    rejected = body["results"][1]
    assert rejected["event_id"] is None and rejected["error"]["code"] == "validation_error"
    assert (
        "must be a JSON object" in rejected["error"]["message"] and "got str" in rejected["error"]["message"]
    )
    assert query("SELECT count(*) FROM usage_events")[0][0] == 2


@pytest.mark.parametrize("events", [[], [ev(str(i)) for i in range(501)]], ids=["empty", "501"])
def test_batch_size_bounds(events):
    status, body = api.batch(events)
    assert status == 400 and "events" in body["error"]["message"]
    assert query("SELECT count(*) FROM usage_events")[0][0] == 0


def test_batch_of_500_across_users():
    events = [ev(f"e{i}", user=f"u{i % 7}", usage_type="server_kokoro", amount=i + 1) for i in range(500)]
    status, body = api.batch(events)
    assert status == 200 and {r["status"] for r in body["results"]} == {"recorded"}
    assert query("SELECT sum(used) FROM period_usage")[0][0] == sum(range(1, 501))
    assert_reconciled()


@pytest.fixture
def dlq(monkeypatch):
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="usage-dlq")["QueueUrl"]
        monkeypatch.setenv("USAGE_DLQ_URL", url)
        from metering import ingest
        from metering.config import get_settings

        get_settings.cache_clear()
        ingest._sqs.cache_clear()
        yield sqs, url
        ingest._sqs.cache_clear()


def dead_letters(sqs, url):
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
    return sorted(
        (
            m["Body"],
            m["MessageAttributes"]["error_code"]["StringValue"],
            m["MessageAttributes"]["reason"]["StringValue"],
        )
        for m in messages.get("Messages", [])
    )


def test_queue_records_and_dead_letters_what_can_never_succeed(dlq):
    sqs, url = dlq
    body_ok = json.dumps(ev("q1", usage_type="server_kokoro", amount=5))
    bodies = [
        body_ok,
        "{not json",
        json.dumps({"event_id": "q2", "user_id": "u1", "usage_type": "server_kokoro", "amount": -1}),
        body_ok,  # redelivered duplicate
        json.dumps(ev("q3", usage_type="nope")),
    ]
    result = handler("record", "queue_handler")(sqs_event(bodies), make_context("RecordQueueFunction"))
    assert result == {"batchItemFailures": []}
    letters = dead_letters(sqs, url)
    assert [(body, code) for body, code, _ in letters] == sorted(
        [
            ("{not json", "validation_error"),
            (bodies[2], "validation_error"),
            (bodies[4], "unknown_usage_type"),
        ]
    )
    assert any("amount" in reason for _, _, reason in letters)
    assert query("SELECT count(*), sum(amount) FROM usage_events")[0] == (1, 5)


def test_queue_reports_only_retryable_failures_when_the_database_is_down(dlq, monkeypatch):
    sqs, url = dlq
    monkeypatch.setenv("DATABASE_URL", "postgresql+pg8000://postgres@127.0.0.1:1/none")
    from tests.support.servers import reset_caches

    reset_caches()
    bodies = [
        json.dumps(ev("q1", usage_type="server_kokoro")),
        "[]",
        json.dumps(ev("q2", usage_type="server_kokoro")),
    ]
    event = sqs_event(bodies)
    ids = [message["messageId"] for message in event["Records"]]
    result = handler("record", "queue_handler")(event, make_context("RecordQueueFunction"))
    assert result == {"batchItemFailures": [{"itemIdentifier": ids[0]}, {"itemIdentifier": ids[2]}]}
    assert [code for _, code, _ in dead_letters(sqs, url)] == ["validation_error"]


def test_queue_without_a_dlq_leaves_bad_messages_to_the_redrive_policy(monkeypatch):
    monkeypatch.delenv("USAGE_DLQ_URL", raising=False)
    event = sqs_event(["{bad"])
    result = handler("record", "queue_handler")(event, make_context("RecordQueueFunction"))
    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
