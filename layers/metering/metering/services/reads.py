"""Summary, breakdown and stats (metering.md "Reads"; api.md section 5).

Reads never write: a user the service has never seen gets the free plan's summary and empty rows,
and no period row is created (the check and record create them when they need them).

- Summary: one SQL statement for the whole user (subscription mirror, pools of every usage type,
  the periods containing `now` with their counters) and one Redis round trip for live holds; each
  usage type's numbers come from the same rules as the check (`services.check`).
- Breakdown: one SQL statement, a UNION ALL of one aggregate per usage type, each a range scan of
  the index (user_id, usage_type, recorded_at) over the window.
- Stats: the maintained `lifetime_stats` rows (primary key user_id, usage_type, group_key); the
  usage log is never scanned.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

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
from metering.catalog import Catalog, UsageType, get_catalog
from metering.config import get_settings
from metering.db.engine import run_read
from metering.db.store import PeriodRow, subscription_state
from metering.domain.ledger import available
from metering.domain.periods import PeriodSpec, resolve_period
from metering.errors import BadInput
from metering.services.context import meter

MAX_WINDOW = timedelta(days=366)

# --- summary ----------------------------------------------------------------------------------------

_SUMMARY_SQL = text(
    """
    SELECT s.subscription_id, s.plan_id, s.status, s.current_period_start, s.current_period_end,
           s.billing_cycle_anchor, s.cancel_at_period_end, s.cancel_at, s.canceled_at,
           b.types AS balance_types, b.rollovers, b.purchaseds, b.versions,
           p.period_id, p.period_start, p.period_end, p.plan_id AS period_plan,
           c.types AS used_types, c.useds
    FROM (SELECT CAST(:u AS text) AS user_id) k
    LEFT JOIN accounts a ON a.user_id = k.user_id
    LEFT JOIN subscriptions s ON s.subscription_id = a.current_subscription_id
    CROSS JOIN LATERAL (
        SELECT array_agg(usage_type) AS types, array_agg(rollover) AS rollovers,
               array_agg(purchased) AS purchaseds, array_agg(version) AS versions
        FROM balances WHERE user_id = k.user_id
    ) b
    LEFT JOIN periods p ON p.user_id = k.user_id AND p.period_start <= :now AND p.period_end > :now
    LEFT JOIN LATERAL (
        SELECT array_agg(usage_type) AS types, array_agg(used) AS useds
        FROM period_usage WHERE period_id = p.period_id
    ) c ON true
    """
)


def is_canceling(cancel_at_period_end: bool, cancel_at: datetime | None, period_end: datetime | None) -> bool:
    """metering.md: true if cancel_at_period_end, or cancel_at is set and not after the period end."""
    if cancel_at_period_end:
        return True
    if cancel_at is None:
        return False
    return period_end is None or cancel_at <= period_end


def _subscription_out(row: Any) -> SubscriptionOut | None:
    if row.subscription_id is None:
        return None
    return SubscriptionOut(
        plan=row.plan_id,
        status=row.status,
        current_period_start=row.current_period_start,
        current_period_end=row.current_period_end,
        cancel_at_period_end=bool(row.cancel_at_period_end),
        cancel_at=row.cancel_at,
        canceled_at=row.canceled_at,
        is_canceling=is_canceling(bool(row.cancel_at_period_end), row.cancel_at, row.current_period_end),
    )


def _live_holds(user_id: str, db_versions: dict[str, int]) -> tuple[dict[str, int], bool]:
    try:
        return reservations.reserved_by_type(user_id, db_versions), True
    except reservations.ReservationsUnavailable:
        return {}, False


def summary(user_id: str, now: datetime | None = None) -> SummaryResponse:
    catalog = get_catalog()
    billing_enabled = get_settings().billing_enabled
    now = now or datetime.now(UTC)
    rows = run_read(lambda conn: conn.execute(_SUMMARY_SQL, {"u": user_id, "now": now}).all())  # 1 round trip
    first = rows[0]
    spec = resolve_period(subscription_state(first), now, catalog.free_plan.id)

    # the period row starting where the resolved period starts, as `UserState.period` picks it
    period: PeriodRow | None = None
    used_by_type: dict[str, int] = {}
    for r in rows:
        if r.period_id is not None and r.period_start == spec.start:
            period = PeriodRow(r.period_id, r.period_start, r.period_end, r.period_plan)
            used_by_type = dict(zip(r.used_types or [], r.useds or [], strict=True))
    balance_types = first.balance_types or []
    pools = dict(
        zip(balance_types, zip(first.rollovers or [], first.purchaseds or [], strict=True), strict=True)
    )
    versions = dict(zip(balance_types, first.versions or [], strict=True))
    reserved_by_type, counted = _live_holds(user_id, versions)

    usage_types: dict[str, UsageTypeSummary] = {}
    for name in catalog.usage_types:
        m = meter(name)
        used = used_by_type.get(name, 0) or 0
        limit = m.limit(period.plan_id if period else spec.plan_id)
        rollover, purchased = pools.get(name, (0, 0)) if m.pools else (0, 0)
        reserved = reserved_by_type.get(name, 0)
        usage_types[name] = UsageTypeSummary(
            limit=limit,
            used=used,
            rollover=rollover,
            purchased=purchased,
            reserved=reserved,
            available=available(
                limit=limit,
                used=used,
                rollover=rollover,
                purchased=purchased,
                pools=m.pools,
                reserved=reserved,
            ),
        )

    plan = catalog.find_plan(spec.plan_id) or catalog.free_plan
    return SummaryResponse(
        user_id=user_id,
        billing_enabled=billing_enabled,
        plan=PlanOut(id=plan.id, name=plan.name),
        subscription=_subscription_out(first),
        period=PeriodOut(start=spec.start, end=spec.end),
        usage_types=usage_types,
        reservations_counted=counted,
    )


# --- breakdown --------------------------------------------------------------------------------------

_DETAILS_KEY = re.compile(r"[A-Za-z0-9_\-]+")  # the catalog's field rule (FIELD_PATTERN)

_SUBSCRIPTION_SQL = text(
    """
    SELECT s.subscription_id, s.plan_id, s.status, s.current_period_start, s.current_period_end,
           s.billing_cycle_anchor
    FROM (SELECT CAST(:u AS text) AS user_id) k
    LEFT JOIN accounts a ON a.user_id = k.user_id
    LEFT JOIN subscriptions s ON s.subscription_id = a.current_subscription_id
    """
)


def _field_sql(field: str) -> tuple[str, str]:
    """(jsonb expression, text expression) of a catalog field in a usage_events row. The text form
    is what `->>` gives, as `domain.grouping.label_of` renders labels. Field names were checked
    against the catalog's pattern at load; they are checked again here because they become SQL."""
    if field == "reference_id":
        return "to_jsonb(reference_id)", "reference_id"
    key = field.removeprefix("details.")
    if not field.startswith("details.") or not _DETAILS_KEY.fullmatch(key):
        raise ValueError(f"not a catalog field: {field!r}")
    return f"(details -> '{key}')", f"(details ->> '{key}')"


