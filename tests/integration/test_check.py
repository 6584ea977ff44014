"""POST /v1/check and reservations: every response field, holds, release, settlement, expiry,
and Redis being down."""

import json
import time

import pytest
import redis

from tests.support import api
from tests.support.state import subscribe, use_test_catalog

pytestmark = pytest.mark.usefixtures("clean")


@pytest.fixture(autouse=True)
def catalog(clean):
    use_test_catalog()


def grant(user, usage_type, pool, delta, ref):
    assert api.adjust(user, ref, usage_type, pool, delta)[0] == 201


def test_check_reports_every_field():
    subscribe("u1", "basic")
    api.record("e1", "u1", "premium_voice", 4000)
    grant("u1", "premium_voice", "purchased", 300, "p")
    grant("u1", "premium_voice", "rollover", -100, "r")
    status, body = api.check("u1", "premium_voice", 1200, {"id": "doc-1", "ttl_seconds": 60})
    assert status == 200
    expires_at = body["reservation"].pop("expires_at")
    assert body == {
        "allowed": True,
        "user_id": "u1",
        "usage_type": "premium_voice",
        "requested": 1200,
        "limit": 5000,
        "used": 4000,
        "reserved": 0,
        "available": 1200,
        "reservation": {"id": "doc-1", "amount": 1200},
        "reservations_counted": True,
    }
    assert expires_at.endswith(("Z", "+00:00"))


def test_equality_passes_and_one_more_is_denied_without_a_reservation():
    subscribe("u1", "basic")
    api.record("e1", "u1", "premium_voice", 4000)
    assert api.check("u1", "premium_voice", 1000)[1]["allowed"] is True
    status, body = api.check("u1", "premium_voice", 1001, {"id": "r", "ttl_seconds": 60})
    assert status == 200 and body["allowed"] is False and body["reservation"] is None
    assert body["available"] == 1000


def test_unlimited_reports_null_limit_and_available():
    subscribe("u1", "plus")
    body = api.check("u1", "ocr_tokens", 10**15)[1]
    assert (body["allowed"], body["limit"], body["available"]) == (True, None, None)


def test_billing_disabled_allows_everything(monkeypatch):
    monkeypatch.setenv("BILLING_ENABLED", "false")
    use_test_catalog()
    body = api.check("stranger", "premium_voice", 10**9)[1]
    assert (body["allowed"], body["limit"], body["available"]) == (True, None, None)


def test_reservations_count_against_others_and_recheck_replaces():
    subscribe("u1", "basic")  # 5000
    assert api.check("u1", "premium_voice", 3000, {"id": "a", "ttl_seconds": 60})[1]["allowed"]
    body = api.check("u1", "premium_voice", 2001, {"id": "b", "ttl_seconds": 60})[1]
    assert (body["allowed"], body["reserved"], body["available"]) == (False, 3000, 2000)
    # re-checking "a" replaces its hold: its own old amount is not counted against it
    body = api.check("u1", "premium_voice", 5000, {"id": "a", "ttl_seconds": 60})[1]
    assert (body["allowed"], body["reserved"]) == (True, 0)
    body = api.check("u1", "premium_voice", 1)[1]
    assert (body["allowed"], body["reserved"], body["available"]) == (False, 5000, 0)


def test_reservations_are_per_usage_type():
    subscribe("u1", "basic")
    api.check("u1", "premium_voice", 5000, {"id": "a", "ttl_seconds": 60})
    assert api.check("u1", "ocr_tokens", 100000)[1]["reserved"] == 0


def test_release_frees_the_hold_and_a_second_release_is_404():
    subscribe("u1", "basic")
    api.check("u1", "premium_voice", 4000, {"id": "doc", "ttl_seconds": 60})
    assert api.release("u1", "doc") == (204, None)
    assert api.check("u1", "premium_voice", 5000)[1]["allowed"] is True
    status, body = api.release("u1", "doc")
    assert status == 404 and body["error"]["code"] == "not_found"


