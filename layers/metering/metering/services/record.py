"""Record usage: idempotent on event_id, the waterfall, one transaction and one set-based write for
any number of events. metering.md "Record"."""

from __future__ import annotations

import decimal
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from uuid import UUID

from metering import reservations
from metering.api.models import (
    BalanceOut,
    BreakdownOut,
    PeriodOut,
    UsageRequest,
    UsageResponse,
    compact_json,
    details_json,
)
from metering.config import get_settings
from metering.db import exc
from metering.db.engine import run_in_transaction, sqlstate
from metering.db.ledger import (
    Entry,
    Pair,
    PairState,
    PeriodRow,
    Pools,
    StatsRow,
    UsageRow,
    ensure_period,
    lock_pairs,
    post_usage,
)
from metering.domain.grouping import group_key, group_of, label_of, measures_of
from metering.domain.ledger import ZERO, Breakdown, waterfall
from metering.domain.periods import PeriodSpec, charged_period, governing_plan
from metering.errors import (
    AmountOutOfRange,
    EventIdConflict,
    InternalError,
    MeteringError,
    OccurredAtOutOfRange,
    check_int64,
)
from metering.observability import Metric, count, logger
from metering.services import alerts
from metering.services.context import Meter, meter

if TYPE_CHECKING:
    from sqlalchemy import Connection

# api.md section 7: how far ahead of the recording moment `occurred_at` may lie (clock skew)
FUTURE_SKEW = timedelta(seconds=300)


class Outcome(NamedTuple):
    """What happened to one event: recorded, duplicate, or rejected with an error."""

    event_id: str | None
    status: Literal["recorded", "duplicate", "rejected"]
    breakdown: Breakdown | None = None  # recorded or duplicate: the event's split
    balance: Pools | None = None  # and the pools once it is included
    error: MeteringError | None = None
    version: int = 0  # of the (user, usage type) balances once this event is included
    period: tuple[datetime, datetime] | None = None  # the period that paid

    @property
    def retryable(self) -> bool:
        return self.error is not None and self.error.status >= 500

    @property
    def response(self) -> UsageResponse | None:
        """The API's answer, built on demand (after the transaction: never while locks are held)."""
        if self.breakdown is None or self.balance is None or self.event_id is None or self.period is None:
            return None
        # built from values this service computed: no validation needed
        return UsageResponse.model_construct(
            event_id=self.event_id,
            recorded=self.status == "recorded",
            duplicate=self.status == "duplicate",
            breakdown=breakdown_out(self.breakdown),
            balance=BalanceOut.model_construct(
                used=self.balance.used,
                rollover=self.balance.rollover,
                purchased=self.balance.purchased,
                granted=self.balance.granted,
            ),
            period=PeriodOut.model_construct(start=self.period[0], end=self.period[1]),
        )


def breakdown_out(split: Breakdown) -> BreakdownOut:
    return BreakdownOut.model_construct(
        from_subscription=split.from_subscription,
        from_rollover=split.from_rollover,
        from_grants=split.from_grants,
        from_purchased=split.from_purchased,
        overflow_to_debt=split.overflow_to_debt,
    )


# Measures are summed as PostgreSQL sums numeric: exactly, from each value's JSON text.
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


class _Stored(NamedTuple):
    """What an event id stands for already: a stored row, or an earlier new event of this set.
    (This and `_Derived` are made once per event: named tuples, cheaper than frozen dataclasses.)"""

    user_id: str
    usage_type: str
    amount: int
    occurred_at: datetime | None
    breakdown: Breakdown
    period: tuple[datetime, datetime]


class _Derived(NamedTuple):
    """What a new event writes besides its split, which no balance affects: computed before the
    transaction takes any lock, so that locks are held for as little work as possible."""

    details: str | None
    group_key: str
    group: str
    label: str | None
    measures: dict[str, decimal.Decimal]


