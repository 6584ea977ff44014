"""Summary, breakdown and stats (metering.md "Reads"; api.md section 5).

Reads never write: a user the service has never seen gets the free plan's summary and empty rows,
and no period row is created (the check and record create them when they need them).

- Summary: the check's read for every catalog usage type of the user (one round trip,
  `metering.db.ledger.pair_states`) and one Redis round trip for live holds; each usage type's
  numbers come from the check's own computation (`services.context.standing`).
- Breakdown: one SQL statement, a UNION ALL of one aggregate per usage type, each a range scan of
  the index (user_id, usage_type, recorded_at) over the window (`metering.db.reads`).
- Stats: the maintained `lifetime_stats` rows (primary key user_id, usage_type, group_key); the
  usage log is never scanned.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from metering import reservations
from metering.api.read_models import (
    BreakdownResponse,
    BreakdownRowOut,
    PeriodOut,
    PlanOut,
    StatsResponse,
    StatsRowOut,
    SubscriptionOut,
    SummaryResponse,
    UsageTypeBreakdownOut,
    UsageTypeStatsOut,
    UsageTypeSummary,
)
from metering.catalog import get_catalog
from metering.config import get_settings
from metering.db import reads
from metering.db.engine import run_read
from metering.db.ledger import pair_states
from metering.domain.periods import SubscriptionState, resolve_period
from metering.domain.subscriptions import is_canceling
from metering.errors import BadInput
from metering.services.context import meter, standing

if TYPE_CHECKING:
    from sqlalchemy import Connection

MAX_WINDOW = timedelta(days=366)

# --- summary ----------------------------------------------------------------------------------------


def _subscription_out(sub: SubscriptionState | None) -> SubscriptionOut | None:
    if sub is None:
        return None
    return SubscriptionOut(
        plan=sub.plan_id,
        status=sub.status,
        current_period_start=sub.period_start,
        current_period_end=sub.period_end,
        cancel_at_period_end=sub.cancel_at_period_end,
        cancel_at=sub.cancel_at,
        canceled_at=sub.canceled_at,
        is_canceling=is_canceling(sub.cancel_at_period_end, sub.cancel_at, sub.period_end),
    )


def _live_holds(user_id: str, db_versions: dict[str, int]) -> tuple[dict[str, int], bool]:
    try:
        return reservations.reserved_by_type(user_id, db_versions), True
    except reservations.ReservationsUnavailable:
        return {}, False


def summary(user_id: str, now: datetime | None = None) -> SummaryResponse:
    catalog = get_catalog()
    now = now or datetime.now(UTC)
    pairs = [(user_id, name) for name in catalog.usage_types]
    states = run_read(lambda conn: pair_states(conn, pairs, now))  # 1 round trip, 1 snapshot
    standings = {name: standing(meter(name), states[(user_id, name)], now) for name in catalog.usage_types}
    reserved_by_type, counted = _live_holds(user_id, {name: st.version for name, st in standings.items()})

    usage_types = {
        name: UsageTypeSummary(
            limit=st.limit,
            used=st.used,
            rollover=st.rollover,
            purchased=st.purchased,
            granted=st.granted,
            reserved=reserved_by_type.get(name, 0),
            available=st.available(reserved_by_type.get(name, 0)),
        )
        for name, st in standings.items()
    }
    # the plan governing the current period: the one whose limits these are (after a downgrade
    # mid-period, the higher plan until the period ends; `subscription.plan` is Stripe's newest)
    first = next(iter(standings.values()))
    subscription = states[pairs[0]].subscription
    spec = first.spec
    plan = catalog.find_plan(first.plan_id) or catalog.free_plan
    return SummaryResponse(
        user_id=user_id,
        billing_enabled=get_settings().billing_enabled,
        plan=PlanOut(id=plan.id, name=plan.name),
        subscription=_subscription_out(subscription),
        period=PeriodOut(start=spec.start, end=spec.end),
        usage_types=usage_types,
        reservations_counted=counted,
    )


# --- breakdown --------------------------------------------------------------------------------------


def parse_instant(value: str, field: str) -> datetime:
    """An ISO-8601 date-time with a timezone (`Z` or an offset), as UTC; BadInput naming the field."""
    shown = repr(value if len(value) <= 40 else value[:37] + "...")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadInput(
            f"{field}: not an ISO-8601 date-time such as 2026-01-01T00:00:00Z (got {shown})"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise BadInput(f"{field}: needs a timezone, a Z suffix or an offset such as +02:00 (got {shown})")
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise BadInput(f"{field}: out of range (got {shown})") from None


def breakdown(
    user_id: str,
    *,
    usage_type: str | None = None,
    start: str | None = None,
    end: str | None = None,
    now: datetime | None = None,
) -> BreakdownResponse:
    """Usage in [start, end) (each defaulting to the current period's bound) per catalog usage type
    (or only `usage_type`), grouped as the catalog declares, largest total first."""
    catalog = get_catalog()
    kinds = (meter(usage_type).usage_type,) if usage_type is not None else tuple(catalog.usage_types.values())
    window_start = parse_instant(start, "from") if start is not None else None
    window_end = parse_instant(end, "to") if end is not None else None

    def read(conn: Connection) -> list[Any]:
        nonlocal window_start, window_end
        if window_start is None or window_end is None:
            subscription = reads.current_subscription(conn, user_id)
            period = resolve_period(subscription, now or datetime.now(UTC), catalog.free_plan.id)
            window_start = window_start or period.start
            window_end = window_end or period.end
        if window_end <= window_start:
            raise BadInput(
                f"to: must be later than from ({window_start.isoformat()} .. {window_end.isoformat()})"
            )
        if window_end - window_start > MAX_WINDOW:
            field = "from" if end is None and start is not None else "to"
            raise BadInput(
                f"{field}: the window {window_start.isoformat()} .. {window_end.isoformat()} is longer than"
                f" {MAX_WINDOW.days} days"
            )
        return reads.breakdown(conn, kinds, user_id, window_start, window_end)

    rows = run_read(read)
    assert window_start is not None and window_end is not None

    grouped: dict[str, list[BreakdownRowOut]] = {kind.id: [] for kind in kinds}
    for r in rows:
        spec = catalog.usage_types[r.usage_type].breakdown
        grouped[r.usage_type].append(
            BreakdownRowOut(
                key=dict(zip(spec.group_by, r.key, strict=True)),
                label=r.label,
                total=int(r.total),
                events=int(r.events),
                distinct={f: int(v) for f, v in r.distinct_counts.items()},
                measures=dict(r.measures),
            )
        )
    return BreakdownResponse(
        user_id=user_id,
        from_=window_start,
        to=window_end,
        usage_types={
            kind.id: UsageTypeBreakdownOut(group_by=list(kind.breakdown.group_by), rows=grouped[kind.id])
            for kind in kinds
        },
    )


# --- stats ------------------------------------------------------------------------------------------


def _measures(fields: tuple[str, ...], stored: Any) -> dict[str, int | float]:
    stored = stored if isinstance(stored, dict) else {}
    out: dict[str, int | float] = {}
    for field in fields:
        value = stored.get(field, 0)
        out[field] = value if isinstance(value, int | float) and not isinstance(value, bool) else 0
    return out


def _ordered_key(group_by: tuple[str, ...], stored: Any) -> dict[str, Any]:
    """The stored group (jsonb keeps its own key order) in the catalog's group_by order."""
    stored = stored if isinstance(stored, dict) else {}
    ordered = {field: stored[field] for field in group_by if field in stored}
    return ordered | {field: value for field, value in stored.items() if field not in ordered}


def stats(user_id: str) -> StatsResponse:
    """Lifetime totals per catalog usage type and breakdown group, from `lifetime_stats`."""
    catalog = get_catalog()
    rows = run_read(lambda conn: reads.lifetime_stats(conn, user_id))

    grouped: dict[str, list[StatsRowOut]] = {name: [] for name in catalog.usage_types}
    for r in rows:
        kind = catalog.usage_types.get(r.usage_type)
        if kind is None:  # a usage type that has left the catalog
            continue
        grouped[r.usage_type].append(
            StatsRowOut(
                key=_ordered_key(kind.breakdown.group_by, r.key),
                label=r.label,
                total=int(r.total),
                events=int(r.events),
                measures=_measures(kind.breakdown.measures, r.measures),
            )
        )

    usage_types: dict[str, UsageTypeStatsOut] = {}
    for name, kind in catalog.usage_types.items():
        type_rows = grouped[name]
        usage_types[name] = UsageTypeStatsOut(
            total=sum(row.total for row in type_rows),
            events=sum(row.events for row in type_rows),
            measures={f: sum((row.measures[f] for row in type_rows), 0) for f in kind.breakdown.measures},
            rows=type_rows,
        )
    return StatsResponse(user_id=user_id, usage_types=usage_types)
