"""`SqlBounceIntake`: what the MX does with mail to a return path. The message is parsed (the
parser is injected: `app.py` passes the daemon's), one `bounce_records` row is written per
recipient it reports, and a failure report about a delivery that had been delivered (a late
bounce) moves that delivery to `bounced` with a `bounced` event; a feedback report (RFC 5965)
becomes a `complained` event. Everything one bounce writes commits in one transaction.

The delivery comes from the VERP token, not from the bounce's text: a DSN cannot redirect its
effect onto a delivery it does not belong to. A DSN naming several recipients is matched to the
delivery's recipient (or, when it names one only, taken to be about it: forwarding may change
the address).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postroom.bounces.model import BounceClass, BounceKind, BounceRecipient, ParsedBounce
from postroom.core.clock import Clock
from postroom.core.types import SHADOW_ROUTE, DeliveryState
from postroom.metrics import Metrics
from postroom.queue import statements as q
from postroom.queue.models import Release
from postroom.store.engine import WriteGate, translate_errors
from postroom.store.tables import bounce_records, deliveries, events, messages

logger = logging.getLogger(__name__)

Parse = Callable[[bytes], ParsedBounce]
FAILED_ACTIONS = (None, "failed")  # RFC 3464 §2.3.3; no Action field: take it as a failure


def reported_for(parsed: ParsedBounce, recipient: str | None) -> BounceRecipient | None:
    """The parser's record about the delivery's recipient."""
    if not parsed.recipients:
        return None
    if recipient is not None:
        for item in parsed.recipients:
            if item.address.lower() == recipient.lower():
                return item
    return parsed.recipients[0] if len(parsed.recipients) == 1 else None


def is_failure(item: BounceRecipient) -> bool:
    return item.action in FAILED_ACTIONS and item.bounce_class is not BounceClass.NONE


async def bounce_delivered(conn: AsyncConnection, delivery: Any, reply: str, detail: dict[str, Any], now: float) -> bool:
    """A late failure: the delivery (`id`, `message_id`, `recipient`, `route`) moves from
    `delivered` to `bounced` with a `bounced` event carrying `detail` (reason, bounce_class, ...),
    which the suppression consumer reads. False, and nothing written, when it was no longer
    `delivered` (bounced already, or still being tried). Shared with Loops' events in
    (`shadow.loops_events_store`)."""
    updated = await conn.execute(
        deliveries.update()
        .where(deliveries.c.id == delivery.id, deliveries.c.state == DeliveryState.DELIVERED.value)
        .values(state=DeliveryState.BOUNCED.value, last_reply=f"bounced later: {reply}", updated_at=now,
                finished_at=now)
    )  # fmt: skip
    if not updated.rowcount:
        return False
    release = Release(delivery.id, delivery.message_id, delivery.recipient, DeliveryState.BOUNCED, reply,
                      detail=detail, route=delivery.route)  # fmt: skip
    await conn.execute(events.insert(), q.event_rows([release], now))
    return True


async def record_complaint(
    conn: AsyncConnection, delivery: Any, recipient: str, detail: dict[str, Any], now: float
) -> None:
    """A `complained` event about `delivery` (`id`, `message_id`; None: a delivery not known),
    which the suppression consumer reads. Shared with Loops' events in. About a shadow copy (shadow
    mode: sent to a seed mailbox, not the recipient) it is `shadow_complained`, read by nobody."""
    shadow = delivery is not None and getattr(delivery, "route", None) == SHADOW_ROUTE
    await conn.execute(events.insert().values(
        at=now, type="shadow_complained" if shadow else "complained", message_id=delivery.message_id if delivery is not None else "",
        delivery_id=delivery.id if delivery is not None else None, recipient=recipient, detail=detail,
    ))  # fmt: skip


class SqlBounceIntake:
    def __init__(
        self, engine: AsyncEngine, gate: WriteGate, parse: Parse, clock: Clock, metrics: Metrics,
        *, max_stored: int = 256 * 1024,
    ):  # fmt: skip
        self._engine = engine
        self._gate = gate
        self._parse = parse
        self._clock = clock
        self._metrics = metrics
        self._max_stored = max_stored

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self._gate.hold(), self._engine.begin() as conn:
            yield conn

    async def take(self, delivery_id: int | None, raw: bytes) -> None:
        """`smtp.handlers.BounceIntake`."""
        parsed = self._parse(raw)
        now = self._clock.now()
        with translate_errors("recording a bounce"):
            async with self._write() as conn:
                await self._record(conn, delivery_id, parsed, raw, now)
        for item in parsed.recipients or ():
            self._metrics.bounces_received.labels(parsed.kind.value, item.bounce_class.value).inc()
        if not parsed.recipients:
            self._metrics.bounces_received.labels(parsed.kind.value, "none").inc()

    async def _record(
        self, conn: AsyncConnection, delivery_id: int | None, parsed: ParsedBounce, raw: bytes, now: float
    ) -> None:
        delivery = None
        if delivery_id is not None:
            delivery = (await conn.execute(
                sa.select(deliveries.c.id, deliveries.c.message_id, deliveries.c.recipient, deliveries.c.state,
                          deliveries.c.route, messages.c.stream)
                .join(messages, messages.c.id == deliveries.c.message_id)
                .where(deliveries.c.id == delivery_id)
            )).first()  # fmt: skip
        ours = reported_for(parsed, delivery.recipient if delivery else None)
        rows = [self._row(parsed, item, delivery, now, raw) for item in parsed.recipients] or [
            self._row(parsed, None, delivery, now, raw)
        ]
        ids: list[int] = []
        for row in rows:  # one by one: the ids go into the events
            ids.append(int((await conn.execute(bounce_records.insert().values(**row)
                                               .returning(bounce_records.c.id))).scalar_one()))  # fmt: skip
        record_of = {item.address: record for item, record in zip(parsed.recipients, ids)}
        if parsed.kind is BounceKind.FEEDBACK:
            await self._complaints(conn, parsed, delivery, record_of, now)
            return
        if delivery is None or ours is None or parsed.kind is not BounceKind.DSN or not is_failure(ours):
            return
        if delivery.state != DeliveryState.DELIVERED.value:
            return  # still being tried, or already failed: the record is kept, the state stands
        detail = self._detail(ours, record_of.get(ours.address), late=True)
        reply = (ours.diagnostic or ours.status or ours.reason)[:2000]
        if await bounce_delivered(conn, delivery, reply, detail, now):
            self._metrics.bounced.labels(delivery.stream, delivery.route, ours.bounce_class.value, ours.reason).inc()

    async def _complaints(
        self, conn: AsyncConnection, parsed: ParsedBounce, delivery: Any, record_of: dict[str, int], now: float
    ) -> None:
        for item in parsed.recipients:
            recipient = delivery.recipient if delivery is not None else item.address
            await record_complaint(conn, delivery, recipient, self._detail(item, record_of.get(item.address),
                                                                           late=False), now)  # fmt: skip

    @staticmethod
    def _detail(item: BounceRecipient, record_id: int | None, *, late: bool) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "reason": item.reason, "bounce_class": item.bounce_class.value, "status": item.status,
            "reply_code": item.reply_code, "diagnostic": item.diagnostic[:1000], "remote_host": item.remote_host,
            "bounce_record_id": record_id,
        }  # fmt: skip
        if item.feedback_type:
            detail["feedback_type"] = item.feedback_type
        if late:
            detail["late"] = True
        return detail

    def _row(
        self, parsed: ParsedBounce, item: BounceRecipient | None, delivery: Any, now: float, raw: bytes
    ) -> dict[str, Any]:
        return {
            "received_at": now,
            "delivery_id": delivery.id if delivery is not None else None,
            "message_id": delivery.message_id if delivery is not None else None,
            "recipient": item.address if item else (delivery.recipient if delivery is not None else None),
            "kind": parsed.kind.value,
            "reason": item.reason if item else None,
            "bounce_class": item.bounce_class.value if item else None,
            "status": (item.status or "")[:16] or None if item else None,
            "reply_code": item.reply_code if item else None,
            "diagnostic": item.diagnostic[:4000] if item else None,
            "feedback_type": (item.feedback_type or "")[:32] or None if item else None,
            "raw_size": len(raw),
            "raw": raw[: self._max_stored],
        }
