"""The event outbox: events carry the id of the transaction that wrote them, so consumers can read
them in commit order, and each consumer keeps its position in `event_cursors`.

On PostgreSQL `events.xact` defaults to `pg_current_xact_id()`; rows written before this revision
keep 0 (they are all committed, so reading them in id order is safe). On SQLite it is always 0,
and the table is rebuilt with AUTOINCREMENT so an id freed by `queue purge` is never reused below
a consumer's cursor (the rebuild keeps the rows, their ids and the indexes).
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"

PG_CURRENT_XACT = "(pg_current_xact_id()::text::bigint)"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # A constant default first (no table rewrite; existing rows get 0), then the volatile one.
        op.add_column("events", sa.Column("xact", sa.BigInteger, nullable=False, server_default="0"))
        op.alter_column("events", "xact", server_default=sa.text(PG_CURRENT_XACT))
        op.create_index("ix_events_xact_id", "events", ["xact", "id"])
    else:
        with op.batch_alter_table(
            "events", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ) as batch:
            batch.add_column(
                sa.Column("xact", sa.BigInteger, nullable=False, server_default=sa.text("0"))
            )
            batch.create_index("ix_events_xact_id", ["xact", "id"])
    op.create_table(
        "event_cursors",
        sa.Column("consumer", sa.String(64), nullable=False),
        sa.Column("xact", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.BigInteger, nullable=False),
        sa.Column("consumed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed_at", sa.Float),
        sa.Column("last_error", sa.Text),
        sa.PrimaryKeyConstraint("consumer", name="pk_event_cursors"),
    )


def downgrade() -> None:
    op.drop_table("event_cursors")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_events_xact_id", "events")
        op.drop_column("events", "xact")
    else:
        with op.batch_alter_table(
            "events", recreate="always", table_kwargs={"sqlite_autoincrement": False}
        ) as batch:
            batch.drop_index("ix_events_xact_id")
            batch.drop_column("xact")