def _derive(event: UsageRequest, m: Meter, groups: dict[Any, tuple[str, str]]) -> _Derived:
    """`groups` remembers the (key, JSON) of each group seen in this set: events of one set
    mostly share a few groups, and both are JSON encodings."""
    spec = m.usage_type.breakdown
    group = group_of(spec, event.reference_id, event.details)
    # the types too: 1, 1.0 and True are equal as keys but not as JSON
    values: Any = (m.usage_type.id, *((type(v), v) for v in group.values()))
    try:
        known = groups.get(values)
    except TypeError:  # a list or object in a grouped field: not hashable, not remembered
        values, known = None, None
    if known is None:
        known = (group_key(group), compact_json(group))
        if values is not None:
            groups[values] = known
    return _Derived(
        details_json(event.details),
        known[0],
        known[1],
        label_of(spec, event.reference_id, event.details),
        {name: _exact(v) for name, v in measures_of(spec, event.details).items()},
    )


def _exact(number: float) -> decimal.Decimal:
    """The value PostgreSQL reads from the number's JSON text (`repr` for a float)."""
    return decimal.Decimal(number) if isinstance(number, int) else decimal.Decimal(repr(number))


type _New = tuple[UsageRequest, Breakdown, "_Slot", _Derived]


@dataclass(slots=True)
class _Slot:
    """A locked pair's counter in one period (the current one, or a late event's)."""

    period_id: UUID
    start: datetime
    end: datetime
    limit: int | None
    used: int


@dataclass(slots=True)
class _Pair:
    """A locked (user, usage type) while its events are applied: the running pools and grants,
    and the counters of the periods its events are charged to."""

    meter: Meter
    state: PairState
    rollover: int
    purchased: int
    grants: list[list[Any]]  # [grant_id, remaining], soonest expiry first
    version: int
    slots: dict[datetime, _Slot] = field(default_factory=dict)  # by period start
    periods: dict[datetime, PeriodSpec] = field(default_factory=dict)  # by moment: `_period`'s answers

    def pools(self, slot: _Slot) -> Pools:
        return Pools(slot.used, self.rollover, self.purchased, granted=sum(g[1] for g in self.grants))


def _out_of_range(event: UsageRequest, now: datetime) -> MeteringError | None:
    """api.md section 7: `occurred_at` within the grace window back, and 300 s ahead."""
    moment = event.occurred_at
    if moment is None:
        return None
    grace = get_settings().late_event_grace_seconds
    if now - timedelta(seconds=grace) <= moment <= now + FUTURE_SKEW:
        return None
    return OccurredAtOutOfRange(
        f"occurred_at: {moment.isoformat()} is outside the accepted window: at most {grace} s before "
        f"now ({now.isoformat()}) and {int(FUTURE_SKEW.total_seconds())} s after"
    )


def _apply(
    conn: Connection, events: list[UsageRequest], now: datetime, *, only_free: bool
) -> list[Outcome | None]:
    """Events in input order inside an open transaction, as one set: lock every (user, usage
    type) and read their state (one round trip), run the waterfall for each event in order in
    Python, then queue ONE statement writing every new event, sent with COMMIT. An event's own
    rejection changes nothing; a database error fails the whole transaction.

    With `only_free`, only the pairs no other transaction holds are locked and applied; the
    outcomes of the other pairs' events stay None, for a transaction that waits for them."""
    outcomes: list[Outcome | None] = [None] * len(events)
    meters: dict[str, Meter] = {}
    wanted: dict[Pair, Meter] = {}
    derived: list[_Derived | None] = [None] * len(events)
    groups: dict[Any, tuple[str, str]] = {}
    moments: set[datetime] = set()
    for i, event in enumerate(events):
        try:
            m = meters.get(event.usage_type) or meters.setdefault(event.usage_type, meter(event.usage_type))
        except MeteringError as error:
            outcomes[i] = Outcome(event.event_id, "rejected", error=error)
            continue
        wanted.setdefault((event.user_id, event.usage_type), m)
        derived[i] = _derive(event, m, groups)
        if event.occurred_at is not None:
            moments.add(event.occurred_at)
    if not wanted:
        return outcomes

    ids = list(dict.fromkeys(e.event_id for e in events))
    states, rows = lock_pairs(conn, list(wanted), now, ids, moments=sorted(moments), skip_locked=only_free)
    pairs = {
        pair: _Pair(
            wanted[pair],
            state,
            state.rollover if wanted[pair].pools else 0,
            state.purchased if wanted[pair].pools else 0,
            [[g.grant_id, g.remaining] for g in state.grants] if wanted[pair].pools else [],
            state.version,
        )
        for pair, state in states.items()
    }
    known = {
        r.event_id: _Stored(
            r.user_id,
            r.usage_type,
            r.amount,
            r.occurred_at,
            Breakdown(
                r.from_subscription, r.from_rollover, r.from_purchased, r.overflow_to_debt, r.from_grants
            ),
            (r.period_start, r.period_end),
        )
        for r in rows
    }
    created: dict[tuple[str, datetime], PeriodRow] = {}
    levels = alerts.levels(pairs)  # only of pairs whose usage type has alerts
    new: list[_New] = []
    for i, event in enumerate(events):
        pair = pairs.get((event.user_id, event.usage_type))
        if outcomes[i] is None and pair is not None:
            outcomes[i] = _apply_one(conn, event, pair, known, new, derived[i], now, created)
    if new:
        _write(conn, new, now)
        alerts.after_usage(conn, pairs, levels, now)  # the outbox: a statement only if crossed
    return outcomes


