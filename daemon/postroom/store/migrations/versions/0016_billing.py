"""Stripe billing state and the MRR ledger (postroom.billing, postroom.mrr): Stripe events once by
id, customers, subscriptions, discounts, prices, invoices, the append-only ledger of MRR changes
with the current positions, and dated exchange rates."""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("object_id", sa.String(255)),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("applied_at", sa.Float),
        sa.PrimaryKeyConstraint("id", name="pk_stripe_events"),
    )
    op.create_index("ix_stripe_events_status_received_at", "stripe_events", ["status", "received_at"])
    op.create_index("ix_stripe_events_received_at", "stripe_events", ["received_at"])
    op.create_table(
        "billing_customers",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("email", sa.String(320)),
        sa.Column("name", sa.String(512)),
        sa.Column("currency", sa.String(3)),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("discount", sa.JSON(none_as_null=True)),
        sa.Column("paid_before_at", sa.Float),
        sa.Column("created", sa.Float),
        sa.Column("last_event_created", sa.Float, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_billing_customers"),
    )
    op.create_table(
        "billing_subscriptions",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("customer", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("snapshot", sa.JSON, nullable=False),
        sa.Column("start_date", sa.Float),
        sa.Column("canceled_at", sa.Float),
        sa.Column("ended_at", sa.Float),
        sa.Column("cancel_at_period_end", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("trial_start", sa.Float),
        sa.Column("trial_end", sa.Float),
        sa.Column("mrr", sa.String(64), nullable=False, server_default="0"),
        sa.Column("scheduled_churn", sa.String(64), nullable=False, server_default="0"),
        sa.Column("dunning_since", sa.Float),
        sa.Column("dunning_invoice", sa.String(255)),
        sa.Column("net_shares", sa.JSON, nullable=False),
        sa.Column("next_change_at", sa.Float),
        sa.Column("last_event_created", sa.Float, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_billing_subscriptions"),
    )
    op.create_index("ix_billing_subscriptions_customer", "billing_subscriptions", ["customer"])
    op.create_index("ix_billing_subscriptions_next_change_at", "billing_subscriptions", ["next_change_at"])
    op.create_index("ix_billing_subscriptions_start_date", "billing_subscriptions", ["start_date"])
    op.create_table(
        "billing_discounts",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("customer", sa.String(255)),
        sa.Column("subscription", sa.String(255)),
        sa.Column("discount", sa.JSON, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_billing_discounts"),
    )
    op.create_table(
        "billing_coupons",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("coupon", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_billing_coupons"),
    )
    op.create_table(
        "billing_prices",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("price", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_billing_prices"),
    )
    op.create_table(
        "billing_invoices",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("customer", sa.String(255)),
        sa.Column("subscription", sa.String(255)),
        sa.Column("status", sa.String(32)),
        sa.Column("billing_reason", sa.String(64)),
        sa.Column("currency", sa.String(3)),
        sa.Column("amount_due", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("amount_paid", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("total", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("attempt_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("paid_at", sa.Float),
        sa.Column("failed_at", sa.Float),
        sa.Column("last_event_created", sa.Float, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_billing_invoices"),
    )
    op.create_index("ix_billing_invoices_created", "billing_invoices", ["created"])
    op.create_index("ix_billing_invoices_subscription", "billing_invoices", ["subscription"])
    op.create_table(
        "billing_syncs",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("finished_at", sa.Float, nullable=False),
        sa.Column("subscriptions", sa.Integer, nullable=False),
        sa.Column("opened_customers", sa.Integer, nullable=False),
        sa.Column("drift", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_billing_syncs"),
    )
    op.create_table(
        "mrr_ledger",
        sa.Column("seq", BigId, nullable=False, autoincrement=True),
        sa.Column("customer", sa.String(255), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("occurred_at", sa.Float, nullable=False),
        sa.Column("before_cents", sa.BigInteger, nullable=False),
        sa.Column("before_free", sa.Boolean, nullable=False),
        sa.Column("after_cents", sa.BigInteger, nullable=False),
        sa.Column("after_free", sa.Boolean, nullable=False),
        sa.Column("cause", sa.String(16), nullable=False),
        sa.Column("event_id", sa.String(255)),
        sa.Column("subscription", sa.String(255)),
        sa.Column("recorded_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_mrr_ledger"),
    )
    op.create_index("ix_mrr_ledger_occurred_at", "mrr_ledger", ["occurred_at"])
    op.create_index("ix_mrr_ledger_customer_occurred_at", "mrr_ledger", ["customer", "occurred_at"])
    op.create_table(
        "mrr_positions",
        sa.Column("customer", sa.String(255), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("cents", sa.BigInteger, nullable=False),
        sa.Column("free", sa.Boolean, nullable=False),
        sa.Column("scheduled_churn_cents", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("occurred_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("customer", "currency", name="pk_mrr_positions"),
    )
    op.create_table(
        "fx_rates",
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("rate", sa.String(40), nullable=False),
        sa.Column("set_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("currency", "day", name="pk_fx_rates"),
    )


def downgrade() -> None:
    op.drop_table("fx_rates")
    op.drop_table("mrr_positions")
    op.drop_index("ix_mrr_ledger_customer_occurred_at", table_name="mrr_ledger")
    op.drop_index("ix_mrr_ledger_occurred_at", table_name="mrr_ledger")
    op.drop_table("mrr_ledger")
    op.drop_table("billing_syncs")
    op.drop_index("ix_billing_invoices_subscription", table_name="billing_invoices")
    op.drop_index("ix_billing_invoices_created", table_name="billing_invoices")
    op.drop_table("billing_invoices")
    op.drop_table("billing_prices")
    op.drop_table("billing_coupons")
    op.drop_table("billing_discounts")
    op.drop_index("ix_billing_subscriptions_start_date", table_name="billing_subscriptions")
    op.drop_index("ix_billing_subscriptions_next_change_at", table_name="billing_subscriptions")
    op.drop_index("ix_billing_subscriptions_customer", table_name="billing_subscriptions")
    op.drop_table("billing_subscriptions")
    op.drop_index("ix_stripe_events_received_at", table_name="stripe_events")
    op.drop_index("ix_stripe_events_status_received_at", table_name="stripe_events")
    op.drop_table("stripe_events")
