"""SQL over one Connection: the only code that reads or writes the ledger tables.

Every balance or period-counter change goes through `post_entries` (`post_entry` for one change),
which writes the journal rows in the same statement as the change, so the journal invariant
cannot be bypassed by a caller.
Serialization point: the `balances` row of (user, usage type), locked by `lock_pools` (one pair)
or `lock_and_load` (a set of pairs, in one order) before any read that a change depends on.
Records of different users never touch the same rows. Statements run on the pipelined driver
(`metering.db.sql`): writes are queued and travel with the next round trip or COMMIT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from sqlalchemy import Connection

from metering.db.sql import Group, Statement, fetch, fetch_one, fetch_snapshot, queue
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


# A user's state is read by small statements, sent together (one round trip): each is cheap to
# plan, where one statement joining all six relations spent ~0.3 ms of server CPU planning alone.
_SUBSCRIPTIONS = Statement(
    """
    SELECT a.user_id, s.subscription_id, s.plan_id, s.status, s.current_period_start,
           s.current_period_end, s.billing_cycle_anchor
    FROM accounts a JOIN subscriptions s ON s.subscription_id = a.current_subscription_id
    WHERE a.user_id = ANY(CAST(:users AS text[]))
    """,
    routine=True,
)

# The periods containing :now, each with its counters of the usage types asked for (a period
# without any of them: one row with a NULL usage type). Users are joined, not filtered with
# `= ANY(:users)`: on a table the planner deems small that became a sequential scan comparing
# every row with every user (8 ms for 400 users of 1,000), where the join probes the index.
_PERIODS = Statement(
    """
    SELECT p.user_id, p.period_id, p.period_start, p.period_end, p.plan_id, u.usage_type, u.used
    FROM unnest(CAST(:users AS text[])) AS k (user_id)
    JOIN periods p ON p.user_id = k.user_id AND p.period_start <= :now AND p.period_end > :now
    LEFT JOIN period_usage u ON u.period_id = p.period_id AND u.usage_type = ANY(CAST(:types AS text[]))
    """,
    routine=True,
)

_BALANCES = Statement(
    """
    SELECT user_id, usage_type, rollover, purchased, version FROM balances
    WHERE user_id = ANY(CAST(:users AS text[])) AND usage_type = ANY(CAST(:types AS text[]))
    """,
    routine=True,
)

type Pair = tuple[str, str]  # (user_id, usage_type)


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


def _state_params(pairs: Sequence[Pair], now: datetime) -> dict[str, Any]:
    return {
        "users": list(dict.fromkeys(u for u, _ in pairs)),
        "types": list(dict.fromkeys(t for _, t in pairs)),
        "now": now,
    }


def _states(
    pairs: Sequence[Pair], subscriptions: list[Any], periods: list[Any], pools: list[Any]
) -> dict[Pair, UserState]:
    """Each pair's state from the rows of _SUBSCRIPTIONS, _PERIODS and pools (rows with user_id,
    usage_type, rollover, purchased, version); the reads may return more than the pairs asked."""
    subscription = {row.user_id: subscription_state(row) for row in subscriptions}
    by_user: dict[str, dict[datetime, PeriodRow]] = {}
    used: dict[tuple[UUID, str], int] = {}
    for row in periods:
        by_user.setdefault(row.user_id, {})[row.period_start] = PeriodRow(
            row.period_id, row.period_start, row.period_end, row.plan_id
        )
        if row.usage_type is not None:
            used[(row.period_id, row.usage_type)] = row.used
    pool = {(row.user_id, row.usage_type): row for row in pools}
    states = {}
    for user_id, usage_type in pairs:
        p = pool.get((user_id, usage_type))
        states[(user_id, usage_type)] = UserState(
            subscription=subscription.get(user_id),
            rollover=p.rollover if p else 0,
            purchased=p.purchased if p else 0,
            version=p.version if p else 0,
            periods={
                start: (period, used.get((period.period_id, usage_type), 0))
                for start, period in by_user.get(user_id, {}).items()
            },
        )
    return states


def load_state(conn: Connection, user_id: str, usage_type: str, now: datetime) -> UserState:
    """What a check needs, unlocked, in one round trip and one snapshot (a read-only REPEATABLE
    READ transaction around the reads, sent with them): the pools, their version and the period
    counter agree, which reservation settlement relies on. On an autocommit connection only."""
    pair = (user_id, usage_type)
    params = _state_params([pair], now)
    subscriptions, periods, pools = fetch_snapshot(
        conn, (_SUBSCRIPTIONS, params), (_PERIODS, params), (_BALANCES, params)
    )
    return _states([pair], subscriptions, periods, pools)[pair]


_ENSURE_PERIOD = Statement(
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
    """,
    routine=True,
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
        rows = fetch_one(conn, _ENSURE_PERIOD, params)
        if rows:
            row = rows[0]
            return PeriodRow(row.period_id, row.period_start, row.period_end, row.plan_id)
    raise RuntimeError(f"period row for {user_id} at {spec.start} neither inserted nor found")


