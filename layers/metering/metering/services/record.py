"""Record usage: idempotent on event_id, the waterfall, one transaction per event (or per user's
group of events in a batch). metering.md "Record"."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Connection, exc, text

from metering import reservations
from metering.api.models import BalanceOut, BreakdownOut, UsageRequest, UsageResponse
from metering.db.engine import run_in_transaction, sqlstate
from metering.db.store import Pools, lock_current, post_entry
from metering.domain.grouping import group_key, group_of, label_of, measures_of
from metering.domain.ledger import ZERO, Breakdown, waterfall
from metering.errors import AmountOutOfRange, EventIdConflict, InternalError, MeteringError, check_int64
from metering.observability import Metric, count, logger
from metering.services.context import Meter, meter


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one event: recorded, duplicate, or rejected with an error."""

    event_id: str | None
    status: Literal["recorded", "duplicate", "rejected"]
    response: UsageResponse | None = None
    error: MeteringError | None = None
    version: int = 0  # of the (user, usage type) balances once this event is included

    @property
    def retryable(self) -> bool:
        return self.error is not None and self.error.status >= 500


class _Duplicate(Exception):
    def __init__(self, response: UsageResponse, version: int) -> None:
        self.response = response
        self.version = version


_INSERT_EVENT_SQL = text(
    """
    WITH ev AS (
        INSERT INTO usage_events (event_id, user_id, usage_type, amount, reference_id, description,
            details, reservation_id, period_id, from_subscription, from_rollover, from_purchased,
            overflow_to_debt, recorded_at)
        VALUES (:event_id, :u, :t, :amount, :reference_id, :description, CAST(:details AS jsonb),
            :reservation_id, :p, :fs, :fr, :fp, :fd, :at)
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id
    ), stats AS (
        INSERT INTO lifetime_stats (user_id, usage_type, group_key, key, label, total, events, measures)
        SELECT :u, :t, :gk, CAST(:gkey AS jsonb), :label, CAST(:amount AS bigint), 1, CAST(:measures AS jsonb)
        FROM ev
        ON CONFLICT (user_id, usage_type, group_key) DO UPDATE SET
            total = lifetime_stats.total + excluded.total,
            events = lifetime_stats.events + 1,
            label = coalesce(excluded.label, lifetime_stats.label),
            measures = (
                SELECT coalesce(jsonb_object_agg(k,
                    coalesce((lifetime_stats.measures ->> k)::numeric, 0)
                    + coalesce((excluded.measures ->> k)::numeric, 0)), '{}'::jsonb)
                FROM jsonb_object_keys(lifetime_stats.measures || excluded.measures) AS k
            ),
            updated_at = now()
        RETURNING 1
    )
    SELECT event_id FROM ev
    """
)

_EXISTING_SQL = text(
    """
    SELECT user_id, usage_type, amount, from_subscription, from_rollover, from_purchased, overflow_to_debt
    FROM usage_events WHERE event_id = :event_id
    """
)


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _response(event: UsageRequest, breakdown: Breakdown, pools: Pools, *, duplicate: bool) -> UsageResponse:
    return UsageResponse(
        event_id=event.event_id,
        recorded=not duplicate,
        duplicate=duplicate,
        breakdown=BreakdownOut(**breakdown.as_dict()),
        balance=BalanceOut(**pools.as_dict()),
    )


def _apply(conn: Connection, event: UsageRequest, m: Meter, now: datetime) -> tuple[UsageResponse, int]:
    """One event inside an open transaction. Raises _Duplicate or a MeteringError without having
    changed anything but lock bookkeeping."""
    period, pools = lock_current(conn, event.user_id, event.usage_type, now, m.catalog.free_plan.id)

    split = (
        waterfall(
            event.amount,
            limit=m.limit(period.plan_id),
            used=pools.used,
            rollover=pools.rollover,
            purchased=pools.purchased,
            pools=m.pools,
        )
        if m.billing_enabled
        else ZERO
    )
    after = Pools(
        used=check_int64(pools.used + split.from_subscription, "amount"),
        rollover=check_int64(pools.rollover - split.from_rollover - split.overflow_to_debt, "amount"),
        purchased=pools.purchased - split.from_purchased,
    )

    spec_b = m.usage_type.breakdown
    group = group_of(spec_b, event.reference_id, event.details)
    inserted = conn.execute(
        _INSERT_EVENT_SQL,
        {
            "event_id": event.event_id,
            "u": event.user_id,
            "t": event.usage_type,
            "amount": event.amount,
            "reference_id": event.reference_id,
            "description": event.description,
            "details": _dumps(event.details),
            "reservation_id": event.reservation_id,
            "p": period.period_id,
            "fs": split.from_subscription,
            "fr": split.from_rollover,
            "fp": split.from_purchased,
            "fd": split.overflow_to_debt,
            "at": now,
            "gk": group_key(group),
            "gkey": _dumps(group),
            "label": label_of(spec_b, event.reference_id, event.details),
            "measures": _dumps(measures_of(spec_b, event.details)),
        },
    ).first()
    if inserted is None:
        raise _Duplicate(_original(conn, event, pools), pools.version)

    post_entry(
        conn,
        user_id=event.user_id,
        usage_type=event.usage_type,
        reason="usage",
        ref=event.event_id,
        period_id=period.period_id,
        used=split.from_subscription,
        rollover=-(split.from_rollover + split.overflow_to_debt),
        purchased=-split.from_purchased,
    )
    return _response(event, split, after, duplicate=False), pools.version


