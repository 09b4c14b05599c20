"""The event outbox: every state change is a row of `events`; consumers (webhooks, PostHog
capture, suppression, reports) read them in commit order through durable cursors instead of being
called from the delivery path. A consumer's writes commit with its cursor, so database-side
effects happen exactly once and external ones at least once. `EventOutbox` runs the consumers;
`cursor_statuses` shows operators where each one is.
"""

from postroom.events.cursors import cursor_statuses
from postroom.events.models import (
    BEGINNING,
    CursorStatus,
    Event,
    EventConsumer,
    Position,
    StartAt,
    Subscription,
)
from postroom.events.outbox import EventOutbox, OutboxOptions

__all__ = [
    "BEGINNING",
    "CursorStatus",
    "Event",
    "EventConsumer",
    "EventOutbox",
    "OutboxOptions",
    "Position",
    "StartAt",
    "Subscription",
    "cursor_statuses",
]
