"""Scheduled reports (postroom.reports): one run per (report, slot), and when each report was
first watched."""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "report_runs",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("report", sa.String(64), nullable=False),
        sa.Column("slot", sa.String(80), nullable=False),
        sa.Column("period", sa.String(40), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("scheduled_for", sa.Float),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("render_seconds", sa.Float),
        sa.Column("figures", sa.JSON),
        sa.Column("deliveries", sa.JSON),
        sa.Column("error", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_report_runs"),
        sa.UniqueConstraint("report", "slot", name="uq_report_runs_report_slot"),
    )
    op.create_index("ix_report_runs_report_started_at", "report_runs", ["report", "started_at"])
    op.create_table(
        "report_watch",
        sa.Column("report", sa.String(64), nullable=False),
        sa.Column("since", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("report", name="pk_report_watch"),
    )


def downgrade() -> None:
    op.drop_table("report_watch")
    op.drop_index("ix_report_runs_report_started_at", table_name="report_runs")
    op.drop_table("report_runs")
