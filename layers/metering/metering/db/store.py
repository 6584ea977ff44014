"""SQL over one Connection: the only code that reads or writes the ledger tables.

Every balance or period-counter change goes through `post_entries` (`post_entry` for one change),
which writes the journal rows in the same statement as the change, so the journal invariant
cannot be bypassed by a caller.
Serialization point: the `balances` row of (user, usage type), locked by `lock_pools` before any
read that a change depends on. Records of different users never touch the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, TextClause, text

from metering.domain.periods import PeriodSpec, SubscriptionState, resolve_period


@dataclass(frozen=True, slots=True)
class PeriodRow:
    period_id: UUID
    start: datetime
    end: datetime
    plan_id: str


@dataclass(frozen=True, slots=True)
class UserState:
    """What a check needs, read in one round trip: subscription, pools, periods containing `now`."""

    subscription: SubscriptionState | None
    rollover: int
    purchased: int
    version: int  # of the balances row: which committed changes this read includes
    periods: dict[datetime, tuple[PeriodRow, int]]  # period_start -> (row, used of the usage type)

    def period(self, spec: PeriodSpec) -> tuple[PeriodRow | None, int]:
        found = self.periods.get(spec.start)
        return (found[0], found[1]) if found else (None, 0)


_STATE_SQL = text(
    """
    SELECT s.subscription_id, s.plan_id, s.status, s.current_period_start, s.current_period_end,
           s.billing_cycle_anchor, b.rollover, b.purchased, b.version,
           p.period_id, p.period_start, p.period_end, p.plan_id AS period_plan, u.used
    FROM (SELECT CAST(:u AS text) AS user_id) k
    LEFT JOIN accounts a ON a.user_id = k.user_id
    LEFT JOIN subscriptions s ON s.subscription_id = a.current_subscription_id
    LEFT JOIN balances b ON b.user_id = k.user_id AND b.usage_type = :t
    LEFT JOIN periods p ON p.user_id = k.user_id AND p.period_start <= :now AND p.period_end > :now
    LEFT JOIN period_usage u ON u.period_id = p.period_id AND u.usage_type = :t
    """
)


def subscription_state(row: Any) -> SubscriptionState | None:
    if row.subscription_id is None:
        return None
    return SubscriptionState(
        subscription_id=row.subscription_id,
        plan_id=row.plan_id,
        status=row.status,
        period_start=row.current_period_start,
        period_end=row.current_period_end,
        anchor=row.billing_cycle_anchor,
    )


def load_state(conn: Connection, user_id: str, usage_type: str, now: datetime) -> UserState:
    rows = conn.execute(_STATE_SQL, {"u": user_id, "t": usage_type, "now": now}).all()
    first = rows[0]
    periods = {
        r.period_start: (PeriodRow(r.period_id, r.period_start, r.period_end, r.period_plan), r.used or 0)
        for r in rows
        if r.period_id is not None
    }
    return UserState(
        subscription=subscription_state(first),
        rollover=first.rollover or 0,
        purchased=first.purchased or 0,
        version=first.version or 0,
        periods=periods,
    )


_ENSURE_PERIOD_SQL = text(
    """
    WITH ins AS (
        INSERT INTO periods (user_id, period_start, period_end, plan_id, kind, subscription_id)
        VALUES (:u, :start, :end, :plan, :kind, :sub)
        ON CONFLICT (user_id, period_start) DO NOTHING
        RETURNING period_id, period_start, period_end, plan_id
    )
    SELECT period_id, period_start, period_end, plan_id FROM ins
    UNION ALL
    SELECT period_id, period_start, period_end, plan_id FROM periods
    WHERE user_id = :u AND period_start = :start
    """
)


def ensure_period(conn: Connection, user_id: str, spec: PeriodSpec) -> PeriodRow:
    """The period row starting at spec.start, created if missing (an upsert: never two rows)."""
    params = {
        "u": user_id,
        "start": spec.start,
        "end": spec.end,
        "plan": spec.plan_id,
        "kind": spec.kind,
        "sub": spec.subscription_id,
    }
    for _ in range(3):
        # A row inserted by a concurrent transaction is invisible to this statement's snapshot
        # until it commits; ON CONFLICT waited for that commit, so the next try sees it.
        row = conn.execute(_ENSURE_PERIOD_SQL, params).first()
        if row is not None:
            return PeriodRow(row.period_id, row.period_start, row.period_end, row.plan_id)
    raise RuntimeError(f"period row for {user_id} at {spec.start} neither inserted nor found")


# The lock of (user, usage type), and the usage rows already stored under some event ids
# (LEFT JOIN: always at least one row)
_LOCK_SQL = text(
    """
    WITH b AS (
        INSERT INTO balances (user_id, usage_type, version) VALUES (:u, :t, 1)
        ON CONFLICT (user_id, usage_type) DO UPDATE SET updated_at = now(), version = balances.version + 1
        RETURNING rollover, purchased, version
    ), c AS (
        INSERT INTO period_usage (period_id, usage_type) VALUES (:p, :t)
        ON CONFLICT (period_id, usage_type) DO UPDATE SET used = period_usage.used
        RETURNING used
    )
    SELECT b.rollover, b.purchased, b.version, c.used, x.event_id, x.user_id, x.usage_type, x.amount,
           x.from_subscription, x.from_rollover, x.from_purchased, x.overflow_to_debt
    FROM b CROSS JOIN c
    LEFT JOIN usage_events x ON x.event_id = ANY(CAST(:ids AS text[]))
    """
)


@dataclass(frozen=True, slots=True)
class Pools:
    used: int
    rollover: int
    purchased: int
    version: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"used": self.used, "rollover": self.rollover, "purchased": self.purchased}


def _pools(row: Any) -> Pools:
    return Pools(used=row.used, rollover=row.rollover, purchased=row.purchased, version=row.version)


def lock_pools(conn: Connection, user_id: str, usage_type: str, period_id: UUID) -> Pools:
    """Lock (user, usage type) for the rest of the transaction and read its latest balances.

    Both rows are upserts, so they exist afterwards, and ON CONFLICT DO UPDATE returns the newest
    committed version after waiting for any concurrent holder: no stale read after the wait.
    """
    return lock_pools_and_events(conn, user_id, usage_type, period_id, ())[0]


def lock_pools_and_events(
    conn: Connection, user_id: str, usage_type: str, period_id: UUID, event_ids: Sequence[str]
) -> tuple[Pools, list[Any]]:
    """`lock_pools`, and in the same statement the stored usage rows of `event_ids`.

    The pools are the newest committed version (see `lock_pools`), but the usage rows are read
    with the statement's start snapshot (READ COMMITTED): if the lock had to wait, an event that
    the previous holder inserted and committed meanwhile is missing from them. A caller that
    treats a missing id as new must insert it with ON CONFLICT DO NOTHING and start the
    transaction over (`engine.Retry`) when the insert comes back short.
    """
    rows = conn.execute(
        _LOCK_SQL, {"u": user_id, "t": usage_type, "p": period_id, "ids": list(event_ids)}
    ).all()
    return _pools(rows[0]), [r for r in rows if r.event_id is not None]


@dataclass(frozen=True, slots=True)
class Entry:
    """One journaled change: deltas of the period counter and the pools, and what caused it."""

    ref: str
    used: int = 0
    rollover: int = 0
    purchased: int = 0


@dataclass(frozen=True, slots=True)
class Alongside:
    """Further writes made by the same statement as the journaled change: `ctes` is SQL text of
    WITH items, each followed by a comma (`name AS (...),`), that may use :u, :t and :p; `params`
    their other parameters, and `counted` the name of a CTE whose rows the statement counts.
    They come first in the statement, so they show in pg_stat_activity's truncated text."""

    ctes: str
    params: dict[str, Any]
    counted: str


