"""Response models of the read routes (api.md sections 5 and 7: summary, breakdown, stats, ledger).

Field names are the contract's. Additive extensions (allowed by api.md): `reservations_counted` on
the summary (as on the check), and `user_id` on breakdown and stats (useful behind /v1/me).
"""

from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field

from metering.api.base import PeriodOut, Response  # PeriodOut: the record responses' too

Number = int | float


class PlanOut(Response):
    id: str
    name: str


class SubscriptionOut(Response):
    """The mirror of the user's current Stripe subscription."""

    plan: str | None = Field(description="catalog plan id of the subscription's price (null if unknown)")
    status: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    cancel_at: datetime | None
    canceled_at: datetime | None
    is_canceling: bool


class UsageTypeSummary(Response):
    limit: int | None = Field(description="period limit; null = unlimited (or billing disabled)")
    used: int
    rollover: int = Field(description="may be negative (debt); 0 for a plain counter")
    purchased: int = Field(description="0 for a plain counter")
    granted: int = Field(description="live grants' remaining credit; 0 for a plain counter")
    reserved: int = Field(description="live reservations of this usage type")
    available: int | None = Field(description="what a check may grant now; null = unlimited")


class SummaryResponse(Response):
    user_id: str
    billing_enabled: bool
    plan: PlanOut = Field(description="the effective plan")
    subscription: SubscriptionOut | None = Field(description="null for a user never subscribed")
    period: PeriodOut = Field(description="the current period")
    usage_types: dict[str, UsageTypeSummary] = Field(description="every catalog usage type")
    reservations_counted: bool = Field(description="false when Redis was unreachable or not configured")


class BreakdownRowOut(Response):
    key: dict[str, Any] = Field(description="the group: catalog group_by field -> JSON value")
    label: str | None = Field(description="the most recent non-null label value in the group")
    total: int
    events: int
    distinct: dict[str, int] = Field(description="catalog distinct field -> count of distinct values")
    measures: dict[str, Number] = Field(description="catalog measure field -> sum of its numeric values")


class UsageTypeBreakdownOut(Response):
    group_by: list[str]
    rows: list[BreakdownRowOut] = Field(description="largest total first")


class BreakdownResponse(Response):
    model_config = ConfigDict(frozen=True, populate_by_name=True, defer_build=True)

    user_id: str
    from_: datetime = Field(alias="from", description="start of the window (inclusive)")
    to: datetime = Field(description="end of the window (exclusive)")
    usage_types: dict[str, UsageTypeBreakdownOut]


class StatsRowOut(Response):
    key: dict[str, Any]
    label: str | None
    total: int
    events: int
    measures: dict[str, Number]


class UsageTypeStatsOut(Response):
    total: int
    events: int
    measures: dict[str, Number]
    rows: list[StatsRowOut] = Field(description="largest total first")


class StatsResponse(Response):
    user_id: str
    usage_types: dict[str, UsageTypeStatsOut]


class LedgerEntryOut(Response):
    id: str
    at: datetime
    usage_type: str
    pool: Literal["used", "rollover", "purchased", "grant"]
    delta: int
    balance_after: int
    reason: str
    ref: str | None


class LedgerResponse(Response):
    entries: list[LedgerEntryOut]
    next_cursor: str | None