def _slot(
    conn: Connection,
    user_id: str,
    pair: _Pair,
    spec: PeriodSpec,
    created: dict[tuple[str, datetime], PeriodRow],
) -> _Slot:
    """The pair's counter in the period `spec` describes, its row created if missing (one more
    round trip, once per user and period: nobody has used it yet, and we hold the lock)."""
    slot = pair.slots.get(spec.start)
    if slot is None:
        row, used = pair.state.period(spec)
        if row is None:
            row = created.get((user_id, spec.start))
            if row is None:
                row = created[(user_id, spec.start)] = ensure_period(conn, user_id, spec)
        limit = pair.meter.limit(governing_plan(spec, row.plan_id))
        slot = pair.slots[spec.start] = _Slot(row.period_id, row.start, row.end, limit, used)
    return slot


def _apply_one(
    conn: Connection,
    event: UsageRequest,
    pair: _Pair,
    known: dict[str, _Stored],
    new: list[_New],
    derived: _Derived | None,
    now: datetime,
    created: dict[tuple[str, datetime], PeriodRow],
) -> Outcome:
    """One event against its pair's running pools: a duplicate, a conflict, or a new event (whose
    split is appended to `new` and applied to the running pools and its period's counter)."""
    m = pair.meter
    prior = known.get(event.event_id)
    if prior is not None:
        if (prior.user_id, prior.usage_type, prior.amount, prior.occurred_at) != (
            event.user_id,
            event.usage_type,
            event.amount,
            event.occurred_at,
        ):
            conflict = EventIdConflict(
                f"event_id: {event.event_id!r} was already recorded with a different user_id, "
                "usage_type, amount or occurred_at"
            )
            return Outcome(event.event_id, "rejected", error=conflict)
        current = _slot(conn, event.user_id, pair, _period(m, pair, now, now), created)
        return Outcome(
            event.event_id,
            "duplicate",
            prior.breakdown,
            pair.pools(current),
            version=pair.version,
            period=prior.period,
        )
    slot = _slot(conn, event.user_id, pair, _period(m, pair, event.occurred_at or now, now), created)
    split = (
        waterfall(
            event.amount,
            limit=slot.limit,
            used=slot.used,
            rollover=pair.rollover,
            purchased=pair.purchased,
            pools=m.pools,
            grants=[(g[0], g[1]) for g in pair.grants],
        )
        if m.billing_enabled
        else ZERO
    )
    try:
        next_used = check_int64(slot.used + split.from_subscription, "amount")
        next_rollover = check_int64(pair.rollover - split.from_rollover - split.overflow_to_debt, "amount")
    except MeteringError as out_of_range:
        return Outcome(event.event_id, "rejected", error=out_of_range)
    slot.used, pair.rollover, pair.purchased = next_used, next_rollover, pair.purchased - split.from_purchased
    if split.drawn:
        taken = dict(split.drawn)
        for g in pair.grants:
            g[1] -= taken.get(g[0], 0)
    known[event.event_id] = _Stored(
        event.user_id, event.usage_type, event.amount, event.occurred_at, split, (slot.start, slot.end)
    )
    assert derived is not None  # every event with a meter has one
    new.append((event, split, slot, derived))
    return Outcome(
        event.event_id,
        "recorded",
        split,
        pair.pools(slot),
        version=pair.version,
        period=(slot.start, slot.end),
    )


