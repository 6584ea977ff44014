"""Domain errors. Each carries its HTTP status and contract error code; `metering.api.http` is the
one place that turns them into responses, and the batch/queue paths turn them into per-event
outcomes."""

from __future__ import annotations


class MeteringError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class BadInput(MeteringError):
    """The request can never succeed as sent (4xx, never retried)."""

    status = 400
    code = "validation_error"


class UnknownUsageType(BadInput):
    code = "unknown_usage_type"

    def __init__(self, usage_type: str, field: str = "usage_type") -> None:
        super().__init__(f"{field}: unknown usage type {usage_type!r}")


class PoolsNotSupported(BadInput):
    code = "pools_not_supported"


class AmountOutOfRange(BadInput):
    code = "amount_out_of_range"


class OccurredAtOutOfRange(BadInput):
    code = "occurred_at_out_of_range"


class Unauthorized(MeteringError):
    status = 401
    code = "unauthorized"


class NotFound(MeteringError):
    status = 404
    code = "not_found"


class Conflict(MeteringError):
    status = 409
    code = "conflict"


class EventIdConflict(Conflict):
    code = "event_id_conflict"


class AdjustmentIdConflict(Conflict):
    code = "adjustment_id_conflict"


class GrantIdConflict(Conflict):
    code = "grant_id_conflict"


class InsufficientBalance(Conflict):
    code = "insufficient_balance"


class InternalError(MeteringError):
    """An unexpected failure; logged with its traceback, reported without details."""

    status = 500
    code = "internal_error"


class PayloadTooLarge(MeteringError):
    status = 413
    code = "payload_too_large"


class Unavailable(MeteringError):
    """A dependency is down; the caller may retry."""

    status = 503
    code = "unavailable"


class NotConfigured(MeteringError):
    status = 503
    code = "not_configured"


INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def check_int64(value: int, field: str) -> int:
    if not INT64_MIN <= value <= INT64_MAX:
        raise AmountOutOfRange(f"{field}: result {value} does not fit in a signed 64-bit integer")
    return value
