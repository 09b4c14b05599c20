"""A message rendered from a template keeps the data it was rendered with, so a route that renders
elsewhere (Loops' transactional API, `postroom.shadow`) can send the same template with the same
data variables instead of the rendered bytes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("template_data", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("template_data")
