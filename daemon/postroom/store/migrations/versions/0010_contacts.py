"""Contacts, their custom property types, mailing-list memberships and events (postroom.contacts),
and the Loops-compatible names of transactional emails (postroom.loops).
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "contacts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("email_key", sa.String(320), nullable=False),
        sa.Column("user_id", sa.String(255)),
        sa.Column("first_name", sa.Text),
        sa.Column("last_name", sa.Text),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("subscribed", sa.Boolean, nullable=False),
        sa.Column("user_group", sa.String(255), nullable=False),
        sa.Column("opt_in_status", sa.String(16)),
        sa.Column("properties", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_contacts"),
        sa.UniqueConstraint("email_key", name="uq_contacts_email_key"),
        sa.UniqueConstraint("user_id", name="uq_contacts_user_id"),
    )
    op.create_table(
        "contact_properties",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("label", sa.String(255), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_contact_properties"),
    )
    op.create_table(
        "contact_lists",
        sa.Column("contact_id", sa.String(32), nullable=False),
        sa.Column("list_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"], name="fk_contact_lists_contact_id_contacts",
                                ondelete="CASCADE"),  # fmt: skip
        sa.PrimaryKeyConstraint("contact_id", "list_id", name="pk_contact_lists"),
    )
    op.create_table(
        "contact_events",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("contact_id", sa.String(32), nullable=False),
        sa.Column("event_name", sa.String(255), nullable=False),
        sa.Column("properties", sa.JSON, nullable=False),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"], name="fk_contact_events_contact_id_contacts",
                                ondelete="CASCADE"),  # fmt: skip
        sa.PrimaryKeyConstraint("id", name="pk_contact_events"),
        sa.UniqueConstraint("idempotency_key", name="uq_contact_events_idempotency_key"),
    )
    op.create_index("ix_contact_events_contact_id", "contact_events", ["contact_id"])
    op.create_table(
        "loops_transactionals",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("template_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("group_id", sa.String(64)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.ForeignKeyConstraint(["template_id"], ["templates.id"], name="fk_loops_transactionals_template_id_templates",
                                ondelete="CASCADE"),  # fmt: skip
        sa.PrimaryKeyConstraint("id", name="pk_loops_transactionals"),
        sa.UniqueConstraint("template_id", name="uq_loops_transactionals_template_id"),
    )


def downgrade() -> None:
    op.drop_table("loops_transactionals")
    op.drop_index("ix_contact_events_contact_id", table_name="contact_events")
    op.drop_table("contact_events")
    op.drop_table("contact_lists")
    op.drop_table("contact_properties")
    op.drop_table("contacts")