def _period(m: Meter, pair: _Pair, moment: datetime, now: datetime) -> PeriodSpec:
    """The period a usage at `moment`, recorded at `now`, is charged to (`charged_period`): worked
    out once per pair and moment, as a set's events mostly share both."""
    spec = pair.periods.get(moment)
    if spec is None:
        rows = pair.state.periods.values()
        stored = [(row.start, row.end, row.plan_id, row.rolled_over) for row, _ in rows]
        free = m.catalog.free_plan.id
        spec = pair.periods[moment] = charged_period(pair.state.subscription, moment, now, free, stored)
    return spec


@dataclass(slots=True)
class _Group:
    """The lifetime aggregate of one breakdown group, summed over this set's new events."""

    key: str
    label: str | None
    total: int = 0
    events: int = 0
    measures: dict[str, decimal.Decimal] = field(default_factory=dict)


def _lifetime(new: list[_New]) -> dict[tuple[str, str, str], _Group]:
    groups: dict[tuple[str, str, str], _Group] = {}
    for event, _, _, d in new:
        g = groups.get((event.user_id, event.usage_type, d.group_key))
        if g is None:
            g = groups[(event.user_id, event.usage_type, d.group_key)] = _Group(d.group, None)
        g.label = d.label or g.label  # the latest non-null
        g.total += event.amount
        g.events += 1
        for name, value in d.measures.items():
            g.measures[name] = _EXACT.add(g.measures.get(name, decimal.Decimal(0)), value)
    return groups


def _measures_json(measures: dict[str, decimal.Decimal]) -> str:
    return "{" + ",".join(f"{compact_json(k)}:{v}" for k, v in measures.items()) + "}"


def _write(conn: Connection, new: list[_New], now: datetime) -> None:
    """All new events: usage rows, lifetime aggregates and journaled changes, in one call queued to
    go with COMMIT."""
    usage = [
        UsageRow(
            e.event_id,
            e.user_id,
            e.usage_type,
            e.amount,
            e.reference_id,
            e.description,
            d.details,
            e.reservation_id,
            p.period_id,
            e.occurred_at,
            s.from_subscription,
            s.from_rollover,
            s.from_grants,
            s.from_purchased,
            s.overflow_to_debt,
        )
        for e, s, p, d in new
    ]
    stats = [
        StatsRow(user_id, usage_type, key, g.key, g.label, g.total, g.events, _measures_json(g.measures))
        for (user_id, usage_type, key), g in _lifetime(new).items()
    ]
    entries = [
        Entry(
            e.event_id,
            e.user_id,
            e.usage_type,
            p.period_id,
            used=s.from_subscription,
            rollover=-(s.from_rollover + s.overflow_to_debt),
            purchased=-s.from_purchased,
            grants=tuple((grant_id, -taken) for grant_id, taken in s.drawn),
        )
        for e, s, p, _ in new
    ]
    post_usage(conn, now, usage, stats, entries)


def record(event: UsageRequest, now: datetime | None = None) -> Outcome:
    """Record one event in its own transaction. A rejection raises its MeteringError."""
    outcome = record_many([event], now)[0]
    if outcome.error is not None:
        raise outcome.error
    return outcome


def record_many(events: list[UsageRequest], now: datetime | None = None) -> list[Outcome]:
    """Record events, each applied or rejected on its own; results in input order.

    All events are applied as one set: one transaction (one commit for many rows, two round trips
    for any number of events), or a few when other transactions hold some of its pairs (free
    pairs first, `_record_set`). That is safe because an event's own rejection changes nothing. A
    database error falls back to one transaction per user, then per event, so only the event that
    caused it fails.
    """
    now = now or datetime.now(UTC)
    rejected = {i: error for i, e in enumerate(events) if (error := _out_of_range(e, now)) is not None}
    if rejected:
        accepted = [e for i, e in enumerate(events) if i not in rejected]
        recorded = iter(_record_set(accepted, now) if accepted else [])
        outcomes = [
            Outcome(e.event_id, "rejected", error=rejected[i]) if i in rejected else next(recorded)
            for i, e in enumerate(events)
        ]
    else:
        outcomes = _record_set(events, now)
    _settle_reservations(events, outcomes)
    _count(outcomes)
    return outcomes


