"""`WebhookConsumer`: the event outbox consumer that turns each committed event into one pending
delivery row per enabled endpoint subscribed to its type. It runs in the outbox's transaction,
so a row is written exactly once per (event, endpoint); it makes no network call (the sender
posts the rows). An endpoint gets only events that happened after it was added, even when the
consumer catches up on older ones after a pause (`webhooks replay` sends those)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from postroom.core.clock import Clock
from postroom.events.models import Event
from postroom.webhooks.model import webhook_type
from postroom.webhooks.store import enqueue, facts_of, subscribers

CONSUMER_NAME = "webhooks"


class WebhookConsumer:
    def __init__(self, clock: Clock):
        self._clock = clock

    @property
    def name(self) -> str:
        return CONSUMER_NAME

    async def handle(self, events: Sequence[Event], tx: AsyncConnection) -> None:
        sent = [event for event in events if webhook_type(event.type) is not None]
        if not sent:
            return
        targets = await subscribers(tx)
        if targets:
            await enqueue(tx, await facts_of(tx, sent), targets, self._clock.now(), newer_only=True)