def _original(conn: Connection, event: UsageRequest, pools: Pools) -> UsageResponse:
    row = conn.execute(_EXISTING_SQL, {"event_id": event.event_id}).one()
    if (row.user_id, row.usage_type, row.amount) != (event.user_id, event.usage_type, event.amount):
        raise EventIdConflict(
            f"event_id: {event.event_id!r} was already recorded with a different user_id, "
            "usage_type or amount"
        )
    original = Breakdown(row.from_subscription, row.from_rollover, row.from_purchased, row.overflow_to_debt)
    return _response(event, original, pools, duplicate=True)


def _attempt(conn: Connection, event: UsageRequest, now: datetime) -> Outcome:
    """One event, turning its own domain outcome into an Outcome (the transaction goes on)."""
    try:
        response, version = _apply(conn, event, meter(event.usage_type), now)
        return Outcome(event.event_id, "recorded", response, version=version)
    except _Duplicate as dup:
        return Outcome(event.event_id, "duplicate", dup.response, version=dup.version)
    except MeteringError as error:
        return Outcome(event.event_id, "rejected", error=error)


def record(event: UsageRequest, now: datetime | None = None) -> Outcome:
    """Record one event in its own transaction. A rejection raises its MeteringError."""
    outcome = record_many([event], now)[0]
    if outcome.error is not None:
        raise outcome.error
    return outcome


def record_many(events: list[UsageRequest], now: datetime | None = None) -> list[Outcome]:
    """Record events, each applied or rejected on its own; results in input order.

    Events of one user share one transaction (one commit for many rows). That is safe because an
    event's own rejection changes nothing; a database error in a group falls back to one
    transaction per event, so only the event that caused it fails.
    """
    now = now or datetime.now(UTC)
    by_user: dict[str, list[int]] = defaultdict(list)
    for index, event in enumerate(events):
        by_user[event.user_id].append(index)

    outcomes: list[Outcome | None] = [None] * len(events)
    for indexes in by_user.values():
        group = [events[i] for i in indexes]

        def apply_group(conn: Connection, group: list[UsageRequest] = group) -> list[Outcome]:
            return [_attempt(conn, event, now) for event in group]

        try:
            results = run_in_transaction(apply_group)
        except exc.DBAPIError:
            results = [_alone(event, now) for event in group]
        except MeteringError as error:  # the database is unavailable: every event may be retried
            results = [Outcome(e.event_id, "rejected", error=error) for e in group]
        for i, result in zip(indexes, results, strict=True):
            outcomes[i] = result

    _settle_reservations(events, outcomes)
    _count(outcomes)
    return [o for o in outcomes if o is not None]


def _alone(event: UsageRequest, now: datetime) -> Outcome:
    try:
        return run_in_transaction(lambda conn: _attempt(conn, event, now))
    except exc.DBAPIError as error:
        if sqlstate(error) == "22003":  # numeric_value_out_of_range: a total would overflow
            return Outcome(
                event.event_id, "rejected", error=AmountOutOfRange("amount: a total would overflow")
            )
        logger.exception("recording failed", extra={"event_id": event.event_id})
        return Outcome(event.event_id, "rejected", error=InternalError("internal error; retry the event"))
    except MeteringError as error:
        return Outcome(event.event_id, "rejected", error=error)


def _settle_reservations(events: list[UsageRequest], outcomes: list[Outcome | None]) -> None:
    # after commit: the usage is safely stored before its hold disappears
    for event, outcome in zip(events, outcomes, strict=True):
        if event.reservation_id and outcome is not None and outcome.status in ("recorded", "duplicate"):
            reservations.settle(event.user_id, event.reservation_id, outcome.version)


def _count(outcomes: list[Outcome | None]) -> None:
    tally = {"recorded": 0, "duplicate": 0, "rejected": 0}
    for o in outcomes:
        if o is not None:
            tally[o.status] += 1
    for status, metric in (
        ("recorded", Metric.USAGE_RECORDED),
        ("duplicate", Metric.USAGE_DUPLICATE),
        ("rejected", Metric.USAGE_REJECTED),
    ):
        if tally[status]:
            count(metric, tally[status])
