"""The ledger's SQL: pools, periods and their counters, the journal, the usage log, lifetime stats,
adjustments, and the sums `reconcile` compares.

The serialization point is the `balances` row of a (user, usage type) pair, locked by
`lock_pairs` before any read that a change depends on; records of different users never touch the
same rows. Every change of a balance or a period counter goes through `post_entries` (or
`post_usage`, which is it plus the usage rows), which writes the journal rows in the same call.
The hot paths call the server-side routines of migration 0003 (`metering.*_v1`) by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import UUID

from metering.db.sql import Statement, fetch, first, one, queue, rows
from metering.domain.periods import PeriodSpec, SubscriptionState

if TYPE_CHECKING:
    from sqlalchemy import Connection

type Pair = tuple[str, str]  # (user_id, usage_type)


@dataclass(frozen=True, slots=True)
class PeriodRow:
    period_id: UUID
    start: datetime
    end: datetime
    plan_id: str


@dataclass(frozen=True, slots=True)
class PairState:
    """A pair's pools, its user's current subscription and the periods containing the moment read,
    each with the pair's counter: one snapshot."""

    subscription: SubscriptionState | None
    rollover: int
    purchased: int
    version: int  # of the balances row: which committed changes this read includes
    periods: dict[datetime, tuple[PeriodRow, int]]  # period_start -> (row, used of the usage type)

    def period(self, spec: PeriodSpec) -> tuple[PeriodRow | None, int]:
        """The stored row of the period `spec` describes (None: not created yet) and its counter."""
        found = self.periods.get(spec.start)
        return (found[0], found[1]) if found else (None, 0)


@dataclass(frozen=True, slots=True)
class Pools:
    used: int
    rollover: int
    purchased: int
    version: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"used": self.used, "rollover": self.rollover, "purchased": self.purchased}


def subscription_state(row: Any) -> SubscriptionState | None:
    """The subscription columns of a `metering.pair_state_v1` (or current_subscriptions) row."""
    if row.subscription_id is None:
        return None
    return SubscriptionState(
        subscription_id=row.subscription_id,
        plan_id=row.plan_id,
        status=row.status,
        period_start=row.current_period_start,
        period_end=row.current_period_end,
        anchor=row.billing_cycle_anchor,
        cancel_at_period_end=bool(row.cancel_at_period_end),
        cancel_at=row.cancel_at,
        canceled_at=row.canceled_at,
    )


def _keys(pairs: Sequence[Pair]) -> dict[str, list[str]]:
    return {"users": [u for u, _ in pairs], "types": [t for _, t in pairs]}


def _states(found: Iterable[Any]) -> dict[Pair, PairState]:
    """The rows of `metering.pair_state_v1` (one per pair and period) as each pair's state."""
    periods: dict[Pair, dict[datetime, tuple[PeriodRow, int]]] = {}
    first_rows: dict[Pair, Any] = {}
    for row in found:
        pair = (row.user_id, row.usage_type)
        first_rows.setdefault(pair, row)
        held = periods.setdefault(pair, {})
        if row.period_id is not None:
            period = PeriodRow(row.period_id, row.period_start, row.period_end, row.period_plan)
            held[row.period_start] = (period, row.used)
    return {
        pair: PairState(subscription_state(row), row.rollover, row.purchased, row.version, periods[pair])
        for pair, row in first_rows.items()
    }


# --- reads and locks of the hot paths -----------------------------------------------------------------

_PAIR_STATES = Statement("SELECT * FROM metering.pair_states_v1(:users, :types, :now)")
_LOCK_PAIRS = Statement("SELECT * FROM metering.lock_pairs_v1(:users, :types, :now, :skip_locked)")
_USAGE_EVENTS = Statement("SELECT * FROM metering.usage_events_v1(:ids)")


def pair_states(conn: Connection, pairs: Sequence[Pair], now: datetime) -> dict[Pair, PairState]:
    """Each pair's state at `now`, unlocked, in one snapshot and one round trip (a check, a summary)."""
    return _states(rows(conn, _PAIR_STATES, {**_keys(pairs), "now": now}))


class StoredUsage(NamedTuple):
    event_id: str
    user_id: str
    usage_type: str
    amount: int
    from_subscription: int
    from_rollover: int
    from_purchased: int
    overflow_to_debt: int