_POST_SQL = """
    WITH {ctes} e AS (
        SELECT * FROM unnest(CAST(:refs AS text[]), CAST(:du AS bigint[]), CAST(:dr AS bigint[]),
                             CAST(:dp AS bigint[])) WITH ORDINALITY AS e (ref, used, rollover, purchased, n)
    ), d AS (
        SELECT CAST(coalesce(sum(e.used), 0) AS bigint) AS used,
               CAST(coalesce(sum(e.rollover), 0) AS bigint) AS rollover,
               CAST(coalesce(sum(e.purchased), 0) AS bigint) AS purchased
        FROM e
    ), b AS (
        UPDATE balances SET rollover = balances.rollover + d.rollover,
                            purchased = balances.purchased + d.purchased, updated_at = now()
        FROM d
        WHERE user_id = :u AND usage_type = :t AND (d.rollover <> 0 OR d.purchased <> 0)
        RETURNING 1
    ), c AS (
        UPDATE period_usage SET used = period_usage.used + d.used
        FROM d
        WHERE period_id = :p AND usage_type = :t AND d.used <> 0
        RETURNING 1
    ), j AS (
        INSERT INTO journal (user_id, usage_type, account, period_id, delta, reason, ref)
        SELECT :u, :t, v.account, v.period_id, v.delta, :reason, e.ref
        FROM e, LATERAL (VALUES ('used', CAST(:p AS uuid), e.used),
                                ('rollover', NULL, e.rollover),
                                ('purchased', NULL, e.purchased)) AS v (account, period_id, delta)
        WHERE v.delta <> 0
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM b) AS balances, (SELECT count(*) FROM c) AS counters,
           {counted} AS counted
"""


