"""Failed-login counters of the SMTP AUTH throttle, shared by every process and every daemon on the
database (until now each process counted on its own, in memory).
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.create_table(
        "login_throttle",
        sa.Column("key", sa.String(320), nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("window_start", sa.Float, nullable=False),
        sa.Column("in_flight", sa.Integer, nullable=False),
        sa.Column("in_flight_before", sa.Integer, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("blocked_until", sa.Float, nullable=False),
        sa.Column("strikes", sa.Integer, nullable=False),
        sa.Column("trusted_until", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_login_throttle"),
    )


def downgrade() -> None:
    op.drop_table("login_throttle")
