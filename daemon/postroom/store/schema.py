"""Schema versions: `upgrade` runs the Alembic migrations, `require_current` guards `serve`."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from alembic import command
from postroom.core.errors import SchemaNotCurrentError
from postroom.store.engine import translate_errors

MIGRATIONS = Path(__file__).parent / "migrations"


def _alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    with translate_errors("reading the schema version"):
        async with engine.connect() as conn:
            return await conn.run_sync(_current_revision)


async def upgrade(engine: AsyncEngine) -> tuple[str | None, str]:
    """Migrate to head; return (revision before, revision after)."""

    def run(connection: Connection) -> str | None:
        before = _current_revision(connection)
        command.upgrade(_alembic_config(connection), "head")
        return before

    with translate_errors("migrating the database"):
        async with engine.begin() as conn:
            before = await conn.run_sync(run)
    return before, head_revision()


async def require_current(engine: AsyncEngine) -> None:
    """Raise SchemaNotCurrentError unless the database is exactly at head."""
    current = await current_revision(engine)
    head = head_revision()
    if current != head:
        state = "not initialised" if current is None else f"at revision {current}"
        raise SchemaNotCurrentError(
            f"the database is {state}, this postroom needs revision {head}: "
            "run `postroom db upgrade`"
        )
