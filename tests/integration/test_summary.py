"""GET /v1/users/{user_id}/summary and /v1/me/summary: every field, availability exactly as the
check computes it, strangers, reservations, Redis down, one round trip, and no writes."""

import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from bench import wire
from tests.support import api
from tests.support.state import iso, query, subscribe, use_test_catalog

pytestmark = pytest.mark.usefixtures("clean")

TYPES = ("premium_voice", "ocr_tokens", "server_kokoro")
WRITTEN_TABLES = (
    "accounts",
    "subscriptions",
    "periods",
    "period_usage",
    "balances",
    "journal",
    "usage_events",
)


@pytest.fixture(autouse=True)
def catalog(clean):
    use_test_catalog()


def summary(user_id):
    return api.read("summary", user_id)


def my_summary(sub=None):
    return api.read_me("summary", sub)


def grant(user, usage_type, pool, delta, ref):
    assert api.adjust(user, ref, usage_type, pool, delta)[0] == 201


def row_counts():
    return {t: query(f"SELECT count(*) FROM {t}")[0][0] for t in WRITTEN_TABLES}


def assert_as_the_check_says(body, user):
    """Each usage type's limit/used/reserved/available equal a zero-amount check's."""
    for usage_type in TYPES:
        check = api.check(user, usage_type, 0)[1]
        got = body["usage_types"][usage_type]
        for field in ("limit", "used", "reserved", "available"):
            assert got[field] == check[field], (usage_type, field, got, check)


