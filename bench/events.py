"""Lambda events as API Gateway (HTTP API, payload 2.0) and SQS deliver them.

`http_event` follows tests/support/lambda_events.http_event (copied so that the bench does not
depend on the test tree): an IAM-authorised service call with a JSON body.
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

# Events recorded by the bench: a text-to-speech usage event as a product would send it (the test
# catalog groups premium_voice by voice and model and sums duration_ms: the full lifetime-stats path).
RECORD_TYPE = "premium_voice"
RECORD_DETAILS = {"voice_slug": "aria", "model_slug": "v2", "voice_name": "Aria", "duration_ms": 1200}
CHECK_TYPE = "server_kokoro"  # free plan limit 1000 in the test catalog: a check that is granted


def http_event(method: str, path: str, body: Any = None, *, route: str | None = None) -> dict[str, Any]:
    request_context: dict[str, Any] = {
        "accountId": "123456789012",
        "apiId": "api",
        "domainName": "api.example.com",
        "domainPrefix": "api",
        "http": {
            "method": method,
            "path": path,
            "protocol": "HTTP/1.1",
            "sourceIp": "127.0.0.1",
            "userAgent": "bench",
        },
        "requestId": str(uuid.uuid4()),
        "routeKey": f"{method} {route or path}",
        "stage": "$default",
        "time": "24/Nov/2026:00:00:00 +0000",
        "timeEpoch": 1795478400000,
        "authorizer": {
            "iam": {"accountId": "123456789012", "userArn": "arn:aws:iam::123456789012:user/bench"}
        },
    }
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": f"{method} {route or path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": request_context,
        "isBase64Encoded": False,
    }
    if body is not None:
        event["body"] = json.dumps(body)
    return event


def usage_body(event_id: str, user_id: str, amount: int = 10) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": user_id,
        "usage_type": RECORD_TYPE,
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


def sqs_event(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """An SQS event source delivery: one message per usage event."""
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": "bench",
                "body": json.dumps(body),
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1795478400000"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:usage",
                "awsRegion": "us-east-1",
            }
            for body in bodies
        ]
    }


def many_users(count: int) -> list[str]:
    return [f"user-{i:04d}" for i in range(count)]


HOT_USER = "hot-user"


def batch_bodies(prefix: str, size: int, users: list[str], per_batch_users: int, rng: random.Random) -> list:
    """`size` events spread evenly over `per_batch_users` users drawn from `users`."""
    chosen = rng.sample(users, per_batch_users)
    return [usage_body(f"{prefix}-{i}", chosen[i % per_batch_users]) for i in range(size)]
