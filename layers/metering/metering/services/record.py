"""Record usage: idempotent on event_id, the waterfall, one transaction per user's events and one
set-based write per (user, usage type). metering.md "Record"."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from sqlalchemy import Connection, exc

from metering import reservations
from metering.api.models import BalanceOut, BreakdownOut, UsageRequest, UsageResponse
from metering.db.engine import Retry, run_in_transaction, sqlstate
from metering.db.store import Alongside, Entry, Pools, current_period, lock_pools_and_events, post_entries
from metering.domain.grouping import group_key, group_of, label_of, measures_of
from metering.domain.ledger import ZERO, Breakdown, waterfall
from metering.errors import AmountOutOfRange, EventIdConflict, InternalError, MeteringError, check_int64
from metering.observability import Metric, count, logger
from metering.services.context import meter


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


# The usage rows and lifetime aggregates of a group's new events, written by the same statement
# as their journaled balance change (`store.post_entries`): one row per event from the arrays,
# then the aggregates summed per breakdown group (the label is the latest non-null one).
_USAGE_CTES = """
    n AS (
        SELECT * FROM unnest(
            CAST(:ev_ids AS text[]), CAST(:ev_amounts AS bigint[]), CAST(:ev_refs AS text[]),
            CAST(:ev_descriptions AS text[]), CAST(:ev_details AS text[]), CAST(:ev_reservations AS text[]),
            CAST(:ev_fs AS bigint[]), CAST(:ev_fr AS bigint[]), CAST(:ev_fp AS bigint[]),
            CAST(:ev_fd AS bigint[]),
            CAST(:ev_gks AS text[]), CAST(:ev_gkeys AS text[]), CAST(:ev_labels AS text[]),
            CAST(:ev_measures AS text[])
        ) WITH ORDINALITY AS n (event_id, amount, reference_id, description, details, reservation_id,
                                fs, fr, fp, fd, gk, gkey, label, measures, ord)
    ), ev AS (
        INSERT INTO usage_events (event_id, user_id, usage_type, amount, reference_id, description,
            details, reservation_id, period_id, from_subscription, from_rollover, from_purchased,
            overflow_to_debt, recorded_at)
        SELECT n.event_id, :u, :t, n.amount, n.reference_id, n.description, CAST(n.details AS jsonb),
            n.reservation_id, :p, n.fs, n.fr, n.fp, n.fd, :ev_at
        FROM n ORDER BY n.ord
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id
    ), agg AS (
        SELECT n.gk, min(n.gkey) AS gkey,
               (array_agg(n.label ORDER BY n.ord DESC) FILTER (WHERE n.label IS NOT NULL))[1] AS label,
               CAST(sum(n.amount) AS bigint) AS total, count(*) AS events,
               (SELECT coalesce(jsonb_object_agg(m.key, m.total), '{}'::jsonb)
                FROM (SELECT kv.key, sum(CAST(kv.value AS numeric)) AS total
                      FROM n AS n2, jsonb_each_text(CAST(n2.measures AS jsonb)) AS kv
                      WHERE n2.gk = n.gk GROUP BY kv.key) AS m) AS measures
        FROM n GROUP BY n.gk
    ), stats AS (
        INSERT INTO lifetime_stats (user_id, usage_type, group_key, key, label, total, events, measures)
        SELECT :u, :t, agg.gk, CAST(agg.gkey AS jsonb), agg.label, agg.total, agg.events, agg.measures
        FROM agg
        ON CONFLICT (user_id, usage_type, group_key) DO UPDATE SET
            total = lifetime_stats.total + excluded.total,
            events = lifetime_stats.events + excluded.events,
            label = coalesce(excluded.label, lifetime_stats.label),
            measures = (
                SELECT coalesce(jsonb_object_agg(k,
                    coalesce((lifetime_stats.measures ->> k)::numeric, 0)
                    + coalesce((excluded.measures ->> k)::numeric, 0)), '{}'::jsonb)
                FROM jsonb_object_keys(lifetime_stats.measures || excluded.measures) AS k
            ),
            updated_at = now()
        RETURNING 1
    ),"""


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _response(event: UsageRequest, breakdown: Breakdown, pools: Pools, *, duplicate: bool) -> UsageResponse:
    # built from values this service computed: no validation needed
    return UsageResponse.model_construct(
        event_id=event.event_id,
        recorded=not duplicate,
        duplicate=duplicate,
        breakdown=BreakdownOut.model_construct(
            from_subscription=breakdown.from_subscription,
            from_rollover=breakdown.from_rollover,
            from_purchased=breakdown.from_purchased,
            overflow_to_debt=breakdown.overflow_to_debt,
        ),
        balance=BalanceOut.model_construct(
            used=pools.used, rollover=pools.rollover, purchased=pools.purchased
        ),
    )


@dataclass(frozen=True, slots=True)
class _Stored:
    """What an event id stands for already: a stored row, or an earlier new event of this batch."""

    user_id: str
    usage_type: str
    amount: int
    breakdown: Breakdown


def _apply_user(conn: Connection, events: list[UsageRequest], now: datetime) -> list[Outcome]:
    """One user's events in one open transaction: one set-based pass per usage type.

    Usage types are independent, so their groups may run one after the other, except when one
    event id is used under two usage types: then input order decides which one is the original,
    and every event runs as its own group, in input order.
    """
    by_type: dict[str, list[int]] = {}
    type_of_id: dict[str, str] = {}
    mixed = False
    for i, event in enumerate(events):
        by_type.setdefault(event.usage_type, []).append(i)
        if type_of_id.setdefault(event.event_id, event.usage_type) != event.usage_type:
            mixed = True
    runs = [[i] for i in range(len(events))] if mixed else list(by_type.values())
    outcomes: list[Outcome | None] = [None] * len(events)
    for run in runs:
        for i, outcome in zip(run, _apply_group(conn, [events[i] for i in run], now), strict=True):
            outcomes[i] = outcome
    return [o for o in outcomes if o is not None]


def _apply_group(conn: Connection, events: list[UsageRequest], now: datetime) -> list[Outcome]:
    """Events of one (user, usage type), in input order, inside an open transaction: lock once,
    classify each event, run the waterfall in order, write all new events with one statement.
    An event's own rejection changes nothing; a database error aborts the whole transaction."""
    user_id, usage_type = events[0].user_id, events[0].usage_type
    try:
        m = meter(usage_type)
    except MeteringError as error:
        return [Outcome(e.event_id, "rejected", error=error) for e in events]
    period = current_period(conn, user_id, usage_type, now, m.catalog.free_plan.id)
    pools, rows = lock_pools_and_events(
        conn, user_id, usage_type, period.period_id, list(dict.fromkeys(e.event_id for e in events))
    )
    known = {
        r.event_id: _Stored(
            r.user_id,
            r.usage_type,
            r.amount,
            Breakdown(r.from_subscription, r.from_rollover, r.from_purchased, r.overflow_to_debt),
        )
        for r in rows
    }

    limit = m.limit(period.plan_id)
    billing, spec_b, version = m.billing_enabled, m.usage_type.breakdown, pools.version
    used, rollover, purchased = pools.used, pools.rollover, pools.purchased
    outcomes: list[Outcome] = []
    new: list[tuple[UsageRequest, Breakdown]] = []
    for event in events:
        prior = known.get(event.event_id)
        if prior is not None:
            if (prior.user_id, prior.usage_type, prior.amount) != (user_id, usage_type, event.amount):
                conflict = EventIdConflict(
                    f"event_id: {event.event_id!r} was already recorded with a different user_id, "
                    "usage_type or amount"
                )
                outcomes.append(Outcome(event.event_id, "rejected", error=conflict))
            else:
                response = _response(event, prior.breakdown, Pools(used, rollover, purchased), duplicate=True)
                outcomes.append(Outcome(event.event_id, "duplicate", response, version=version))
            continue
        split = (
            waterfall(
                event.amount, limit=limit, used=used, rollover=rollover, purchased=purchased, pools=m.pools
            )
            if billing
            else ZERO
        )
        try:
            next_used = check_int64(used + split.from_subscription, "amount")
            next_rollover = check_int64(rollover - split.from_rollover - split.overflow_to_debt, "amount")
        except MeteringError as out_of_range:
            outcomes.append(Outcome(event.event_id, "rejected", error=out_of_range))
            continue
        used, rollover, purchased = next_used, next_rollover, purchased - split.from_purchased
        known[event.event_id] = _Stored(user_id, usage_type, event.amount, split)
        new.append((event, split))
        response = _response(event, split, Pools(used, rollover, purchased), duplicate=False)
        outcomes.append(Outcome(event.event_id, "recorded", response, version=version))

    if new:
        _write(conn, period.period_id, new, now, spec_b)
    return outcomes


