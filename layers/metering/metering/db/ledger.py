"""The ledger's SQL: pools, periods and their counters, the journal, the usage log, lifetime stats,
adjustments, and the sums `reconcile` compares.

The serialization point is the `balances` row of a (user, usage type) pair, locked by
`lock_pairs` before any read that a change depends on; records of different users never touch the
same rows. Every change of a balance or a period counter goes through `post_entries` (or
`post_usage`, which is it plus the usage rows), which writes the journal rows in the same call.
The hot paths call the server-side routines of migrations 0003 and 0005 (`metering.*_v2`) by
name. Grants (credit with an expiry) change only through journal rows of account `grant`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import UUID

from metering.db.sql import Statement, fetch, first, one, queue, rows
from metering.domain.periods import PeriodSpec, SubscriptionState

if TYPE_CHECKING:
    from sqlalchemy import Connection

type Pair = tuple[str, str]  # (user_id, usage_type)


class PeriodRow(NamedTuple):
    period_id: UUID
    start: datetime
    end: datetime
    plan_id: str
    rolled_over: bool = False  # its renewal rollover was applied: settled, no more usage


class LiveGrant(NamedTuple):
    grant_id: str
    remaining: int
    expires_at: datetime


class PairState(NamedTuple):
    """A pair's pools, its user's current subscription and the periods containing the moment read,
    each with the pair's counter: one snapshot."""

    subscription: SubscriptionState | None
    rollover: int
    purchased: int
    version: int  # of the balances row: which committed changes this read includes
    periods: dict[datetime, tuple[PeriodRow, int]]  # period_start -> (row, used of the usage type)
    grants: tuple[LiveGrant, ...] = ()  # live at the moment read, soonest expiry first

    @property
    def granted(self) -> int:
        return sum(g.remaining for g in self.grants)

    def period(self, spec: PeriodSpec) -> tuple[PeriodRow | None, int]:
        """The stored row of the period `spec` describes (None: not created yet) and its counter."""
        found = self.periods.get(spec.start)
        return (found[0], found[1]) if found else (None, 0)


class Pools(NamedTuple):
    used: int
    rollover: int
    purchased: int
    version: int = 0
    granted: int = 0  # the live grants' remaining

    def as_dict(self) -> dict[str, int]:
        return {
            "used": self.used,
            "rollover": self.rollover,
            "purchased": self.purchased,
            "granted": self.granted,
        }


def subscription_state(row: Any) -> SubscriptionState | None:
    """The subscription columns of a `metering.pair_state_v2` (or current_subscriptions) row."""
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
    """The rows of `metering.pair_state_v2` (one per pair and period) as each pair's state."""
    periods: dict[Pair, dict[datetime, tuple[PeriodRow, int]]] = {}
    first_rows: dict[Pair, Any] = {}
    for row in found:
        pair = (row.user_id, row.usage_type)
        first_rows.setdefault(pair, row)
        held = periods.setdefault(pair, {})
        if row.period_id is not None:
            period = PeriodRow(
                row.period_id, row.period_start, row.period_end, row.period_plan, row.rolled_over
            )
            held[row.period_start] = (period, row.used)
    return {
        pair: PairState(
            subscription_state(row),
            row.rollover,
            row.purchased,
            row.version,
            periods[pair],
            tuple(map(LiveGrant, row.grant_ids, row.grant_remaining, row.grant_expires))
            if row.grant_ids
            else (),
        )
        for pair, row in first_rows.items()
    }


# --- reads and locks of the hot paths -----------------------------------------------------------------

_PAIR_STATES = Statement("SELECT * FROM metering.pair_states_v2(:users, :types, :now, :moments)")
_LOCK_PAIRS = Statement("SELECT * FROM metering.lock_pairs_v2(:users, :types, :now, :moments, :skip_locked)")
_USAGE_EVENTS = Statement("SELECT * FROM metering.usage_events_v2(:ids)")


def pair_states(conn: Connection, pairs: Sequence[Pair], now: datetime) -> dict[Pair, PairState]:
    """Each pair's state at `now`, unlocked, in one snapshot and one round trip (a check, a summary)."""
    return _states(rows(conn, _PAIR_STATES, {**_keys(pairs), "now": now, "moments": []}))


class StoredUsage(NamedTuple):
    event_id: str
    user_id: str
    usage_type: str
    amount: int
    occurred_at: datetime | None
    from_subscription: int
    from_rollover: int
    from_grants: int
    from_purchased: int
    overflow_to_debt: int
    period_start: datetime
    period_end: datetime


