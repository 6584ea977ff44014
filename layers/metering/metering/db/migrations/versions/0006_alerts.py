"""Usage alerts: the transactional outbox (api.md section 7, metering.md "Second release").

One row per alert a user crossed, written in the transaction that crossed it; UNIQUE (user_id,
alert_id, period_start) makes it at most once per user, alert and period (the writers insert with
ON CONFLICT DO NOTHING). AlertDeliveryFunction claims due pending rows (`alerts_due`, FOR UPDATE
SKIP LOCKED), delivers them outside any transaction, then marks them delivered, schedules a retry
or, after a bounded number of attempts, marks them dead (`metering alerts replay` makes them
pending again). `id` is the stable webhook-id of the alert.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE alerts (
            id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            user_id         text NOT NULL,
            alert_id        text NOT NULL,
            usage_type      text NOT NULL,
            period_start    timestamptz NOT NULL,
            period_end      timestamptz NOT NULL,
            threshold       jsonb NOT NULL,          -- {"at_percent": n} or {"when": "..."}
            used            bigint NOT NULL,         -- the snapshot once the change is applied
            allowance       bigint,                  -- the period's limit; NULL = unlimited
            available       bigint,                  -- NULL = unlimited
            occurred_at     timestamptz NOT NULL,
            state           text NOT NULL DEFAULT 'pending'
                            CHECK (state IN ('pending', 'delivered', 'dead')),
            attempts        integer NOT NULL DEFAULT 0,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            last_error      text,
            event_sent_at   timestamptz,             -- EventBridge accepted it
            webhook_sent_at timestamptz,             -- the webhook receiver acknowledged it
            delivered_at    timestamptz,
            UNIQUE (user_id, alert_id, period_start)
        );
        CREATE INDEX alerts_due ON alerts (next_attempt_at) WHERE state = 'pending';
        CREATE INDEX alerts_dead ON alerts (occurred_at) WHERE state = 'dead';
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE alerts")
