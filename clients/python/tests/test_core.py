"""The I/O-free core on its own: the backoff schedule (which real HTTP cannot show without timing
it), and what the second-release operations send (their routes are not in the service yet, so
these build requests and read answers without a server)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import httpx
import pytest

from metering_client import _core
from metering_client._core import Exchange, Sleep


class RecordingRandom(random.Random):
    """uniform(a, b) answers b and remembers the bounds asked for."""

    def __init__(self) -> None:
        super().__init__(0)
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return b


def drive(exchange: Exchange, call: _core.Call, replies: list[httpx.Response]) -> tuple[list, object]:
    """Run a flow on canned replies; (the actions it took, its result or the error it raised)."""
    flow, actions, reply = exchange.flow(call), [], None
    try:
        while True:
            action = flow.send(reply)
            actions.append(action)
            reply = None if isinstance(action, Sleep) else replies.pop(0)
    except StopIteration as done:
        return actions, done.value
    except Exception as error:
        return actions, error


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    rng = RecordingRandom()
    exchange = Exchange("http://service", retries=8, rng=rng)
    unavailable = httpx.Response(503, json={"error": {"code": "unavailable", "message": "down"}})
    actions, outcome = drive(exchange, _core.summary("u1"), [unavailable] * 9)
    sleeps = [a.seconds for a in actions if isinstance(a, Sleep)]
    assert rng.bounds == [(0, 0.2), (0, 0.4), (0, 0.8), (0, 1.6), (0, 3.2), (0, 5.0), (0, 5.0), (0, 5.0)]
    assert sleeps == [b for _, b in rng.bounds]  # the jittered draw is the sleep
    assert [type(a) for a in actions] == [httpx.Request, Sleep] * 8 + [httpx.Request]
    assert getattr(outcome, "code", None) == "unavailable"


def test_every_attempt_is_built_again_from_the_same_request() -> None:
    exchange = Exchange("http://service/stage/", retries=1, rng=RecordingRandom())
    call = _core.record("u1", "ocr_tokens", 3)
    ok = httpx.Response(201, json={"event_id": "x", "recorded": True, "duplicate": False,
                                   "breakdown": {"from_subscription": 3, "from_rollover": 0, "from_purchased": 0, "overflow_to_debt": 0},
                                   "balance": {"used": 3, "rollover": 0, "purchased": 0}})  # fmt: skip
    actions, result = drive(exchange, call, [httpx.Response(500), ok])
    first, second = (a for a in actions if isinstance(a, httpx.Request))
    assert first is not second and first.content == second.content
    assert str(first.url) == "http://service/stage/v1/usage"
    assert result.breakdown.from_grants == 0  # a first-release answer: no from_grants, no period
    assert result.period is None


def test_occurred_at_is_sent_only_when_given() -> None:
    plain = json.loads(_core.record("u1", "ocr_tokens", 3).request.content)
    assert set(plain) == {"event_id", "user_id", "usage_type", "amount"}
    late = _core.record(
        "u1", "ocr_tokens", 3, event_id="e1", occurred_at=datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
    )
    assert json.loads(late.request.content)["occurred_at"] == "2026-11-30T23:59:00Z"
    with pytest.raises(ValueError, match="occurred_at"):
        _core.record("u1", "ocr_tokens", 3, occurred_at=datetime(2026, 11, 30))  # no timezone


def test_grant_request() -> None:
    call = _core.grant("u 1", "g-1", "ocr_tokens", 500, datetime(2027, 1, 1, tzinfo=UTC), "promo")
    assert (call.request.route.method, call.request.path) == ("POST", "/v1/users/u%201/grants")
    assert json.loads(call.request.content) == {
        "grant_id": "g-1", "usage_type": "ocr_tokens", "amount": 500,
        "expires_at": "2027-01-01T00:00:00+00:00", "reason": "promo",
    }  # fmt: skip


def entry(n: int) -> dict:
    return {"id": f"j{n}", "at": "2026-12-01T00:00:00Z", "usage_type": "ocr_tokens", "pool": "used",
            "delta": n, "balance_after": n, "reason": "usage", "ref": None}  # fmt: skip


def test_ledger_follows_next_cursor_to_the_last_page() -> None:
    exchange = Exchange("http://service", retries=0)
    pages = [
        httpx.Response(200, json={"entries": [entry(3), entry(2)], "next_cursor": "c2"}),
        httpx.Response(200, json={"entries": [entry(1)], "next_cursor": None}),
    ]
    call: _core.Call | None = _core.ledger("u1", usage_type="ocr_tokens", page_size=2)
    targets, ids = [], []
    while call is not None:
        actions, page = drive(exchange, call, pages)
        targets.append(actions[0].url.raw_path.decode())
        ids += [e.id for e in page.items]
        call = page.next
    assert targets == [
        "/v1/users/u1/ledger?usage_type=ocr_tokens&limit=2",
        "/v1/users/u1/ledger?usage_type=ocr_tokens&limit=2&cursor=c2",
    ]
    assert ids == ["j3", "j2", "j1"]
