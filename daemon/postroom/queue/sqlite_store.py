"""`SqliteQueueStore`: the queue on SQLite, its hot paths in one hop to the writer thread.

It is `SqlQueueStore` with the four hot steps replaced (writing a batch, claiming with the
messages, recording outcomes, lease bookkeeping); the public methods and their error
translation are the ones it inherits.

Through SQLAlchemy and aiosqlite a transaction is several hops to the driver's thread, each
waiting for a turn of a busy event loop (see `store.sqlite_writer`). Here the group commit, claims
with their messages, outcomes and lease bookkeeping each run as one function on the writer thread,
from the same Core statements as `SqlQueueStore` (compiled for SQLite once). The operators' and
idempotent paths, rare and not latency-bound, stay on the SQLAlchemy path it inherits.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.core.types import Submission
from postroom.queue import statements as q
from postroom.queue.models import ClaimedDelivery, QueuedMessage, Release
from postroom.queue.protocols import RecipientScreen
from postroom.queue.sql_store import SqlQueueStore
from postroom.queue.statements import Lease
from postroom.store.engine import WriteGate
from postroom.store.sqlite_writer import SqliteBatchWriter, compiled, execute, executemany, sql_and_rows
from postroom.store.tables import events


class SqliteQueueStore(SqlQueueStore):
    def __init__(
        self, engine: AsyncEngine, writer: SqliteBatchWriter, gate: WriteGate | None = None,
        screen: RecipientScreen | None = None,
    ):  # fmt: skip
        super().__init__(engine, gate, screen)
        self._writer = writer

    async def _insert_rows(
        self, batch: list[tuple[str, Submission]], now: float, lease: Lease | None
    ) -> tuple[list[Submission], list[Any]]:
        params = {"ids": json.dumps([message_id for message_id, _ in batch])}
        submissions = [item for _, item in batch]
        screen = self._screen
        # Compiled and built here, on the loop, not on the writer thread while it holds the lock.
        reads = [compiled(query) for query in screen.reads(submissions, now)] if screen is not None else []
        prepared = q.insert_statements(batch, now, lease)

        def insert(connection: sqlite3.Connection) -> tuple[list[Submission], list[Any]]:
            screened = submissions
            statements = prepared
            if screen is not None:
                rows = [row for sql, values in reads for row in connection.execute(sql, values).fetchall()]
                screened = screen.apply(submissions, rows)
                if any(after is not before for after, before in zip(screened, submissions)):
                    written = [(message_id, item) for (message_id, _), item in zip(batch, screened)]
                    statements = q.insert_statements(written, now, lease)
            suppressed = any(item.suppressed for item in screened)
            large: list[tuple[str, bytes]] = []
            for statement, rows in statements:
                if rows and statement.table.name == "messages":
                    rows, large = _without_large_content(rows)
                if rows:
                    connection.executemany(*sql_and_rows(statement, rows))
            for message_id, content in large:
                _write_content(connection, message_id, content)
            if suppressed:
                execute(connection, q.suppressed_events_statement(as_json=True), params, "suppressed-events")
            leased = execute(connection, q.leased_statement(as_json=True), params, "leased") if lease else []
            return screened, leased

        return await self._writer.run(insert, durable=True)

    async def _claim(
        self, owner: str, limit: int, now: float, lease_seconds: float,
        exclude_domains: Sequence[str], load: bool,
    ) -> tuple[list[ClaimedDelivery], dict[str, QueuedMessage]]:  # fmt: skip
        """The claim and the messages in the same hop."""
        params = q.claim_params(owner, limit, now, lease_seconds, exclude_domains, as_json=True)
        excluding = bool(exclude_domains)
        statement = q.claim_statement(excluding, as_json=True)

        def claim_and_load(connection: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            rows = execute(connection, statement, params, ("claim", excluding))
            found: list[Any] = []
            if load and rows:
                wanted = json.dumps(sorted({row[1] for row in rows}))
                found = execute(connection, q.messages_statement(as_json=True), {"ids": wanted}, "messages")
            return rows, found

        rows, found = await self._writer.run(claim_and_load, durable=False)
        return q.claimed_deliveries(rows), {row[0]: q.queued_message(row) for row in found}

    async def _release(
        self, owner: str, outcomes: Sequence[Release], now: float, kept_signatures: list[dict[str, Any]]
    ) -> int:
        ids = json.dumps([o.delivery_id for o in outcomes])

        def record(connection: sqlite3.Connection) -> int:
            found = execute(connection, q.still_ours_statement(as_json=True),
                            {"ids": ids, "owner": owner}, "still ours")  # fmt: skip
            ours = {row[0] for row in found}
            kept = [o for o in outcomes if o.delivery_id in ours]
            if kept:
                executemany(connection, q.release_statement(), q.release_rows(kept, owner, now), "release")
                connection.executemany(*sql_and_rows(events.insert(), q.event_rows(kept, now)))
            executemany(connection, q.signature_statement(), kept_signatures, "signature")
            return len(kept)

        return await self._writer.run(record, durable=False)

    async def _bookkeeping(self, statement: sa.Update) -> int:
        def update(connection: sqlite3.Connection) -> int:
            sql, params = compiled(statement)
            return connection.execute(sql, params).rowcount

        return await self._writer.run(update, durable=False)


# Content at least this large is written with SQLite's incremental blob I/O: bound as a parameter,
# SQLite copies the whole message into its record buffer and the statement cache keeps the bound
# value alive until the next insert, so a burst of large messages held two or three copies each.
LARGE_CONTENT = 256 * 1024


def _without_large_content(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[str, bytes]]]:
    """The rows with large contents replaced by an empty one, and those contents by message id."""
    large = [(row["id"], row["content"]) for row in rows if len(row["content"]) >= LARGE_CONTENT]
    if not large:
        return rows, []
    return [{**row, "content": b""} if len(row["content"]) >= LARGE_CONTENT else row for row in rows], large


def _write_content(connection: sqlite3.Connection, message_id: str, content: bytes) -> None:
    """Give a stored message its content in place: a zero-filled blob of the right size, written
    straight from `content` (one copy, into the page cache), in the caller's transaction."""
    connection.execute("UPDATE messages SET content = zeroblob(?) WHERE id = ?", (len(content), message_id))
    (rowid,) = connection.execute("SELECT rowid FROM messages WHERE id = ?", (message_id,)).fetchone()
    with connection.blobopen("messages", "content", rowid) as blob:
        blob.write(content)