def test_record_naming_the_reservation_settles_it():
    subscribe("u1", "basic")
    api.check("u1", "premium_voice", 2000, {"id": "doc", "ttl_seconds": 60})
    assert api.record("e1", "u1", "premium_voice", 1800, reservation_id="doc")[0] == 201
    body = api.check("u1", "premium_voice", 3200)[1]
    assert (body["reserved"], body["used"], body["allowed"]) == (0, 1800, True)
    assert api.release("u1", "doc")[0] == 404


def test_reservation_expires(services):
    subscribe("u1", "basic")
    api.check("u1", "premium_voice", 5000, {"id": "short", "ttl_seconds": 1})
    assert api.check("u1", "premium_voice", 1)[1]["reserved"] == 5000
    # expire it the way time would: move its deadline into the past in Redis
    client = redis.Redis.from_url(services["redis_url"])
    (key,) = client.keys("metering:resv:*")
    value = client.hget(key, "short").decode()
    usage_type, amount, _, settled = value.split("|")
    client.hset(key, "short", f"{usage_type}|{amount}|{int(time.time() * 1000) - 1}|{settled}")
    body = api.check("u1", "premium_voice", 5000)[1]
    assert (body["reserved"], body["allowed"]) == (0, True)
    assert api.release("u1", "short")[0] == 404


def test_redis_ttl_is_set_on_the_hash(services):
    api.check("u1", "server_kokoro", 10, {"id": "x", "ttl_seconds": 30})
    client = redis.Redis.from_url(services["redis_url"])
    (key,) = client.keys("metering:resv:*")
    assert 0 < client.pttl(key) <= 30_000


def test_redis_down_check_answers_from_the_database(monkeypatch, capsys):
    subscribe("u1", "basic")
    api.check("u1", "premium_voice", 4000, {"id": "held", "ttl_seconds": 60})
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    use_test_catalog()
    status, body = api.check("u1", "premium_voice", 5000, {"id": "new", "ttl_seconds": 60})
    assert status == 200
    assert (body["allowed"], body["reserved"], body["reservation"], body["reservations_counted"]) == (
        True,
        0,
        None,
        False,
    )
    # ... and says so in a metric (Powertools flushes EMF JSON to stdout)
    emitted = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')
    ]
    assert any(m.get("ReservationsUnavailable") == [1.0] for m in emitted)
    # records are unaffected
    assert api.record("e1", "u1", "premium_voice", 10)[0] == 201
    # and release says the service is unavailable rather than guessing
    assert api.release("u1", "held")[1]["error"]["code"] == "unavailable"


def test_redis_not_configured(monkeypatch):
    monkeypatch.delenv("REDIS_URL")
    use_test_catalog()
    body = api.check("u1", "server_kokoro", 5, {"id": "x", "ttl_seconds": 5})[1]
    assert (body["allowed"], body["reservations_counted"], body["reservation"]) == (True, False, None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "u1", "usage_type": "premium_voice", "amount": -1}, "amount"),
        ({"user_id": "u1", "usage_type": "premium_voice"}, "amount"),
        (
            {
                "user_id": "u1",
                "usage_type": "premium_voice",
                "amount": 1,
                "reservation": {"id": "x", "ttl_seconds": 0},
            },
            "reservation.ttl_seconds",
        ),
        (
            {
                "user_id": "u1",
                "usage_type": "premium_voice",
                "amount": 1,
                "reservation": {"id": "x", "ttl_seconds": 604801},
            },
            "reservation.ttl_seconds",
        ),
        (
            {"user_id": "u1", "usage_type": "premium_voice", "amount": 1, "reservation": {"ttl_seconds": 5}},
            "reservation.id",
        ),
        ({"user_id": "x" * 256, "usage_type": "premium_voice", "amount": 1}, "user_id"),
    ],
)
def test_bad_check_requests(body, field):
    from tests.support.lambda_events import call, http_event

    status, got = call("check", http_event("POST", "/v1/check", body))
    assert status == 400 and got["error"]["code"] == "validation_error"
    assert field in got["error"]["message"]


