"""POST /v1/users/{user_id}/adjustments: grants and corrections, idempotent on adjustment_id."""

import pytest

from tests.support import api
from tests.support.state import assert_reconciled, query, subscribe, use_test_catalog


@pytest.fixture(autouse=True)
def catalog(clean):
    use_test_catalog()


def test_grants_and_corrections_of_both_pools_are_journaled():
    subscribe("u1", "basic")
    api.record("e1", "u1", "premium_voice", 1200)
    assert api.adjust("u1", "a1", "premium_voice", "purchased", 500) == (
        201,
        {
            "adjustment_id": "a1",
            "applied": True,
            "duplicate": False,
            "balance": {"used": 1200, "rollover": 0, "purchased": 500, "granted": 0},
        },
    )
    assert api.adjust("u1", "a2", "premium_voice", "rollover", -300)[1]["balance"] == {
        "used": 1200,
        "rollover": -300,
        "purchased": 500,
        "granted": 0,
    }
    assert api.adjust("u1", "a3", "premium_voice", "purchased", -200)[1]["balance"]["purchased"] == 300
    rows = query("SELECT account, delta, reason, ref FROM journal WHERE reason = 'adjustment' ORDER BY ref")
    assert [tuple(r) for r in rows] == [
        ("purchased", 500, "adjustment", "a1"),
        ("rollover", -300, "adjustment", "a2"),
        ("purchased", -200, "adjustment", "a3"),
    ]
    assert_reconciled()


def test_same_adjustment_twice_applies_once():
    assert api.adjust("u1", "a1", "ocr_tokens", "purchased", 500)[0] == 201
    status, body = api.adjust("u1", "a1", "ocr_tokens", "purchased", 500)
    assert status == 200 and body["duplicate"] is True and body["applied"] is False
    assert body["balance"]["purchased"] == 500
    assert query("SELECT count(*) FROM journal")[0][0] == 1


def test_same_adjustment_id_with_different_content_is_a_conflict():
    api.adjust("u1", "a1", "ocr_tokens", "purchased", 500)
    status, body = api.adjust("u1", "a1", "ocr_tokens", "purchased", 501)
    assert status == 409 and body["error"]["code"] == "adjustment_id_conflict"
    assert api.adjust("u2", "a1", "ocr_tokens", "purchased", 500)[0] == 409


def test_purchased_never_goes_below_zero_and_a_refused_adjustment_can_be_retried():
    api.adjust("u1", "a1", "ocr_tokens", "purchased", 100)
    status, body = api.adjust("u1", "a2", "ocr_tokens", "purchased", -101)
    assert status == 409 and body["error"]["code"] == "insufficient_balance"
    assert query("SELECT purchased FROM balances WHERE user_id = 'u1'")[0][0] == 100
    # nothing was claimed: the same id may be used once the balance allows it
    api.adjust("u1", "a3", "ocr_tokens", "purchased", 1)
    assert api.adjust("u1", "a2", "ocr_tokens", "purchased", -101)[0] == 201
    assert_reconciled()


def test_rollover_may_go_negative():
    assert api.adjust("u1", "a1", "premium_voice", "rollover", -700)[1]["balance"]["rollover"] == -700


@pytest.mark.parametrize(
    ("usage_type", "pool", "delta", "status", "code"),
    [
        ("server_kokoro", "purchased", 5, 400, "pools_not_supported"),
        ("nope", "purchased", 5, 400, "unknown_usage_type"),
        ("ocr_tokens", "purchased", 0, 400, "validation_error"),
        ("ocr_tokens", "debt", 5, 400, "validation_error"),
        ("ocr_tokens", "purchased", 2**63, 400, "validation_error"),
    ],
)
def test_bad_adjustments(usage_type, pool, delta, status, code):
    got_status, body = api.adjust("u1", "bad", usage_type, pool, delta)
    assert (got_status, body["error"]["code"]) == (status, code)
    assert query("SELECT count(*) FROM adjustments")[0][0] == 0


def test_overflow_of_a_balance_is_rejected():
    api.adjust("u1", "a1", "ocr_tokens", "purchased", 2**63 - 1)
    status, body = api.adjust("u1", "a2", "ocr_tokens", "purchased", 1)
    assert status == 400 and body["error"]["code"] == "amount_out_of_range"
    assert_reconciled()
