"""`SqliteBatchWriter`: write transactions on SQLite in one hop to one dedicated thread.

Through SQLAlchemy and aiosqlite a transaction is six or so hops to the driver's thread, and each
hop's result waits for a turn of a busy event loop: under ingest load a 10-message commit took
~10 ms while SQLite itself needs ~0.4 ms. That latency is what kept two daemon processes from
scaling (each sat idle waiting for its commits). Here the whole transaction (BEGIN IMMEDIATE, one
executemany per table, COMMIT) runs as one function on a single writer thread with its own
connection, and the loop awaits it once. The loop thread never blocks on SQLite's lock, so other
connections of this process holding it can always finish.

`run` takes any function of the connection and runs it as one transaction there: the delivery
worker's claims and outcomes use it too (`durable=False`: synchronous=NORMAL, see `run`), with
SQLAlchemy Core statements compiled for SQLite by `execute` / `executemany`, so the SQL is the one
the SQLAlchemy path sends, not a second copy written by hand.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect

from postroom.config import DatabaseSettings


_DIALECT = sqlite_dialect.dialect(paramstyle="named")
T = TypeVar("T")


# Compiled SQL of the statements the hot paths run, by the name their callers give them. Those
# statements take every changing value as a bindparam, so their SQL never changes; compiling a
# Core statement costs more than SQLite takes to run it.
_COMPILED: dict[Hashable, tuple[str, dict[str, Any]]] = {}


def compiled(statement: sa.ClauseElement, cache_key: Hashable | None = None) -> tuple[str, dict[str, Any]]:
    """SQLite SQL and its parameters for a Core statement (IN lists expanded in place).

    With `cache_key`, the first compilation is reused: only for statements whose values all come
    as bindparams supplied at execution, with no IN lists of literals (the cached parameters are
    the statement's constants).
    """
    if cache_key is None:
        result = statement.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
        return str(result), dict(result.params)
    if cache_key not in _COMPILED:
        result = statement.compile(dialect=_DIALECT)
        _COMPILED[cache_key] = (str(result), dict(result.params))
    return _COMPILED[cache_key]


def execute(
    connection: sqlite3.Connection,
    statement: sa.ClauseElement,
    params: dict[str, Any] | None = None,
    cache_key: Hashable | None = None,
) -> list[tuple[Any, ...]]:
    """Run one Core statement on the writer's connection; its rows (for SELECT / RETURNING)."""
    sql, constants = compiled(statement, cache_key)
    return connection.execute(sql, {**constants, **(params or {})}).fetchall()


def executemany(
    connection: sqlite3.Connection,
    statement: sa.ClauseElement,
    rows: list[dict[str, Any]],
    cache_key: Hashable | None = None,
) -> None:
    """Run one Core statement with `bindparam`s once per row."""
    if rows:
        sql, constants = compiled(statement, cache_key)  # the statement's own values, then each row's
        connection.executemany(sql, [{**constants, **row} for row in rows])


def sql_and_rows(statement: sa.Insert, rows: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The INSERT for exactly the columns given, and rows with JSON columns serialised."""
    columns = tuple(rows[0])
    sql = _insert_sql(statement.table.name, columns, statement)
    json_columns = [name for name in columns if isinstance(statement.table.c[name].type, sa.JSON)]
    if json_columns:
        # As SQLAlchemy writes them: None is SQL NULL in a column declared `none_as_null`, else JSON null.
        nulls = {name for name in json_columns if getattr(statement.table.c[name].type, "none_as_null", False)}
        rows = [{**row, **{name: None if row[name] is None and name in nulls else json.dumps(row[name])
                           for name in json_columns}} for row in rows]  # fmt: skip
    return sql, rows


def _insert_sql(table: str, columns: tuple[str, ...], statement: sa.Insert) -> str:
    key = ("insert", table, columns)
    if key not in _COMPILED:
        _COMPILED[key] = (str(statement.compile(dialect=_DIALECT, column_keys=list(columns))), {})
    return _COMPILED[key][0]


class SqliteBatchWriter:
    def __init__(self, settings: DatabaseSettings):
        self._path = sa.make_url(settings.url).database or ""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._connection: sqlite3.Connection | None = None
        self._durable = True
        self._lock_fd: int | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                self._path, timeout=10, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            self._connection = connection
            self._durable = True
        return self._connection

    def _gate(self) -> int | None:
        """The write gate's lock file (see `WriteGate`), opened by this thread on its own: an
        flock belongs to an open file, so this one excludes the loop-side gate of this process
        too. Taking it here, around exactly the transaction, holds it no longer than SQLite's own
        lock; taken on the loop, it stayed held until the loop got round to the result."""
        if self._lock_fd is None and self._path and self._path != ":memory:":
            self._lock_fd = os.open(self._path + ".writelock", os.O_RDWR | os.O_CREAT, 0o600)
        return self._lock_fd

    def _transaction(self, work: Callable[[sqlite3.Connection], T], durable: bool) -> T:
        connection = self._connect()
        if durable != self._durable:
            connection.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable
        gate = self._gate()
        if gate is not None:
            fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        finally:
            if gate is not None:
                fcntl.flock(gate, fcntl.LOCK_UN)
        return result

    async def run(self, work: Callable[[sqlite3.Connection], T], durable: bool = True) -> T:
        """Run `work(connection)` as one transaction on the writer thread and return its result.

        `durable` commits with synchronous=FULL (fsynced: what acknowledging a message needs).
        `durable=False` commits with NORMAL: safe against a crash of the process (kill -9), and a
        power cut can lose only the last such commits. Delivery bookkeeping uses it, since
        delivery is at-least-once anyway: a lost claim is reaped, a lost outcome is sent again.
        The next durable commit fsyncs the journal, and with it everything committed before.
        """
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._transaction, work, durable
        )

    def close(self) -> None:
        def close_connection() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

        self._executor.submit(close_connection).result()
        self._executor.shutdown(wait=True)
