"""`SqlBounceRecords`: reading the bounce records the intake wrote (`GET /v1/bounces`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.store.engine import read_only, translate_errors
from postroom.store.tables import bounce_records


@dataclass(frozen=True)
class BounceRecord:
    id: int
    received_at: float
    delivery_id: int | None
    message_id: str | None
    recipient: str | None
    kind: str
    reason: str | None
    bounce_class: str | None
    status: str | None
    reply_code: int | None
    diagnostic: str | None
    feedback_type: str | None
    raw_size: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_COLUMNS = [c for c in bounce_records.c if c.name != "raw"]


class SqlBounceRecords:
    def __init__(self, engine: AsyncEngine):
        self._reads = read_only(engine)

    async def search(
        self, *, recipient: str | None = None, kind: str | None = None, bounce_class: str | None = None,
        delivery_id: int | None = None, since: float | None = None, before: int | None = None, limit: int = 100,
    ) -> list[BounceRecord]:  # fmt: skip
        """Newest first; `before` is a record id (the cursor of the next page)."""
        query = sa.select(*_COLUMNS)
        if recipient:
            query = query.where(sa.func.lower(bounce_records.c.recipient) == recipient.strip().lower())
        if kind:
            query = query.where(bounce_records.c.kind == kind)
        if bounce_class:
            query = query.where(bounce_records.c.bounce_class == bounce_class)
        if delivery_id is not None:
            query = query.where(bounce_records.c.delivery_id == delivery_id)
        if since is not None:
            query = query.where(bounce_records.c.received_at >= since)
        if before is not None:
            query = query.where(bounce_records.c.id < before)
        with translate_errors("listing bounce records"):
            async with self._reads.connect() as conn:
                rows = (await conn.execute(query.order_by(bounce_records.c.id.desc()).limit(limit))).all()
        return [BounceRecord(*row) for row in rows]

    async def raw(self, record_id: int) -> bytes | None:
        with translate_errors("reading a bounce record"):
            async with self._reads.connect() as conn:
                value = await conn.scalar(sa.select(bounce_records.c.raw).where(bounce_records.c.id == record_id))
        return None if value is None else bytes(value)
