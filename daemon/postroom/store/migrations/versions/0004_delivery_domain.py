"""Deliveries know their recipient's domain, so the queue can be grouped and held back by it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("domain", sa.String(253), nullable=False, server_default=""))
        batch.create_index("ix_deliveries_domain_state", ["domain", "state"])
    # The part after the last "@", lower-cased, in each engine's own SQL.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "UPDATE deliveries SET domain = lower(substring(recipient from '@([^@]*)$'))"
            " WHERE position('@' in recipient) > 0"
        )
    else:
        op.execute(
            "UPDATE deliveries SET domain = lower(replace(recipient, "
            "rtrim(recipient, replace(recipient, '@', '')), '')) WHERE instr(recipient, '@') > 0"
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_index("ix_deliveries_domain_state")
        batch.drop_column("domain")