def lock_pairs(
    conn: Connection,
    pairs: Sequence[Pair],
    now: datetime,
    event_ids: Sequence[str] = (),
    *,
    skip_locked: bool = False,
) -> tuple[dict[Pair, PairState], list[StoredUsage]]:
    """Lock every pair for the rest of the transaction, then read their states and the stored
    usage rows of `event_ids`: one round trip (with the transaction's BEGIN). Both reads start
    after the lock is held, so they see everything its previous holder committed.

    With `skip_locked`, only the pairs that exist and that no other transaction holds are locked,
    without waiting; the states returned are those of the locked pairs."""
    params = {**_keys(pairs), "now": now, "skip_locked": skip_locked}
    if not event_ids:
        return _states(rows(conn, _LOCK_PAIRS, params)), []
    locked, stored = fetch(conn, (_LOCK_PAIRS, params), (_USAGE_EVENTS, {"ids": list(event_ids)}))
    return _states(locked), [StoredUsage(*row) for row in stored]


_ENSURE_PERIOD = Statement(
    "SELECT * FROM metering.ensure_period_v1(:user_id, :start, :end, :plan, :kind, :subscription)"
)


def ensure_period(conn: Connection, user_id: str, spec: PeriodSpec) -> PeriodRow:
    """The period row starting at spec.start, created if missing (an upsert: never two rows)."""
    row = one(
        conn,
        _ENSURE_PERIOD,
        {
            "user_id": user_id,
            "start": spec.start,
            "end": spec.end,
            "plan": spec.plan_id,
            "kind": spec.kind,
            "subscription": spec.subscription_id,
        },
    )
    return PeriodRow(row.period_id, row.period_start, row.period_end, row.plan_id)


_USED = Statement(
    "SELECT coalesce((SELECT used FROM period_usage WHERE period_id = :period AND usage_type = :type), 0)"
    " AS used"
)


def lock_pair_in(conn: Connection, user_id: str, usage_type: str, period_id: UUID, now: datetime) -> Pools:
    """Lock (user, usage type) and read its pools and its counter in the period `period_id` (which
    need not contain now: a renewal's ending period). One round trip."""
    locked, (counter,) = fetch(
        conn,
        (_LOCK_PAIRS, {**_keys([(user_id, usage_type)]), "now": now, "skip_locked": False}),
        (_USED, {"period": period_id, "type": usage_type}),
    )
    state = _states(locked)[(user_id, usage_type)]
    return Pools(counter.used, state.rollover, state.purchased, state.version)


# --- the journaled write ----------------------------------------------------------------------------------


class Entry(NamedTuple):
    """One journaled change of a (user, usage type): deltas of the period counter and the pools,
    and what caused it (a named tuple: one per event of a batch)."""

    ref: str
    user_id: str
    usage_type: str
    period_id: UUID | None = None
    used: int = 0
    rollover: int = 0
    purchased: int = 0


def _entry_params(entries: Iterable[Entry]) -> dict[str, Any]:
    """`post_entries_v1`'s arrays: summed pool deltas per pair, summed counter deltas per (period,
    usage type), one journal row per nonzero delta. Summed here, so the SQL stays flat."""
    pools: dict[Pair, list[int]] = {}
    counters: dict[tuple[UUID, str], int] = {}
    journal: list[tuple[str, str, str, UUID | None, int, str]] = []
    for e in entries:
        if e.used:
            if e.period_id is None:
                raise ValueError("a change of the period counter needs its period")
            key = (e.period_id, e.usage_type)
            counters[key] = counters.get(key, 0) + e.used
            journal.append((e.user_id, e.usage_type, "used", e.period_id, e.used, e.ref))
        if e.rollover or e.purchased:
            sums = pools.setdefault((e.user_id, e.usage_type), [0, 0])
            sums[0] += e.rollover
            sums[1] += e.purchased
        if e.rollover:
            journal.append((e.user_id, e.usage_type, "rollover", None, e.rollover, e.ref))
        if e.purchased:
            journal.append((e.user_id, e.usage_type, "purchased", None, e.purchased, e.ref))
    changed = {pair: sums for pair, sums in pools.items() if sums[0] or sums[1]}
    counted = {key: used for key, used in counters.items() if used}
    return {
        "b_users": [u for u, _ in changed],
        "b_types": [t for _, t in changed],
        "b_rollover": [r for r, _ in changed.values()],
        "b_purchased": [p for _, p in changed.values()],
        "c_periods": [p for p, _ in counted],
        "c_types": [t for _, t in counted],
        "c_used": list(counted.values()),
        "j_users": [j[0] for j in journal],
        "j_types": [j[1] for j in journal],
        "j_accounts": [j[2] for j in journal],
        "j_periods": [j[3] for j in journal],
        "j_deltas": [j[4] for j in journal],
        "j_refs": [j[5] for j in journal],
    }


