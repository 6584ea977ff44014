"""The hot paths' server-side routines, written by hand, in schema `metering`.

PostgreSQL parses and plans an unnamed statement on every execution; named prepared statements
would keep the plans but are session state, which pins RDS Proxy connections. A PL/pgSQL
function keeps the plans of its statements for the life of the server connection, whichever
client the proxy lends it to, so the check and the record call these functions (by name, in
`metering.db.ledger`) instead of sending their SQL.

Names carry a version: a change of a routine is a new function (`..._v2`) created by a new
migration, and the code calls that; the old one stays while code of the previous release may
still run, and a later migration drops it. Code deployed before its migration fails at its first
call, loudly (`metering.db.engine`: 503 `not_configured`, "run `metering migrate`").

Every function runs with two planner settings of its own (applied during the call only, no
session state):
- `plan_cache_mode = force_generic_plan`: with array parameters PL/pgSQL otherwise keeps
  re-planning, because a custom plan looks cheaper than the generic one;
- `random_page_cost = 1.1` (data in memory or on SSD; the default 4 assumes spinning disks): a
  generic plan assumes an array holds 10 keys, and at 4 ten index probes looked dearer than
  reading a small table whole, so a new deployment's small tables were scanned for every call.
`tests/integration/test_routines.py` checks that every statement of every routine reads by index.

This migration also drops the `metering_r_<hash>` functions that earlier code versions generated.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ROUTINES = """
CREATE SCHEMA IF NOT EXISTS metering;

-- The one definition of "the user's current subscription".
CREATE VIEW metering.current_subscriptions AS
    SELECT a.user_id, s.subscription_id, s.plan_id, s.status, s.current_period_start,
           s.current_period_end, s.billing_cycle_anchor, s.cancel_at_period_end, s.cancel_at,
           s.canceled_at
    FROM accounts a JOIN subscriptions s ON s.subscription_id = a.current_subscription_id;

-- What a check, a record or a summary needs of a (user, usage type) pair: its pools and their
-- version, the user's current subscription, and one period containing a moment with the pair's
-- counter (NULL period: none yet).
CREATE TYPE metering.pair_state_v1 AS (
    user_id text, usage_type text, rollover bigint, purchased bigint, version bigint,
    subscription_id text, plan_id text, status text, current_period_start timestamptz,
    current_period_end timestamptz, billing_cycle_anchor timestamptz,
    cancel_at_period_end boolean, cancel_at timestamptz, canceled_at timestamptz,
    period_id uuid, period_start timestamptz, period_end timestamptz, period_plan text, used bigint
);

-- The states of pairs in one snapshot (STABLE: the whole call reads one): one row per pair and
-- period containing p_now; a pair in no period yet has one row with a NULL period.
CREATE FUNCTION metering.pair_states_v1(p_users text[], p_types text[], p_now timestamptz)
RETURNS SETOF metering.pair_state_v1
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan SET random_page_cost = 1.1
AS $$
BEGIN
    RETURN QUERY
    SELECT k.user_id, k.usage_type, coalesce(b.rollover, 0), coalesce(b.purchased, 0),
           coalesce(b.version, 0), s.subscription_id, s.plan_id, s.status, s.current_period_start,
           s.current_period_end, s.billing_cycle_anchor, s.cancel_at_period_end, s.cancel_at,
           s.canceled_at, p.period_id, p.period_start, p.period_end, p.plan_id,
           coalesce(u.used, 0)
    FROM unnest(p_users, p_types) AS k (user_id, usage_type)
    LEFT JOIN balances b ON b.user_id = k.user_id AND b.usage_type = k.usage_type
    LEFT JOIN metering.current_subscriptions s ON s.user_id = k.user_id
    LEFT JOIN periods p ON p.user_id = k.user_id AND p.period_start <= p_now AND p.period_end > p_now
    LEFT JOIN period_usage u ON u.period_id = p.period_id AND u.usage_type = k.usage_type;
END
$$;

-- THE lock of (user, usage type) pairs: every change of a pair's balances or period counter holds
-- it until COMMIT. Pairs are locked in one order, so two transactions locking several pairs never
-- deadlock on each other; the upsert creates a missing row and bumps the version. With
-- p_skip_locked, only pairs that exist and that no other transaction holds are locked, without
-- waiting. Returns the locked pairs' states, read after the lock is held (so they include what
-- the previous holder committed).
CREATE FUNCTION metering.lock_pairs_v1(
    p_users text[], p_types text[], p_now timestamptz, p_skip_locked boolean
)
RETURNS SETOF metering.pair_state_v1
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan SET random_page_cost = 1.1
AS $$
DECLARE
    locked_users text[] := p_users;
    locked_types text[] := p_types;