def test_unknown_usage_type_on_check():
    status, body = api.check("u1", "nope", 1)
    assert status == 400 and body["error"] == {
        "code": "unknown_usage_type",
        "message": "usage_type: unknown usage type 'nope'",
    }


def test_a_settled_hold_counts_exactly_for_checks_that_read_the_database_before_the_record():
    """The interleaving check-reads-db, record-commits-and-settles, check-runs-script must count the
    held units once: not twice (hold + usage) and not zero times (neither)."""
    from datetime import UTC, datetime

    from metering import reservations
    from metering.db.engine import run_read
    from metering.db.ledger import pair_states

    def load_state():
        pair = ("u1", "premium_voice")
        return run_read(lambda conn: pair_states(conn, [pair], datetime.now(UTC)))[pair]

    subscribe("u1", "basic")  # 5,000
    api.check("u1", "premium_voice", 2000, {"id": "doc", "ttl_seconds": 60})
    stale = load_state()
    assert api.record("e1", "u1", "premium_voice", 2000, reservation_id="doc")[0] == 201
    fresh = load_state()
    assert fresh.version > stale.version

    def script(available, version):
        return reservations.check_and_hold(
            "u1",
            "premium_voice",
            amount=3001,
            available=available,
            db_version=version,
            reservation_id=None,
            ttl_seconds=1,
        )

    # a check whose database read predates the record: 5,000 left there, the hold still counts
    late = script(5000, stale.version)
    assert (late.reserved, late.allowed) == (2000, False)
    # a check that sees the usage: 3,000 left, the hold no longer counts
    current = script(3000, fresh.version)
    assert (current.reserved, current.allowed) == (0, False)
    assert script(3000, fresh.version).reserved == 0
    assert api.check("u1", "premium_voice", 3000)[1]["allowed"] is True
    # a settled hold is not live: it cannot be released
    assert api.release("u1", "doc")[0] == 404


def test_checks_are_exact_for_every_64_bit_amount():
    """issue 23.3: "allowed iff amount <= available" exactly, also above 2^53 (where a double can
    no longer tell 2^62 from 2^62 + 1), for the check, its holds and the summary's reserved."""
    big = 2**62
    assert api.adjust("u1", "a1", "premium_voice", "purchased", big)[0] == 201  # free: limit 0
    status, body = api.check("u1", "premium_voice", big + 1)
    assert (body["allowed"], body["available"]) == (False, big)
    assert api.check("u1", "premium_voice", big)[1]["allowed"] is True
    held = api.check("u1", "premium_voice", big - 1, {"id": "doc", "ttl_seconds": 60})[1]
    assert held["allowed"] and held["reservation"]["amount"] == big - 1
    status, body = api.check("u1", "premium_voice", 2)
    assert (body["allowed"], body["reserved"], body["available"]) == (False, big - 1, 1)
    assert api.check("u1", "premium_voice", 1)[1]["allowed"] is True
    summary = api.read("summary", "u1")[1]["usage_types"]["premium_voice"]
    assert (summary["reserved"], summary["available"]) == (big - 1, 1)
    # holds summed beyond 2^63 stay exact too
    api.adjust("u1", "a2", "premium_voice", "purchased", 2**63 - 1 - big)
    for n in range(3):
        assert api.check("u1", "premium_voice", big, {"id": f"h{n}", "ttl_seconds": 60})[1]["allowed"] is (
            n == 0
        )
    assert api.read("summary", "u1")[1]["usage_types"]["premium_voice"]["reserved"] == big - 1 + big


def test_a_check_in_debt_beyond_the_allowance_grants_only_zero():
    subscribe("u1", "basic")  # premium_voice 5,000
    assert api.adjust("u1", "a1", "premium_voice", "rollover", -6000)[0] == 201
    status, body = api.check("u1", "premium_voice", 1)
    assert (body["allowed"], body["available"]) == (False, 0)
    assert api.check("u1", "premium_voice", 0)[1]["allowed"] is True