_POST_ENTRIES = Statement(
    "SELECT metering.post_entries_v1(:reason, :b_users, :b_types, :b_rollover, :b_purchased,"
    " :c_periods, :c_types, :c_used, :j_users, :j_types, :j_accounts, :j_periods, :j_deltas, :j_refs)"
)


def post_entries(conn: Connection, *, reason: str, entries: Sequence[Entry]) -> None:
    """THE way to change balances and period counters: the summed deltas of `entries`, and one
    journal row per nonzero delta, in one call, queued to go with the transaction's next round
    trip (usually COMMIT). The caller holds the lock of every pair (`lock_pairs`)."""
    queue(conn, _POST_ENTRIES, {"reason": reason, **_entry_params(entries)})


def post_entry(
    conn: Connection,
    *,
    user_id: str,
    usage_type: str,
    reason: str,
    ref: str,
    period_id: UUID | None = None,
    used: int = 0,
    rollover: int = 0,
    purchased: int = 0,
) -> None:
    """`post_entries` with one entry."""
    entry = Entry(ref, user_id, usage_type, period_id, used, rollover, purchased)
    post_entries(conn, reason=reason, entries=(entry,))


class UsageRow(NamedTuple):
    """A new usage event as stored (the log row)."""

    event_id: str
    user_id: str
    usage_type: str
    amount: int
    reference_id: str | None
    description: str | None
    details_json: str | None
    reservation_id: str | None
    period_id: UUID
    from_subscription: int
    from_rollover: int
    from_purchased: int
    overflow_to_debt: int


class StatsRow(NamedTuple):
    """What a set of new events adds to one lifetime aggregate (user, usage type, group)."""

    user_id: str
    usage_type: str
    group_key: str
    key_json: str
    label: str | None
    total: int
    events: int
    measures_json: str


_POST_USAGE = Statement(
    "SELECT metering.post_usage_v1(:at, :ev_ids, :ev_users, :ev_types, :ev_amounts, :ev_refs,"
    " :ev_descriptions, :ev_details, :ev_reservations, :ev_periods, :ev_fs, :ev_fr, :ev_fp, :ev_fd,"
    " :g_users, :g_types, :g_keys, :g_json, :g_labels, :g_totals, :g_events, :g_measures,"
    " :b_users, :b_types, :b_rollover, :b_purchased, :c_periods, :c_types, :c_used,"
    " :j_users, :j_types, :j_accounts, :j_periods, :j_deltas, :j_refs)"
)


def post_usage(
    conn: Connection,
    at: datetime,
    usage: Sequence[UsageRow],
    stats: Sequence[StatsRow],
    entries: Sequence[Entry],
) -> None:
    """New usage events in one call, queued to go with COMMIT: their log rows, their lifetime
    aggregates, and their journaled changes (`post_entries` with reason `usage`)."""
    queue(
        conn,
        _POST_USAGE,
        {
            "at": at,
            "ev_ids": [u.event_id for u in usage],
            "ev_users": [u.user_id for u in usage],
            "ev_types": [u.usage_type for u in usage],
            "ev_amounts": [u.amount for u in usage],
            "ev_refs": [u.reference_id for u in usage],
            "ev_descriptions": [u.description for u in usage],
            "ev_details": [u.details_json for u in usage],
            "ev_reservations": [u.reservation_id for u in usage],
            "ev_periods": [u.period_id for u in usage],
            "ev_fs": [u.from_subscription for u in usage],
            "ev_fr": [u.from_rollover for u in usage],
            "ev_fp": [u.from_purchased for u in usage],
            "ev_fd": [u.overflow_to_debt for u in usage],
            "g_users": [g.user_id for g in stats],
            "g_types": [g.usage_type for g in stats],
            "g_keys": [g.group_key for g in stats],
            "g_json": [g.key_json for g in stats],
            "g_labels": [g.label for g in stats],
            "g_totals": [g.total for g in stats],
            "g_events": [g.events for g in stats],
            "g_measures": [g.measures_json for g in stats],
            **_entry_params(entries),
        },
    )


# --- adjustments ------------------------------------------------------------------------------------------

