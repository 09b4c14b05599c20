"""`SqlLoopsEvents`: what a verified Loops event does, in one transaction with its record.

Loops' transactional API answers without a message id, so an event is matched to the `loops`
delivery it is about by what both sides know: the recipient (case-insensitive), the template
(the event's `transactionalId`, mapped back through `[loops] templates`, when it names one) and
time: the latest such delivery created before the event (with `SKEW` for clocks and whole
seconds) and within `window` of it. Events about campaign or workflow mail, or naming a
transactionalId postroom does not map, match nothing: postroom sent them no mail.

What each kind does (the in-house path's statements, shared with `bounces.intake`):

- delivered: recorded only, against the delivery (effect `confirmed`). The delivery is already
  `delivered` with its `delivered` event from the moment Loops accepted it, and stats, outbound
  webhooks and rates all count `delivered` events: a second one would count the mail twice. The
  row's `event_time` is Loops' time of delivery, which the comparison reads.
- hard bounce: a delivered delivery moves to `bounced` with a `bounced` event (reason
  `hardbounce`, class hard; Loops says no more), so the suppression consumer suppresses the
  address globally, as it does for an in-house late bounce.
- soft bounce: the same with class soft and reason `softbounce`, which counts as bounced and
  suppresses nothing, as a late soft failure from a DSN does.
- spam report: a `complained` event (the consumer suppresses globally).
- unsubscribe: an entry for the delivery's stream and an `unsubscribed` event, as a one-click
  unsubscribe writes them.

An event that matches no delivery (or whose delivery is no longer `delivered`) still feeds the
suppression list directly: hard bounces and spam reports globally, unsubscribes globally (Loops'
unsubscribe is for the contact, and no stream is known); it writes no event, since events are
about postroom's mail. A webhook id seen before changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postroom.bounces.intake import bounce_delivered, record_complaint
from postroom.core.addresses import domain_of
from postroom.core.clock import Clock
from postroom.core.types import LOOPS_ROUTE, DeliveryState
from postroom.metrics import Metrics
from postroom.shadow.loops_webhooks import LoopsEvent, LoopsEventKind
from postroom.store.engine import GatedStore, WriteGate, translate_errors
from postroom.store.tables import deliveries, loops_events, messages
from postroom.suppression.model import NewEntry, address_key
from postroom.suppression.rules import GLOBAL, stream_scope
from postroom.suppression.sql_store import SqlSuppressionStore

logger = logging.getLogger(__name__)

SKEW = 5.0  # seconds a delivery may seem to follow the event: eventTime is whole seconds, clocks differ
NOT_HANDED_OVER = (DeliveryState.QUEUED.value, DeliveryState.SUPPRESSED.value)
CREATED_BY = "loops"


@dataclass(frozen=True)
class Taken:
    """What became of one event: `result` (applied, unmatched, ignored, duplicate), `effect`
    (confirmed, bounced, complained, unsubscribed, suppressed, none) and the matched delivery."""

    result: str
    effect: str
    delivery_id: int | None = None


@dataclass(frozen=True)
class _Bounce:
    reason: str
    bounce_class: str


_BOUNCES = {
    LoopsEventKind.HARD_BOUNCE: _Bounce("hardbounce", "hard"),
    LoopsEventKind.SOFT_BOUNCE: _Bounce("softbounce", "soft"),
}


def template_ids(mapping: Mapping[str, str]) -> dict[str, str]:
    """`[loops] templates` (postroom template id -> transactionalId) read the other way."""
    return {transactional_id: template_id for template_id, transactional_id in mapping.items()}


class SqlLoopsEvents(GatedStore):
    def __init__(
        self, engine: AsyncEngine, gate: WriteGate | None, templates: Mapping[str, str], window: float,
        clock: Clock, metrics: Metrics,
    ):  # fmt: skip
        super().__init__(engine, gate)
        self._template_of = template_ids(templates)
        self._window = window
        self._clock = clock
        self._metrics = metrics

    async def take(self, event: LoopsEvent) -> Taken:
        now = self._clock.now()
        with translate_errors("recording a Loops event"):
            async with self._write() as conn:
                delivery = await self._match(conn, event) if event.kind is not LoopsEventKind.OTHER else None
                result = "ignored" if event.kind is LoopsEventKind.OTHER else "applied" if delivery else "unmatched"
                row_id = await self._record(conn, event, delivery, result, now)
                if row_id is None:
                    return Taken("duplicate", "none")
                effect = await self._apply(conn, event, delivery, row_id, now)
                await conn.execute(loops_events.update().where(loops_events.c.id == row_id).values(effect=effect))
        if event.kind is LoopsEventKind.OTHER:
            logger.info("Loops event %s (%s) stored and ignored", event.name, event.webhook_id)
        return Taken(result, effect, delivery.id if delivery is not None else None)

    async def _match(self, conn: AsyncConnection, event: LoopsEvent) -> Any:
        """The latest `loops` delivery the event can be about, or None."""
        if event.email is None or not event.is_transactional:
            return None
        template = None
        if event.transactional_id is not None:
            template = self._template_of.get(event.transactional_id)
            if template is None:
                return None  # a transactional email postroom does not map: not ours
        query = (
            sa.select(deliveries.c.id, deliveries.c.message_id, deliveries.c.recipient, deliveries.c.state,
                      deliveries.c.route, messages.c.stream)
            .join(messages, messages.c.id == deliveries.c.message_id)
            .where(
                deliveries.c.domain == domain_of(event.email),  # ix_deliveries_domain_state narrows it
                sa.func.lower(deliveries.c.recipient) == address_key(event.email),
                deliveries.c.route == LOOPS_ROUTE,
                deliveries.c.state.not_in(NOT_HANDED_OVER),
                deliveries.c.created_at <= event.at + SKEW,
                deliveries.c.created_at >= event.at - self._window,
            )
            .order_by(deliveries.c.created_at.desc(), deliveries.c.id.desc())
            .limit(1)
        )  # fmt: skip
        if template is not None:
            query = query.where(messages.c.template_id == template)
        return (await conn.execute(query)).first()

    @staticmethod
    async def _record(
        conn: AsyncConnection, event: LoopsEvent, delivery: Any, result: str, now: float
    ) -> int | None:
        """The event's row, or None when its webhook id is recorded already (a replay)."""
        values = {
            "webhook_id": event.webhook_id, "event_name": event.name, "event_time": event.at,
            "email": address_key(event.email) if event.email else None, "source_type": event.source_type,
            "transactional_id": event.transactional_id, "delivery_id": delivery.id if delivery is not None else None,
            "outcome": result, "effect": "none", "received_at": now, "payload": event.payload,
        }  # fmt: skip
        insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(loops_events)
        statement = insert.values(**values).on_conflict_do_nothing(index_elements=["webhook_id"])
        found = (await conn.execute(statement.returning(loops_events.c.id))).first()
        return None if found is None else int(found[0])

    async def _apply(
        self, conn: AsyncConnection, event: LoopsEvent, delivery: Any, row_id: int, now: float
    ) -> str:
        detail: dict[str, Any] = {"source": "loops", "loops_event": event.name, "loops_event_id": row_id,
                                  "loops_event_time": event.at}  # fmt: skip
        kind = event.kind
        if kind is LoopsEventKind.DELIVERED:
            return "confirmed" if delivery is not None else "none"
        if kind in _BOUNCES:
            bounce = _BOUNCES[kind]
            detail.update(reason=bounce.reason, bounce_class=bounce.bounce_class, late=True)
            if delivery is not None and await bounce_delivered(conn, delivery, f"Loops: {event.name}", detail, now):
                self._metrics.bounced.labels(delivery.stream, delivery.route, bounce.bounce_class, bounce.reason).inc()
                return "bounced"
            if kind is LoopsEventKind.SOFT_BOUNCE:
                return "none"
            return await self._suppress(conn, event, "bounce", bounce.reason, now)
        if kind is LoopsEventKind.SPAM_REPORT:
            if delivery is not None:
                detail.update(reason="feedback", bounce_class="none", feedback_type="abuse")
                await record_complaint(conn, delivery, delivery.recipient, detail, now)
                return "complained"
            return await self._suppress(conn, event, "complaint", "feedback", now)
        if kind is LoopsEventKind.UNSUBSCRIBE:
            if delivery is not None:
                entry = NewEntry(delivery.recipient, stream_scope(delivery.stream), "unsubscribe", "loops",
                                 created_by=CREATED_BY)  # fmt: skip
                await SqlSuppressionStore.unsubscribe_in(conn, entry, delivery.message_id, now, delivery.id)
                self._metrics.suppressions_added.labels("unsubscribe").inc()
                return "unsubscribed"
            return await self._suppress(conn, event, "unsubscribe", "loops", now)
        return "none"

    async def _suppress(self, conn: AsyncConnection, event: LoopsEvent, source: str, reason: str, now: float) -> str:
        """A global entry for an event about no delivery postroom knows as delivered."""
        assert event.email is not None  # parse_event requires it of every kind that gets here
        entry = NewEntry(event.email, GLOBAL, source, reason, created_by=CREATED_BY)
        await SqlSuppressionStore.add_in(conn, [entry], now)
        self._metrics.suppressions_added.labels(source).inc()
        return "suppressed"
