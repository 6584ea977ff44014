"""Handler calls as Lambda would make them, on events from the one builder,
`metering_dev.events.http_event` (re-exported here for the tests)."""

from __future__ import annotations

import base64
import importlib
import json
from typing import Any

from metering_dev.context import make_context
from metering_dev.events import http_event as http_event

HANDLERS = {
    "check": "functions.check.app",
    "record": "functions.record.app",
    "summary": "functions.summary.app",
    "stripe_webhook": "functions.stripe_webhook.app",
}


def handler(name: str, attribute: str = "lambda_handler") -> Any:
    return getattr(importlib.import_module(HANDLERS[name]), attribute)


def call(name: str, event: dict[str, Any], attribute: str = "lambda_handler") -> tuple[int, Any]:
    """Invoke a handler; returns (status, parsed JSON body or None)."""
    result = handler(name, attribute)(event, make_context(name))
    body = result.get("body")
    if body and result.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return result["statusCode"], (json.loads(body) if body else None)
