"""The queue, its events, idempotency keys, API keys and SMTP users.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("submitted_by", sa.String(255)),
        sa.Column("mail_from", sa.String(512), nullable=False),
        sa.Column("header_from", sa.String(998)),
        sa.Column("subject", sa.String(998)),
        sa.Column("stream", sa.String(64), nullable=False),
        sa.Column("route", sa.String(16), nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("error", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
    )
    op.create_index("ix_messages_created_at", "messages", ["created_at"])
    op.create_table(
        "deliveries",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(26), nullable=False),
        sa.Column("recipient", sa.String(512), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_expires_at", sa.Float),
        sa.Column("last_reply", sa.Text),
        sa.Column("finished_at", sa.Float),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_deliveries_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
    )
    op.create_index("ix_deliveries_state_next_attempt_at", "deliveries", ["state", "next_attempt_at"])
    op.create_index("ix_deliveries_message_id", "deliveries", ["message_id"])
    op.create_table(
        "events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("message_id", sa.String(26), nullable=False),
        sa.Column("delivery_id", BigId),
        sa.Column("recipient", sa.String(512)),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_message_id", "events", ["message_id"])
    op.create_index("ix_events_at", "events", ["at"])
    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("message_id", sa.String(26), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", name="pk_idempotency_keys"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
    )
    op.create_table(
        "smtp_users",
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("username", name="pk_smtp_users"),
    )


def downgrade() -> None:
    for table in ("smtp_users", "api_keys", "idempotency_keys", "events", "deliveries", "messages"):
        op.drop_table(table)
