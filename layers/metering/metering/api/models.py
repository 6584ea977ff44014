"""Request and response models of the check and the writes, api.md section 5 (the contract's field
names are fixed); the read routes' are `metering.api.read_models`, what both share `metering.api.base`.

Amounts are StrictInt: "5", 5.0 and true are rejected rather than coerced, and every amount must
fit in a signed 64-bit integer.
"""

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field, StrictInt
from pydantic_core import PydanticCustomError

from metering.api.base import ErrorBody as ErrorBody
from metering.api.base import ErrorOut as ErrorOut
from metering.api.base import PeriodOut as PeriodOut
from metering.api.base import Request, Response
from metering.errors import INT64_MAX

DETAILS_MAX_BYTES = 8 * 1024


def _no_nul(value: str) -> str:
    """PostgreSQL's text cannot hold NUL: refused as bad input rather than failing the write."""
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain the NUL character (\\u0000)")
    return value


# Ids that appear in a route's path (`/v1/users/{user_id}/...`, `.../reservations/{reservation_id}`)
# must be usable there: API Gateway cannot route a '/' inside a path segment (not even as %2F) and
# cuts the path at a '?', so such ids are refused when they are first given, never stranded.
UNROUTABLE = ("/", "?")


def _routable(value: str) -> str:
    found = [c for c in UNROUTABLE if c in value]
    if found:
        raise PydanticCustomError(
            "unroutable_id",
            "must not contain {chars}: the id appears in route paths, which cannot carry it",
            {"chars": " or ".join(repr(c) for c in found)},
        )
    return value


def _iso_text(value: Any) -> Any:
    """An instant is ISO-8601 text (or, from Python, a datetime): a number would be read as Unix
    seconds, silently."""
    if not isinstance(value, str | datetime):
        raise PydanticCustomError("iso_datetime", "must be an ISO-8601 date-time string with a timezone")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
# an ISO-8601 date-time with a timezone (`Z` or an offset)
Instant = Annotated[AwareDatetime, BeforeValidator(_iso_text)]
Ident = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_no_nul)]
RoutedId = Annotated[
    str, Field(min_length=1, max_length=255), AfterValidator(_no_nul), AfterValidator(_routable)
]
UserId = RoutedId
UsageTypeName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_no_nul)]
Amount = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]
PositiveAmount = Annotated[StrictInt, Field(ge=1, le=INT64_MAX)]


class ReservationRequest(Request):
    id: RoutedId
    ttl_seconds: Annotated[StrictInt, Field(ge=1, le=604800)]


class CheckRequest(Request):
    user_id: UserId
    usage_type: UsageTypeName
    amount: Amount
    reservation: ReservationRequest | None = None


class ReservationOut(Response):
    id: str
    amount: int
    expires_at: datetime


class CheckResponse(Response):
    allowed: bool
    user_id: str
    usage_type: str
    requested: int
    limit: int | None
    used: int
    reserved: int
    available: int | None
    reservation: ReservationOut | None
    reservations_counted: bool


# Compact JSON, as `details` are measured and stored: one encoder, made once (json.dumps with
# options builds a new encoder on every call).
compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class JsonObject(dict[str, Any]):
    """A request's `details` as validated, with the compact JSON text its size was measured on, so
    that recording stores that text instead of encoding the object a second time."""

    __slots__ = ("text",)

    def __init__(self, value: dict[str, Any], text: str) -> None:
        super().__init__(value)
        self.text = text


def details_json(details: dict[str, Any] | None) -> str | None:
    """The compact JSON text of `details` (kept from validation when there was one)."""
    if details is None:
        return None
    return details.text if isinstance(details, JsonObject) else compact_json(details)


def _details_checked(details: dict[str, Any] | None) -> dict[str, Any] | None:
    if details is None:
        return None
    try:  # Python's JSON parser accepts NaN and Infinity; JSON (and a jsonb column) does not
        text = compact_json(details)
    except ValueError:
        raise PydanticCustomError("not_json", "NaN and Infinity are not JSON numbers") from None
    if "\\u0000" in text and _holds_nul(details):  # jsonb cannot hold NUL in a string or key
        raise PydanticCustomError("nul_character", "must not contain the NUL character (\\u0000)")
    size = len(text.encode())
    if size > DETAILS_MAX_BYTES:
        raise PydanticCustomError(
            "payload_too_large",
            "details is {size} bytes, at most {limit} allowed",
            {"size": size, "limit": DETAILS_MAX_BYTES},
        )
    return JsonObject(details, text)


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


class UsageRequest(Request):
    event_id: Ident
    user_id: UserId
    usage_type: UsageTypeName
    amount: PositiveAmount
    reference_id: Annotated[Text, Field(max_length=255)] | None = None
    description: Annotated[Text, Field(max_length=1000)] | None = None
    details: Annotated[dict[str, Any] | None, AfterValidator(_details_checked)] = None
    reservation_id: RoutedId | None = None
    # when the usage happened (default: when it is recorded); picks the period it belongs to
    occurred_at: Instant | None = None


class BreakdownOut(Response):
    from_subscription: int
    from_rollover: int
    from_grants: int
    from_purchased: int
    overflow_to_debt: int


class BalanceOut(Response):
    used: int
    rollover: int
    purchased: int
    granted: int  # live grants' remaining credit


class UsageResponse(Response):
    event_id: str
    recorded: bool
    duplicate: bool
    breakdown: BreakdownOut
    balance: BalanceOut
    period: PeriodOut  # the period that paid (a late event's, or the current one)


class BatchRequest(Request):
    # Items are validated one by one so that one bad event (even one that is not an object) does
    # not reject the others.
    events: Annotated[list[Any], Field(min_length=1, max_length=500)]


class BatchResult(Response):
    event_id: str | None
    status: Literal["recorded", "duplicate", "rejected"]
    breakdown: BreakdownOut | None = None
    period: PeriodOut | None = None
    error: ErrorOut | None = None


class BatchResponse(Response):
    results: list[BatchResult]


def _nonzero(value: int) -> int:
    if value == 0:
        raise PydanticCustomError("nonzero", "delta must not be 0")
    return value


class AdjustmentRequest(Request):
    adjustment_id: Ident
    usage_type: UsageTypeName
    pool: Literal["purchased", "rollover"]
    delta: Annotated[StrictInt, Field(ge=-INT64_MAX, le=INT64_MAX), AfterValidator(_nonzero)]
    reason: Annotated[Text, Field(min_length=1, max_length=1000)]


class AdjustmentResponse(Response):
    adjustment_id: str
    applied: bool
    duplicate: bool
    balance: BalanceOut


class GrantRequest(Request):
    grant_id: Ident
    usage_type: UsageTypeName
    amount: PositiveAmount
    expires_at: Instant
    reason: Annotated[Text, Field(min_length=1, max_length=1000)]


class GrantOut(Response):
    id: str
    usage_type: str
    amount: int
    remaining: int
    expires_at: datetime


class GrantResponse(Response):
    grant: GrantOut
    balance: BalanceOut
