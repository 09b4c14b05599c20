"""SMTP users may be limited to some sender domains or addresses.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("smtp_users") as batch:
        batch.add_column(sa.Column("allowed_senders", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("smtp_users") as batch:
        batch.drop_column("allowed_senders")