@lru_cache(maxsize=16)
def _post_statement(ctes: str, counted: str | None) -> TextClause:
    return text(_POST_SQL.format(ctes=ctes, counted=f"(SELECT count(*) FROM {counted})" if counted else "0"))


def post_entries(
    conn: Connection,
    *,
    user_id: str,
    usage_type: str,
    reason: str,
    entries: Sequence[Entry],
    period_id: UUID | None = None,
    alongside: Alongside | None = None,
) -> int:
    """THE way to change balances and period counters: one statement applies the summed deltas of
    `entries` to the (user, usage type) balances and the period's counter, and writes one journal
    row per entry and nonzero delta. `alongside` adds the caller's own writes to the statement.
    Returns the number of rows of `alongside.counted` (0 without one).

    The caller holds the lock from `lock_pools` (which also guarantees both rows exist).
    """
    if period_id is None and any(e.used for e in entries):
        raise ValueError("a change of the period counter needs its period")
    params: dict[str, Any] = {
        "u": user_id,
        "t": usage_type,
        "p": period_id,
        "refs": [e.ref for e in entries],
        "du": [e.used for e in entries],
        "dr": [e.rollover for e in entries],
        "dp": [e.purchased for e in entries],
        "reason": reason,
    }
    statement = _post_statement(alongside.ctes, alongside.counted) if alongside else _post_statement("", None)
    if alongside is not None:
        params.update(alongside.params)
    row = conn.execute(statement, params).one()
    pools_changed = any(e.rollover or e.purchased for e in entries)
    if (pools_changed and row.balances != 1) or (any(e.used for e in entries) and row.counters != 1):
        raise RuntimeError(f"post_entries({user_id}, {usage_type}) found no row to change: lock_pools first")
    return int(row.counted)


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
    post_entries(
        conn,
        user_id=user_id,
        usage_type=usage_type,
        reason=reason,
        entries=(Entry(ref, used, rollover, purchased),),
        period_id=period_id,
    )


def lock_current(
    conn: Connection, user_id: str, usage_type: str, now: datetime, free_plan_id: str
) -> tuple[PeriodRow, Pools]:
    """The period containing `now` (created if missing) and the locked pools of (user, type)."""
    period = current_period(conn, user_id, usage_type, now, free_plan_id)
    return period, lock_pools(conn, user_id, usage_type, period.period_id)


def current_period(
    conn: Connection, user_id: str, usage_type: str, now: datetime, free_plan_id: str
) -> PeriodRow:
    """The period containing `now`, created if missing."""
    state = load_state(conn, user_id, usage_type, now)
    spec = resolve_period(state.subscription, now, free_plan_id)
    return state.period(spec)[0] or ensure_period(conn, user_id, spec)