def _write(
    conn: Connection,
    period_id: UUID,
    new: list[tuple[UsageRequest, Breakdown]],
    now: datetime,
    spec_b: Any,
) -> None:
    """All new events of one group: usage rows, journal rows, balances, counter and lifetime
    aggregates in one statement."""
    first = new[0][0]
    groups = [group_of(spec_b, e.reference_id, e.details) for e, _ in new]
    params = {
        "ev_ids": [e.event_id for e, _ in new],
        "ev_amounts": [e.amount for e, _ in new],
        "ev_refs": [e.reference_id for e, _ in new],
        "ev_descriptions": [e.description for e, _ in new],
        "ev_details": [_dumps(e.details) for e, _ in new],
        "ev_reservations": [e.reservation_id for e, _ in new],
        "ev_fs": [s.from_subscription for _, s in new],
        "ev_fr": [s.from_rollover for _, s in new],
        "ev_fp": [s.from_purchased for _, s in new],
        "ev_fd": [s.overflow_to_debt for _, s in new],
        "ev_gks": [group_key(g) for g in groups],
        "ev_gkeys": [_dumps(g) for g in groups],
        "ev_labels": [label_of(spec_b, e.reference_id, e.details) for e, _ in new],
        "ev_measures": [_dumps(measures_of(spec_b, e.details)) for e, _ in new],
        "ev_at": now,
    }
    inserted = post_entries(
        conn,
        user_id=first.user_id,
        usage_type=first.usage_type,
        reason="usage",
        period_id=period_id,
        entries=[
            Entry(
                e.event_id,
                used=s.from_subscription,
                rollover=-(s.from_rollover + s.overflow_to_debt),
                purchased=-s.from_purchased,
            )
            for e, s in new
        ],
        alongside=Alongside(_USAGE_CTES, params, counted="ev"),
    )
    if inserted != len(new):
        # An id unseen by the lock statement's snapshot was inserted by a concurrent transaction
        # (of another user or type, or one this lock waited for): classify again from the start.
        raise Retry(f"{len(new) - inserted} of {len(new)} event ids were taken concurrently")


