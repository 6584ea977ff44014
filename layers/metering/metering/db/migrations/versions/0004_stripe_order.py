"""Stripe events of one `created` second, ordered by Stripe's lifecycle.

`created` has one-second resolution, and a Checkout signup's events (the subscription created
`incomplete`, its invoice paid, the subscription updated to `active`) usually share one second.
Each subscription now remembers the order key of its newest snapshot and of its newest status
change (`metering.domain.subscriptions.order_key`: the second, the lifecycle stage, the event id),
so that events of one second merge into the same state in any delivery order.

Existing rows get the key of their second alone, which sorts before every key of that second:
the next event of the same second wins, as it did before.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE subscriptions
            ADD COLUMN snapshot_key text NOT NULL DEFAULT '',
            ADD COLUMN status_key text NOT NULL DEFAULT '';
        UPDATE subscriptions SET snapshot_key = lpad(snapshot_created::text, 20, '0') || ':'
            WHERE snapshot_created > 0;
        UPDATE subscriptions SET status_key = lpad(status_created::text, 20, '0') || ':'
            WHERE status_created > 0;
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE subscriptions DROP COLUMN snapshot_key, DROP COLUMN status_key")
