"""POST /v1/usage: idempotency, the waterfall through the real handler, periods, journal."""

from datetime import UTC, datetime, timedelta

import pytest

from tests.support import api
from tests.support.state import assert_reconciled, query, subscribe, use_test_catalog

pytestmark = pytest.mark.usefixtures("clean")


@pytest.fixture(autouse=True)
def catalog(clean):
    use_test_catalog()


def grant(user, usage_type, pool, delta, ref):
    status, body = api.adjust(user, ref, usage_type, pool, delta)
    assert status == 201, body


def test_worked_example_through_the_api():
    # Given limit 5,000 (basic), used 4,900, rollover 50, purchased 100
    start = datetime.now(UTC) - timedelta(days=10)
    subscribe("u1", "basic", start=start)
    assert api.record("warmup", "u1", "premium_voice", 4900)[0] == 201
    grant("u1", "premium_voice", "rollover", 50, "adj-r")
    grant("u1", "premium_voice", "purchased", 100, "adj-p")
    # When 300 are recorded
    status, body = api.record(
        "job-123",
        "u1",
        "premium_voice",
        300,
        reference_id="variant-abc",
        description="TTS synthesis",
        details={"voice_slug": "heart"},
    )
    # Then the breakdown and balances are exactly those of metering.md
    assert status == 201
    assert body == {
        "event_id": "job-123",
        "recorded": True,
        "duplicate": False,
        "breakdown": {
            "from_subscription": 100,
            "from_rollover": 50,
            "from_grants": 0,
            "from_purchased": 100,
            "overflow_to_debt": 50,
        },
        "balance": {"used": 5000, "rollover": -50, "purchased": 0, "granted": 0},
        "period": {  # the period that paid: the subscription's current one
            "start": start.isoformat().replace("+00:00", "Z"),
            "end": (start + timedelta(days=30)).isoformat().replace("+00:00", "Z"),
        },
    }
    assert_reconciled()


def test_duplicate_replays_original_breakdown_and_changes_nothing():
    subscribe("u1", "basic")
    first = api.record("e1", "u1", "premium_voice", 4000)
    assert first[0] == 201
    api.record("e2", "u1", "premium_voice", 500)
    status, body = api.record("e1", "u1", "premium_voice", 4000)
    assert status == 200
    assert body["recorded"] is False and body["duplicate"] is True
    assert body["breakdown"] == first[1]["breakdown"]
    assert body["balance"]["used"] == 4500
    assert query("SELECT count(*) FROM usage_events")[0][0] == 2
    assert query("SELECT count(*) FROM journal WHERE ref = 'e1'")[0][0] == 1
    assert_reconciled()


@pytest.mark.parametrize(
    "changed",
    [{"user_id": "u2"}, {"usage_type": "ocr_tokens"}, {"amount": 11}],
    ids=["user", "type", "amount"],
)
def test_same_event_id_with_different_payload_is_a_conflict(changed):
    assert api.record("e1", "u1", "premium_voice", 10)[0] == 201
    fields = {"user_id": "u1", "usage_type": "premium_voice", "amount": 10, **changed}
    status, body = api.record("e1", fields["user_id"], fields["usage_type"], fields["amount"])
    assert status == 409
    assert body["error"]["code"] == "event_id_conflict"
    assert "event_id" in body["error"]["message"]
    assert query("SELECT count(*) FROM usage_events")[0][0] == 1
    assert_reconciled()


def test_plain_counter_records_everything_beyond_the_limit():
    status, body = api.record(
        "k1", "free-user", "server_kokoro", 1500, details={"voice_slug": "af", "model_slug": "k"}
    )
    assert status == 201
    assert body["breakdown"] == {
        "from_subscription": 1500,
        "from_rollover": 0,
        "from_grants": 0,
        "from_purchased": 0,
        "overflow_to_debt": 0,
    }
    assert body["balance"] == {"used": 1500, "rollover": 0, "purchased": 0, "granted": 0}
    assert_reconciled()


def test_free_user_gets_a_calendar_month_allowance():
    status, body = api.record("o1", "free-user", "ocr_tokens", 80)
    assert status == 201 and body["breakdown"]["from_subscription"] == 80
    status, body = api.record("o2", "free-user", "ocr_tokens", 50)
    assert body["breakdown"] == {
        "from_subscription": 20,
        "from_rollover": 0,
        "from_grants": 0,
        "from_purchased": 0,
        "overflow_to_debt": 30,
    }
    now = datetime.now(UTC)
    (row,) = query("SELECT period_start, period_end, plan_id, kind FROM periods WHERE user_id = 'free-user'")
    assert row.period_start == datetime(now.year, now.month, 1, tzinfo=UTC)
    assert (row.plan_id, row.kind) == ("free", "calendar")