def record(event: UsageRequest, now: datetime | None = None) -> Outcome:
    """Record one event in its own transaction. A rejection raises its MeteringError."""
    outcome = record_many([event], now)[0]
    if outcome.error is not None:
        raise outcome.error
    return outcome


def record_many(events: list[UsageRequest], now: datetime | None = None) -> list[Outcome]:
    """Record events, each applied or rejected on its own; results in input order.

    Events of one user share one transaction (one commit for many rows), and the events of one
    (user, usage type) are applied as a set: one lock, one statement for all new events (a single
    record is a set of one). That is safe because an event's own rejection changes nothing; a
    database error in a group falls back to one transaction per event, so only the event that
    caused it fails.
    """
    now = now or datetime.now(UTC)
    by_user: dict[str, list[int]] = defaultdict(list)
    for index, event in enumerate(events):
        by_user[event.user_id].append(index)

    outcomes: list[Outcome | None] = [None] * len(events)
    for indexes in by_user.values():
        group = [events[i] for i in indexes]

        def apply_group(conn: Connection, group: list[UsageRequest] = group) -> list[Outcome]:
            return _apply_user(conn, group, now)

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
        return run_in_transaction(lambda conn: _apply_user(conn, [event], now))[0]
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
            reservations.settle(event.user_id, event.reservation_id, event.usage_type, outcome.version)


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