def lock_pairs(
    conn: Connection,
    pairs: Sequence[Pair],
    now: datetime,
    event_ids: Sequence[str] = (),
    *,
    moments: Sequence[datetime] = (),
    skip_locked: bool = False,
) -> tuple[dict[Pair, PairState], list[StoredUsage]]:
    """Lock every pair for the rest of the transaction, then read their states (with the stored
    periods containing `now` or any of `moments`) and the stored usage rows of `event_ids`: one
    round trip (with the transaction's BEGIN). Both reads start after the lock is held, so they
    see everything its previous holder committed.

    With `skip_locked`, only the pairs that exist and that no other transaction holds are locked,
    without waiting; the states returned are those of the locked pairs."""
    params = {**_keys(pairs), "now": now, "moments": list(moments), "skip_locked": skip_locked}
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
        (_LOCK_PAIRS, {**_keys([(user_id, usage_type)]), "now": now, "moments": [], "skip_locked": False}),
        (_USED, {"period": period_id, "type": usage_type}),
    )
    state = _states(locked)[(user_id, usage_type)]
    return Pools(counter.used, state.rollover, state.purchased, state.version, state.granted)


# --- the journaled write ----------------------------------------------------------------------------------


class Entry(NamedTuple):
    """One journaled change of a (user, usage type): deltas of the period counter, the pools and
    its grants ((grant_id, delta) pairs), and what caused it (a named tuple: one per event of a
    batch)."""

    ref: str
    user_id: str
    usage_type: str
    period_id: UUID | None = None
    used: int = 0
    rollover: int = 0
    purchased: int = 0
    grants: tuple[tuple[str, int], ...] = ()


def _entry_params(entries: Iterable[Entry]) -> dict[str, Any]:
    """`post_entries_v2`'s arrays: one journal row per nonzero delta, in order (the routine sums
    them into the pools, counters and grants)."""
    users: list[str] = []
    types: list[str] = []
    accounts: list[str] = []
    periods: list[UUID | None] = []
    grants: list[str | None] = []
    deltas: list[int] = []
    refs: list[str] = []

    def row(e: Entry, account: str, delta: int, period: UUID | None = None, grant: str | None = None) -> None:
        users.append(e.user_id)
        types.append(e.usage_type)
        accounts.append(account)
        periods.append(period)
        grants.append(grant)
        deltas.append(delta)
        refs.append(e.ref)

    for e in entries:
        if e.used:
            if e.period_id is None:
                raise ValueError("a change of the period counter needs its period")
            row(e, "used", e.used, period=e.period_id)
        if e.rollover:
            row(e, "rollover", e.rollover)
        for grant_id, delta in e.grants:
            if delta:
                row(e, "grant", delta, grant=grant_id)
        if e.purchased:
            row(e, "purchased", e.purchased)
    return {
        "j_users": users,
        "j_types": types,
        "j_accounts": accounts,
        "j_periods": periods,
        "j_grants": grants,
        "j_deltas": deltas,
        "j_refs": refs,
    }


_POST_ENTRIES = Statement(
    "SELECT metering.post_entries_v2(:reason, :j_users, :j_types, :j_accounts, :j_periods,"
    " :j_grants, :j_deltas, :j_refs)"
)


def post_entries(conn: Connection, *, reason: str, entries: Sequence[Entry]) -> None:
    """THE way to change balances, grants and period counters: one journal row per nonzero delta
    of `entries` (numbered, with the balance after it), in one call queued to go with the
    transaction's next round trip (usually COMMIT). The caller holds the lock of every pair
    (`lock_pairs`)."""
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
    grants: tuple[tuple[str, int], ...] = (),
) -> None:
    """`post_entries` with one entry."""
    entry = Entry(ref, user_id, usage_type, period_id, used, rollover, purchased, grants)
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
    occurred_at: datetime | None
    from_subscription: int
    from_rollover: int
    from_grants: int
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
    "SELECT metering.post_usage_v2(:at, :ev_ids, :ev_users, :ev_types, :ev_amounts, :ev_refs,"
    " :ev_descriptions, :ev_details, :ev_reservations, :ev_periods, :ev_occurred, :ev_fs, :ev_fr,"
    " :ev_fg, :ev_fp, :ev_fd,"
    " :g_users, :g_types, :g_keys, :g_json, :g_labels, :g_totals, :g_events, :g_measures,"
    " :j_users, :j_types, :j_accounts, :j_periods, :j_grants, :j_deltas, :j_refs)"
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
            "ev_occurred": [u.occurred_at for u in usage],
            "ev_fs": [u.from_subscription for u in usage],
            "ev_fr": [u.from_rollover for u in usage],
            "ev_fg": [u.from_grants for u in usage],
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


# --- grants -----------------------------------------------------------------------------------------------


