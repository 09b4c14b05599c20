"""Creating the async engine with the per-engine settings durability depends on.

SQLite: WAL journal, `synchronous=FULL` (an acknowledged message is fsynced, as Postfix fsyncs its
queue file), a busy timeout so several connections wait instead of failing, foreign keys on.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
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



class WriteGate:
    """Lets one write transaction at a time into a SQLite database, across processes, with
    immediate hand-over.

    SQLite serialises writers itself, but a writer that finds the database locked sleeps in its
    busy handler (1, 2, 5, 10 ms...), and two daemon processes on one file spent most of their time
    asleep that way: each held the lock for a transaction spanning several thread hops. An flock(2)
    on a side file wakes the next writer the moment the lock is released. It only orders writers;
    correctness still rests on SQLite's own locking (BEGIN IMMEDIATE and the busy timeout).
    PostgreSQL needs no gate.
    """

    def __init__(self, lock_path: Path | None):
        self._lock_path = lock_path
        self._in_process = asyncio.Lock()
        self._fd: int | None = None

    @classmethod
    def for_database(cls, settings: DatabaseSettings) -> WriteGate:
        if not settings.is_sqlite:
            return cls(None)
        database = sa.make_url(settings.url).database
        if not database or database == ":memory:":
            return cls(None)
        return cls(Path(database + ".writelock"))

    def _descriptor(self) -> int:
        if self._fd is None:
            assert self._lock_path is not None
            self._fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        if self._lock_path is None:
            yield
            return
        async with self._in_process:
            fd = self._descriptor()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                waiting = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX))
                try:
                    await asyncio.shield(waiting)
                except asyncio.CancelledError:
                    await waiting  # the thread will get the lock: take it, so we can release it
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    raise
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class GatedStore:
    """The base of a repository that reads through the read-only engine and writes one transaction
    at a time through the write gate (see WriteGate)."""

    def __init__(self, engine: AsyncEngine, gate: WriteGate | None = None):
        self._engine = engine
        self._reads = read_only(engine)
        self._gate = gate or WriteGate(None)

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, through the write gate."""
        async with self._gate.hold(), self._engine.begin() as conn:
            yield conn