# THE lock of (user, usage type) pairs: every change of a pair's balances or period counter holds
# it. Pairs are locked in one order (ORDER BY), so two transactions locking several pairs never
# deadlock on each other. The upsert creates the row if needed and bumps its version.
_LOCK = Statement(
    """
    INSERT INTO balances (user_id, usage_type, version)
    SELECT k.user_id, k.usage_type, 1
    FROM unnest(CAST(:users AS text[]), CAST(:types AS text[])) AS k (user_id, usage_type)
    ORDER BY k.user_id, k.usage_type
    ON CONFLICT (user_id, usage_type) DO UPDATE SET updated_at = now(), version = balances.version + 1
    RETURNING user_id, usage_type, rollover, purchased, version
    """,
    routine=True,
)

# `_LOCK` for the pairs no other transaction holds right now, skipping the others (and pairs that
# have no row yet): a set of many pairs takes what is free instead of queueing behind every
# transaction that holds one of its pairs.
_LOCK_FREE = Statement(
    """
    UPDATE balances b SET updated_at = now(), version = b.version + 1
    FROM (SELECT x.user_id, x.usage_type FROM balances x
          JOIN unnest(CAST(:users AS text[]), CAST(:types AS text[])) AS k (user_id, usage_type)
            ON x.user_id = k.user_id AND x.usage_type = k.usage_type
          ORDER BY x.user_id, x.usage_type
          FOR UPDATE OF x SKIP LOCKED) AS free
    WHERE b.user_id = free.user_id AND b.usage_type = free.usage_type
    RETURNING b.user_id, b.usage_type, b.rollover, b.purchased, b.version
    """,
    routine=True,
)

# One period's counter of one usage type (0 until the first change creates the row).
_USED = Statement(
    """
    SELECT coalesce((SELECT used FROM period_usage WHERE period_id = :p AND usage_type = :t), 0) AS used
    """,
    routine=True,
)

_EVENTS = Statement(
    """
    SELECT event_id, user_id, usage_type, amount, from_subscription, from_rollover, from_purchased,
           overflow_to_debt
    FROM usage_events WHERE event_id = ANY(CAST(:ids AS text[]))
    """,
    routine=True,
)


@dataclass(frozen=True, slots=True)
class Pools:
    used: int
    rollover: int
    purchased: int
    version: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"used": self.used, "rollover": self.rollover, "purchased": self.purchased}


def _keys(pairs: Sequence[Pair]) -> dict[str, list[str]]:
    return {"users": [u for u, _ in pairs], "types": [t for _, t in pairs]}


# Fetched together on every check and record (`load_state`, `lock_and_load`): each group is one
# routine call on the server instead of one per statement (`metering.db.sql.Group`). A set of
# more pairs than GROUPED_PAIRS is read by separate calls (about 3 rows per pair; see `fetch`).
Group(_SUBSCRIPTIONS, _PERIODS, _BALANCES)
Group(_LOCK, _SUBSCRIPTIONS, _PERIODS, _EVENTS)
Group(_LOCK_FREE, _SUBSCRIPTIONS, _PERIODS, _EVENTS)
GROUPED_PAIRS = 8


def lock_pools(conn: Connection, user_id: str, usage_type: str, period_id: UUID) -> Pools:
    """Lock (user, usage type) for the rest of the transaction: the lock returns the newest pools,
    and the counter of `period_id` is read by a statement of its own after it, so its snapshot
    includes whatever the previous holder committed: no stale read after a wait."""
    (pools,), (counter,) = fetch(
        conn, (_LOCK, _keys([(user_id, usage_type)])), (_USED, {"p": period_id, "t": usage_type})
    )
    return Pools(used=counter.used, rollover=pools.rollover, purchased=pools.purchased, version=pools.version)


def lock_and_load(
    conn: Connection,
    pairs: Sequence[Pair],
    now: datetime,
    event_ids: Sequence[str],
    *,
    only_free: bool = False,
) -> tuple[dict[Pair, UserState], list[Any]]:
    """Lock every pair (`lock_pools`; the lock returns the newest pools), then read the rest of
    their states and the stored usage rows of `event_ids`: one round trip (with the transaction's
    BEGIN). The reads start after the lock is held, so they see everything committed by whoever
    held it before (a period's counter changes only under the lock).

    With `only_free`, only the pairs that exist and that no other transaction holds are locked
    (`_LOCK_FREE`), without waiting; the states returned are those of the locked pairs."""
    params = _state_params(pairs, now)
    pools, subscriptions, periods, event_rows = fetch(
        conn,
        (
            _LOCK_FREE if only_free else _LOCK,
            _keys(pairs),
        ),
        (_SUBSCRIPTIONS, params),
        (_PERIODS, params),
        (_EVENTS, {"ids": list(event_ids)}),
        grouped=len(pairs) <= GROUPED_PAIRS,
    )
    locked = [(row.user_id, row.usage_type) for row in pools] if only_free else pairs
    return _states(locked, subscriptions, periods, pools), event_rows


