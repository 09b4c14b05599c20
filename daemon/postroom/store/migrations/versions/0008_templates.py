"""Templates with immutable numbered versions and a published pointer; a message records the
template and version it was rendered from.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.create_table(
        "templates",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("published_version", sa.Integer),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_templates"),
    )
    op.create_table(
        "template_versions",
        sa.Column("template_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("source", sa.JSON, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("template_id", "version", name="pk_template_versions"),
        sa.ForeignKeyConstraint(["template_id"], ["templates.id"], ondelete="CASCADE",
                                name="fk_template_versions_template_id_templates"),
    )
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("template_id", sa.String(64)))
        batch.add_column(sa.Column("template_version", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("template_version")
        batch.drop_column("template_id")
    op.drop_table("template_versions")
    op.drop_table("templates")
