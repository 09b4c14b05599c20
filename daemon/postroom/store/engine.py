"""Creating the async engine with the per-engine settings durability depends on.

SQLite: WAL journal, `synchronous=FULL` (an acknowledged message is fsynced, as Postfix fsyncs its
queue file), a busy timeout so several connections wait instead of failing, foreign keys on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from postroom.config import DatabaseSettings
from postroom.core.errors import StoreError


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin_sqlite(conn: sa.Connection) -> None:
    deferred = conn.get_execution_options().get(READ_ONLY, False)
    conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


READ_ONLY = "postroom_read_only"


def read_only(engine: AsyncEngine) -> AsyncEngine:
    """The same engine and pool, for transactions that only read (no write lock on SQLite)."""
    return engine.execution_options(**{READ_ONLY: True})


def _ensure_sqlite_parent(url: sa.URL) -> None:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """The one engine of a process. SQLite gets a small pool: one writer at a time anyway."""
    url = sa.make_url(settings.url)
    if settings.is_sqlite:
        _ensure_sqlite_parent(url)
        engine = create_async_engine(
            url,
            echo=settings.echo,
            poolclass=AsyncAdaptedQueuePool,
            pool_size=4,
            max_overflow=4,
            connect_args={"timeout": 10, "isolation_level": None},
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling is off (isolation_level=None): SQLAlchemy's BEGIN
        # below makes a write transaction take its lock up front, so two writers queue on the
        # busy timeout instead of deadlocking on a lock upgrade. Reads (`read_only`) take none.
        event.listen(engine.sync_engine, "begin", _begin_sqlite)
        return engine
    return create_async_engine(
        url,
        echo=settings.echo,
        pool_size=settings.pool_size,
        max_overflow=settings.pool_size,
        pool_pre_ping=True,
    )


@contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Turn any driver error into StoreError, naming what we were doing and not leaking SQL."""
    try:
        yield
    except (StoreError, IntegrityError):
        raise  # integrity errors mean a conflict the caller handles, not a broken store
    except (OperationalError, DBAPIError, sqlite3.Error, OSError, SQLAlchemyError) as exc:
        reason = getattr(exc, "orig", None) or exc
        raise StoreError(f"{action} failed: {type(reason).__name__}: {reason}") from exc