class GrantRow(NamedTuple):
    grant_id: str
    user_id: str
    usage_type: str
    amount: int
    remaining: int
    expires_at: datetime
    reason: str


_CLAIM_GRANT = Statement(
    """
    INSERT INTO grants (grant_id, user_id, usage_type, amount, expires_at, reason)
    VALUES (:id, :user_id, :usage_type, :amount, :expires_at, :reason)
    ON CONFLICT (grant_id) DO NOTHING
    RETURNING grant_id
    """
)
_GRANT = Statement(
    "SELECT grant_id, user_id, usage_type, amount, remaining, expires_at, reason FROM grants"
    " WHERE grant_id = :id"
)
_DUE_GRANTS = Statement(
    """
    SELECT grant_id, user_id, usage_type, amount, remaining, expires_at, reason FROM grants
    WHERE remaining > 0 AND expires_at <= :now ORDER BY expires_at, grant_id LIMIT :limit
    """
)


def claim_grant(conn: Connection, grant: GrantRow) -> bool:
    """Create the grant with nothing remaining (its `grant` journal row credits it); False if
    `grant_id` was claimed before."""
    params = {
        "id": grant.grant_id,
        "user_id": grant.user_id,
        "usage_type": grant.usage_type,
        "amount": grant.amount,
        "expires_at": grant.expires_at,
        "reason": grant.reason,
    }
    return first(conn, _CLAIM_GRANT, params) is not None


def grant(conn: Connection, grant_id: str) -> GrantRow | None:
    found = first(conn, _GRANT, {"id": grant_id})
    return GrantRow(*found) if found else None


def due_grants(conn: Connection, now: datetime, limit: int) -> list[GrantRow]:
    """Grants expired by `now` whose remaining credit is not journaled as expired yet."""
    return [GrantRow(*r) for r in rows(conn, _DUE_GRANTS, {"now": now, "limit": limit})]


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


_GRANT_DRIFTS = Statement(
    """
    WITH j AS (
        SELECT grant_id, sum(delta) AS remaining FROM journal
        WHERE grant_id IS NOT NULL AND (CAST(:user_id AS text) IS NULL OR user_id = :user_id)
        GROUP BY grant_id
    )
    SELECT g.user_id, g.usage_type, g.grant_id, g.remaining, coalesce(j.remaining, 0) AS journal_remaining
    FROM grants g LEFT JOIN j USING (grant_id)
    WHERE (CAST(:user_id AS text) IS NULL OR g.user_id = :user_id)
      AND g.remaining <> coalesce(j.remaining, 0)
    ORDER BY 1, 2, 3
    """
)

# Each journal row's balance_after is the previous row's of its pool plus its delta, and the
# rows of a pair are numbered 1..balances.seq without a gap.
_HISTORY_DRIFTS = Statement(
    """
    WITH h AS (
        SELECT user_id, usage_type, seq, account, delta, balance_after,
               lag(balance_after, 1, 0::bigint) OVER (
                   PARTITION BY user_id, usage_type, account, period_id, grant_id ORDER BY seq
               ) AS before
        FROM journal WHERE CAST(:user_id AS text) IS NULL OR user_id = :user_id
    ), n AS (
        SELECT user_id, usage_type, count(*) AS rows, max(seq) AS last FROM journal
        WHERE CAST(:user_id AS text) IS NULL OR user_id = :user_id GROUP BY 1, 2
    )
    SELECT user_id, usage_type, 'balance_after of entry ' || seq AS what, balance_after AS stored,
           before + delta AS expected
    FROM h WHERE balance_after <> before + delta
    UNION ALL
    SELECT n.user_id, n.usage_type, 'ledger positions' AS what, coalesce(b.seq, 0) AS stored, n.rows
    FROM n LEFT JOIN balances b USING (user_id, usage_type)
    WHERE n.rows <> n.last OR n.rows <> coalesce(b.seq, 0)
    ORDER BY 1, 2, 3
    """
)


class Drifts(NamedTuple):
    balances: list[Any]
    counters: list[Any]
    grants: list[Any]
    history: list[Any]


def drifts(conn: Connection, user_id: str | None) -> Drifts:
    """Balances whose journal sums differ, period counters whose journal or `from_subscription`
    sums differ, grants whose journal sums differ, and journal rows whose balance_after or
    numbering is wrong (of one user, or of everyone): one round trip."""
    params = {"user_id": user_id}
    return Drifts(
        *fetch(
            conn,
            (_BALANCE_DRIFTS, params),
            (_COUNTER_DRIFTS, params),
            (_GRANT_DRIFTS, params),
            (_HISTORY_DRIFTS, params),
        )
    )