def test_canceled_user_spends_purchased_credit_then_goes_into_debt():
    subscribe("u1", "basic", status="canceled")
    grant("u1", "premium_voice", "purchased", 300, "buy")
    status, body = api.record("e1", "u1", "premium_voice", 250)
    assert body["breakdown"] == {
        "from_subscription": 0,
        "from_rollover": 0,
        "from_grants": 0,
        "from_purchased": 250,
        "overflow_to_debt": 0,
    }
    status, body = api.record("e2", "u1", "premium_voice", 100)
    assert body["breakdown"] == {
        "from_subscription": 0,
        "from_rollover": 0,
        "from_grants": 0,
        "from_purchased": 50,
        "overflow_to_debt": 50,
    }
    assert body["balance"] == {"used": 0, "rollover": -50, "purchased": 0, "granted": 0}
    assert_reconciled()


def test_unlimited_limit_takes_everything_from_the_subscription():
    subscribe("u1", "plus")
    status, body = api.record("e1", "u1", "ocr_tokens", 10**12)
    assert body["breakdown"]["from_subscription"] == 10**12
    assert_reconciled()


def test_usage_after_period_end_goes_to_the_assumed_next_period():
    # The subscription's weekly period ended an hour ago and Stripe's renewal has not arrived yet.
    # (Weekly: a 30-day period is also "one month" whenever the month has 30 days.)
    now = datetime.now(UTC)
    ended = now - timedelta(hours=1)
    subscribe("u1", "basic", start=ended - timedelta(days=7), end=ended)
    api.record("e1", "u1", "premium_voice", 100)
    rows = query("SELECT period_start, period_end, kind, plan_id FROM periods WHERE user_id = 'u1'")
    assert [(r.period_start, r.period_end, r.kind, r.plan_id) for r in rows] == [
        (ended, ended + timedelta(days=7), "assumed", "basic")
    ]
    (event,) = query(
        "SELECT p.kind FROM usage_events e JOIN periods p USING (period_id) WHERE event_id = 'e1'"
    )
    assert event.kind == "assumed"
    # a full new allowance: the old period's usage does not count
    assert api.check("u1", "premium_voice", 4900)[1]["available"] == 4900


def test_billing_disabled_logs_usage_but_changes_no_balance(monkeypatch):
    monkeypatch.setenv("BILLING_ENABLED", "false")
    use_test_catalog()
    status, body = api.record(
        "e1", "u1", "premium_voice", 700, details={"voice_slug": "a", "model_slug": "m", "duration_ms": 5}
    )
    assert status == 201
    assert body["breakdown"] == {
        "from_subscription": 0,
        "from_rollover": 0,
        "from_grants": 0,
        "from_purchased": 0,
        "overflow_to_debt": 0,
    }
    assert body["balance"] == {"used": 0, "rollover": 0, "purchased": 0, "granted": 0}
    (stats,) = query("SELECT total, events FROM lifetime_stats WHERE user_id = 'u1'")
    assert (stats.total, stats.events) == (700, 1)
    assert_reconciled()


def test_lifetime_stats_accumulate_per_group_with_measures_and_latest_label():
    for i, (voice, name, ms) in enumerate(
        [("heart", "Heart", 1000), ("heart", None, 500), ("bella", "Bella", 7)]
    ):
        details = {"voice_slug": voice, "model_slug": "m1", "duration_ms": ms}
        if name:
            details["voice_name"] = name
        api.record(f"e{i}", "u1", "premium_voice", 100 * (i + 1), details=details)
    rows = query("SELECT key, label, total, events, measures FROM lifetime_stats WHERE user_id = 'u1'")
    assert sorted((r.key["details.voice_slug"], r.key["details.model_slug"], r.total) for r in rows) == [
        ("bella", "m1", 300),
        ("heart", "m1", 300),
    ]
    by_voice = {r.key["details.voice_slug"]: r for r in rows}
    assert by_voice["heart"].measures == {"details.duration_ms": 1500}
    assert by_voice["heart"].label == "Heart"
    assert by_voice["heart"].events == 2


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"user_id": "u1", "usage_type": "premium_voice", "amount": 1}, 400, "validation_error", "event_id"),
        (
            {"event_id": "e", "user_id": "u1", "usage_type": "premium_voice", "amount": 0},
            400,
            "validation_error",
            "amount",
        ),
        (
            {"event_id": "e", "user_id": "u1", "usage_type": "premium_voice", "amount": "5"},
            400,
            "validation_error",
            "amount",
        ),
        (
            {"event_id": "e", "user_id": "u1", "usage_type": "premium_voice", "amount": 1.5},
            400,
            "validation_error",
            "amount",
        ),
        (
            {"event_id": "e", "user_id": "u1", "usage_type": "premium_voice", "amount": 2**63},
            400,
            "validation_error",
            "amount",
        ),
        (
            {"event_id": "e", "user_id": "", "usage_type": "premium_voice", "amount": 1},
            400,
            "validation_error",
            "user_id",
        ),
        (
            {"event_id": "e", "user_id": "u1", "usage_type": "nope", "amount": 1},
            400,
            "unknown_usage_type",
            "usage_type",
        ),
        (
            {
                "event_id": "e",
                "user_id": "u1",
                "usage_type": "premium_voice",
                "amount": 1,
                "details": {"x": "y" * 9000},
            },
            413,
            "payload_too_large",
            "details",
        ),
        (
            {"event_id": "e", "user_id": "u1", "usage_type": "premium_voice", "amount": 1, "details": [1]},
            400,
            "validation_error",
            "details",
        ),
        (
            {"event_id": "e", "user_id": "u1", "usage_type": "premium_voice", "amount": 1, "extra": 1},
            400,
            "validation_error",
            "extra",
        ),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field_and_writes_nothing(body, status, code, field):
    from tests.support.lambda_events import call, http_event

    got_status, got = call("record", http_event("POST", "/v1/usage", body))
    assert got_status == status, got
    assert got["error"]["code"] == code
    assert field in got["error"]["message"]
    assert query("SELECT count(*) FROM usage_events")[0][0] == 0
    assert query("SELECT count(*) FROM journal")[0][0] == 0


