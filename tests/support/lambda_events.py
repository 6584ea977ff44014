"""API Gateway HTTP API (payload 2.0) events and handler calls, as Lambda would make them."""

from __future__ import annotations

import base64
import importlib
import json
import uuid
from typing import Any

from metering.devtools.context import make_context

HANDLERS = {
    "check": "functions.check.app",
    "record": "functions.record.app",
    "summary": "functions.summary.app",
    "stripe_webhook": "functions.stripe_webhook.app",
}


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
) -> dict[str, Any]:
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
            "userAgent": "pytest",
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


def handler(name: str, attribute: str = "lambda_handler") -> Any:
    return getattr(importlib.import_module(HANDLERS[name]), attribute)


def call(name: str, event: dict[str, Any], attribute: str = "lambda_handler") -> tuple[int, Any]:
    """Invoke a handler; returns (status, parsed JSON body or None)."""
    result = handler(name, attribute)(event, make_context(name))
    body = result.get("body")
    if body and result.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return result["statusCode"], (json.loads(body) if body else None)
