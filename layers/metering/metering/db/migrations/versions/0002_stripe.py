"""Stripe sync: the inputs of each renewal's rollover, per usage type.

A period's plan can still rise after its renewal was applied: the snapshot carrying a mid-period
upgrade may be delivered after the invoice that ended the period (Stripe does not order webhooks).
The rollover is then computed again from the same inputs under the corrected plan, and the
difference journaled (reason 'rollover', ref = the invoice), so the final balances do not depend on
the delivery order. That needs the balance the renewal started from, which the journal alone cannot
give (its entries carry no commit order).

No foreign keys: test suites empty the 0001 tables with one TRUNCATE that does not name this one.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE renewal_rollovers (
            invoice_id      text NOT NULL,   -- renewals.invoice_id
            usage_type      text NOT NULL,
            user_id         text NOT NULL,
            period_id       uuid NOT NULL,   -- the ending period (periods.period_id)
            used            bigint NOT NULL, -- used in the ending period when it was renewed
            rollover_before bigint NOT NULL, -- the rollover balance just before the renewal
            delta           bigint NOT NULL, -- rollover journaled for this invoice so far
            PRIMARY KEY (invoice_id, usage_type)
        );
        CREATE INDEX renewal_rollovers_period ON renewal_rollovers (period_id);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE renewal_rollovers")