BEGIN
    IF p_skip_locked THEN
        WITH free AS (
            UPDATE balances b SET updated_at = now(), version = b.version + 1
            FROM (SELECT x.user_id, x.usage_type FROM balances x
                  JOIN unnest(p_users, p_types) AS k (user_id, usage_type)
                    ON x.user_id = k.user_id AND x.usage_type = k.usage_type
                  ORDER BY x.user_id, x.usage_type
                  FOR UPDATE OF x SKIP LOCKED) AS f
            WHERE b.user_id = f.user_id AND b.usage_type = f.usage_type
            RETURNING b.user_id, b.usage_type
        )
        SELECT array_agg(free.user_id), array_agg(free.usage_type)
        INTO locked_users, locked_types FROM free;
    ELSE
        INSERT INTO balances (user_id, usage_type, version)
        SELECT k.user_id, k.usage_type, 1 FROM unnest(p_users, p_types) AS k (user_id, usage_type)
        ORDER BY k.user_id, k.usage_type
        ON CONFLICT (user_id, usage_type)
        DO UPDATE SET updated_at = now(), version = balances.version + 1;
    END IF;
    RETURN QUERY SELECT * FROM metering.pair_states_v1(locked_users, locked_types, p_now);
END
$$;

-- The stored usage rows of these event ids: duplicates and conflicts of a record.
CREATE FUNCTION metering.usage_events_v1(p_ids text[])
RETURNS TABLE (
    event_id text, user_id text, usage_type text, amount bigint, from_subscription bigint,
    from_rollover bigint, from_purchased bigint, overflow_to_debt bigint
)
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan SET random_page_cost = 1.1
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT e.event_id, e.user_id, e.usage_type, e.amount, e.from_subscription, e.from_rollover,
           e.from_purchased, e.overflow_to_debt
    FROM usage_events e WHERE e.event_id = ANY(p_ids);
END
$$;

-- The period row of (user, start), created if missing: an upsert, never two rows. When a
-- concurrent transaction inserted it first, ON CONFLICT waited for its commit, and the SELECT
-- (a statement of its own, so a new snapshot) sees the row.
CREATE FUNCTION metering.ensure_period_v1(
    p_user text, p_start timestamptz, p_end timestamptz, p_plan text, p_kind text,
    p_subscription text
)
RETURNS TABLE (period_id uuid, period_start timestamptz, period_end timestamptz, plan_id text)
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan SET random_page_cost = 1.1
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    INSERT INTO periods (user_id, period_start, period_end, plan_id, kind, subscription_id)
    VALUES (p_user, p_start, p_end, p_plan, p_kind, p_subscription)
    ON CONFLICT (user_id, period_start) DO NOTHING
    RETURNING periods.period_id, periods.period_start, periods.period_end, periods.plan_id;
    IF NOT FOUND THEN
        RETURN QUERY
        SELECT p.period_id, p.period_start, p.period_end, p.plan_id FROM periods p
        WHERE p.user_id = p_user AND p.period_start = p_start;
    END IF;
END
$$;

-- THE way balances and period counters change: each pair's summed pool deltas (b_*), each
-- (period, usage type)'s summed counter delta (c_*), and one journal row per change (j_*), in
-- one call. The caller holds the lock of every pair (lock_pairs_v1); a pair without its balances
-- row is a bug, and fails the transaction.
CREATE FUNCTION metering.post_entries_v1(
    p_reason text,
    b_users text[], b_types text[], b_rollover bigint[], b_purchased bigint[],
    c_periods uuid[], c_types text[], c_used bigint[],
    j_users text[], j_types text[], j_accounts text[], j_periods uuid[], j_deltas bigint[],
    j_refs text[]
)
RETURNS void
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan SET random_page_cost = 1.1
AS $$
DECLARE
    changed bigint;
