"""`SqlQueueStore`: the queue through SQLAlchemy's async engine, for PostgreSQL and SQLite alike.

Claiming is one `UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED) RETURNING`:
on PostgreSQL concurrent daemons skip each other's locked rows; SQLite ignores the locking clause
and serialises writers, so the single statement is atomic there too. Every release is guarded by
`lease_owner`, so a worker whose lease was reaped cannot overwrite the newer owner's outcome.
On SQLite the daemon uses `SqliteQueueStore`, which runs the hot paths on a writer thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postroom.core.errors import ConflictError, StoreError
from postroom.core.ids import new_message_id
from postroom.core.types import DeliveryState, IdempotencyKey, Submission
from postroom.queue import statements as q
from postroom.queue.models import ClaimedDelivery, QueuedMessage, Release
from postroom.queue.protocols import Inserted, Queued, RecipientScreen
from postroom.queue.statements import IDEMPOTENCY_WINDOW, Lease
from postroom.store.engine import GatedStore, WriteGate, translate_errors
from postroom.store.tables import deliveries, events, idempotency_keys, messages


class SqlQueueStore(GatedStore):
    def __init__(self, engine: AsyncEngine, gate: WriteGate | None = None, screen: RecipientScreen | None = None):
        """`screen` (the suppression list) takes recipients out in the transaction that queues."""
        super().__init__(engine, gate)
        self._screen = screen

    # -- submit ---------------------------------------------------------------------------

    async def insert_many(self, batch: Sequence[Submission], now: float) -> list[str]:
        """Write several submissions in one transaction (one fsync); return their ids in order."""
        return (await self.insert_leased(batch, now, None)).ids

    async def insert_leased(self, batch: Sequence[Submission], now: float, lease: Lease | None) -> Inserted:
        """`insert_many`; with `lease`, the deliveries are written leased to its owner and come
        back as claimed, so the local worker sends them without claiming them from the database
        (if it dies, the lease runs out and any worker takes them)."""
        ids = [item.message_id or new_message_id(now) for item in batch]
        with translate_errors("queueing messages"):
            screened, rows = await self._insert_rows(list(zip(ids, batch)), now, lease)
        return Inserted(ids, q.claimed_deliveries(rows), screened)

    async def _insert_rows(
        self, batch: list[tuple[str, Submission]], now: float, lease: Lease | None
    ) -> tuple[list[Submission], list[Any]]:
        """Screen and write the batch; the submissions as written and, with a lease, their
        deliveries' rows as `claimed_deliveries` reads them."""
        async with self._write() as conn:
            screened = await self._screened(conn, [item for _, item in batch], now)
            batch = [(message_id, item) for (message_id, _), item in zip(batch, screened)]
            await self._insert(conn, batch, now, lease)
            if not lease:
                return screened, []
            ids = [message_id for message_id, _ in batch]
            return screened, list((await conn.execute(q.leased_statement(as_json=False), {"ids": ids})).all())

    async def _screened(self, conn: AsyncConnection, batch: list[Submission], now: float) -> list[Submission]:
        if self._screen is None:
            return batch
        rows = [row for query in self._screen.reads(batch, now) for row in (await conn.execute(query)).all()]
        return self._screen.apply(batch, rows)

    async def insert_idempotent(self, submission: Submission, key: IdempotencyKey, now: float) -> Queued:
        """Queue unless the key was used in the last 24 h; the message id and whether it was created.

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
                            return Queued(existing, False, submission)
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
                        [screened] = await self._screened(conn, [submission], now)
                        await self._insert(conn, [(message_id, screened)], now)
                        return Queued(message_id, True, screened)
                except IntegrityError:
                    continue  # if a concurrent request stored this key, the next look finds it
        raise StoreError("queueing a message failed: a database constraint refused it twice")

    @staticmethod
    async def _live_key(conn: AsyncConnection, key: IdempotencyKey, now: float) -> str | None:
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
        await insert_submissions(conn, batch, now, lease)

    # -- work -----------------------------------------------------------------------------

    async def claim_with_messages(
        self,
        owner: str,
        limit: int,
        now: float,
        lease_seconds: float,
        exclude_domains: Sequence[str] = (),
        load: bool = True,
    ) -> tuple[list[ClaimedDelivery], dict[str, QueuedMessage]]:
        """Lease up to `limit` due deliveries, oldest due first, none for `exclude_domains` (the
        destinations this worker holds back or has enough of); with `load`, their messages too."""
        with translate_errors("claiming deliveries"):
            return await self._claim(owner, limit, now, lease_seconds, exclude_domains, load)

    async def _claim(
        self, owner: str, limit: int, now: float, lease_seconds: float,
        exclude_domains: Sequence[str], load: bool,
    ) -> tuple[list[ClaimedDelivery], dict[str, QueuedMessage]]:  # fmt: skip
        params = q.claim_params(owner, limit, now, lease_seconds, exclude_domains, as_json=False)
        async with self._write() as conn:
            statement = q.claim_statement(bool(exclude_domains), as_json=False)
            claimed = q.claimed_deliveries((await conn.execute(statement, params)).all())
        loaded = await self.load_messages(d.message_id for d in claimed) if load else {}
        return claimed, loaded

    async def load_messages(self, message_ids: Iterable[str]) -> dict[str, QueuedMessage]:
        wanted = sorted(set(message_ids))
        if not wanted:
            return {}
        with translate_errors("loading messages"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(q.messages_statement(as_json=False), {"ids": wanted})).all()
        return {row[0]: q.queued_message(row) for row in rows}

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
        kept_signatures = [{"s_id": k, "s_value": v} for k, v in (signatures or {}).items()]
        with translate_errors("recording delivery outcomes"):
            return await self._release(owner, outcomes, now, kept_signatures)

    async def _release(
        self, owner: str, outcomes: Sequence[Release], now: float, kept_signatures: list[dict[str, Any]]
    ) -> int:
        ids = [o.delivery_id for o in outcomes]
        async with self._write() as conn:
            found = await conn.execute(q.still_ours_statement(as_json=False), {"ids": ids, "owner": owner})
            ours = set(found.scalars())
            kept = [o for o in outcomes if o.delivery_id in ours]
            if not kept:
                return 0
            await conn.execute(q.release_statement(), q.release_rows(kept, owner, now))
            await conn.execute(events.insert(), q.event_rows(kept, now))
            if kept_signatures:
                await conn.execute(q.signature_statement(), kept_signatures)
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


async def insert_submissions(
    conn: AsyncConnection,
    batch: list[tuple[str, Submission]],
    now: float,
    lease: Lease | None = None,
) -> None:
    """Write a batch of submissions (messages, deliveries, `accepted` events) in a transaction the
    caller holds: the queue's own insert path, for writers that must commit a message together
    with something else (an event consumer queueing a delivery report with its cursor)."""
    for statement, rows in q.insert_statements(batch, now, lease):
        await conn.execute(statement, rows)
    if any(item.suppressed for _, item in batch):
        await conn.execute(q.suppressed_events_statement(as_json=False), {"ids": [m for m, _ in batch]})
