"""Expiring grants, late events and ledger history (api.md section 7).

- `grants`: credit with an expiry; `remaining` changes only through journal rows of account
  `grant` (created with 0, then credited by its `grant` row), so the ledger invariant covers it.
- `journal` gains `grant_id`, `seq` and `balance_after`. `seq` numbers the rows of one (user,
  usage type) in the order their transactions held the pair's lock (`balances.seq` is the
  counter), so the ledger history pages by keyset without skipping a row that committed late;
  `balance_after` is the pool after the row (the period counter for `used`, the grant's remaining
  for `grant`). Existing rows are numbered in (created_at, entry_id) order and their running
  balances backfilled; the journal's append-only trigger is lifted for that one UPDATE.
- `usage_events` gain `occurred_at` (as given; NULL: at recording) and `from_grants`.
- Routines `*_v2`: pair states with live grants and the periods containing any of several moments;
  the journaled write maintains grants, `seq` and `balance_after`. The v1 writes now delegate to
  it, so code of the previous release still writes complete rows while a deploy rolls out.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE grants (
    grant_id   text PRIMARY KEY CHECK (length(grant_id) BETWEEN 1 AND 255),
    user_id    text NOT NULL,
    usage_type text NOT NULL,
    amount     bigint NOT NULL CHECK (amount > 0),
    remaining  bigint NOT NULL DEFAULT 0 CHECK (remaining >= 0 AND remaining <= amount),
    expires_at timestamptz NOT NULL,
    reason     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- live grants of a pair, soonest expiry first; and the maintenance job's due grants
CREATE INDEX grants_live ON grants (user_id, usage_type, expires_at, grant_id) WHERE remaining > 0;
CREATE INDEX grants_due ON grants (expires_at) WHERE remaining > 0;

ALTER TABLE balances ADD COLUMN seq bigint NOT NULL DEFAULT 0;

ALTER TABLE journal DROP CONSTRAINT journal_account_check;
ALTER TABLE journal DROP CONSTRAINT journal_reason_check;
ALTER TABLE journal
    ADD COLUMN grant_id text,
    ADD COLUMN seq bigint,
    ADD COLUMN balance_after bigint,
    ADD CONSTRAINT journal_account_check
        CHECK (account IN ('used', 'rollover', 'purchased', 'grant')),
    ADD CONSTRAINT journal_reason_check
        CHECK (reason IN ('usage', 'rollover', 'topup', 'adjustment', 'refund', 'grant', 'grant_expired')),
    ADD CONSTRAINT journal_grant_check CHECK ((account = 'grant') = (grant_id IS NOT NULL));

ALTER TABLE journal DISABLE TRIGGER journal_append_only;
WITH o AS (
    SELECT entry_id,
           row_number() OVER (PARTITION BY user_id, usage_type ORDER BY created_at, entry_id) AS seq,
           sum(delta) OVER (PARTITION BY user_id, usage_type, account, period_id
                            ORDER BY created_at, entry_id) AS after
    FROM journal
)
UPDATE journal j SET seq = o.seq, balance_after = o.after FROM o WHERE j.entry_id = o.entry_id;
ALTER TABLE journal ENABLE TRIGGER journal_append_only;
ALTER TABLE journal ALTER COLUMN seq SET NOT NULL, ALTER COLUMN balance_after SET NOT NULL;
CREATE UNIQUE INDEX journal_history ON journal (user_id, usage_type, seq);
CREATE INDEX journal_grant ON journal (grant_id) WHERE grant_id IS NOT NULL;

INSERT INTO balances (user_id, usage_type)
SELECT DISTINCT user_id, usage_type FROM journal ON CONFLICT DO NOTHING;
UPDATE balances b SET seq = m.seq
FROM (SELECT user_id, usage_type, max(seq) AS seq FROM journal GROUP BY 1, 2) m
WHERE b.user_id = m.user_id AND b.usage_type = m.usage_type;

ALTER TABLE usage_events
    ADD COLUMN occurred_at timestamptz,
    ADD COLUMN from_grants bigint NOT NULL DEFAULT 0;
"""

