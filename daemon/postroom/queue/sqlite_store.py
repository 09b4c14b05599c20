"""`SqliteQueueStore`: the queue on SQLite, its hot paths in one hop to the writer thread.

Through SQLAlchemy and aiosqlite a transaction is several hops to the driver's thread, each
waiting for a turn of a busy event loop (see `store.sqlite_writer`). Here the group commit, claims
with their messages, outcomes and lease bookkeeping each run as one function on the writer thread,
from the same Core statements as `SqlQueueStore` (compiled for SQLite once). The operators' and
idempotent paths, rare and not latency-bound, stay on the SQLAlchemy path it inherits.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.core.ids import new_message_id
from postroom.core.types import Submission
from postroom.queue import statements as q
from postroom.queue.models import ClaimedDelivery, QueuedMessage, Release
from postroom.queue.sql_store import SqlQueueStore
from postroom.queue.statements import Lease
from postroom.store.engine import WriteGate, translate_errors
from postroom.store.sqlite_writer import SqliteBatchWriter, compiled, execute, executemany, sql_and_rows
from postroom.store.tables import events


class SqliteQueueStore(SqlQueueStore):
    def __init__(self, engine: AsyncEngine, writer: SqliteBatchWriter, gate: WriteGate | None = None):
        super().__init__(engine, gate)
        self._writer = writer

    async def insert_leased(
        self, batch: Sequence[Submission], now: float, lease: Lease | None
    ) -> tuple[list[str], list[ClaimedDelivery]]:
        ids = [item.message_id or new_message_id(now) for item in batch]
        statements = q.insert_statements(list(zip(ids, batch)), now, lease)
        found = q.leased_statement(as_json=True)
        params = {"ids": json.dumps(ids)}

        def insert(connection: sqlite3.Connection) -> list[Any]:
            for sql, rows in [sql_and_rows(st, rows) for st, rows in statements if rows]:
                connection.executemany(sql, rows)
            return execute(connection, found, params, "leased") if lease else []

        with translate_errors("queueing messages"):
            rows = await self._writer.run(insert, durable=True)
        return ids, q.claimed_deliveries(rows)

    async def claim_with_messages(
        self,
        owner: str,
        limit: int,
        now: float,
        lease_seconds: float,
        exclude_domains: Sequence[str] = (),
        load: bool = True,
    ) -> tuple[list[ClaimedDelivery], dict[str, QueuedMessage]]:
        """`claim` and the messages, in the same hop."""
        params: dict[str, Any] = {"owner": owner, "limit": limit, "now": now,
                                  "until": now + lease_seconds}  # fmt: skip
        excluding = bool(exclude_domains)
        if excluding:
            params["excluded"] = json.dumps(sorted(exclude_domains))
        statement = q.claim_statement(excluding, as_json=True)

        def claim_and_load(connection: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            rows = execute(connection, statement, params, ("claim", excluding))
            found: list[Any] = []
            if load and rows:
                wanted = json.dumps(sorted({row[1] for row in rows}))
                found = execute(connection, q.messages_statement(as_json=True), {"ids": wanted}, "messages")
            return rows, found

        with translate_errors("claiming deliveries"):
            rows, found = await self._writer.run(claim_and_load, durable=False)
        return q.claimed_deliveries(rows), {row[0]: q.queued_message(row) for row in found}

    async def release(
        self,
        owner: str,
        outcomes: Sequence[Release],
        now: float,
        signatures: Mapping[str, bytes] | None = None,
    ) -> int:
        if not outcomes:
            return 0
        ids = json.dumps([o.delivery_id for o in outcomes])
        kept_signatures = [{"s_id": k, "s_value": v} for k, v in (signatures or {}).items()]

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

        with translate_errors("recording delivery outcomes"):
            return await self._writer.run(record, durable=False)

    async def _bookkeeping(self, statement: sa.Update) -> int:
        def update(connection: sqlite3.Connection) -> int:
            sql, params = compiled(statement)
            return connection.execute(sql, params).rowcount

        return await self._writer.run(update, durable=False)
