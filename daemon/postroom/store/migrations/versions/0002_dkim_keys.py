"""DKIM selectors with their rotation state.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "dkim_keys",
        sa.Column("domain", sa.String(253), nullable=False),
        sa.Column("selector", sa.String(63), nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("key_path", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("activated_at", sa.Float),
        sa.Column("retire_at", sa.Float),
        sa.PrimaryKeyConstraint("domain", "selector", name="pk_dkim_keys"),
    )


def downgrade() -> None:
    op.drop_table("dkim_keys")
