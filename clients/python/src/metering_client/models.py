"""Typed results of the service's routes (api.md sections 5 and 7), and the one request model a
caller may build itself (`UsageEvent`, for `record_batch`).

Attribute names are the contract's field names (`from` is `from_`, a Python keyword). Results
accept fields they do not know (the contract allows additive extensions; they stay readable as
attributes). Fields of the second release (`period`, `from_grants`, `granted`) have defaults, so the
client also reads answers of a service that does not send them yet. A test compares these models
with every response schema of `docs/openapi.json`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class Result(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class ErrorDetail(Result):
    code: str
    message: str


class ErrorEnvelope(Result):
    """`{"error": {"code", "message"}}`, the body of every error answer."""

    error: ErrorDetail


class Reservation(Result):
    id: str
    amount: int
    expires_at: datetime


class CheckResult(Result):
    allowed: bool
    user_id: str
    usage_type: str
    requested: int
    limit: int | None
    used: int
    reserved: int
    available: int | None
    reservation: Reservation | None
    reservations_counted: bool


class Breakdown(Result):
    """Which pool paid for a record."""

    from_subscription: int
    from_rollover: int
    from_purchased: int
    overflow_to_debt: int
    from_grants: int = 0


class Balance(Result):
    used: int
    rollover: int
    purchased: int
    granted: int = 0  # live grants' remaining credit (second release)


class Period(Result):
    start: datetime
    end: datetime


class RecordResult(Result):
    event_id: str
    recorded: bool
    duplicate: bool
    breakdown: Breakdown
    balance: Balance
    period: Period | None = None


class BatchItem(Result):
    event_id: str | None
    status: Literal["recorded", "duplicate", "rejected"]
    breakdown: Breakdown | None = None
    error: ErrorDetail | None = None
    period: Period | None = None


class BatchResult(Result):
    results: list[BatchItem]


class AdjustmentResult(Result):
    adjustment_id: str
    applied: bool
    duplicate: bool
    balance: Balance


class Grant(Result):
    id: str
    usage_type: str
    amount: int
    remaining: int
    expires_at: datetime


class GrantResult(Result):
    grant: Grant
    balance: Balance


class Plan(Result):
    id: str
    name: str


class Subscription(Result):
    plan: str | None
    status: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    cancel_at: datetime | None
    canceled_at: datetime | None
    is_canceling: bool


class UsageTypeSummary(Result):
    limit: int | None
    used: int
    rollover: int
    purchased: int
    reserved: int
    available: int | None
    granted: int = 0


class Summary(Result):
    user_id: str
    billing_enabled: bool
    plan: Plan
    subscription: Subscription | None
    period: Period
    usage_types: dict[str, UsageTypeSummary]
    reservations_counted: bool


class BreakdownRow(Result):
    key: dict[str, Any]
    label: str | None
    total: int
    events: int
    distinct: dict[str, int]
    measures: dict[str, int | float]


class UsageTypeBreakdown(Result):
    group_by: list[str]
    rows: list[BreakdownRow]


class UsageBreakdown(Result):
    """The breakdown route's answer (not to be confused with a record's `Breakdown`)."""

    user_id: str
    from_: datetime = Field(alias="from")
    to: datetime
    usage_types: dict[str, UsageTypeBreakdown]


class StatsRow(Result):
    key: dict[str, Any]
    label: str | None
    total: int
    events: int
    measures: dict[str, int | float]


class UsageTypeStats(Result):
    total: int
    events: int
    measures: dict[str, int | float]
    rows: list[StatsRow]


class Stats(Result):
    user_id: str
    usage_types: dict[str, UsageTypeStats]


class LedgerEntry(Result):
    id: str
    at: datetime
    usage_type: str
    pool: str  # used | rollover | purchased | grant
    delta: int
    balance_after: int
    reason: str  # usage | rollover | topup | adjustment | grant | grant_expired | ...
    ref: str | None


class LedgerPage(Result):
    entries: list[LedgerEntry]
    next_cursor: str | None


class UsageEvent(BaseModel):
    """One event for `record_batch` (the same fields as `record`'s parameters). Without an
    `event_id` the client generates one, once per call. Fields the client does not know are sent
    as given (the service decides)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    user_id: str
    usage_type: str
    amount: int
    event_id: str | None = None
    reference_id: str | None = None
    description: str | None = None
    details: dict[str, Any] | None = None
    reservation_id: str | None = None
    occurred_at: AwareDatetime | None = None
