"""Each delivery carries its own route (which transport sends it: the in-house path, later Loops)
and, for VERP, its own envelope sender; until now the route was only the message's metrics label.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("route", sa.String(16), nullable=False, server_default="inhouse"))
        batch.add_column(sa.Column("mail_from", sa.String(512), nullable=True))
    op.execute(
        "UPDATE deliveries SET route = (SELECT messages.route FROM messages"
        " WHERE messages.id = deliveries.message_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("mail_from")
        batch.drop_column("route")
