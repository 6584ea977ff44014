"""Initial schema: the whole of metering.md.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Ids are uuids from gen_random_uuid() rather than sequences: nextval() is on RDS Proxy's list of
# statements that may pin a connection. Every amount is a bigint (metering.md: 64-bit integers).
SCHEMA = """
CREATE TABLE accounts (
    user_id                 text PRIMARY KEY CHECK (length(user_id) BETWEEN 1 AND 255),
    stripe_customer_id      text,
    current_subscription_id text,
    current_subscription_created timestamptz,
    highest_rank            integer,
    last_paid_at            timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX accounts_customer ON accounts (stripe_customer_id) WHERE stripe_customer_id IS NOT NULL;

-- The mirror of every Stripe subscription we have heard of; accounts.current_subscription_id
-- names the one that governs the user (the most recently created).
CREATE TABLE subscriptions (
    subscription_id      text PRIMARY KEY,
    user_id              text,
    customer_id          text,
    price_id             text,
    plan_id              text,
    status               text NOT NULL,
    stripe_status        text NOT NULL,
    current_period_start timestamptz,
    current_period_end   timestamptz,
    billing_cycle_anchor timestamptz,
    cancel_at_period_end boolean NOT NULL DEFAULT false,
    cancel_at            timestamptz,
    canceled_at          timestamptz,
    created              timestamptz NOT NULL,
    snapshot_created     bigint NOT NULL,   -- event.created of the last snapshot applied
    status_created       bigint NOT NULL,   -- event.created of the last status change applied
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_user ON subscriptions (user_id);
CREATE INDEX subscriptions_customer ON subscriptions (customer_id);

-- A period and the plan that governed it. Created lazily by check/record/summary and eagerly by
-- Stripe events; (user_id, period_start) is unique so creation is an upsert, never two rows.
CREATE TABLE periods (
    period_id       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         text NOT NULL,
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    plan_id         text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('calendar', 'subscription', 'assumed')),
    subscription_id text,
    rolled_over     boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, period_start),
    CHECK (period_end > period_start)
);

CREATE TABLE period_usage (
    period_id  uuid NOT NULL REFERENCES periods (period_id),
    usage_type text NOT NULL,
    used       bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (period_id, usage_type)
);

-- Per user and usage type: the pools, and the row every balance change of that pair locks.
CREATE TABLE balances (
    user_id    text NOT NULL,
    usage_type text NOT NULL,
    rollover   bigint NOT NULL DEFAULT 0,
    purchased  bigint NOT NULL DEFAULT 0 CHECK (purchased >= 0),
    -- bumped by every locked change; a settled reservation remembers the version that includes
    -- its usage, so a check can tell whether the database it read already counts it
    version    bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, usage_type)
);

-- Append-only: every change of a balance or a period counter, in the same transaction.
CREATE TABLE journal (
    entry_id   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    text NOT NULL,
    usage_type text NOT NULL,
    account    text NOT NULL CHECK (account IN ('used', 'rollover', 'purchased')),
    period_id  uuid REFERENCES periods (period_id),
    delta      bigint NOT NULL CHECK (delta <> 0),
    reason     text NOT NULL CHECK (reason IN ('usage', 'rollover', 'topup', 'adjustment', 'refund')),
    ref        text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((account = 'used') = (period_id IS NOT NULL))
);
CREATE INDEX journal_balance ON journal (user_id, usage_type, account);
CREATE INDEX journal_period ON journal (period_id, usage_type) WHERE period_id IS NOT NULL;

CREATE FUNCTION journal_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'journal is append-only';
END $$;
CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE ON journal
    FOR EACH ROW EXECUTE FUNCTION journal_is_append_only();

-- The usage log. The primary key on event_id is the idempotency claim, inserted in the same
-- transaction as the event's effects (a failed write never leaves a claimed id behind).
CREATE TABLE usage_events (
    event_id          text PRIMARY KEY,
    user_id           text NOT NULL,
    usage_type        text NOT NULL,
    amount            bigint NOT NULL CHECK (amount > 0),
    reference_id      text,
    description       text,
    details           jsonb,
    reservation_id    text,
    period_id         uuid NOT NULL REFERENCES periods (period_id),
    from_subscription bigint NOT NULL,
    from_rollover     bigint NOT NULL,
    from_purchased    bigint NOT NULL,
    overflow_to_debt  bigint NOT NULL,
    recorded_at       timestamptz NOT NULL
);
CREATE INDEX usage_events_user_time ON usage_events (user_id, usage_type, recorded_at);
CREATE INDEX usage_events_period ON usage_events (period_id, usage_type);

CREATE TABLE adjustments (
    adjustment_id text PRIMARY KEY,
    user_id       text NOT NULL,
    usage_type    text NOT NULL,
    pool          text NOT NULL CHECK (pool IN ('purchased', 'rollover')),
    delta         bigint NOT NULL CHECK (delta <> 0),
    reason        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Lifetime aggregates per usage type and breakdown group, maintained by every record.
CREATE TABLE lifetime_stats (
    user_id    text NOT NULL,
    usage_type text NOT NULL,
    group_key  text NOT NULL,
    key        jsonb NOT NULL,
    label      text,
    total      bigint NOT NULL,
    events     bigint NOT NULL,
    measures   jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, usage_type, group_key)
);

-- Stripe: every event id applied at most once, recorded with the event's effects.
CREATE TABLE stripe_events (
    event_id     text PRIMARY KEY,
    type         text NOT NULL,
    created      bigint NOT NULL,
    outcome      text NOT NULL,
    object_id    text,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- Subscription events whose user is not known yet; applied when a checkout session links them.
CREATE TABLE stripe_pending_events (
    event_id        text PRIMARY KEY,
    subscription_id text,
    customer_id     text,
    created         bigint NOT NULL,
    payload         jsonb NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_pending_subscription ON stripe_pending_events (subscription_id);
CREATE INDEX stripe_pending_customer ON stripe_pending_events (customer_id);

-- A renewal's rollover is applied once per invoice; a top-up is credited once per session.
CREATE TABLE renewals (
    invoice_id          text PRIMARY KEY,
    user_id             text NOT NULL,
    subscription_id     text,
    ending_period_start timestamptz,
    new_period_start    timestamptz,
    new_period_end      timestamptz,
    applied_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE topups (
    checkout_session_id text PRIMARY KEY,
    user_id             text NOT NULL,
    pack_id             text NOT NULL,
    usage_type          text NOT NULL,
    quantity            integer NOT NULL CHECK (quantity > 0),
    amount              bigint NOT NULL CHECK (amount > 0),
    applied_at          timestamptz NOT NULL DEFAULT now()
);
"""


def upgrade() -> None:
    op.execute(SCHEMA)


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE topups, renewals, stripe_pending_events, stripe_events, lifetime_stats,
            adjustments, usage_events, journal, balances, period_usage, periods, subscriptions,
            accounts;
        DROP FUNCTION journal_is_append_only();
        """
    )