BEGIN
    UPDATE balances SET rollover = balances.rollover + d.rollover,
                        purchased = balances.purchased + d.purchased, updated_at = now()
    FROM unnest(b_users, b_types, b_rollover, b_purchased) AS d (user_id, usage_type, rollover, purchased)
    WHERE balances.user_id = d.user_id AND balances.usage_type = d.usage_type;
    GET DIAGNOSTICS changed = ROW_COUNT;
    IF changed <> coalesce(cardinality(b_users), 0) THEN
        RAISE EXCEPTION 'post_entries: no balances row to change: lock the pair first';
    END IF;
    INSERT INTO period_usage (period_id, usage_type, used)
    SELECT * FROM unnest(c_periods, c_types, c_used)
    ON CONFLICT (period_id, usage_type) DO UPDATE SET used = period_usage.used + excluded.used;
    INSERT INTO journal (user_id, usage_type, account, period_id, delta, reason, ref)
    SELECT j.user_id, j.usage_type, j.account, j.period_id, j.delta, p_reason, j.ref
    FROM unnest(j_users, j_types, j_accounts, j_periods, j_deltas, j_refs)
        AS j (user_id, usage_type, account, period_id, delta, ref);
END
$$;

-- New usage events: their rows, their lifetime aggregates (one upsert per user, usage type and
-- breakdown group, summed by the caller) and their journaled changes (post_entries_v1). A plain
-- INSERT: an event id taken by a concurrent transaction since this one read it fails the call
-- (unique_violation), and the whole transaction runs again.
CREATE FUNCTION metering.post_usage_v1(
    p_at timestamptz,
    ev_ids text[], ev_users text[], ev_types text[], ev_amounts bigint[], ev_refs text[],
    ev_descriptions text[], ev_details text[], ev_reservations text[], ev_periods uuid[],
    ev_fs bigint[], ev_fr bigint[], ev_fp bigint[], ev_fd bigint[],
    g_users text[], g_types text[], g_keys text[], g_json text[], g_labels text[],
    g_totals bigint[], g_events bigint[], g_measures text[],
    b_users text[], b_types text[], b_rollover bigint[], b_purchased bigint[],
    c_periods uuid[], c_types text[], c_used bigint[],
    j_users text[], j_types text[], j_accounts text[], j_periods uuid[], j_deltas bigint[],
    j_refs text[]
)
RETURNS void
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan SET random_page_cost = 1.1
AS $$
BEGIN
    INSERT INTO usage_events (event_id, user_id, usage_type, amount, reference_id, description,
        details, reservation_id, period_id, from_subscription, from_rollover, from_purchased,
        overflow_to_debt, recorded_at)
    SELECT n.event_id, n.user_id, n.usage_type, n.amount, n.reference_id, n.description,
        CAST(n.details AS jsonb), n.reservation_id, n.period_id, n.fs, n.fr, n.fp, n.fd, p_at
    FROM unnest(ev_ids, ev_users, ev_types, ev_amounts, ev_refs, ev_descriptions, ev_details,
                ev_reservations, ev_periods, ev_fs, ev_fr, ev_fp, ev_fd)
        AS n (event_id, user_id, usage_type, amount, reference_id, description, details,
              reservation_id, period_id, fs, fr, fp, fd);
    INSERT INTO lifetime_stats (user_id, usage_type, group_key, key, label, total, events, measures)
    SELECT g.user_id, g.usage_type, g.gk, CAST(g.gkey AS jsonb), g.label, g.total, g.events,
           CAST(g.measures AS jsonb)
    FROM unnest(g_users, g_types, g_keys, g_json, g_labels, g_totals, g_events, g_measures)
        AS g (user_id, usage_type, gk, gkey, label, total, events, measures)
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
        updated_at = now();
    PERFORM metering.post_entries_v1('usage', b_users, b_types, b_rollover, b_purchased,
        c_periods, c_types, c_used, j_users, j_types, j_accounts, j_periods, j_deltas, j_refs);
END
$$;
"""

# Generated by the code of earlier versions (one per statement, named after a hash of its text).
DROP_HASHED = """
DO $$
DECLARE f regprocedure;
BEGIN
    FOR f IN SELECT oid::regprocedure FROM pg_proc
             WHERE proname LIKE 'metering\\_r\\_%' AND pronamespace = 'public'::regnamespace
    LOOP
        EXECUTE 'DROP FUNCTION ' || f;
    END LOOP;
END
$$;
"""


def upgrade() -> None:
    op.execute(ROUTINES)
    op.execute(DROP_HASHED)


def downgrade() -> None:
    op.execute("DROP SCHEMA metering CASCADE")
