"""The client's exceptions, and the one mapping from an answer (or a failed exchange) to them.

Every error answer of the service is `{"error": {"code", "message"}}`; API Gateway's own answers
(a throttled request, a missing route, a refused signature) are `{"message": ...}` and get the code
`http_<status>`. A connection that fails or times out is `Unavailable` with no status.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from metering_client.models import CheckResult


class MeteringError(Exception):
    """An error answer of the service, or no answer. `status` is the HTTP status (None when no
    answer came), `code` the contract's snake_case code, `message` the human text."""

    def __init__(self, message: str, *, status: int | None, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code} ({self.status if self.status is not None else 'no answer'}): {self.message}"


class UsageLimitExceeded(MeteringError):
    """A check answered "not allowed" (raised by `check(..., raise_on_deny=True)` and by
    `usage.check_usage_limit`). The service answered 200; `status` is 402, the status a product
    would usually pass on."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(
            f"{result.usage_type}: {result.requested} requested, {result.available} available",
            status=402,
            code="usage_limit_exceeded",
        )
        self.result = result
        self.user_id = result.user_id
        self.usage_type = result.usage_type
        self.requested = result.requested
        self.available = result.available
        self.limit = result.limit
        self.used = result.used


class EventIdConflict(MeteringError):
    """409 `event_id_conflict`: the event id was recorded before with another user, type or amount."""


class NotFound(MeteringError):
    """404: `not_found` from the service, or `http_404` from API Gateway (no such route or stage)."""


class Unavailable(MeteringError):
    """The service could not answer now (429, 502, 503, 504, a timeout or a connection error),
    after every retry."""


RETRYABLE_STATUSES = frozenset({429}) | frozenset(range(500, 600))
UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})


def error_from_response(response: httpx.Response) -> MeteringError:
    status = response.status_code
    code, message = f"http_{status}", response.text or response.reason_phrase
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            code, message = error["code"], str(error.get("message", ""))
        elif isinstance(body.get("message"), str):
            message = body["message"]
    if code == "event_id_conflict":
        cls: type[MeteringError] = EventIdConflict
    elif status == 404:
        cls = NotFound
    elif status in UNAVAILABLE_STATUSES:
        cls = Unavailable
    else:
        cls = MeteringError
    return cls(message, status=status, code=code)


def error_from_transport(exc: httpx.TransportError) -> Unavailable:
    code = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection_error"
    error = Unavailable(f"{type(exc).__name__}: {exc}", status=None, code=code)
    error.__cause__ = exc
    return error


def is_retryable(error: MeteringError) -> bool:
    """5xx, 429 and no answer at all; never another 4xx."""
    return error.status is None or error.status in RETRYABLE_STATUSES