def test_body_that_is_not_json_is_a_400():
    from tests.support.lambda_events import call, http_event

    status, body = call("record", http_event("POST", "/v1/usage", raw_body="{not json"))
    assert status == 400 and body["error"]["code"] == "validation_error"


def test_base64_body_is_decoded():
    from tests.support.lambda_events import call, http_event

    event = http_event(
        "POST",
        "/v1/usage",
        {"event_id": "b64", "user_id": "u1", "usage_type": "server_kokoro", "amount": 3},
        base64_body=True,
    )
    assert call("record", event)[0] == 201


def test_sum_that_would_overflow_64_bits_is_rejected_not_wrapped():
    subscribe("u1", "plus")
    assert api.record("big1", "u1", "ocr_tokens", 2**63 - 1)[0] == 201
    status, body = api.record("big2", "u1", "ocr_tokens", 1)
    assert status == 400 and body["error"]["code"] == "amount_out_of_range"
    assert query("SELECT count(*) FROM usage_events")[0][0] == 1
    assert_reconciled()


def test_a_failed_write_leaves_no_claimed_event_id(monkeypatch):
    """The idempotency claim is made in the same transaction as the effects: if applying fails
    after the usage row was inserted, the id is not burned and the retry applies exactly once."""
    from metering.services import record as record_service

    subscribe("u1", "basic")
    real_post = record_service.post_usage

    def fail(*args, **kwargs):
        raise RuntimeError("connection lost mid-transaction")

    monkeypatch.setattr(record_service, "post_usage", fail)
    status, body = api.record("e1", "u1", "premium_voice", 300)
    assert (status, body["error"]["code"]) == (500, "internal_error")
    assert query("SELECT count(*) FROM usage_events")[0][0] == 0
    assert query("SELECT count(*) FROM lifetime_stats")[0][0] == 0

    monkeypatch.setattr(record_service, "post_usage", real_post)
    status, body = api.record("e1", "u1", "premium_voice", 300)
    assert (status, body["recorded"]) == (201, True)
    assert api.record("e1", "u1", "premium_voice", 300)[0] == 200
    assert query("SELECT count(*) FROM journal WHERE ref = 'e1'")[0][0] == 1
    assert_reconciled()


@pytest.mark.parametrize(
    ("used", "rollover", "purchased", "amount", "expected", "after"),
    [
        pytest.param(0, 0, 0, 300, (300, 0, 0, 0), (300, 0, 0), id="allowance only"),
        pytest.param(4900, 500, 0, 300, (100, 200, 0, 0), (5000, 300, 0), id="spill into rollover"),
        pytest.param(5000, 100, 400, 300, (0, 100, 200, 0), (5000, 0, 200), id="rollover then purchased"),
        pytest.param(5000, -100, 400, 300, (0, 0, 300, 0), (5000, -100, 100), id="negative rollover skipped"),
        pytest.param(5000, 0, 100, 300, (0, 0, 100, 200), (5000, -200, 0), id="purchased then debt"),
        pytest.param(5000, -200, 0, 300, (0, 0, 0, 300), (5000, -500, 0), id="debt accumulates"),
    ],
)
def test_each_waterfall_branch_through_the_api(used, rollover, purchased, amount, expected, after):
    subscribe("u1", "basic")  # premium_voice limit 5,000
    if used:
        api.record("setup-used", "u1", "premium_voice", used)
    if rollover:
        grant("u1", "premium_voice", "rollover", rollover, "setup-rollover")
    if purchased:
        grant("u1", "premium_voice", "purchased", purchased, "setup-purchased")
    status, body = api.record("e", "u1", "premium_voice", amount)
    assert status == 201
    b = body["breakdown"]
    assert (
        b["from_subscription"],
        b["from_rollover"],
        b["from_purchased"],
        b["overflow_to_debt"],
    ) == expected
    assert (body["balance"]["used"], body["balance"]["rollover"], body["balance"]["purchased"]) == after
    assert_reconciled()
