"""Round trips at the wire, per operation, with a warm container (issue 6: at most one database
and one Redis round trip per check). A round trip is one flush of the client's socket followed by
waiting for the server's answer; for Redis, one command (or pipeline) sent and answered."""

from contextlib import contextmanager

import pytest

from bench import wire
from metering_dev.context import make_context
from metering_dev.events import sqs_event
from tests.support import api
from tests.support.lambda_events import handler
from tests.support.state import subscribe, use_test_catalog


@pytest.fixture(autouse=True)
def catalog(clean):
    use_test_catalog()


@contextmanager
def count_round_trips(monkeypatch):
    """{"db": PostgreSQL round trips, "redis": Redis round trips} made inside the block, counted
    by the bench's counter (`bench.wire`: a flush followed by a read of the answer)."""
    counts: dict[str, int] = {}
    with wire.measure() as delta:
        yield counts
    counts.update(delta.counts())


def test_check_is_one_database_and_one_redis_round_trip(monkeypatch):
    subscribe("u1", "basic")
    api.record("warm", "u1", "premium_voice", 10)
    api.check("u1", "premium_voice", 1, {"id": "warm", "ttl_seconds": 60})  # warm: connections, scripts
    with count_round_trips(monkeypatch) as plain:
        assert api.check("u1", "premium_voice", 100)[1]["allowed"]
    with count_round_trips(monkeypatch) as held:
        assert api.check("u1", "premium_voice", 100, {"id": "doc", "ttl_seconds": 60})[1]["reservation"]
    assert plain == {"db": 1, "redis": 1}
    assert held == {"db": 1, "redis": 1}


def test_record_round_trips(monkeypatch):
    subscribe("u1", "basic")
    api.record("warm", "u1", "premium_voice", 10)
    with count_round_trips(monkeypatch) as new:
        assert api.record("e1", "u1", "premium_voice", 10)[0] == 201
    with count_round_trips(monkeypatch) as duplicate:
        assert api.record("e1", "u1", "premium_voice", 10)[0] == 200
    with count_round_trips(monkeypatch) as first:
        assert api.record("e2", "newcomer", "premium_voice", 10)[0] == 201
    # 1: BEGIN + lock + read the state + which ids exist; 2: one write (event, journal, balances,
    # counter, lifetime stats) + COMMIT
    assert new == {"db": 2, "redis": 0}
    # the same first round trip (this id exists, with its breakdown), then COMMIT
    assert duplicate == {"db": 2, "redis": 0}
    # a user's first event in a period also creates the period row
    assert first == {"db": 3, "redis": 0}


def _event(event_id: str, user_id: str) -> dict:
    return {"event_id": event_id, "user_id": user_id, "usage_type": "premium_voice", "amount": 10}


def test_batch_round_trips(monkeypatch):
    """An HTTP batch of 500 new events over 50 existing users x 1 usage type: one transaction, and
    in it one set-based write for all 500 events."""
    users = [f"u{i}" for i in range(50)]
    assert api.batch([_event(f"warm-{u}", u) for u in users])[0] == 200  # periods and balances exist
    events = [_event(f"e{n}-{u}", u) for n in range(10) for u in users]
    with count_round_trips(monkeypatch) as new:
        status, body = api.batch(events)
    assert status == 200 and [r["status"] for r in body["results"]] == ["recorded"] * 500
    with count_round_trips(monkeypatch) as again:
        status, body = api.batch(events)
    assert status == 200 and [r["status"] for r in body["results"]] == ["duplicate"] * 500
    # BEGIN + lock all 50 pairs + read their states + which ids exist; all 500 events + COMMIT
    assert new == {"db": 2, "redis": 0}
    # the same first round trip (all ids exist), then COMMIT
    assert again == {"db": 2, "redis": 0}


def test_queue_batch_is_one_transaction(monkeypatch):
    """An SQS batch of 10 events of 10 different users: one transaction, two round trips."""
    users = [f"q{i}" for i in range(10)]
    assert api.batch([_event(f"warm-{u}", u) for u in users])[0] == 200
    with count_round_trips(monkeypatch) as counts:
        result = handler("record", "queue_handler")(
            sqs_event([_event(f"m-{u}", u) for u in users]), make_context("RecordQueueFunction")
        )
    assert result == {"batchItemFailures": []}
    assert counts == {"db": 2, "redis": 0}