class Entry(NamedTuple):
    """One journaled change of a (user, usage type): deltas of the period counter and the pools,
    and what caused it. A named tuple: one per event of a batch, and a tuple is made in a third
    of a frozen dataclass's time."""

    ref: str
    user_id: str
    usage_type: str
    period_id: UUID | None = None
    used: int = 0
    rollover: int = 0
    purchased: int = 0


class Writes:
    """Further writes made by the same statement as the journaled change (`post_entries`): `ctes`
    is SQL text of WITH items, each followed by a comma (`name AS (...),`). Made once, at import
    time, like every statement: the migration installs the routine of each (`metering.db.routines`)."""

    __slots__ = ("statement",)

    def __init__(self, ctes: str) -> None:
        self.statement = Statement(_POST_SQL.format(ctes=ctes), routine=True)


# Each pair's summed pool deltas go to its balances row (which the lock created), each (period,
# usage type)'s summed used delta to its counter (created here if missing), and one journal row per
# entry and nonzero delta; the sums are made by `post_entries`, so the SQL stays flat (cheap to plan).
# The last line fails the statement if a balances row was missing, i.e. a caller did not lock
# first: a bug, which must not pass silently (CASE keeps the cast from being folded at plan time).
_POST_SQL = """
    WITH {ctes} b AS (
        UPDATE balances SET rollover = balances.rollover + d.rollover,
                            purchased = balances.purchased + d.purchased, updated_at = now()
        FROM unnest(CAST(:b_users AS text[]), CAST(:b_types AS text[]), CAST(:b_rollover AS bigint[]),
                    CAST(:b_purchased AS bigint[])) AS d (user_id, usage_type, rollover, purchased)
        WHERE balances.user_id = d.user_id AND balances.usage_type = d.usage_type
        RETURNING 1
    ), c AS (
        INSERT INTO period_usage (period_id, usage_type, used)
        SELECT * FROM unnest(CAST(:c_periods AS uuid[]), CAST(:c_types AS text[]), CAST(:c_used AS bigint[]))
        ON CONFLICT (period_id, usage_type) DO UPDATE SET used = period_usage.used + excluded.used
    ), j AS (
        INSERT INTO journal (user_id, usage_type, account, period_id, delta, reason, ref)
        SELECT j.user_id, j.usage_type, j.account, j.period_id, j.delta, :reason, j.ref
        FROM unnest(CAST(:j_users AS text[]), CAST(:j_types AS text[]), CAST(:j_accounts AS text[]),
                    CAST(:j_periods AS uuid[]), CAST(:j_deltas AS bigint[]), CAST(:j_refs AS text[]))
            AS j (user_id, usage_type, account, period_id, delta, ref)
    )
    SELECT CAST(CASE WHEN (SELECT count(*) FROM b) = :b_count THEN NULL
                ELSE 'post_entries: no balances row to change: lock_pools first' END AS int) AS guard
"""


_JOURNALED_ONLY = Writes("")


def post_entries(
    conn: Connection,
    *,
    reason: str,
    entries: Sequence[Entry],
    alongside: tuple[Writes, dict[str, Any]] = (_JOURNALED_ONLY, {}),
) -> None:
    """THE way to change balances and period counters: one statement applies the summed deltas of
    `entries` to each pair's balances and each period's counter, and writes one journal row per
    entry and nonzero delta; `alongside` adds the caller's own writes to the statement, with
    their parameters.

    The statement is queued: it runs with the transaction's next round trip, usually with COMMIT,
    so its errors are raised there. The caller holds the locks of every pair (`lock_pools`).
    """
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
    params: dict[str, Any] = {
        "b_users": [u for u, _ in changed],
        "b_types": [t for _, t in changed],
        "b_rollover": [r for r, _ in changed.values()],
        "b_purchased": [p for _, p in changed.values()],
        "b_count": len(changed),
        "c_periods": [p for p, _ in counted],
        "c_types": [t for _, t in counted],
        "c_used": list(counted.values()),
        "j_users": [j[0] for j in journal],
        "j_types": [j[1] for j in journal],
        "j_accounts": [j[2] for j in journal],
        "j_periods": [j[3] for j in journal],
        "j_deltas": [j[4] for j in journal],
        "j_refs": [j[5] for j in journal],
        "reason": reason,
    }
    writes, writes_params = alongside
    params.update(writes_params)
    queue(conn, writes.statement, params)


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
        conn, reason=reason, entries=(Entry(ref, user_id, usage_type, period_id, used, rollover, purchased),)
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
    """The period containing `now`, created if missing (inside a transaction)."""
    pair = (user_id, usage_type)
    params = _state_params([pair], now)
    subscriptions, periods = fetch(conn, (_SUBSCRIPTIONS, params), (_PERIODS, params))
    state = _states([pair], subscriptions, periods, [])[pair]
    spec = resolve_period(state.subscription, now, free_plan_id)
    return state.period(spec)[0] or ensure_period(conn, user_id, spec)
