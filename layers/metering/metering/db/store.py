"""SQL over one Connection: the only code that reads or writes the ledger tables.

Every balance or period-counter change goes through `post_entry`, which writes the journal rows in
the same statement as the change, so the journal invariant cannot be bypassed by a caller.
Serialization point: the `balances` row of (user, usage type), locked by `lock_pools` before any
read that a change depends on. Records of different users never touch the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

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
    SELECT b.rollover, b.purchased, b.version, c.used FROM b, c
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


def lock_pools(conn: Connection, user_id: str, usage_type: str, period_id: UUID) -> Pools:
    """Lock (user, usage type) for the rest of the transaction and read its latest balances.

    Both rows are upserts, so they exist afterwards, and ON CONFLICT DO UPDATE returns the newest
    committed version after waiting for any concurrent holder: no stale read after the wait.
    """
    row = conn.execute(_LOCK_SQL, {"u": user_id, "t": usage_type, "p": period_id}).one()
    return Pools(used=row.used, rollover=row.rollover, purchased=row.purchased, version=row.version)


_POST_SQL = text(
    """
    WITH d AS (
        SELECT CAST(:du AS bigint) AS used, CAST(:dr AS bigint) AS rollover, CAST(:dp AS bigint) AS purchased
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
        SELECT :u, :t, v.account, v.period_id, v.delta, :reason, :ref
        FROM d, LATERAL (VALUES ('used', CAST(:p AS uuid), d.used),
                                ('rollover', NULL, d.rollover),
                                ('purchased', NULL, d.purchased)) AS v (account, period_id, delta)
        WHERE v.delta <> 0
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM b) AS balances, (SELECT count(*) FROM c) AS counters
    """
)


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
    """Change balances and/or a period counter by the given deltas, journaled in the same statement.

    The caller holds the lock from `lock_pools` (which also guarantees both rows exist).
    """
    if used and period_id is None:
        raise ValueError("a change of the period counter needs its period")
    row = conn.execute(
        _POST_SQL,
        {
            "u": user_id,
            "t": usage_type,
            "p": period_id,
            "du": used,
            "dr": rollover,
            "dp": purchased,
            "reason": reason,
            "ref": ref,
        },
    ).one()
    if ((rollover or purchased) and row.balances != 1) or (used and row.counters != 1):
        raise RuntimeError(f"post_entry({user_id}, {usage_type}) found no row to change: lock_pools first")


def lock_current(
    conn: Connection, user_id: str, usage_type: str, now: datetime, free_plan_id: str
) -> tuple[PeriodRow, Pools]:
    """The period containing `now` (created if missing) and the locked pools of (user, type)."""
    state = load_state(conn, user_id, usage_type, now)
    spec = resolve_period(state.subscription, now, free_plan_id)
    period = state.period(spec)[0] or ensure_period(conn, user_id, spec)
    return period, lock_pools(conn, user_id, usage_type, period.period_id)