def test_stranger_gets_the_free_plan_summary_and_nothing_is_written():
    before = row_counts()
    status, body = summary("never-seen")
    assert status == 200
    now = datetime.now(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    assert body == {
        "user_id": "never-seen",
        "billing_enabled": True,
        "plan": {"id": "free", "name": "Free"},
        "subscription": None,
        "period": {"start": iso(start), "end": iso(end)},
        "usage_types": {
            "premium_voice": {
                "limit": 0,
                "used": 0,
                "rollover": 0,
                "purchased": 0,
                "granted": 0,
                "reserved": 0,
                "available": 0,
            },
            "ocr_tokens": {
                "limit": 100,
                "used": 0,
                "rollover": 0,
                "purchased": 0,
                "granted": 0,
                "reserved": 0,
                "available": 100,
            },
            "server_kokoro": {
                "limit": 1000,
                "used": 0,
                "rollover": 0,
                "purchased": 0,
                "granted": 0,
                "reserved": 0,
                "available": 1000,
            },
        },
        "reservations_counted": True,
    }
    assert row_counts() == before  # a read never creates a period (or anything else)


def test_subscriber_every_field_as_the_check_computes_it():
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    subscribe("u1", "basic", start=start, end=start + timedelta(days=30))
    api.record("e1", "u1", "premium_voice", 4000)
    grant("u1", "premium_voice", "purchased", 300, "p")
    grant("u1", "premium_voice", "rollover", -100, "r")
    api.record("e2", "u1", "ocr_tokens", 1000)
    api.record("e3", "u1", "server_kokoro", 77)
    assert api.check("u1", "premium_voice", 150, {"id": "doc-1", "ttl_seconds": 60})[1]["allowed"]
    assert api.check("u1", "ocr_tokens", 2000, {"id": "doc-2", "ttl_seconds": 60})[1]["allowed"]

    status, body = summary("u1")
    assert status == 200
    assert body["plan"] == {"id": "basic", "name": "Basic"}
    assert body["subscription"] == {
        "plan": "basic",
        "status": "active",
        "current_period_start": iso(start),
        "current_period_end": iso(start + timedelta(days=30)),
        "cancel_at_period_end": False,
        "cancel_at": None,
        "canceled_at": None,
        "is_canceling": False,
    }
    assert body["period"] == {"start": iso(start), "end": iso(start + timedelta(days=30))}
    assert body["usage_types"] == {
        # 5000 - 4000 + (-100) + 300 - 150 reserved
        "premium_voice": {
            "limit": 5000,
            "used": 4000,
            "rollover": -100,
            "purchased": 300,
            "granted": 0,
            "reserved": 150,
            "available": 1050,
        },
        "ocr_tokens": {
            "limit": 100000,
            "used": 1000,
            "rollover": 0,
            "purchased": 0,
            "granted": 0,
            "reserved": 2000,
            "available": 97000,
        },
        "server_kokoro": {
            "limit": None,
            "used": 77,
            "rollover": 0,
            "purchased": 0,
            "granted": 0,
            "reserved": 0,
            "available": None,
        },
    }
    assert body["reservations_counted"] is True
    assert_as_the_check_says(body, "u1")


def test_debt_beyond_the_allowance_clamps_available_at_zero():
    subscribe("u1", "basic")
    grant("u1", "premium_voice", "rollover", -6000, "debt")
    body = summary("u1")[1]["usage_types"]["premium_voice"]
    assert (body["rollover"], body["available"]) == (-6000, 0)
    assert_as_the_check_says(summary("u1")[1], "u1")


def test_plain_counter_reports_no_pools_as_the_check_ignores_them():
    subscribe("u1", "basic")
    # a balances row for a plain counter (never written by the service) must not leak into it
    query(
        "INSERT INTO balances (user_id, usage_type, rollover, purchased) VALUES ('u1', 'server_kokoro', 5, 7) "
        "RETURNING 1"
    )
    body = summary("u1")[1]["usage_types"]["server_kokoro"]
    assert (body["rollover"], body["purchased"]) == (0, 0)


def test_canceled_subscription_falls_back_to_free_but_keeps_pools_and_the_mirror():
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    subscribe("u1", "basic", start=start, end=start + timedelta(days=30))
    grant("u1", "ocr_tokens", "purchased", 500, "p")
    subscribe("u1", "basic", start=start, end=start + timedelta(days=30), status="canceled")
    query("UPDATE subscriptions SET canceled_at = :at RETURNING 1", at=start + timedelta(days=1))
    body = summary("u1")[1]
    assert body["plan"] == {"id": "free", "name": "Free"}
    assert body["subscription"]["status"] == "canceled"
    assert body["subscription"]["canceled_at"] == iso(start + timedelta(days=1))
    # the calendar month under the free plan, with purchased credit still counting
    assert body["period"]["start"].endswith("-01T00:00:00Z")
    assert body["usage_types"]["ocr_tokens"] == {
        "limit": 100,
        "used": 0,
        "rollover": 0,
        "purchased": 500,
        "granted": 0,
        "reserved": 0,
        "available": 600,
    }
    assert_as_the_check_says(body, "u1")


@pytest.mark.parametrize(
    ("cancel_at_period_end", "cancel_at_days", "expected"),
    [(True, None, True), (False, 30, True), (False, 20, True), (False, 31, False), (False, None, False)],
)
def test_is_canceling(cancel_at_period_end, cancel_at_days, expected):
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    subscribe("u1", "basic", start=start, end=start + timedelta(days=30))
    cancel_at = None if cancel_at_days is None else start + timedelta(days=cancel_at_days)
    query(
        "UPDATE subscriptions SET cancel_at_period_end = :e, cancel_at = :at RETURNING 1",
        e=cancel_at_period_end,
        at=cancel_at,
    )
    sub = summary("u1")[1]["subscription"]
    assert (sub["cancel_at_period_end"], sub["cancel_at"], sub["is_canceling"]) == (
        cancel_at_period_end,
        None if cancel_at is None else iso(cancel_at),
        expected,
    )


def test_late_renewal_reports_the_assumed_next_period():
    # a weekly period (a 30-day one is also "one month" whenever the month has 30 days)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=8)
    end = start + timedelta(days=7)  # ended a day ago; Stripe's renewal has not arrived
    subscribe("u1", "basic", start=start, end=end)
    body = summary("u1")[1]
    assert body["plan"]["id"] == "basic"
    assert body["period"] == {"start": iso(end), "end": iso(end + timedelta(days=7))}
    assert body["subscription"]["current_period_end"] == iso(end)
    api.record("e1", "u1", "premium_voice", 10)  # charged to the assumed period
    assert summary("u1")[1]["usage_types"]["premium_voice"]["used"] == 10


def test_the_period_rows_plan_governs_the_limit_as_in_the_check():
    subscribe("u1", "basic")
    api.record("e1", "u1", "premium_voice", 100)  # creates the period row under basic
    # the mirror says plus, the period row still says basic: the check uses the row, and the
    # summary's plan is the one governing the period (the one whose limits it shows)
    query("UPDATE subscriptions SET plan_id = 'plus' RETURNING 1")
    body = summary("u1")[1]
    assert body["plan"]["id"] == "basic" and body["subscription"]["plan"] == "plus"
    assert body["usage_types"]["premium_voice"]["limit"] == 5000
    assert_as_the_check_says(body, "u1")


def test_billing_disabled_reports_unlimited(monkeypatch):
    monkeypatch.setenv("BILLING_ENABLED", "false")
    use_test_catalog()
    api.record("e1", "u1", "premium_voice", 10)
    body = summary("u1")[1]
    assert body["billing_enabled"] is False
    for usage_type in TYPES:
        assert (body["usage_types"][usage_type]["limit"], body["usage_types"][usage_type]["available"]) == (
            None,
            None,
        )
    assert body["usage_types"]["premium_voice"]["used"] == 0  # records change no counter then
    assert_as_the_check_says(body, "u1")


def test_expired_reservations_are_not_counted(services):
    subscribe("u1", "basic")
    api.check("u1", "premium_voice", 1000, {"id": "old", "ttl_seconds": 60})
    api.check("u1", "premium_voice", 200, {"id": "live", "ttl_seconds": 60})
    client = redis.Redis.from_url(services["redis_url"])
    (key,) = client.keys("metering:resv:*")
    usage_type, amount, _, settled = client.hget(key, "old").decode().split("|")
    client.hset(key, "old", f"{usage_type}|{amount}|{int(time.time() * 1000) - 1}|{settled}")
    body = summary("u1")[1]["usage_types"]["premium_voice"]
    assert (body["reserved"], body["available"]) == (200, 4800)
    assert client.hexists(key, "old")  # a read leaves the cleanup to the next check


def test_redis_down_reports_reserved_zero_and_says_so(monkeypatch):
    subscribe("u1", "basic")
    api.check("u1", "premium_voice", 4000, {"id": "held", "ttl_seconds": 60})
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    use_test_catalog()
    status, body = summary("u1")
    assert status == 200
    assert body["reservations_counted"] is False
    assert body["usage_types"]["premium_voice"]["reserved"] == 0
    assert body["usage_types"]["premium_voice"]["available"] == 5000


def test_redis_not_configured(monkeypatch):
    monkeypatch.delenv("REDIS_URL")
    use_test_catalog()
    status, body = summary("u1")
    assert (status, body["reservations_counted"]) == (200, False)


def test_one_database_round_trip():
    from metering.db.engine import get_engine

    subscribe("u1", "basic")
    api.record("e1", "u1", "premium_voice", 10)
    with wire.measure(get_engine()) as sent:
        assert summary("u1")[0] == 200
    assert sent.pg == 1 and len(sent.sql) == 1 and "metering.pair_states_v2" in sent.sql[0], sent.sql


def test_me_summary_acts_for_the_jwt_subject():
    subscribe("u1", "basic")
    api.record("e1", "u1", "ocr_tokens", 42)
    status, body = my_summary("u1")
    assert status == 200
    assert body == summary("u1")[1]
    assert body["usage_types"]["ocr_tokens"]["used"] == 42


def test_me_summary_without_a_subject_is_401():
    status, body = my_summary(None)
    assert status == 401
    assert body["error"]["code"] == "unauthorized"


def test_user_id_too_long_is_400():
    status, body = summary("x" * 256)
    assert status == 400 and body["error"]["code"] == "validation_error"
    assert "user_id" in body["error"]["message"]


def test_a_settled_reservation_is_counted_once(services):
    subscribe("u1", "basic")
    api.check("u1", "premium_voice", 2000, {"id": "doc", "ttl_seconds": 60})
    assert summary("u1")[1]["usage_types"]["premium_voice"]["reserved"] == 2000
    # the record settles the hold: its usage is in the database, the hold no longer counts
    assert api.record("e1", "u1", "premium_voice", 1800, reservation_id="doc")[0] == 201
    body = summary("u1")[1]["usage_types"]["premium_voice"]
    assert (body["used"], body["reserved"], body["available"]) == (1800, 0, 3200)
    assert_as_the_check_says(summary("u1")[1], "u1")
    # a hold settled by a version the database read does not include yet still counts, as in the check
    client = redis.Redis.from_url(services["redis_url"])
    (key,) = client.keys("metering:resv:*")
    usage_type, amount, expires, _settled = client.hget(key, "doc").decode().split("|")
    client.hset(key, "doc", f"{usage_type}|{amount}|{expires}|999")
    body = summary("u1")[1]
    assert body["usage_types"]["premium_voice"]["reserved"] == 2000  # the hold's amount
    assert_as_the_check_says(body, "u1")
