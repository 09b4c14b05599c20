"""Alembic environment: migrations run on a connection handed in by `postroom.store.schema`."""

from alembic import context

from postroom.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
