"""A message keeps the DKIM-Signature header fields it was first sent with, so a retry sends the
same signed bytes instead of signing again (DESIGN flow 2: sign once, not per retry).
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("signature", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("signature")
