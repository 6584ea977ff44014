"""Usage alerts with grants and late events (api.md section 7): live grants count in available,
so spending the last of a grant or its expiry (when `expire_grants` journals it) is what runs a
user out; a late event crosses the alerts of the period it is charged to."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from metering.api.models import UsageRequest
from metering.services import grants as grant_service
from metering.services import record
from tests.support import api
from tests.support.alerts import alert_rows, fired, use_alert_catalog
from tests.support.state import assert_reconciled, iso, subscribe


@pytest.fixture(autouse=True)
def catalog(clean, tmp_path):
    use_alert_catalog(tmp_path)


def usage(event_id: str, amount: int, **fields) -> UsageRequest:
    return UsageRequest(event_id=event_id, user_id="u1", usage_type="premium_voice", amount=amount, **fields)


def test_available_counts_live_grants_so_spending_the_last_of_one_runs_out():
    subscribe("u1", "basic")  # 5,000
    assert api.grant("u1", "g1", "premium_voice", 500, iso(datetime.now(UTC) + timedelta(days=5)))[0] == 201
    record.record(usage("e1", 5000))
    assert sorted(fired()) == ["voice_100", "voice_80"]  # the grant is still there
    (full,) = [r for r in alert_rows() if r.alert_id == "voice_100"]
    assert full.available == 500
    record.record(usage("e2", 500))  # from the grant: nothing left
    (out,) = [r for r in alert_rows() if r.alert_id == "voice_out"]
    assert (out.used, out.available) == (5000, 0)
    assert_reconciled()


def test_a_grant_expiry_that_leaves_nothing_writes_available_depleted_when_journaled():
    subscribe("u1", "basic")
    expires = datetime.now(UTC) + timedelta(hours=1)
    assert api.grant("u1", "g1", "premium_voice", 500, iso(expires))[0] == 201
    record.record(usage("e1", 5100))  # the allowance, then 100 of the grant: 400 left
    assert sorted(fired()) == ["voice_100", "voice_80"]
    assert grant_service.expire_due(now=expires) == 1  # the job journals the 400 as expired
    (out,) = [r for r in alert_rows() if r.alert_id == "voice_out"]
    assert (out.used, out.allowance, out.available, out.occurred_at) == (5000, 5000, 0, expires)
    assert grant_service.expire_due(now=expires) == 0
    assert len(alert_rows()) == 3
    assert_reconciled()


def test_an_expiry_that_leaves_credit_crosses_nothing():
    subscribe("u1", "basic")
    expires = datetime.now(UTC) + timedelta(hours=1)
    assert api.grant("u1", "g1", "premium_voice", 500, iso(expires))[0] == 201
    api.adjust("u1", "p", "premium_voice", "purchased", 10)
    record.record(usage("e1", 5100))
    assert grant_service.expire_due(now=expires) == 1
    assert "voice_out" not in fired()  # 10 purchased left


def test_a_late_event_crosses_the_alerts_of_the_period_it_is_charged_to():
    # no subscription: the free plan's calendar months, server_kokoro 1,000 (tts_90)
    jan_end = datetime(2026, 2, 1, tzinfo=UTC)
    kokoro = {"user_id": "k", "usage_type": "server_kokoro"}
    record.record(UsageRequest(event_id="j1", amount=800, **kokoro), jan_end - timedelta(hours=3))
    late = UsageRequest(event_id="j2", amount=150, occurred_at=jan_end - timedelta(hours=1), **kokoro)
    outcome = record.record(late, jan_end + timedelta(hours=2))  # within the grace window
    assert outcome.period == (datetime(2026, 1, 1, tzinfo=UTC), jan_end)
    (row,) = alert_rows()
    assert (row.alert_id, row.period_start, row.period_end, row.used) == (
        "tts_90",
        datetime(2026, 1, 1, tzinfo=UTC),
        jan_end,
        950,
    )
    # February's counter is untouched: nothing crossed there
    record.record(UsageRequest(event_id="f1", amount=10, **kokoro), jan_end + timedelta(hours=3))
    assert len(alert_rows()) == 1
