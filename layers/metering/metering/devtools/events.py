"""Lambda events as API Gateway (HTTP API, payload 2.0) and SQS deliver them: one builder for the
tests, the benchmark and anything else that calls a handler in-process."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any


def http_event(
    method: str,
    path: str,
    body: Any = None,
    *,
    route: str | None = None,
    path_parameters: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    jwt_sub: str | None = None,
    iam: bool = True,
    base64_body: bool = False,
    raw_body: str | bytes | None = None,
    user_agent: str = "metering-devtools",
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, authorised as API Gateway would: an IAM caller
    on service routes, JWT claims with `jwt_sub` on /v1/me routes."""
    if raw_body is None and body is not None:
        raw_body = json.dumps(body)
    text_body: str | None
    if isinstance(raw_body, bytes):
        text_body = base64.b64encode(raw_body).decode()
        base64_body = True
    elif base64_body and raw_body is not None:
        text_body = base64.b64encode(raw_body.encode()).decode()
    else:
        text_body = raw_body
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
            "userAgent": user_agent,
        },
        "requestId": str(uuid.uuid4()),
        "routeKey": f"{method} {route or path}",
        "stage": "$default",
        "time": "24/Nov/2026:00:00:00 +0000",
        "timeEpoch": 1795478400000,
    }
    if jwt_sub is not None:
        request_context["authorizer"] = {"jwt": {"claims": {"sub": jwt_sub}, "scopes": None}}
    elif iam and not path.startswith("/v1/me"):
        request_context["authorizer"] = {
            "iam": {"accountId": "123456789012", "userArn": "arn:aws:iam::123456789012:user/product"}
        }
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": f"{method} {route or path}",
        "rawPath": path,
        "rawQueryString": "&".join(f"{k}={v}" for k, v in (query or {}).items()),
        "headers": {"content-type": "application/json", **{k.lower(): v for k, v in (headers or {}).items()}},
        "requestContext": request_context,
        "isBase64Encoded": base64_body,
    }
    if text_body is not None:
        event["body"] = text_body
    if query:
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = path_parameters
    return event


def sqs_event(bodies: list[dict[str, Any] | str]) -> dict[str, Any]:
    """An SQS event source delivery: one message per record request (a dict, sent as JSON, or a
    string, sent as it is: a message that need not be valid JSON)."""
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": "local",
                "body": body if isinstance(body, str) else json.dumps(body),
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
