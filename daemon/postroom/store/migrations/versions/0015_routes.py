"""Shadow mode (postroom.shadow): the route of each stream (and template) between Loops and the
in-house path, and every change of it with who, when and why."""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "routes",
        sa.Column("stream", sa.String(64), nullable=False),
        sa.Column("template", sa.String(64), nullable=False),  # "": every template of the stream
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("percent", sa.Integer, nullable=False),
        sa.Column("fallback", sa.Boolean, nullable=False),
        sa.Column("ramp", sa.Boolean, nullable=False),
        sa.Column("changed_at", sa.Float, nullable=False),
        sa.Column("changed_by", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("stream", "template", name="pk_routes"),
    )
    op.create_table(
        "route_changes",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("stream", sa.String(64), nullable=False),
        sa.Column("template", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("percent", sa.Integer, nullable=False),
        sa.Column("fallback", sa.Boolean, nullable=False),
        sa.Column("ramp", sa.Boolean, nullable=False),
        sa.Column("previous_mode", sa.String(16)),
        sa.Column("previous_percent", sa.Integer),
        sa.Column("source", sa.String(16), nullable=False),  # manual, guard, ramp
        sa.Column("changed_by", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_route_changes"),
    )
    op.create_index("ix_route_changes_stream_template_at", "route_changes", ["stream", "template", "at"])


def downgrade() -> None:
    op.drop_index("ix_route_changes_stream_template_at", table_name="route_changes")
    op.drop_table("route_changes")
    op.drop_table("routes")
