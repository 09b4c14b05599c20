"""The values of the event outbox: an event as consumers see it, a position in the event stream,
the consumer contract, how a consumer is subscribed, and a consumer's status for operators.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

MAX_CONSUMER_NAME = 64  # event_cursors.consumer


class Position(NamedTuple):
    """Where an event sits in the stream: (id of the transaction that wrote it, event id).

    Events are read in this order. On PostgreSQL `xact` is the writer's transaction id, read
    only once every older transaction has finished, so no event can later appear at or below a
    position already handed out; on SQLite it is 0 and ids are commit order (writers are
    serialised, ids are never reused). (0, 0) is before every event.
    """

    xact: int
    event_id: int


BEGINNING = Position(0, 0)


@dataclass(frozen=True)
class Event:
    """One row of `events`, as committed."""

    id: int
    xact: int
    at: float
    type: str  # accepted, delivered, deferred, bounced, expired, dead, held, ...
    message_id: str
    delivery_id: int | None
    recipient: str | None
    detail: dict[str, Any]

    @property
    def position(self) -> Position:
        return Position(self.xact, self.id)


class EventConsumer(Protocol):
    """What the outbox hands events to.

    `handle` gets a batch of events in stream order and the open transaction in which the outbox
    then moves this consumer's cursor past them. Whatever it writes through `tx` commits with the
    cursor or not at all: effects in this database (suppressing a recipient, enqueueing webhook
    deliveries) happen exactly once; effects elsewhere are at-least-once, since a batch whose
    transaction did not commit (an exception, a crash, kill -9) is handed over again.

    `handle` runs inside a write transaction (on SQLite it holds the database's write lock, on
    PostgreSQL a row lock), so it must be quick: no network calls, no waiting on anything but
    `tx`. A webhook consumer enqueues rows here for a separate sender to post. It must write only
    through `tx`, never through another store or connection of this database (on SQLite that
    would wait for the lock this transaction holds). An exception rolls the batch back; the same
    batch is retried after a delay, and the other consumers are not held up.
    """

    @property
    def name(self) -> str:
        """Unique, stable, at most 64 characters: it names the cursor row."""
        ...

    async def handle(self, events: Sequence[Event], tx: AsyncConnection) -> None: ...


class StartAt(enum.Enum):
    """Where a consumer seen for the first time starts."""

    BEGINNING = "beginning"  # every event still in the table
    END = "end"  # only events committed from now on


@dataclass(frozen=True)
class Subscription:
    """A consumer and where it starts when it has no cursor yet (later starts resume the cursor)."""

    consumer: EventConsumer
    start: StartAt = StartAt.BEGINNING


@dataclass(frozen=True)
class CursorStatus:
    """A consumer's position and lag, as `cursor_statuses` reads them for operators."""

    consumer: str
    position: Position  # the last event consumed; (0, 0): none yet
    consumed: int  # events consumed since the cursor was created
    created_at: float
    updated_at: float
    failures: int  # failures in a row of the batch after the cursor
    failed_at: float | None
    last_error: str | None
    pending: int  # events committed after the cursor (counted up to a limit)
    oldest_pending_at: float | None  # `at` of the next event to consume
    lag_seconds: float  # how far behind: now - oldest_pending_at, 0 when caught up
