"""Expiring grants (api.md section 7 "Expiring grants"): POST /v1/users/{user_id}/grants, the
waterfall with grants, expiry at its instant for checks and summaries before any job runs, the
journaled expiry, packs with `expires_in_days`, and exactness across an expiry instant."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta

import pytest

from metering.api.models import UsageRequest
from metering.services import grants as grant_service
from metering.services import reads, record
from tests.support import api
from tests.support import stripe_events as se
from tests.support.state import assert_reconciled, iso, query, subscribe, use_test_catalog


@pytest.fixture(autouse=True)
def catalog(clean):
    use_test_catalog()


def soon(days: float = 10) -> str:
    return iso(datetime.now(UTC) + timedelta(days=days))


def usage(event_id: str, amount: int, user_id: str = "u1", usage_type: str = "premium_voice") -> UsageRequest:
    return UsageRequest(event_id=event_id, user_id=user_id, usage_type=usage_type, amount=amount)


def test_a_grant_is_created_once_and_counts_in_check_and_summary():
    subscribe("u1", "basic")
    expires = soon()
    status, body = api.grant("u1", "g1", "premium_voice", 700, expires)
    assert status == 201, body
    assert body == {
        "grant": {
            "id": "g1",
            "usage_type": "premium_voice",
            "amount": 700,
            "remaining": 700,
            "expires_at": expires,
        },
        "balance": {"used": 0, "rollover": 0, "purchased": 0, "granted": 700},
    }
    # the same payload again: the grant as it stands, nothing credited twice
    assert api.grant("u1", "g1", "premium_voice", 700, expires) == (200, body)
    summary = api.read("summary", "u1")[1]["usage_types"]["premium_voice"]
    assert (summary["granted"], summary["available"]) == (700, 5000 + 700)
    assert api.check("u1", "premium_voice", 5700)[1]["allowed"] is True
    assert api.check("u1", "premium_voice", 5701)[1]["allowed"] is False
    assert query("SELECT account, delta, reason, ref, grant_id, balance_after FROM journal") == [
        ("grant", 700, "grant", "g1", "g1", 700)
    ]
    assert_reconciled()


@pytest.mark.parametrize(
    ("change", "value"),
    [("amount", 701), ("expires_at", "later"), ("reason", "another"), ("usage_type", "ocr_tokens")],
)
def test_the_same_grant_id_with_another_payload_is_a_conflict(change, value):
    expires = soon()
    assert api.grant("u1", "g1", "premium_voice", 700, expires)[0] == 201
    fields = {"usage_type": "premium_voice", "amount": 700, "expires_at": expires, "reason": "promotion"}
    fields[change] = soon(20) if value == "later" else value
    status, body = api.grant(
        "u1", "g1", fields["usage_type"], fields["amount"], fields["expires_at"], fields["reason"]
    )
    assert (status, body["error"]["code"]) == (409, "grant_id_conflict"), body
    assert "grant_id" in body["error"]["message"]
    # and under another user
    assert api.grant("u2", "g1", "premium_voice", 700, expires)[1]["error"]["code"] == "grant_id_conflict"
    assert query("SELECT count(*) FROM journal") == [(1,)]


@pytest.mark.parametrize(
    ("fields", "code", "named"),
    [
        ({"usage_type": "server_kokoro"}, "pools_not_supported", "usage_type"),
        ({"usage_type": "nope"}, "unknown_usage_type", "usage_type"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "validation_error", "expires_at"),
        ({"expires_at": "2030-01-01T00:00:00"}, "validation_error", "expires_at"),  # no timezone
        ({"expires_at": "soon"}, "validation_error", "expires_at"),
        ({"amount": 0}, "validation_error", "amount"),
        ({"amount": "5"}, "validation_error", "amount"),
        ({"reason": ""}, "validation_error", "reason"),
        ({"grant_id": ""}, "validation_error", "grant_id"),
    ],
)
def test_bad_grants_are_refused_naming_the_field_and_write_nothing(fields, code, named):
    request = {
        "grant_id": "g1",
        "usage_type": "premium_voice",
        "amount": 10,
        "expires_at": soon(),
        "reason": "promotion",
        **fields,
    }
    status, body = api.grant(
        "u1",
        request["grant_id"],
        request["usage_type"],
        request["amount"],
        request["expires_at"],
        request["reason"],
    )
    assert status == 400, body
    assert body["error"]["code"] == code
    assert named in body["error"]["message"]
    assert query("SELECT count(*) FROM grants") == [(0,)]
    assert query("SELECT count(*) FROM journal") == [(0,)]


def test_the_waterfall_spends_rollover_then_grants_soonest_expiry_first_then_purchased():
    subscribe("u1", "basic")
    assert api.record("fill", "u1", "premium_voice", 4900)[0] == 201
    assert api.adjust("u1", "r", "premium_voice", "rollover", 50)[0] == 201
    assert api.adjust("u1", "p", "premium_voice", "purchased", 100)[0] == 201
    assert api.grant("u1", "late", "premium_voice", 40, soon(20))[0] == 201
    assert api.grant("u1", "early", "premium_voice", 30, soon(5))[0] == 201
    status, body = api.record("e1", "u1", "premium_voice", 300)
    assert status == 201
    assert body["breakdown"] == {
        "from_subscription": 100,
        "from_rollover": 50,
        "from_grants": 70,
        "from_purchased": 80,
        "overflow_to_debt": 0,
    }
    assert body["balance"] == {"used": 5000, "rollover": 0, "purchased": 20, "granted": 0}
    drawn = query(
        "SELECT grant_id, delta, balance_after FROM journal WHERE ref = 'e1' AND account = 'grant' ORDER BY seq"
    )
    assert drawn == [("early", -30, 0), ("late", -40, 0)]
    assert query("SELECT grant_id, remaining FROM grants ORDER BY grant_id") == [("early", 0), ("late", 0)]
    # a duplicate replays the original split, from_grants included
    assert api.record("e1", "u1", "premium_voice", 300)[1]["breakdown"]["from_grants"] == 70
    # batch results carry it too
    assert api.grant("u1", "g3", "premium_voice", 5, soon())[0] == 201
    status, body = api.batch(
        [{"event_id": "b1", "user_id": "u1", "usage_type": "premium_voice", "amount": 10}]
    )
    assert body["results"][0]["breakdown"] == {
        "from_subscription": 0,
        "from_rollover": 0,
        "from_grants": 5,
        "from_purchased": 5,
        "overflow_to_debt": 0,
    }
    assert_reconciled()


def test_expiry_counts_at_its_instant_and_the_job_journals_what_was_left():
    subscribe("u1", "basic")
    expires = datetime.now(UTC) + timedelta(hours=1)
    assert api.grant("u1", "g1", "premium_voice", 500, iso(expires))[0] == 201
    record.record(usage("e1", 5100))  # 5000 allowance, then 100 from the grant
    before, after = expires - timedelta(microseconds=1), expires
    assert reads.summary("u1", now=before).usage_types["premium_voice"].granted == 400
    # at the instant, before any job ran: nothing of the grant counts any more
    at_expiry = reads.summary("u1", now=after).usage_types["premium_voice"]
    assert (at_expiry.granted, at_expiry.available) == (0, 0)
    late = record.record(usage("e2", 50), now=after)
    assert late.breakdown is not None and (late.breakdown.from_grants, late.breakdown.overflow_to_debt) == (
        0,
        50,
    )
    # the job journals the rest as expired, once
    assert grant_service.expire_due(now=before) == 0
    assert grant_service.expire_due(now=after) == 1
    assert grant_service.expire_due(now=after) == 0
    assert query("SELECT delta, reason, balance_after FROM journal WHERE account = 'grant' ORDER BY seq") == [
        (500, "grant", 500),
        (-100, "usage", 400),
        (-400, "grant_expired", 0),
    ]
    assert query("SELECT remaining FROM grants") == [(0,)]
    assert_reconciled()


def test_a_pack_with_expires_in_days_is_credited_as_a_grant(monkeypatch):
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", se.SECRET)
    se.wipe()
    bought = datetime.now(UTC).replace(microsecond=0)
    session = se.checkout_session("cs_promo", mode="payment", pack="voice_promo_2k", quantity="2")
    completed = se.event("checkout.session.completed", session, bought)
    se.ok(completed)
    se.ok(completed, "duplicate")
    assert query("SELECT grant_id, amount, remaining, expires_at, reason FROM grants") == [
        ("topup:cs_promo", 4000, 4000, bought + timedelta(days=30), "voice_promo_2k")
    ]
    assert query("SELECT account, delta, reason, ref FROM journal") == [
        ("grant", 4000, "topup", "topup:cs_promo")
    ]
    summary = api.read("summary", "u1")[1]["usage_types"]["premium_voice"]
    assert (summary["purchased"], summary["granted"]) == (0, 4000)
    # a plain pack still goes to purchased
    se.ok(
        se.event(
            "checkout.session.completed",
            se.checkout_session("cs_plain", mode="payment", pack="voice_1k"),
            bought,
        )
    )
    assert api.read("summary", "u1")[1]["usage_types"]["premium_voice"]["purchased"] == 1000
    assert_reconciled()


def test_a_reservation_held_on_grant_credit_does_not_outlive_the_grant():
    """A check that reserved credit a grant provided is honoured while the grant lives; once it
    expired, the same amount is no longer available and the ledger never over-draws it."""
    subscribe("u1", "basic")
    record.record(usage("fill", 5000))
    expires = datetime.now(UTC) + timedelta(hours=1)
    assert api.grant("u1", "g1", "premium_voice", 300, iso(expires))[0] == 201
    status, body = api.check("u1", "premium_voice", 300, {"id": "r1", "ttl_seconds": 600})
    assert body["allowed"] and body["reservation"]["amount"] == 300
    assert api.check("u1", "premium_voice", 1)[1]["allowed"] is False  # all of it is held
    outcome = record.record(usage("e1", 200).model_copy(update={"reservation_id": "r1"}), now=expires)
    assert outcome.breakdown is not None
    assert (outcome.breakdown.from_grants, outcome.breakdown.overflow_to_debt) == (0, 200)
    assert query("SELECT remaining FROM grants") == [(300,)]  # nothing drawn after the instant
    assert grant_service.expire_due(now=expires) == 1
    assert_reconciled()


def _record_at(args: tuple[str, int, str]) -> int:
    """A warm container recording one event at a given instant; returns its from_grants."""
    event_id, amount, moment = args
    outcome = record.record(usage(event_id, amount), now=datetime.fromisoformat(moment))
    assert outcome.breakdown is not None
    return outcome.breakdown.from_grants


def _expire_at(moment: str) -> int:
    return grant_service.expire_due(now=datetime.fromisoformat(moment))


def test_concurrent_records_and_expiry_across_the_instant_stay_exact(services):
    """Processes record on both sides of a grant's expiry instant while others run the expiry job:
    events before the instant draw at most the grant, none after it draws anything, and the
    grant's credit is exactly drawn + expired."""
    subscribe("u1", "basic")
    record.record(usage("fill", 5000))
    expires = datetime.now(UTC) + timedelta(hours=1)
    assert api.grant("u1", "g1", "premium_voice", 1000, iso(expires))[0] == 201
    before, after = expires - timedelta(milliseconds=1), expires + timedelta(milliseconds=1)
    jobs = [(f"e{i}", 37, (before if i % 2 else after).isoformat()) for i in range(40)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4, initializer=use_test_catalog) as pool:
        drawn = pool.map(_record_at, jobs[:10])  # five of them before the instant: 185 drawn
        expiring = [pool.apply_async(_expire_at, (after.isoformat(),)) for _ in range(2)]
        drawn += pool.map(_record_at, jobs[10:])  # the rest, while the jobs run
        expired = sum(job.get(timeout=120) for job in expiring) + grant_service.expire_due(now=after)
    by_side = {"before": 0, "after": 0}
    for (_, _, moment), taken in zip(jobs, drawn, strict=True):
        by_side["before" if moment == before.isoformat() else "after"] += taken
    assert by_side["after"] == 0
    # a job may expire the grant before some earlier events ran; those then draw nothing from it
    assert 5 * 37 <= by_side["before"] <= 20 * 37
    assert expired == 1  # 740 at most were drawn: something was always left to expire
    assert query("SELECT sum(delta) FILTER (WHERE reason = 'grant_expired') FROM journal") == [
        (-(1000 - by_side["before"]),)
    ]
    assert query("SELECT remaining FROM grants") == [(0,)]
    assert_reconciled()