ROUTINES = """
-- pair_state_v1 plus: whether the period's renewal rollover was applied, and the pair's live
-- grants at the moment read, soonest expiry first (parallel arrays).
CREATE TYPE metering.pair_state_v2 AS (
    user_id text, usage_type text, rollover bigint, purchased bigint, version bigint,
    subscription_id text, plan_id text, status text, current_period_start timestamptz,
    current_period_end timestamptz, billing_cycle_anchor timestamptz,
    cancel_at_period_end boolean, cancel_at timestamptz, canceled_at timestamptz,
    period_id uuid, period_start timestamptz, period_end timestamptz, period_plan text, used bigint,
    rolled_over boolean, grant_ids text[], grant_remaining bigint[], grant_expires timestamptz[]
);

-- The states of pairs in one snapshot: one row per pair and stored period containing p_now or
-- any of p_moments (late events); a pair in no such period has one row with a NULL period.
CREATE FUNCTION metering.pair_states_v2(
    p_users text[], p_types text[], p_now timestamptz, p_moments timestamptz[]
)
RETURNS SETOF metering.pair_state_v2
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan SET random_page_cost = 1.1
AS $$
BEGIN
    RETURN QUERY
    SELECT k.user_id, k.usage_type, coalesce(b.rollover, 0), coalesce(b.purchased, 0),
           coalesce(b.version, 0), s.subscription_id, s.plan_id, s.status, s.current_period_start,
           s.current_period_end, s.billing_cycle_anchor, s.cancel_at_period_end, s.cancel_at,
           s.canceled_at, p.period_id, p.period_start, p.period_end, p.plan_id,
           coalesce(u.used, 0), coalesce(p.rolled_over, false), g.ids, g.remaining, g.expires
    FROM unnest(p_users, p_types) AS k (user_id, usage_type)
    LEFT JOIN balances b ON b.user_id = k.user_id AND b.usage_type = k.usage_type
    LEFT JOIN metering.current_subscriptions s ON s.user_id = k.user_id
    LEFT JOIN LATERAL (
        SELECT x.period_id, x.period_start, x.period_end, x.plan_id, x.rolled_over FROM periods x
        WHERE x.user_id = k.user_id
          AND x.period_start <= (SELECT max(m) FROM unnest(p_moments || p_now) AS m)
          AND EXISTS (SELECT 1 FROM unnest(p_moments || p_now) AS m
                      WHERE x.period_start <= m AND x.period_end > m)
    ) p ON true
    LEFT JOIN period_usage u ON u.period_id = p.period_id AND u.usage_type = k.usage_type
    LEFT JOIN LATERAL (
        SELECT array_agg(l.grant_id ORDER BY l.expires_at, l.grant_id) AS ids,
               array_agg(l.remaining ORDER BY l.expires_at, l.grant_id) AS remaining,
               array_agg(l.expires_at ORDER BY l.expires_at, l.grant_id) AS expires
        FROM grants l
        WHERE l.user_id = k.user_id AND l.usage_type = k.usage_type AND l.remaining > 0
          AND l.expires_at > p_now
    ) g ON true;
END
$$;

-- lock_pairs_v1, returning pair_states_v2 (the lock itself is unchanged: the balances row).
CREATE FUNCTION metering.lock_pairs_v2(
    p_users text[], p_types text[], p_now timestamptz, p_moments timestamptz[], p_skip_locked boolean
)
RETURNS SETOF metering.pair_state_v2
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
    RETURN QUERY SELECT * FROM metering.pair_states_v2(locked_users, locked_types, p_now, p_moments);
END
$$;

-- The stored usage rows of these event ids, with what a duplicate's answer needs.
CREATE FUNCTION metering.usage_events_v2(p_ids text[])
RETURNS TABLE (
    event_id text, user_id text, usage_type text, amount bigint, occurred_at timestamptz,
    from_subscription bigint, from_rollover bigint, from_grants bigint, from_purchased bigint,
    overflow_to_debt bigint, period_start timestamptz, period_end timestamptz
)
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan SET random_page_cost = 1.1
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT e.event_id, e.user_id, e.usage_type, e.amount, e.occurred_at, e.from_subscription,
           e.from_rollover, e.from_grants, e.from_purchased, e.overflow_to_debt, p.period_start,
           p.period_end
    FROM usage_events e JOIN periods p ON p.period_id = e.period_id
    WHERE e.event_id = ANY(p_ids);
END
$$;

-- THE way balances, grants and period counters change: one journal row per change (j_*), in
-- input order; the pools, counters and grants move by the rows' sums. Each row gets the pair's
-- next `seq` and the balance of its pool after it. The caller holds the lock of every pair
-- (lock_pairs_v2); a pair without its balances row, or a grant row that does not exist, is a
-- bug and fails the transaction.
CREATE FUNCTION metering.post_entries_v2(
    p_reason text,
    j_users text[], j_types text[], j_accounts text[], j_periods uuid[], j_grants text[],
    j_deltas bigint[], j_refs text[]
)
RETURNS void
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan SET random_page_cost = 1.1
AS $$
DECLARE
    changed bigint;
    expected bigint;
BEGIN
    IF coalesce(cardinality(j_users), 0) = 0 THEN
        RETURN;
    END IF;
    UPDATE balances SET rollover = balances.rollover + d.rollover,
                        purchased = balances.purchased + d.purchased,
                        seq = balances.seq + d.n, updated_at = now()
    FROM (SELECT j.user_id, j.usage_type,
                 coalesce(sum(j.delta) FILTER (WHERE j.account = 'rollover'), 0) AS rollover,
                 coalesce(sum(j.delta) FILTER (WHERE j.account = 'purchased'), 0) AS purchased,
                 count(*) AS n
          FROM unnest(j_users, j_types, j_accounts, j_deltas) AS j (user_id, usage_type, account, delta)
          GROUP BY j.user_id, j.usage_type) AS d
    WHERE balances.user_id = d.user_id AND balances.usage_type = d.usage_type;
    GET DIAGNOSTICS changed = ROW_COUNT;
    SELECT count(*) INTO expected
    FROM (SELECT DISTINCT * FROM unnest(j_users, j_types) AS j (user_id, usage_type)) AS pairs;
    IF changed <> expected THEN
        RAISE EXCEPTION 'post_entries: no balances row to change: lock the pair first';
    END IF;

    INSERT INTO period_usage (period_id, usage_type, used)
    SELECT j.period_id, j.usage_type, sum(j.delta)
    FROM unnest(j_types, j_accounts, j_periods, j_deltas) AS j (usage_type, account, period_id, delta)
    WHERE j.account = 'used' GROUP BY j.period_id, j.usage_type
    ON CONFLICT (period_id, usage_type) DO UPDATE SET used = period_usage.used + excluded.used;

    UPDATE grants SET remaining = grants.remaining + d.delta
    FROM (SELECT j.grant_id, sum(j.delta) AS delta
          FROM unnest(j_grants, j_deltas) AS j (grant_id, delta)
          WHERE j.grant_id IS NOT NULL GROUP BY j.grant_id) AS d
    WHERE grants.grant_id = d.grant_id;
    GET DIAGNOSTICS changed = ROW_COUNT;
    SELECT count(DISTINCT g) INTO expected FROM unnest(j_grants) AS g;
    IF changed <> expected THEN
        RAISE EXCEPTION 'post_entries: no such grant';
    END IF;

    INSERT INTO journal (user_id, usage_type, account, period_id, grant_id, delta, reason, ref, seq,
                         balance_after)
    SELECT j.user_id, j.usage_type, j.account, j.period_id, j.grant_id, j.delta, p_reason, j.ref,
           b.seq - count(*) OVER later_in_pair + 1,
           CASE j.account WHEN 'used' THEN u.used WHEN 'rollover' THEN b.rollover
                          WHEN 'purchased' THEN b.purchased ELSE g.remaining END
           - sum(j.delta) OVER later_in_pool + j.delta
    FROM unnest(j_users, j_types, j_accounts, j_periods, j_grants, j_deltas, j_refs)
        WITH ORDINALITY AS j (user_id, usage_type, account, period_id, grant_id, delta, ref, ord)
    JOIN balances b ON b.user_id = j.user_id AND b.usage_type = j.usage_type
    LEFT JOIN period_usage u ON j.account = 'used' AND u.period_id = j.period_id
                            AND u.usage_type = j.usage_type
    LEFT JOIN grants g ON g.grant_id = j.grant_id
    WINDOW later_in_pair AS (PARTITION BY j.user_id, j.usage_type ORDER BY j.ord DESC),
           later_in_pool AS (PARTITION BY j.user_id, j.usage_type, j.account, j.period_id, j.grant_id
                             ORDER BY j.ord DESC)
    ORDER BY j.ord;
END
$$;

-- New usage events: their rows, lifetime aggregates and journaled changes (post_entries_v2).
CREATE FUNCTION metering.post_usage_v2(
    p_at timestamptz,
    ev_ids text[], ev_users text[], ev_types text[], ev_amounts bigint[], ev_refs text[],
    ev_descriptions text[], ev_details text[], ev_reservations text[], ev_periods uuid[],
    ev_occurred timestamptz[], ev_fs bigint[], ev_fr bigint[], ev_fg bigint[], ev_fp bigint[],
    ev_fd bigint[],
    g_users text[], g_types text[], g_keys text[], g_json text[], g_labels text[],
    g_totals bigint[], g_events bigint[], g_measures text[],
    j_users text[], j_types text[], j_accounts text[], j_periods uuid[], j_grants text[],
    j_deltas bigint[], j_refs text[]
)
RETURNS void
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan SET random_page_cost = 1.1
AS $$
BEGIN
    INSERT INTO usage_events (event_id, user_id, usage_type, amount, reference_id, description,
        details, reservation_id, period_id, occurred_at, from_subscription, from_rollover,
        from_grants, from_purchased, overflow_to_debt, recorded_at)
    SELECT n.event_id, n.user_id, n.usage_type, n.amount, n.reference_id, n.description,
        CAST(n.details AS jsonb), n.reservation_id, n.period_id, n.occurred_at, n.fs, n.fr, n.fg,
        n.fp, n.fd, p_at
    FROM unnest(ev_ids, ev_users, ev_types, ev_amounts, ev_refs, ev_descriptions, ev_details,
                ev_reservations, ev_periods, ev_occurred, ev_fs, ev_fr, ev_fg, ev_fp, ev_fd)
        AS n (event_id, user_id, usage_type, amount, reference_id, description, details,
              reservation_id, period_id, occurred_at, fs, fr, fg, fp, fd);
    PERFORM metering.add_lifetime_v1(g_users, g_types, g_keys, g_json, g_labels, g_totals,
        g_events, g_measures);
    PERFORM metering.post_entries_v2('usage', j_users, j_types, j_accounts, j_periods, j_grants,
        j_deltas, j_refs);
END
$$;

-- Lifetime aggregates (one upsert per user, usage type and breakdown group, summed by the caller).
CREATE FUNCTION metering.add_lifetime_v1(
    g_users text[], g_types text[], g_keys text[], g_json text[], g_labels text[],
    g_totals bigint[], g_events bigint[], g_measures text[]
)
RETURNS void
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan SET random_page_cost = 1.1
AS $$
BEGIN
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
END
$$;

-- The previous release's writes, while it still runs during a deploy: the same journal rows,
-- written by post_entries_v2 (so they get seq and balance_after). Their b_* / c_* sums are the
-- sums of their j_* rows.
CREATE OR REPLACE FUNCTION metering.post_entries_v1(
    p_reason text,
    b_users text[], b_types text[], b_rollover bigint[], b_purchased bigint[],
    c_periods uuid[], c_types text[], c_used bigint[],
    j_users text[], j_types text[], j_accounts text[], j_periods uuid[], j_deltas bigint[],
    j_refs text[]
)
RETURNS void
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan SET random_page_cost = 1.1
AS $$
BEGIN
    PERFORM metering.post_entries_v2(p_reason, j_users, j_types, j_accounts, j_periods,
        array_fill(NULL::text, ARRAY[coalesce(cardinality(j_users), 0)]), j_deltas, j_refs);
END
$$;

CREATE OR REPLACE FUNCTION metering.post_usage_v1(
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
    PERFORM metering.post_usage_v2(p_at, ev_ids, ev_users, ev_types, ev_amounts, ev_refs,
        ev_descriptions, ev_details, ev_reservations, ev_periods,
        array_fill(NULL::timestamptz, ARRAY[coalesce(cardinality(ev_ids), 0)]), ev_fs, ev_fr,
        array_fill(0::bigint, ARRAY[coalesce(cardinality(ev_ids), 0)]),
        ev_fp, ev_fd, g_users, g_types, g_keys, g_json, g_labels, g_totals, g_events, g_measures,
        j_users, j_types, j_accounts, j_periods,
        array_fill(NULL::text, ARRAY[coalesce(cardinality(j_users), 0)]), j_deltas, j_refs);
END
$$;
"""


def upgrade() -> None:
    op.execute(SCHEMA)
    op.execute(ROUTINES)


def downgrade() -> None:
    raise NotImplementedError("0005 adds data (grants, ledger positions) that 0004 cannot hold")
