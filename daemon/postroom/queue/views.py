"""`SqlQueueViews`: what operators and the API read about the queue (search, one message with its
attempts, counts by state and destination). Read-only transactions: no write lock on SQLite.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postroom.core.errors import NotFoundError
from postroom.core.types import ACTIVE_STATES, DeliveryState
from postroom.queue.models import DeliveryRow, DestinationGroup, MessageDetail, MessageSummary
from postroom.store.engine import read_only, translate_errors
from postroom.store.tables import deliveries, events, messages


class SqlQueueViews:
    def __init__(self, engine: AsyncEngine):
        self._reads = read_only(engine)

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
        ).subquery()
        # The newest reply of each group, as a correlated subquery of the same statement: one
        # round trip, whatever the number of groups (the index on (domain, state) serves it).
        latest = deliveries.alias("latest")
        newest_reply = (
            sa.select(latest.c.last_reply)
            .where(
                latest.c.domain == grouped.c.domain,
                latest.c.state == grouped.c.state,
                latest.c.last_reply.is_not(None),
            )
            .order_by(latest.c.updated_at.desc())
            .limit(1)
            .scalar_subquery()
        )
        statement = sa.select(grouped, newest_reply.label("reply")).order_by(
            grouped.c.total.desc(), grouped.c.domain, grouped.c.state
        )
        with translate_errors("grouping the queue by destination"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(statement)).all()
        return [
            DestinationGroup(row.domain, row.state, int(row.total), float(row.oldest),
                             float(row.next_attempt), row.reply)  # fmt: skip
            for row in rows
        ]

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
                delivery_rows = await _rows_of_message(conn, deliveries, message_id)
                event_rows = await _rows_of_message(conn, events, message_id)
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


async def _rows_of_message(conn: AsyncConnection, table: sa.Table, message_id: str) -> list[Any]:
    """A message's deliveries or events, in the order they were written."""
    statement = sa.select(table).where(table.c.message_id == message_id).order_by(table.c.id)
    return list((await conn.execute(statement)).all())


def _event_dict(row: Any) -> dict[str, Any]:
    return {
        "at": row.at,
        "type": row.type,
        "delivery_id": row.delivery_id,
        "recipient": row.recipient,
        "detail": row.detail,
    }
