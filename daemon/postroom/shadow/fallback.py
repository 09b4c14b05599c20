"""`FallbackConsumer`: in `inhouse` mode with `fallback`, a recipient the in-house path could not
reach for a reason that blames the sender (blocked, bad reputation, authentication failure) is
handed to Loops: a new delivery on the `loops` route for the same message and recipient, with a
`rerouted` event, written with the outbox cursor (exactly once). Never for a recipient-side
reason (an unknown user must not be retried elsewhere), nor for mail Loops cannot send."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from postroom.core.addresses import domain_of
from postroom.core.types import INHOUSE_ROUTE, LOOPS_ROUTE, DeliveryState
from postroom.events.models import Event
from postroom.metrics import Metrics
from postroom.shadow.routing import Mode
from postroom.shadow.service import RouteService
from postroom.store.tables import deliveries, events, messages

FALLBACK_REASONS = frozenset({"blocked", "badreputation", "authfailure"})


class FallbackConsumer:
    name = "shadow-fallback"

    def __init__(self, routes: RouteService, metrics: Metrics):
        self._routes = routes
        self._metrics = metrics

    async def handle(self, batch: Sequence[Event], tx: AsyncConnection) -> None:
        candidates = [e for e in batch if e.type == "bounced" and e.recipient and e.delivery_id is not None
                      and e.detail.get("reason") in FALLBACK_REASONS]  # fmt: skip
        if not candidates:
            return
        rows = (await tx.execute(
            sa.select(deliveries.c.id, deliveries.c.route, messages.c.stream, messages.c.template_id)
            .select_from(deliveries.join(messages, messages.c.id == deliveries.c.message_id))
            .where(deliveries.c.id.in_([e.delivery_id for e in candidates]))
        )).all()  # fmt: skip
        found = {row.id: row for row in rows}
        for event in candidates:
            row = found.get(event.delivery_id)
            if row is None or row.route != INHOUSE_ROUTE:
                continue
            setting = self._routes.setting(row.stream, row.template_id)
            if setting is None or setting.mode is not Mode.INHOUSE or not setting.fallback:
                continue
            if not self._routes.can_go_to_loops(row.template_id):
                continue
            assert event.recipient is not None
            result = await tx.execute(deliveries.insert().values(
                message_id=event.message_id, recipient=event.recipient, domain=domain_of(event.recipient),
                state=DeliveryState.QUEUED.value, attempts=0, created_at=event.at, updated_at=event.at,
                next_attempt_at=event.at, route=LOOPS_ROUTE,
            ))  # fmt: skip
            new_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
            await tx.execute(events.insert().values(
                at=event.at, type="rerouted", message_id=event.message_id, delivery_id=new_id,
                recipient=event.recipient,
                detail={"from": INHOUSE_ROUTE, "to": LOOPS_ROUTE, "reason": event.detail.get("reason"),
                        "failed_delivery_id": event.delivery_id},
            ))  # fmt: skip
            self._metrics.routed_recipients.labels(row.stream, "fallback").inc()