# How many transactions a set may spend taking only free pairs before one waits for the rest.
FREE_PASSES = 3


def _record_set(
    events: list[UsageRequest], now: datetime, *, free_passes: int = FREE_PASSES
) -> list[Outcome]:
    """The set in one transaction; a set of several pairs takes the free pairs first and leaves
    the pairs other transactions hold to the next transaction: again only the free ones while
    that makes progress (holders commit meanwhile), at most `free_passes` times, then one that
    waits for the rest. Concurrent batches sharing some users thus do not queue behind each
    other's whole transaction."""
    only_free = free_passes > 0 and _free_first_is_safe(events)
    try:
        outcomes = run_in_transaction(lambda conn: _apply(conn, events, now, only_free=only_free))
    except MeteringError as error:  # the database is unavailable: every event may be retried
        return [Outcome(e.event_id, "rejected", error=error) for e in events]
    except exc.DBAPIError as error:
        if len(events) == 1:
            return [_failed(events[0], error)]
        return _record_in_parts(events, now)
    left = [i for i, outcome in enumerate(outcomes) if outcome is None]
    if left:
        # a free pass that took nothing will not take anything soon either: wait
        passes = free_passes - 1 if len(left) < len(events) else 0
        for i, outcome in zip(
            left, _record_set([events[i] for i in left], now, free_passes=passes), strict=True
        ):
            outcomes[i] = outcome
    return [o for o in outcomes if o is not None]


def _free_first_is_safe(events: list[UsageRequest]) -> bool:
    """Several pairs, and no event id under two pairs: input order decides which of those is the
    original, so they must be applied in one transaction, in order."""
    pair_of: dict[str, tuple[str, str]] = {}
    pairs = set()
    for e in events:
        pair = (e.user_id, e.usage_type)
        pairs.add(pair)
        if pair_of.setdefault(e.event_id, pair) != pair:
            return False
    return len(pairs) > 1


def _record_in_parts(events: list[UsageRequest], now: datetime) -> list[Outcome]:
    """After a database error: each user's events on their own, or (for one user) each event on
    its own, so that only the event that caused it fails."""
    by_user: dict[str, list[int]] = defaultdict(list)
    for index, event in enumerate(events):
        by_user[event.user_id].append(index)
    parts = list(by_user.values()) if len(by_user) > 1 else [[i] for i in range(len(events))]
    outcomes: list[Outcome | None] = [None] * len(events)
    for part in parts:
        for i, outcome in zip(part, _record_set([events[i] for i in part], now), strict=True):
            outcomes[i] = outcome
    return [o for o in outcomes if o is not None]


def _failed(event: UsageRequest, error: exc.DBAPIError) -> Outcome:
    if sqlstate(error) == "22003":  # numeric_value_out_of_range: a total would overflow
        return Outcome(event.event_id, "rejected", error=AmountOutOfRange("amount: a total would overflow"))
    logger.exception("recording failed", extra={"event_id": event.event_id})
    return Outcome(event.event_id, "rejected", error=InternalError("internal error; retry the event"))


def _settle_reservations(events: list[UsageRequest], outcomes: list[Outcome]) -> None:
    # after commit: the usage is safely stored before its hold disappears
    for event, outcome in zip(events, outcomes, strict=True):
        if event.reservation_id and outcome.status in ("recorded", "duplicate"):
            reservations.settle(event.user_id, event.reservation_id, event.usage_type, outcome.version)


def _count(outcomes: list[Outcome]) -> None:
    tally = {"recorded": 0, "duplicate": 0, "rejected": 0}
    for o in outcomes:
        tally[o.status] += 1
    for status, metric in (
        ("recorded", Metric.USAGE_RECORDED),
        ("duplicate", Metric.USAGE_DUPLICATE),
        ("rejected", Metric.USAGE_REJECTED),
    ):
        if tally[status]:
            count(metric, tally[status])
