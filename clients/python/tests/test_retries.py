"""Retries through `FaultProxy` in front of the real service: what is retried (5xx, 429, lost
answers, refused connections, timeouts), what never is (other 4xx), and that a retried record
carries the same generated event id, so the service counts it once."""

from __future__ import annotations

import json

import pytest

from metering_client import EventIdConflict, MeteringError, Unavailable


def event_ids(seen) -> list[str]:
    return [json.loads(s.body)["event_id"] for s in seen]


def test_a_record_whose_answer_was_lost_is_a_duplicate_not_counted_twice(
    connect, proxy, client, user
) -> None:
    proxy.plan = ["lose_answer"]
    result = connect(proxy.url).record(user, "server_kokoro", 42)
    sent = proxy.requests("POST", "/v1/usage")
    assert len(sent) == 2  # the service applied the first; its answer never reached the client
    assert event_ids(sent) == [result.event_id, result.event_id]
    assert (result.recorded, result.duplicate) == (False, True)
    assert result.breakdown.from_subscription == 42
    assert client.summary(user).usage_types["server_kokoro"].used == 42
    assert client.stats(user).usage_types["server_kokoro"].events == 1


def test_a_batch_whose_answer_was_lost_is_counted_once(connect, proxy, client, user) -> None:
    proxy.plan = ["lose_answer"]
    events = [{"user_id": user, "usage_type": "server_kokoro", "amount": n} for n in (1, 2)]
    result = connect(proxy.url).record_batch(events)
    first, second = (json.loads(s.body)["events"] for s in proxy.requests("POST", "/v1/usage/batch"))
    assert first == second  # the ids generated for the call, sent again
    assert [r.status for r in result.results] == ["duplicate", "duplicate"]
    assert [r.event_id for r in result.results] == [e["event_id"] for e in first]
    assert client.summary(user).usage_types["server_kokoro"].used == 3


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_5xx_and_429_are_retried(connect, proxy, client, user, status) -> None:
    proxy.plan = [status, status]
    result = connect(proxy.url).record(user, "server_kokoro", 5)
    assert (result.recorded, result.duplicate) == (True, False)
    assert len(set(event_ids(proxy.requests("POST", "/v1/usage")))) == 1
    assert len(proxy.seen) == 3
    assert client.summary(user).usage_types["server_kokoro"].used == 5


def test_retries_end_with_the_last_error(connect, proxy, client, user) -> None:
    proxy.plan = [503] * 3
    with pytest.raises(Unavailable) as raised:
        connect(proxy.url, retries=2).record(user, "server_kokoro", 5)
    assert (raised.value.status, raised.value.code) == (503, "unavailable")
    assert "injected by the test proxy" in raised.value.message
    assert len(proxy.seen) == 3  # one attempt and two retries
    assert client.summary(user).usage_types["server_kokoro"].used == 0


def test_throttling_by_api_gateway_is_unavailable(connect, proxy, user) -> None:
    proxy.plan = [429]
    proxy.fault_body = b'{"message":"Too Many Requests"}'
    with pytest.raises(Unavailable) as raised:
        connect(proxy.url, retries=0).summary(user)
    assert (raised.value.status, raised.value.code, raised.value.message) == (
        429,
        "http_429",
        "Too Many Requests",
    )


def test_4xx_is_never_retried(connect, proxy, user) -> None:
    client = connect(proxy.url)
    with pytest.raises(MeteringError) as invalid:
        client.record(user, "server_kokoro", 0)
    assert invalid.value.status == 400
    client.record(user, "server_kokoro", 1, event_id=f"{user}-1")
    with pytest.raises(EventIdConflict):
        client.record(user, "server_kokoro", 2, event_id=f"{user}-1")
    proxy.plan = [403]
    proxy.fault_body = b'{"message":"Forbidden"}'
    with pytest.raises(MeteringError) as forbidden:
        client.summary(user)
    assert (forbidden.value.status, forbidden.value.code) == (403, "http_403")
    assert len(proxy.seen) == 4  # one request each: 400, 201, 409, 403


def test_refused_connections_are_retried(connect, proxy, client, user) -> None:
    proxy.plan = ["refuse", "refuse"]
    result = connect(proxy.url).record(user, "server_kokoro", 9)
    assert result.recorded is True
    assert len(set(event_ids(proxy.seen))) == 1 and len(proxy.seen) == 3
    assert client.summary(user).usage_types["server_kokoro"].used == 9


def test_no_answer_after_every_retry_is_unavailable(connect, proxy, client, user) -> None:
    proxy.plan = ["refuse"] * 4
    with pytest.raises(Unavailable) as raised:
        connect(proxy.url).record(user, "server_kokoro", 9)
    assert (raised.value.status, raised.value.code) == (None, "connection_error")
    assert len(proxy.seen) == 4  # retries=3 by default
    assert client.summary(user).usage_types["server_kokoro"].used == 0


def test_nothing_listening_is_unavailable(connect, user) -> None:
    import socket

    with socket.socket() as s:  # a port that was just free: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unavailable) as raised:
        connect(f"http://127.0.0.1:{port}", retries=1).summary(user)
    assert raised.value.code == "connection_error"


def test_a_timed_out_attempt_is_retried(connect, proxy, client, user) -> None:
    proxy.plan = ["hang"]
    result = connect(proxy.url, timeout=0.5, retries=1).record(user, "server_kokoro", 11)
    assert result.recorded is True  # the held attempt never reached the service
    assert len(proxy.seen) == 2 and len(set(event_ids(proxy.seen))) == 1
    assert client.summary(user).usage_types["server_kokoro"].used == 11


def test_a_timeout_without_retries_is_unavailable(connect, proxy, user) -> None:
    proxy.plan = ["hang"]
    with pytest.raises(Unavailable) as raised:
        connect(proxy.url, timeout=0.5, retries=0).summary(user)
    assert (raised.value.status, raised.value.code) == (None, "timeout")
    assert len(proxy.seen) == 1
