"""Loops' webhooks in (postroom.shadow): one row per event, unique by its webhook id."""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "loops_events",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("webhook_id", sa.String(255), nullable=False),
        sa.Column("event_name", sa.String(64), nullable=False),
        sa.Column("event_time", sa.Float, nullable=False),
        sa.Column("email", sa.String(320)),
        sa.Column("source_type", sa.String(16)),
        sa.Column("transactional_id", sa.String(64)),
        sa.Column("delivery_id", BigId),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("effect", sa.String(16), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_loops_events"),
        sa.UniqueConstraint("webhook_id", name="uq_loops_events_webhook_id"),
    )
    op.create_index("ix_loops_events_event_name_event_time", "loops_events", ["event_name", "event_time"])
    op.create_index("ix_loops_events_delivery_id", "loops_events", ["delivery_id"])
    op.create_index("ix_loops_events_email", "loops_events", ["email"])


def downgrade() -> None:
    op.drop_index("ix_loops_events_email", table_name="loops_events")
    op.drop_index("ix_loops_events_delivery_id", table_name="loops_events")
    op.drop_index("ix_loops_events_event_name_event_time", table_name="loops_events")
    op.drop_table("loops_events")
