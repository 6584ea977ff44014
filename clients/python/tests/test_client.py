"""Every method of both clients against the real handlers (`metering dev`): typed results with the
contract's field names, and the error mapping. Users start on the free plan of the default
catalog (every limit 0), so allowance comes from `adjust`ed purchased credit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from metering_client import (
    AdjustmentResult,
    BatchResult,
    CheckResult,
    EventIdConflict,
    GrantResult,
    LedgerEntry,
    MeteringError,
    NotFound,
    RecordResult,
    Stats,
    Summary,
    UsageBreakdown,
    UsageEvent,
    UsageLimitExceeded,
)


def credit(client, user: str, amount: int, usage_type: str = "ocr_tokens") -> AdjustmentResult:
    return client.adjust(user, f"credit-{user}-{amount}", usage_type, "purchased", amount, "test credit")


def test_check_is_typed_and_holds_a_reservation(client, user) -> None:
    credit(client, user, 5000)
    result = client.check(user, "ocr_tokens", 2000, reservation_id="doc-1", ttl_seconds=120)
    assert isinstance(result, CheckResult)
    assert (result.allowed, result.user_id, result.usage_type, result.requested) == (
        True,
        user,
        "ocr_tokens",
        2000,
    )
    assert (result.limit, result.used, result.reserved, result.available) == (0, 0, 0, 5000)
    assert result.reservation is not None and (result.reservation.id, result.reservation.amount) == (
        "doc-1",
        2000,
    )
    assert result.reservation.expires_at > datetime.now(UTC)
    assert result.reservations_counted is True
    # the hold counts against the next check
    again = client.check(user, "ocr_tokens", 1)
    assert (again.reserved, again.available, again.reservation) == (2000, 3000, None)


def test_check_without_ttl_uses_the_default_hold(client, user) -> None:
    credit(client, user, 10)
    hold = client.check(user, "ocr_tokens", 10, reservation_id="r").reservation
    assert hold is not None
    assert timedelta(seconds=590) < hold.expires_at - datetime.now(UTC) <= timedelta(seconds=600)


def test_ttl_without_a_reservation_is_refused_before_sending(client, user) -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        client.check(user, "ocr_tokens", 1, ttl_seconds=60)


def test_denied_check_returns_or_raises(client, user) -> None:
    denied = client.check(user, "premium_voice", 300)
    assert (denied.allowed, denied.available, denied.limit) == (False, 0, 0)
    with pytest.raises(UsageLimitExceeded) as raised:
        client.check(user, "premium_voice", 300, raise_on_deny=True)
    error = raised.value
    assert isinstance(error, MeteringError)
    assert (error.usage_type, error.requested, error.available, error.user_id) == (
        "premium_voice",
        300,
        0,
        user,
    )
    assert (error.status, error.code) == (402, "usage_limit_exceeded")
    assert "premium_voice" in error.message
    # allowed checks do not raise
    credit(client, user, 300, "premium_voice")
    assert client.check(user, "premium_voice", 300, raise_on_deny=True).allowed is True


def test_release_says_whether_a_hold_was_live(client, user) -> None:
    credit(client, user, 100)
    client.check(user, "ocr_tokens", 100, reservation_id="job-9")
    assert client.release(user, "job-9") is True
    assert client.release(user, "job-9") is False
    assert client.check(user, "ocr_tokens", 1).reserved == 0


def test_record_is_typed_and_idempotent(client, user) -> None:
    credit(client, user, 100, "premium_voice")
    first = client.record(user, "premium_voice", 150, details={"voice_slug": "heart"}, description="TTS")
    assert isinstance(first, RecordResult)
    assert first.event_id  # generated
    assert (first.recorded, first.duplicate) == (True, False)
    b = first.breakdown
    assert (b.from_subscription, b.from_rollover, b.from_purchased, b.overflow_to_debt) == (0, 0, 100, 50)
    assert (first.balance.used, first.balance.rollover, first.balance.purchased) == (0, -50, 0)
    again = client.record(user, "premium_voice", 150, event_id=first.event_id)
    assert (again.recorded, again.duplicate, again.breakdown) == (False, True, first.breakdown)


def test_each_record_call_gets_its_own_event_id(client, user) -> None:
    ids = {client.record(user, "server_kokoro", 5).event_id for _ in range(3)}
    assert len(ids) == 3
    assert client.summary(user).usage_types["server_kokoro"].used == 15


def test_event_id_conflict(client, user) -> None:
    client.record(user, "server_kokoro", 5, event_id=f"{user}-e1")
    with pytest.raises(EventIdConflict) as raised:
        client.record(user, "server_kokoro", 6, event_id=f"{user}-e1")
    assert (raised.value.status, raised.value.code) == (409, "event_id_conflict")


def test_bad_input_is_a_4xx_naming_the_field(client, user) -> None:
    with pytest.raises(MeteringError) as raised:
        client.record(user, "server_kokoro", 0)
    error = raised.value
    assert type(error) is MeteringError
    assert (error.status, error.code) == (400, "validation_error")
    assert "amount" in error.message
    with pytest.raises(MeteringError) as unknown:
        client.check(user, "no_such_type", 1)
    assert (unknown.value.status, unknown.value.code) == (400, "unknown_usage_type")


def test_record_batch_generates_missing_ids_and_keeps_order(client, user) -> None:
    result = client.record_batch(
        [
            {"user_id": user, "usage_type": "server_kokoro", "amount": 10, "event_id": f"{user}-b1"},
            UsageEvent(user_id=user, usage_type="server_kokoro", amount=20, details={"voice_slug": "x"}),
            {"user_id": user, "usage_type": "no_such_type", "amount": 1},
        ]
    )
    assert isinstance(result, BatchResult)
    first, second, third = result.results
    assert (first.event_id, first.status) == (f"{user}-b1", "recorded")
    assert second.status == "recorded" and second.event_id and second.event_id != first.event_id
    assert second.breakdown is not None and second.breakdown.from_subscription == 20
    assert third.status == "rejected" and third.error is not None and third.error.code == "unknown_usage_type"
    assert client.summary(user).usage_types["server_kokoro"].used == 30


def test_adjust_and_its_conflicts(client, user) -> None:
    applied = client.adjust(user, f"{user}-a1", "ocr_tokens", "purchased", 1000, "support credit")
    assert isinstance(applied, AdjustmentResult)
    assert (applied.applied, applied.duplicate, applied.balance.purchased) == (True, False, 1000)
    replay = client.adjust(user, f"{user}-a1", "ocr_tokens", "purchased", 1000, "support credit")
    assert (replay.applied, replay.duplicate, replay.balance.purchased) == (False, True, 1000)
    with pytest.raises(MeteringError) as raised:
        client.adjust(user, f"{user}-a2", "ocr_tokens", "purchased", -5000, "too much")
    assert (raised.value.status, raised.value.code) == (409, "insufficient_balance")
    assert not isinstance(raised.value, EventIdConflict)


def test_summary_breakdown_and_stats_are_typed(client, user) -> None:
    for voice, amount in (("heart", 300), ("bella", 100), ("heart", 200)):
        client.record(
            user,
            "server_kokoro",
            amount,
            details={"voice_slug": voice, "model_slug": "m1", "duration_ms": 10},
        )

    summary = client.summary(user)
    assert isinstance(summary, Summary)
    assert (summary.user_id, summary.plan.id, summary.subscription, summary.billing_enabled) == (
        user,
        "free",
        None,
        True,
    )
    assert set(summary.usage_types) == {"server_kokoro", "premium_voice", "ocr_tokens"}
    assert summary.usage_types["server_kokoro"].used == 600
    assert summary.period.start <= datetime.now(UTC) < summary.period.end

    window = client.breakdown(user, usage_type="server_kokoro")
    assert isinstance(window, UsageBreakdown)
    assert (window.from_, window.to) == (summary.period.start, summary.period.end)
    rows = window.usage_types["server_kokoro"].rows
    assert [(r.key["details.voice_slug"], r.total, r.events) for r in rows] == [
        ("heart", 500, 2),
        ("bella", 100, 1),
    ]
    assert rows[0].measures == {"details.duration_ms": 20}
    assert set(window.usage_types) == {"server_kokoro"}

    past = client.breakdown(user, start=datetime(2020, 1, 1, tzinfo=UTC), end="2020-02-01T00:00:00Z")
    assert past.from_ == datetime(2020, 1, 1, tzinfo=UTC)
    assert all(not t.rows for t in past.usage_types.values())

    stats = client.stats(user)
    assert isinstance(stats, Stats)
    kokoro = stats.usage_types["server_kokoro"]
    assert (kokoro.total, kokoro.events) == (600, 3)
    assert kokoro.rows[0].key == {"details.voice_slug": "heart", "details.model_slug": "m1"}


def test_naive_datetimes_are_refused_before_sending(client, user) -> None:
    with pytest.raises(ValueError, match="from"):
        client.breakdown(user, start=datetime(2026, 1, 1))


def test_path_parameters_are_percent_encoded(connect, proxy, user) -> None:
    client = connect(proxy.url)
    assert client.release("odd user ü#1", "hold 1") is False  # no such hold: 404, read as False
    assert [s.target for s in proxy.seen] == ["/v1/users/odd%20user%20%C3%BC%231/reservations/hold%201"]
    # an id no route can carry ('/' or '?') is refused by the service, encoded or not
    with pytest.raises(MeteringError) as refused:
        client.release("odd/user?", "hold 1")
    assert (refused.value.status, refused.value.code) == (400, "validation_error")
    assert proxy.seen[-1].target == "/v1/users/odd%2Fuser%3F/reservations/hold%201"
    # unreserved characters travel as they are, and the service reads them back
    user = f"{user}.name-1_~x"
    client.record(user, "server_kokoro", 7)
    assert client.summary(user).user_id == user
    assert client.stats(user).usage_types["server_kokoro"].total == 7


def test_missing_route_is_not_found(connect, dev_server, user) -> None:
    # a base URL with a stage that does not exist: API Gateway's own 404, without the envelope
    with pytest.raises(NotFound) as raised:
        connect(dev_server.url + "/no-such-stage").summary(user)
    assert (raised.value.status, raised.value.code, raised.value.message) == (404, "http_404", "Not Found")


def test_grant_is_typed_idempotent_and_spent_before_purchased(client, user) -> None:
    expires = datetime.now(UTC) + timedelta(days=7)
    made = client.grant(user, f"{user}-g1", "ocr_tokens", 300, expires, "promotion")
    assert isinstance(made, GrantResult)
    assert (made.grant.remaining, made.balance.granted) == (300, 300)
    assert made.grant.expires_at == expires
    again = client.grant(user, f"{user}-g1", "ocr_tokens", 300, expires, "promotion")
    assert again.grant == made.grant
    with pytest.raises(MeteringError) as raised:
        client.grant(user, f"{user}-g1", "ocr_tokens", 301, expires, "promotion")
    assert (raised.value.status, raised.value.code) == (409, "grant_id_conflict")
    credit(client, user, 100, "ocr_tokens")
    spent = client.record(user, "ocr_tokens", 400)  # no allowance on the free plan: the grant first
    b = spent.breakdown
    assert (b.from_subscription, b.from_grants, b.from_purchased, b.overflow_to_debt) == (0, 300, 100, 0)
    assert spent.period is not None and spent.period.start <= datetime.now(UTC) < spent.period.end


def test_late_record_and_the_ledger_pages(client, user) -> None:
    late = client.record(user, "server_kokoro", 5, occurred_at=datetime.now(UTC) - timedelta(minutes=5))
    assert late.recorded and late.period is not None
    for i in range(4):
        client.record(user, "server_kokoro", i + 1)
    entries = list(client.ledger(user, usage_type="server_kokoro", page_size=2))
    assert all(isinstance(e, LedgerEntry) for e in entries)
    assert [e.delta for e in entries] == [4, 3, 2, 1, 5]  # newest first, across three pages
    assert [e.balance_after for e in entries] == [15, 11, 8, 6, 5]
    with pytest.raises(MeteringError) as raised:
        client.record(user, "server_kokoro", 1, occurred_at=datetime.now(UTC) - timedelta(days=3))
    assert (raised.value.status, raised.value.code) == (400, "occurred_at_out_of_range")
