"""`SqlQueueStore`: the queue on SQLAlchemy Core, one code path for SQLite and PostgreSQL.

Claiming is one `UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED) RETURNING`:
on PostgreSQL concurrent daemons skip each other's locked rows; SQLite ignores the locking clause
and serialises writers, so the single statement is atomic there too. Every release is guarded by
`lease_owner`, so a worker whose lease was reaped cannot overwrite the newer owner's outcome.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postroom.core.errors import ConflictError, NotFoundError, StoreError
from postroom.core.ids import new_message_id
from postroom.core.types import ACTIVE_STATES, DeliveryState, IdempotencyKey, Submission
from postroom.queue.models import (
    ClaimedDelivery,
    DeliveryRow,
    DestinationGroup,
    MessageDetail,
    MessageSummary,
    QueuedMessage,
    Release,
    recipient_domain,
)
from postroom.store.engine import WriteGate, read_only, translate_errors
from postroom.store.sqlite_writer import SqliteBatchWriter, sql_and_rows
from postroom.store.sqlite_writer import compiled as sqlite_compiled
from postroom.store.sqlite_writer import execute as sqlite_execute
from postroom.store.sqlite_writer import executemany as sqlite_executemany
from postroom.store.tables import deliveries, events, idempotency_keys, messages

IDEMPOTENCY_WINDOW = 24 * 3600.0
CLAIMABLE = (DeliveryState.QUEUED.value, DeliveryState.DEFERRED.value)


def request_hash(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


@dataclass(frozen=True)
class Lease:
    """Deliveries written already leased to a worker (`insert_many(..., lease=)`)."""

    owner: str
    expires_at: float


def insert_statements(
    batch: list[tuple[str, Submission]], now: float, lease: Lease | None = None
) -> list[tuple[sa.Insert, list[dict[str, Any]]]]:
    """The rows one batch of submissions writes: its messages, deliveries and `accepted` events.
    With `lease`, the deliveries start out leased to that worker instead of queued."""
    state = DeliveryState.SENDING.value if lease else DeliveryState.QUEUED.value
    leased = {"lease_owner": lease.owner, "lease_expires_at": lease.expires_at} if lease else {}
    return [
        (
            messages.insert(),
            [
                {
                    "id": message_id,
                    "created_at": now,
                    "source": item.source,
                    "submitted_by": item.submitted_by,
                    "mail_from": item.mail_from,
                    "header_from": item.header_from,
                    "subject": item.subject,
                    "stream": item.stream,
                    "route": item.route,
                    "tags": list(item.tags),
                    "size": len(item.content),
                    "content": item.content,
                    "error": None,
                }
                for message_id, item in batch
            ],
        ),
        (
            deliveries.insert(),
            [
                {
                    "message_id": message_id,
                    "recipient": recipient,
                    "domain": recipient_domain(recipient),
                    "state": state,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                    "next_attempt_at": now,
                    **leased,
                }
                for message_id, item in batch
                for recipient in item.recipients
            ],
        ),
        (
            events.insert(),
            [
                {
                    "at": now,
                    "type": "accepted",
                    "message_id": message_id,
                    "delivery_id": None,
                    "recipient": None,
                    "detail": {"source": item.source, "recipients": len(item.recipients)},
                }
                for message_id, item in batch
            ],
        ),
    ]


class SqlQueueStore:
    def __init__(
        self,
        engine: AsyncEngine,
        gate: WriteGate | None = None,
        sqlite_writer: SqliteBatchWriter | None = None,
    ):
        self._engine = engine
        self._reads = read_only(engine)
        self._gate = gate or WriteGate(None)
        self._sqlite_writer = sqlite_writer  # the ingest fast path on SQLite

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, through the write gate (see WriteGate)."""
        async with self._gate.hold(), self._engine.begin() as conn:
            yield conn

    # -- submit ---------------------------------------------------------------------------

    async def insert_many(self, batch: Sequence[Submission], now: float) -> list[str]:
        """Write several submissions in one transaction (one fsync); return their ids in order."""
        ids, _ = await self.insert_leased(batch, now, None)
        return ids

    async def insert_leased(
        self, batch: Sequence[Submission], now: float, lease: Lease | None
    ) -> tuple[list[str], list[ClaimedDelivery]]:
        """`insert_many`; with `lease`, the deliveries are written leased to its owner and come
        back as claimed, so the local worker sends them without claiming them from the database
        (if it dies, the lease runs out and any worker takes them)."""
        ids = [item.message_id or new_message_id(now) for item in batch]
        pairs = list(zip(ids, batch))
        with translate_errors("queueing messages"):
            if self._sqlite_writer is not None:
                statements = insert_statements(pairs, now, lease)
                found = _leased_statement(as_json=True)
                params = {"ids": json.dumps(ids)}

                def insert(connection: sqlite3.Connection) -> list[Any]:
                    for sql, rows in [sql_and_rows(st, rows) for st, rows in statements if rows]:
                        connection.executemany(sql, rows)
                    return sqlite_execute(connection, found, params, "leased") if lease else []

                rows = await self._sqlite_writer.run(insert, durable=True)
            else:
                async with self._write() as conn:
                    await self._insert(conn, pairs, now, lease)
                    rows = []
                    if lease:
                        result = await conn.execute(_leased_statement(as_json=False), {"ids": ids})
                        rows = list(result.all())
        return ids, _claimed(rows)

    async def insert_idempotent(
        self, submission: Submission, key: IdempotencyKey, now: float
    ) -> tuple[str, bool]:
        """Queue unless the key was used in the last 24 h; return (message id, created).

        Same key and same request hash: the original id, created False. Same key, other request:
        ConflictError. The key row and the message commit together or not at all.
        """
        message_id = submission.message_id or new_message_id(now)
        with translate_errors("queueing a message"):
            for _ in range(2):  # a concurrent insert of the same key wins the race: look again
                try:
                    async with self._write() as conn:
                        existing = await self._live_key(conn, key, now)
                        if existing is not None:
                            return existing, False
                        # Only an expired use of the key is replaced. (Deleting whatever is there
                        # let a request that looked before a concurrent one committed delete that
                        # one's fresh key and queue a second message.)
                        await conn.execute(
                            idempotency_keys.delete().where(
                                idempotency_keys.c.scope == key.scope,
                                idempotency_keys.c.key == key.key,
                                idempotency_keys.c.created_at <= now - IDEMPOTENCY_WINDOW,
                            )
                        )
                        await conn.execute(
                            idempotency_keys.insert().values(
                                scope=key.scope,
                                key=key.key,
                                request_hash=key.request_hash,
                                message_id=message_id,
                                created_at=now,
                            )
                        )
                        await self._insert(conn, [(message_id, submission)], now)
                        return message_id, True
                except IntegrityError:
                    continue  # if a concurrent request stored this key, the next look finds it
        raise StoreError("queueing a message failed: a database constraint refused it twice")

    async def _live_key(self, conn: AsyncConnection, key: IdempotencyKey, now: float) -> str | None:
        row = (
            await conn.execute(
                sa.select(idempotency_keys.c.request_hash, idempotency_keys.c.message_id).where(
                    idempotency_keys.c.scope == key.scope,
                    idempotency_keys.c.key == key.key,
                    idempotency_keys.c.created_at > now - IDEMPOTENCY_WINDOW,
                )
            )
        ).first()
        if row is None:
            return None
        if row.request_hash != key.request_hash:
            raise ConflictError(
                "this Idempotency-Key was already used with a different request in the last 24 hours"
            )
        return str(row.message_id)

    @staticmethod
    async def _insert(
        conn: AsyncConnection,
        batch: list[tuple[str, Submission]],
        now: float,
        lease: Lease | None = None,
    ) -> None:
        for statement, rows in insert_statements(batch, now, lease):
            await conn.execute(statement, rows)

    # -- work -----------------------------------------------------------------------------

    async def claim(
        self,
        owner: str,
        limit: int,
        now: float,
        lease_seconds: float,
        exclude_domains: Sequence[str] = (),
    ) -> list[ClaimedDelivery]:
        """Lease up to `limit` due deliveries, oldest due first, none for `exclude_domains`
        (the destinations this worker holds back or has enough of)."""
        claimed, _ = await self.claim_with_messages(owner, limit, now, lease_seconds,
                                                    exclude_domains, load=False)  # fmt: skip
        return claimed

    async def claim_with_messages(
        self,
        owner: str,
        limit: int,
        now: float,
        lease_seconds: float,
        exclude_domains: Sequence[str] = (),
        load: bool = True,
    ) -> tuple[list[ClaimedDelivery], dict[str, QueuedMessage]]:
        """`claim`, and the claimed deliveries' messages (on SQLite in the same hop)."""
        params: dict[str, Any] = {"owner": owner, "limit": limit, "now": now,
                                  "until": now + lease_seconds}  # fmt: skip
        excluding = bool(exclude_domains)
        with translate_errors("claiming deliveries"):
            if self._sqlite_writer is not None:
                if excluding:
                    params["excluded"] = json.dumps(sorted(exclude_domains))
                statement = _claim_statement(excluding, as_json=True)

                def claim_and_load(connection: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
                    rows = sqlite_execute(connection, statement, params, ("claim", excluding))
                    wanted = json.dumps(sorted({row[1] for row in rows}))
                    found = []
                    if load and rows:
                        found = sqlite_execute(connection, _messages_statement(as_json=True),
                                               {"ids": wanted}, "messages")  # fmt: skip
                    return rows, found

                rows, found = await self._sqlite_writer.run(claim_and_load, durable=False)
                claimed = _claimed(rows)
                return claimed, {row[0]: _queued_message(row) for row in found}
            if excluding:
                params["excluded"] = sorted(exclude_domains)
            async with self._write() as conn:
                result = await conn.execute(_claim_statement(excluding, as_json=False), params)
                claimed = _claimed(result.all())
        loaded = await self.load_messages(d.message_id for d in claimed) if load else {}
        return claimed, loaded

    async def load_messages(self, message_ids: Iterable[str]) -> dict[str, QueuedMessage]:
        wanted = sorted(set(message_ids))
        if not wanted:
            return {}
        with translate_errors("loading messages"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(_messages_statement(as_json=False), {"ids": wanted})).all()
        return {row[0]: _queued_message(row) for row in rows}

    async def extend(self, owner: str, delivery_ids: Sequence[int], until: float) -> int:
        """Push the lease of deliveries still being sent; return how many are still ours."""
        if not delivery_ids:
            return 0
        statement = (
            deliveries.update()
            .where(
                deliveries.c.id.in_(list(delivery_ids)),
                deliveries.c.lease_owner == owner,
                deliveries.c.state == DeliveryState.SENDING.value,
            )
            .values(lease_expires_at=until)
        )
        with translate_errors("extending leases"):
            return await self._bookkeeping(statement)

    async def release(
        self,
        owner: str,
        outcomes: Sequence[Release],
        now: float,
        signatures: Mapping[str, bytes] | None = None,
    ) -> int:
        """Record outcomes and their events in one transaction; return how many were still ours.

        `signatures` (message id -> DKIM-Signature fields) are kept with their messages, in the
        same transaction, for retries to send as they are (a message's first kept one stays).

        Only outcomes whose lease is still ours are recorded, events included: a worker whose
        lease was reaped must not log a stale result beside the new owner's. (The id list also
        gives the count, which asyncpg cannot report for executemany.)
        """
        if not outcomes:
            return 0
        ids = [o.delivery_id for o in outcomes]
        kept_signatures = [{"s_id": k, "s_value": v} for k, v in (signatures or {}).items()]
        with translate_errors("recording delivery outcomes"):
            if self._sqlite_writer is not None:

                def record(connection: sqlite3.Connection) -> int:
                    found = sqlite_execute(connection, _still_ours_statement(as_json=True),
                                           {"ids": json.dumps(ids), "owner": owner}, "still ours")  # fmt: skip
                    ours = {row[0] for row in found}
                    kept = [o for o in outcomes if o.delivery_id in ours]
                    if kept:
                        sqlite_executemany(connection, _release_statement(),
                                           _release_rows(kept, owner, now), "release")  # fmt: skip
                        connection.executemany(*sql_and_rows(events.insert(), _event_rows(kept, now)))
                    sqlite_executemany(connection, _signature_statement(), kept_signatures, "signature")
                    return len(kept)

                return await self._sqlite_writer.run(record, durable=False)
            async with self._write() as conn:
                found = await conn.execute(_still_ours_statement(as_json=False), {"ids": ids, "owner": owner})
                ours = set(found.scalars())
                kept = [o for o in outcomes if o.delivery_id in ours]
                if not kept:
                    return 0
                await conn.execute(_release_statement(), _release_rows(kept, owner, now))
                await conn.execute(events.insert(), _event_rows(kept, now))
                if kept_signatures:
                    await conn.execute(_signature_statement(), kept_signatures)
        return len(kept)

    async def park(self, message_id: str, error: str) -> None:
        """Record why a message crashed the pipeline (its deliveries are released as DEAD)."""
        with translate_errors("parking a message"):
            async with self._write() as conn:
                await conn.execute(
                    messages.update().where(messages.c.id == message_id).values(error=error[:4000])
                )

    async def reap(self, now: float) -> int:
        """Return deliveries whose lease ran out (their worker died) to the queue."""
        statement = (
            deliveries.update()
            .where(
                deliveries.c.state == DeliveryState.SENDING.value,
                deliveries.c.lease_expires_at < now,
            )
            .values(
                state=DeliveryState.QUEUED.value,
                lease_owner=None,
                lease_expires_at=None,
                next_attempt_at=now,
                updated_at=now,
            )
        )
        with translate_errors("reaping expired leases"):
            return await self._bookkeeping(statement)

    async def _bookkeeping(self, statement: sa.Update) -> int:
        """Run one UPDATE of delivery bookkeeping; return the rows it changed."""
        if self._sqlite_writer is not None:

            def update(connection: sqlite3.Connection) -> int:
                sql, params = sqlite_compiled(statement)
                return connection.execute(sql, params).rowcount

            return await self._sqlite_writer.run(update, durable=False)
        async with self._write() as conn:
            result = await conn.execute(statement)
        return int(result.rowcount)

    # -- operators ------------------------------------------------------------------------

    async def retry(self, now: float, message_id: str | None = None) -> int:
        """Make dead and deferred deliveries due now (one message, or every dead one)."""
        states = [DeliveryState.DEAD.value, DeliveryState.DEFERRED.value]
        condition: sa.ColumnElement[bool] = deliveries.c.state.in_(states)
        if message_id is not None:
            condition = sa.and_(condition, deliveries.c.message_id == message_id)
        else:
            condition = deliveries.c.state == DeliveryState.DEAD.value
        with translate_errors("retrying deliveries"):
            async with self._write() as conn:
                result = await conn.execute(
                    deliveries.update()
                    .where(condition)
                    .values(
                        state=DeliveryState.QUEUED.value, next_attempt_at=now, updated_at=now
                    )
                )
                if message_id is not None:
                    await conn.execute(
                        messages.update().where(messages.c.id == message_id).values(error=None)
                    )
        return int(result.rowcount)

    async def purge(self, message_id: str | None = None, state: str | None = None) -> int:
        """Delete a message, or every message with a delivery in `state`; a message with a
        delivery being sent right now is never deleted (by id that is a ConflictError)."""
        with translate_errors("purging messages"):
            async with self._write() as conn:
                if message_id is not None:
                    busy = await conn.scalar(
                        sa.select(sa.func.count()).where(
                            deliveries.c.message_id == message_id,
                            deliveries.c.state == DeliveryState.SENDING.value,
                        )
                    )
                    if busy:
                        raise ConflictError(f"message {message_id} is being sent right now")
                    ids = [message_id]
                else:
                    sending = sa.select(deliveries.c.message_id).where(
                        deliveries.c.state == DeliveryState.SENDING.value
                    )
                    ids = list(
                        (
                            await conn.execute(
                                sa.select(deliveries.c.message_id)
                                .where(
                                    deliveries.c.state == state,
                                    deliveries.c.message_id.not_in(sending),
                                )
                                .distinct()
                            )
                        ).scalars()
                    )
                if not ids:
                    return 0
                await conn.execute(deliveries.delete().where(deliveries.c.message_id.in_(ids)))
                await conn.execute(events.delete().where(events.c.message_id.in_(ids)))
                result = await conn.execute(messages.delete().where(messages.c.id.in_(ids)))
        return int(result.rowcount)

    async def depth_by_state(self) -> dict[str, int]:
        with translate_errors("counting the queue"):
            async with self._reads.connect() as conn:
                rows = (
                    await conn.execute(
                        sa.select(deliveries.c.state, sa.func.count()).group_by(deliveries.c.state)
                    )
                ).all()
        return {state: int(count) for state, count in rows}

    async def oldest_active_created_at(self, state: DeliveryState | None = None) -> float | None:
        """When the oldest delivery not yet final (or in `state`) was accepted."""
        states = [state.value] if state is not None else [s.value for s in ACTIVE_STATES]
        with translate_errors("finding the oldest queued delivery"):
            async with self._reads.connect() as conn:
                value = await conn.scalar(
                    sa.select(sa.func.min(deliveries.c.created_at)).where(
                        deliveries.c.state.in_(states)
                    )
                )
        return None if value is None else float(value)

    async def destinations(
        self, *, include_final: bool = False, limit: int = 100
    ) -> list[DestinationGroup]:
        """Deliveries grouped by recipient domain and state, largest groups first, with the
        oldest acceptance, the next attempt and the newest reply of each group."""
        states = [s.value for s in DeliveryState] if include_final else [s.value for s in ACTIVE_STATES]
        grouped = (
            sa.select(
                deliveries.c.domain,
                deliveries.c.state,
                sa.func.count().label("total"),
                sa.func.min(deliveries.c.created_at).label("oldest"),
                sa.func.min(deliveries.c.next_attempt_at).label("next_attempt"),
            )
            .where(deliveries.c.state.in_(states))
            .group_by(deliveries.c.domain, deliveries.c.state)
            .order_by(sa.func.count().desc(), deliveries.c.domain, deliveries.c.state)
            .limit(limit)
        )
        with translate_errors("grouping the queue by destination"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(grouped)).all()
                groups = []
                for row in rows:
                    reply = await conn.scalar(
                        sa.select(deliveries.c.last_reply)
                        .where(
                            deliveries.c.domain == row.domain,
                            deliveries.c.state == row.state,
                            deliveries.c.last_reply.is_not(None),
                        )
                        .order_by(deliveries.c.updated_at.desc())
                        .limit(1)
                    )
                    groups.append(
                        DestinationGroup(row.domain, row.state, int(row.total), float(row.oldest),
                                         float(row.next_attempt), reply)  # fmt: skip
                    )
        return groups

    async def list_messages(
        self,
        *,
        limit: int = 50,
        before: str | None = None,
        state: str | None = None,
        recipient: str | None = None,
        mail_from: str | None = None,
        stream: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[MessageSummary]:
        """Newest first; `before` is the id of the last message of the previous page."""
        query = sa.select(messages.c.id).order_by(messages.c.id.desc()).limit(limit)
        if before:
            query = query.where(messages.c.id < before)
        if mail_from:
            query = query.where(messages.c.mail_from == mail_from)
        if stream:
            query = query.where(messages.c.stream == stream)
        if since is not None:
            query = query.where(messages.c.created_at >= since)
        if until is not None:
            query = query.where(messages.c.created_at < until)
        if state or recipient:
            matching = sa.select(deliveries.c.message_id)
            if state:
                matching = matching.where(deliveries.c.state == state)
            if recipient:
                matching = matching.where(deliveries.c.recipient == recipient)
            query = query.where(messages.c.id.in_(matching))
        with translate_errors("listing messages"):
            async with self._reads.connect() as conn:
                ids = list((await conn.execute(query)).scalars())
                return await self._summaries(conn, ids)

    async def _summaries(self, conn: AsyncConnection, ids: list[str]) -> list[MessageSummary]:
        if not ids:
            return []
        rows = (
            await conn.execute(
                sa.select(
                    messages.c.id,
                    messages.c.created_at,
                    messages.c.source,
                    messages.c.mail_from,
                    messages.c.header_from,
                    messages.c.subject,
                    messages.c.stream,
                    messages.c.size,
                ).where(messages.c.id.in_(ids))
            )
        ).all()
        counts: dict[str, dict[str, int]] = {message_id: {} for message_id in ids}
        for message_id, state, count in (
            await conn.execute(
                sa.select(deliveries.c.message_id, deliveries.c.state, sa.func.count())
                .where(deliveries.c.message_id.in_(ids))
                .group_by(deliveries.c.message_id, deliveries.c.state)
            )
        ).all():
            counts[message_id][state] = int(count)
        by_id = {
            r.id: MessageSummary(
                r.id,
                r.created_at,
                r.source,
                r.mail_from,
                r.header_from,
                r.subject,
                r.stream,
                r.size,
                counts[r.id],
            )
            for r in rows
        }
        return [by_id[message_id] for message_id in ids if message_id in by_id]

    async def show(self, message_id: str) -> MessageDetail:
        with translate_errors("reading a message"):
            async with self._reads.connect() as conn:
                summaries = await self._summaries(conn, [message_id])
                if not summaries:
                    raise NotFoundError(f"no message {message_id}")
                extra = (
                    await conn.execute(
                        sa.select(
                            messages.c.tags, messages.c.submitted_by, messages.c.error
                        ).where(messages.c.id == message_id)
                    )
                ).one()
                delivery_rows = (
                    await conn.execute(
                        sa.select(deliveries)
                        .where(deliveries.c.message_id == message_id)
                        .order_by(deliveries.c.id)
                    )
                ).all()
                event_rows = (
                    await conn.execute(
                        sa.select(events)
                        .where(events.c.message_id == message_id)
                        .order_by(events.c.id)
                    )
                ).all()
        return MessageDetail(
            summary=summaries[0],
            tags=list(extra.tags or []),
            submitted_by=extra.submitted_by,
            error=extra.error,
            deliveries=[
                DeliveryRow(
                    d.id,
                    d.recipient,
                    d.state,
                    d.attempts,
                    d.next_attempt_at,
                    d.last_reply,
                    d.updated_at,
                    d.finished_at,
                )
                for d in delivery_rows
            ],
            events=[_event_dict(e) for e in event_rows],
        )

    async def content(self, message_id: str) -> bytes:
        with translate_errors("reading a message"):
            async with self._reads.connect() as conn:
                value = await conn.scalar(
                    sa.select(messages.c.content).where(messages.c.id == message_id)
                )
        if value is None:
            raise NotFoundError(f"no message {message_id}")
        return bytes(value)


def _in_list(column: sa.ColumnElement[Any], name: str, as_json: bool) -> sa.ColumnElement[bool]:
    """`column IN (:name)`: on SQLite one JSON array parameter read with json_each, so the SQL is
    the same for any number of values (and compiled once); elsewhere an expanding parameter."""
    if as_json:
        values: sa.Select[Any] = sa.select(sa.column("value")).select_from(
            sa.func.json_each(sa.bindparam(name))
        )
        return column.in_(values.scalar_subquery())
    return column.in_(sa.bindparam(name, expanding=True))


@functools.cache
def _claim_statement(excluding: bool, as_json: bool) -> sa.Update:
    """Takes :owner, :limit, :now, :until and, when `excluding`, :excluded (the domains)."""
    candidates = sa.select(deliveries.c.id).where(
        sa.or_(*(deliveries.c.state == state for state in CLAIMABLE)),  # no IN list: cacheable SQL
        deliveries.c.next_attempt_at <= sa.bindparam("now"),
    )
    if excluding:
        candidates = candidates.where(sa.not_(_in_list(deliveries.c.domain, "excluded", as_json)))
    due = (
        candidates.order_by(deliveries.c.next_attempt_at)
        .limit(sa.bindparam("limit"))
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return (
        deliveries.update()
        .where(deliveries.c.id.in_(due))
        .values(
            state=DeliveryState.SENDING.value,
            lease_owner=sa.bindparam("owner"),
            lease_expires_at=sa.bindparam("until"),
            updated_at=sa.bindparam("now"),
        )
        .returning(*_CLAIMED_COLUMNS)
    )


# What a worker needs of a claimed delivery, in the order `_claimed` reads it.
_CLAIMED_COLUMNS = (
    deliveries.c.id,
    deliveries.c.message_id,
    deliveries.c.recipient,
    deliveries.c.attempts,
    deliveries.c.created_at,
)


def _claimed(rows: Iterable[Any]) -> list[ClaimedDelivery]:
    return [
        ClaimedDelivery(r[0], r[1], r[2], r[3], r[4]) for r in sorted(rows, key=lambda r: r[0])
    ]


@functools.cache
def _leased_statement(as_json: bool) -> sa.Select[Any]:
    """Takes :ids (message ids): their deliveries, as `_claimed` reads them."""
    return sa.select(*_CLAIMED_COLUMNS).where(_in_list(deliveries.c.message_id, "ids", as_json))


@functools.cache
def _messages_statement(as_json: bool) -> sa.Select[Any]:
    """Takes :ids."""
    return sa.select(
        messages.c.id,
        messages.c.mail_from,
        messages.c.content,
        messages.c.stream,
        messages.c.route,
        messages.c.created_at,
        messages.c.header_from,
        messages.c.signature,
    ).where(_in_list(messages.c.id, "ids", as_json))


def _queued_message(row: Any) -> QueuedMessage:
    signature = bytes(row[7]) if row[7] is not None else None
    return QueuedMessage(row[0], row[1], bytes(row[2]), row[3], row[4], row[5], row[6], signature)


@functools.cache
def _still_ours_statement(as_json: bool) -> sa.Select[Any]:
    """Takes :ids and :owner: the deliveries among them still leased to owner."""
    return (
        sa.select(deliveries.c.id)
        .where(
            _in_list(deliveries.c.id, "ids", as_json),
            deliveries.c.lease_owner == sa.bindparam("owner"),
            deliveries.c.state == DeliveryState.SENDING.value,
        )
        .with_for_update()
    )


@functools.cache
def _signature_statement() -> sa.Update:
    """Takes rows of :s_id (message id) and :s_value; keeps a message's first signature."""
    return (
        messages.update()
        .where(messages.c.id == sa.bindparam("s_id"), messages.c.signature.is_(None))
        .values(signature=sa.bindparam("s_value"))
    )


@functools.cache
def _release_statement() -> sa.Update:
    """Takes the rows of `_release_rows`."""
    return (
        deliveries.update()
        .where(
            deliveries.c.id == sa.bindparam("b_id"),
            deliveries.c.lease_owner == sa.bindparam("b_owner"),
            deliveries.c.state == DeliveryState.SENDING.value,
        )
        .values(
            state=sa.bindparam("b_state"),
            attempts=deliveries.c.attempts + sa.bindparam("b_tried"),
            next_attempt_at=sa.bindparam("b_next"),
            last_reply=sa.bindparam("b_reply"),
            finished_at=sa.bindparam("b_finished"),
            updated_at=sa.bindparam("b_now"),
            lease_owner=None,
            lease_expires_at=None,
        )
    )


def _release_rows(kept: Sequence[Release], owner: str, now: float) -> list[dict[str, Any]]:
    return [
        {
            "b_id": o.delivery_id,
            "b_owner": owner,
            "b_now": now,
            "b_state": o.state.value,
            "b_tried": 1 if o.tried and o.state is not DeliveryState.DEAD else 0,
            "b_next": o.next_attempt_at if o.next_attempt_at is not None else now,
            "b_reply": o.reply[:2000],
            "b_finished": now if o.state.is_final else None,
        }
        for o in kept
    ]


def _event_rows(kept: Sequence[Release], now: float) -> list[dict[str, Any]]:
    return [
        {
            "at": now,
            "type": o.state.value if o.tried else "held",
            "message_id": o.message_id,
            "delivery_id": o.delivery_id,
            "recipient": o.recipient,
            "detail": {"reply": o.reply[:2000], **o.detail},
        }
        for o in kept
    ]


def _event_dict(row: Any) -> dict[str, Any]:
    return {
        "at": row.at,
        "type": row.type,
        "delivery_id": row.delivery_id,
        "recipient": row.recipient,
        "detail": row.detail,
    }