def _literal(field: str) -> str:
    _field_sql(field)  # the same check: only catalog field names become SQL literals
    return f"'{field}'"


def _usage_type_select(index: int, kind: UsageType) -> str:
    spec = kind.breakdown
    keys = ", ".join(_field_sql(f)[0] for f in spec.group_by)
    if spec.label is None:
        label = "CAST(NULL AS text)"
    else:
        label_text = _field_sql(spec.label)[1]
        label = (
            f"(array_agg({label_text} ORDER BY recorded_at DESC, event_id DESC)"
            f" FILTER (WHERE {label_text} IS NOT NULL))[1]"
        )
    distinct = ", ".join(
        f"{_literal(f)}, count(DISTINCT nullif({_field_sql(f)[0]}, 'null'::jsonb))" for f in spec.distinct
    )
    measures = ", ".join(
        f"{_literal(f)}, coalesce(sum(CAST({_field_sql(f)[1]} AS numeric))"
        f" FILTER (WHERE jsonb_typeof({_field_sql(f)[0]}) = 'number'), 0)"
        for f in spec.measures
    )
    return f"""
    SELECT CAST(:t{index} AS text) AS usage_type, jsonb_build_array({keys}) AS key,
           sum(amount) AS total, count(*) AS events, {label} AS label,
           jsonb_build_object({distinct}) AS distinct_counts, jsonb_build_object({measures}) AS measures
    FROM usage_events
    WHERE user_id = :u AND usage_type = :t{index} AND recorded_at >= :start AND recorded_at < :end
    GROUP BY 2"""


def breakdown_sql(kinds: list[UsageType]) -> tuple[str, dict[str, str]]:
    """The breakdown statement for these usage types and their bind parameters (besides :u, :start,
    :end). Public so that tests can EXPLAIN exactly what the service runs."""
    parts = [_usage_type_select(i, kind) for i, kind in enumerate(kinds)]
    sql = "\n    UNION ALL".join(parts) + "\n    ORDER BY usage_type, total DESC, key"
    return sql, {f"t{i}": kind.id for i, kind in enumerate(kinds)}


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


def _current_period(conn: Connection, user_id: str, catalog: Catalog, now: datetime) -> PeriodSpec:
    row = conn.execute(_SUBSCRIPTION_SQL, {"u": user_id}).one()
    return resolve_period(subscription_state(row), now, catalog.free_plan.id)


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
    kinds = [meter(usage_type).usage_type] if usage_type is not None else list(catalog.usage_types.values())
    window_start = parse_instant(start, "from") if start is not None else None
    window_end = parse_instant(end, "to") if end is not None else None

    def read(conn: Connection) -> Sequence[Any]:
        nonlocal window_start, window_end
        if window_start is None or window_end is None:
            period = _current_period(conn, user_id, catalog, now or datetime.now(UTC))
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
        sql, params = breakdown_sql(kinds)
        return conn.execute(
            text(sql), {"u": user_id, "start": window_start, "end": window_end, **params}
        ).all()

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

_STATS_SQL = text(
    """
    SELECT usage_type, key, label, total, events, measures
    FROM lifetime_stats
    WHERE user_id = :u
    ORDER BY usage_type, total DESC, key
    """
)


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
    rows = run_read(lambda conn: conn.execute(_STATS_SQL, {"u": user_id}).all())

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