_CLAIM_ADJUSTMENT = Statement(
    """
    INSERT INTO adjustments (adjustment_id, user_id, usage_type, pool, delta, reason)
    VALUES (:id, :user_id, :usage_type, :pool, :delta, :reason)
    ON CONFLICT (adjustment_id) DO NOTHING
    RETURNING adjustment_id
    """
)
_ADJUSTMENT = Statement("SELECT user_id, usage_type, pool, delta FROM adjustments WHERE adjustment_id = :id")


def claim_adjustment(
    conn: Connection, adjustment_id: str, user_id: str, usage_type: str, pool: str, delta: int, reason: str
) -> bool:
    """Claim `adjustment_id` for this adjustment; False if it was claimed before."""
    params = {
        "id": adjustment_id,
        "user_id": user_id,
        "usage_type": usage_type,
        "pool": pool,
        "delta": delta,
        "reason": reason,
    }
    return first(conn, _CLAIM_ADJUSTMENT, params) is not None


def adjustment(conn: Connection, adjustment_id: str) -> tuple[str, str, str, int]:
    """(user_id, usage_type, pool, delta) of a claimed adjustment."""
    row = one(conn, _ADJUSTMENT, {"id": adjustment_id})
    return row.user_id, row.usage_type, row.pool, row.delta


# --- reconcile: balances and counters against the journal -----------------------------------------------

_BALANCE_DRIFTS = Statement(
    """
    WITH j AS (
        SELECT user_id, usage_type,
               sum(delta) FILTER (WHERE account = 'rollover') AS rollover,
               sum(delta) FILTER (WHERE account = 'purchased') AS purchased
        FROM journal
        WHERE account IN ('rollover', 'purchased') AND (CAST(:user_id AS text) IS NULL OR user_id = :user_id)
        GROUP BY user_id, usage_type
    )
    SELECT coalesce(b.user_id, j.user_id) AS user_id,
           coalesce(b.usage_type, j.usage_type) AS usage_type,
           coalesce(b.rollover, 0) AS rollover, coalesce(j.rollover, 0) AS journal_rollover,
           coalesce(b.purchased, 0) AS purchased, coalesce(j.purchased, 0) AS journal_purchased
    FROM (SELECT * FROM balances WHERE CAST(:user_id AS text) IS NULL OR user_id = :user_id) b
    FULL JOIN j ON j.user_id = b.user_id AND j.usage_type = b.usage_type
    WHERE coalesce(b.rollover, 0) <> coalesce(j.rollover, 0)
       OR coalesce(b.purchased, 0) <> coalesce(j.purchased, 0)
    ORDER BY 1, 2
    """
)

_COUNTER_DRIFTS = Statement(
    """
    WITH scope AS (
        SELECT period_id, user_id, period_start FROM periods
        WHERE CAST(:user_id AS text) IS NULL OR user_id = :user_id
    ), c AS (
        SELECT pu.period_id, pu.usage_type, pu.used FROM period_usage pu JOIN scope USING (period_id)
    ), j AS (
        SELECT period_id, usage_type, sum(delta) AS used FROM journal JOIN scope USING (period_id)
        WHERE account = 'used' GROUP BY period_id, usage_type
    ), e AS (
        SELECT period_id, usage_type, sum(from_subscription) AS used
        FROM usage_events JOIN scope USING (period_id) GROUP BY period_id, usage_type
    ), k AS (
        SELECT period_id, usage_type FROM c UNION SELECT period_id, usage_type FROM j
        UNION SELECT period_id, usage_type FROM e
    )
    SELECT s.user_id, s.period_start, k.usage_type,
           coalesce(c.used, 0) AS used, coalesce(j.used, 0) AS journal_used,
           coalesce(e.used, 0) AS events_used
    FROM k JOIN scope s USING (period_id)
    LEFT JOIN c USING (period_id, usage_type)
    LEFT JOIN j USING (period_id, usage_type)
    LEFT JOIN e USING (period_id, usage_type)
    WHERE coalesce(c.used, 0) <> coalesce(j.used, 0) OR coalesce(c.used, 0) <> coalesce(e.used, 0)
    ORDER BY 1, 2, 3
    """
)


def drifts(conn: Connection, user_id: str | None) -> tuple[list[Any], list[Any]]:
    """Balances whose journal sums differ, and period counters whose journal or
    `from_subscription` sums differ (of one user, or of everyone)."""
    balances, counters = fetch(
        conn, (_BALANCE_DRIFTS, {"user_id": user_id}), (_COUNTER_DRIFTS, {"user_id": user_id})
    )
    return balances, counters
