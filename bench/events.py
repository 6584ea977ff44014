"""The bench's workload: the events it sends, built by the project's one builder of API Gateway
(HTTP API 2.0) and SQS events, `metering_dev.events` (re-exported here), as the tests build theirs.
"""

from __future__ import annotations

import random
from typing import Any

from metering_dev.events import http_event as http_event
from metering_dev.events import sqs_event as sqs_event

# Events recorded by the bench: a text-to-speech usage event as a product would send it (the test
# catalog groups premium_voice by voice and model and sums duration_ms: the full lifetime-stats path).
RECORD_TYPE = "premium_voice"
RECORD_DETAILS = {"voice_slug": "aria", "model_slug": "v2", "voice_name": "Aria", "duration_ms": 1200}
CHECK_TYPE = "server_kokoro"  # free plan limit 1000 in the test catalog: a check that is granted


def usage_body(
    event_id: str, user_id: str, amount: int = 10, usage_type: str = RECORD_TYPE
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": user_id,
        "usage_type": usage_type,
        "amount": amount,
        "reference_id": "doc-1",
        "details": RECORD_DETAILS,
    }


def record_event(event_id: str, user_id: str) -> dict[str, Any]:
    return http_event("POST", "/v1/usage", usage_body(event_id, user_id))


def check_event(user_id: str, reservation_id: str | None = None, amount: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"user_id": user_id, "usage_type": CHECK_TYPE, "amount": amount}
    if reservation_id is not None:
        body["reservation"] = {"id": reservation_id, "ttl_seconds": 1}
    return http_event("POST", "/v1/check", body)


def batch_event(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    return http_event("POST", "/v1/usage/batch", {"events": bodies})


def many_users(count: int) -> list[str]:
    return [f"user-{i:04d}" for i in range(count)]


HOT_USER = "hot-user"


def batch_bodies(prefix: str, size: int, users: list[str], per_batch_users: int, rng: random.Random) -> list:
    """`size` events spread evenly over `per_batch_users` users drawn from `users`."""
    chosen = rng.sample(users, per_batch_users)
    return [usage_body(f"{prefix}-{i}", chosen[i % per_batch_users]) for i in range(size)]
