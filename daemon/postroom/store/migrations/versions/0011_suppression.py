"""Bounce records (postroom.bounces), the suppression list and the soft failures that lead to it
(postroom.suppression).
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bounce_records",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("delivery_id", BigId),
        sa.Column("message_id", sa.String(26)),
        sa.Column("recipient", sa.String(512)),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32)),
        sa.Column("bounce_class", sa.String(8)),
        sa.Column("status", sa.String(16)),
        sa.Column("reply_code", sa.Integer),
        sa.Column("diagnostic", sa.Text),
        sa.Column("feedback_type", sa.String(32)),
        sa.Column("raw_size", sa.Integer, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bounce_records"),
    )
    op.create_index("ix_bounce_records_received_at", "bounce_records", ["received_at"])
    op.create_index("ix_bounce_records_recipient", "bounce_records", ["recipient"])
    op.create_table(
        "suppressions",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("address_key", sa.String(320), nullable=False),
        sa.Column("address", sa.String(512)),
        sa.Column("scope", sa.String(80), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(255), nullable=False),
        sa.Column("bounce_record_id", BigId),
        sa.Column("created_by", sa.String(255)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float),
        sa.PrimaryKeyConstraint("id", name="pk_suppressions"),
        sa.UniqueConstraint("address_key", "scope", name="uq_suppressions_address_key_scope"),
    )
    op.create_index("ix_suppressions_created_at", "suppressions", ["created_at"])
    op.create_table(
        "soft_failures",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("address_key", sa.String(320), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_soft_failures"),
    )
    op.create_index("ix_soft_failures_address_key_at", "soft_failures", ["address_key", "at"])


def downgrade() -> None:
    op.drop_index("ix_soft_failures_address_key_at", table_name="soft_failures")
    op.drop_table("soft_failures")
    op.drop_index("ix_suppressions_created_at", table_name="suppressions")
    op.drop_table("suppressions")
    op.drop_index("ix_bounce_records_recipient", table_name="bounce_records")
    op.drop_index("ix_bounce_records_received_at", table_name="bounce_records")
    op.drop_table("bounce_records")
