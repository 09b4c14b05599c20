"""Outbound webhooks (postroom.webhooks): endpoints and their delivery rows; and indexes for
delivery analytics (postroom.stats): events by type and time, deliveries by creation time."""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("event_types", sa.JSON, nullable=False),
        sa.Column("description", sa.String(255), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("failure_streak", sa.Integer, nullable=False, server_default="0"),
        sa.Column("disabled_at", sa.Float),
        sa.Column("disabled_reason", sa.Text),
        sa.Column("last_success_at", sa.Float),
        sa.Column("last_failure_at", sa.Float),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_endpoints"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("endpoint_id", sa.String(32), nullable=False),
        sa.Column("event_id", sa.BigInteger, nullable=False),
        sa.Column("webhook_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("lease_expires_at", sa.Float),
        sa.Column("delivered_at", sa.Float),
        sa.Column("last_status", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoints.id"],
                                name="fk_webhook_deliveries_endpoint_id_webhook_endpoints",
                                ondelete="CASCADE"),  # fmt: skip
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
    )
    op.create_index("ix_webhook_deliveries_state_next_attempt_at", "webhook_deliveries",
                    ["state", "next_attempt_at"])  # fmt: skip
    op.create_index("ix_webhook_deliveries_endpoint_id_state", "webhook_deliveries", ["endpoint_id", "state"])
    op.create_index("ix_events_type_at", "events", ["type", "at"])
    op.create_index("ix_deliveries_created_at", "deliveries", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_created_at", table_name="deliveries")
    op.drop_index("ix_events_type_at", table_name="events")
    op.drop_index("ix_webhook_deliveries_endpoint_id_state", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_state_next_attempt_at", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
