"""The SQL of the event outbox: consumer cursors in `event_cursors` and reading `events` after a
cursor in commit order, on SQLAlchemy Core, one code path for SQLite and PostgreSQL.

Why commit order needs more than ids on PostgreSQL: a transaction draws its event ids from the
sequence when it inserts, not when it commits, so an event with a smaller id can become visible
after one with a larger id was read; a reader cursoring on `id` alone would step over it for
good. Every event row carries the id of the transaction that wrote it (`xact`, a server
default), and a reader takes only events of transactions older than every transaction still
running (`xact < pg_snapshot_xmin(pg_current_snapshot())`): that set never grows again, so
reading it in (xact, id) order and cursoring on (xact, id) never skips an event. The price: an
event waits until every transaction that began writing before it has ended, so a long write
transaction anywhere on the server (transaction ids are server-wide) holds the outbox back.

On SQLite writers are serialised, `xact` is always 0, and the table is AUTOINCREMENT so an id
is never reused after `queue purge` deleted the newest events: id order is commit order.

The statements run on a connection the caller opened; they raise driver errors, which the
caller translates (`translate_errors`).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postroom.events.models import BEGINNING, CursorStatus, Event, Position, StartAt
from postroom.store.engine import read_only, translate_errors
from postroom.store.tables import event_cursors, events

MAX_ERROR_TEXT = 2000
PENDING_COUNT_LIMIT = 1_000_000  # counting further would cost more than the figure is worth


def _readable(conn: AsyncConnection) -> list[sa.ColumnElement[bool]]:
    """The events a reader may take now: on PostgreSQL only those of finished transactions."""
    if conn.dialect.name != "postgresql":
        return []
    oldest_running = sa.func.pg_snapshot_xmin(sa.func.pg_current_snapshot())
    return [events.c.xact < sa.cast(sa.cast(oldest_running, sa.Text), sa.BigInteger)]


def _after(position: Position) -> sa.ColumnElement[bool]:
    return sa.tuple_(events.c.xact, events.c.id) > sa.tuple_(
        sa.literal(position.xact, sa.BigInteger), sa.literal(position.event_id, sa.BigInteger)
    )


def _position(row: Any) -> Position:
    return Position(int(row[0]), int(row[1]))


async def read_cursor(conn: AsyncConnection, consumer: str) -> Position | None:
    """The consumer's position, without locking it; None when it has no cursor."""
    row = (
        await conn.execute(
            sa.select(event_cursors.c.xact, event_cursors.c.event_id).where(
                event_cursors.c.consumer == consumer
            )
        )
    ).first()
    return None if row is None else _position(row)


async def lock_cursor(conn: AsyncConnection, consumer: str) -> Position | None:
    """Lock the consumer's cursor row for this transaction and return its position; None when
    another transaction holds it (on PostgreSQL: another daemon is consuming for this consumer)
    or there is no cursor. SQLite ignores the locking clause: the transaction's write lock
    (BEGIN IMMEDIATE) already excludes every other writer."""
    row = (
        await conn.execute(
            sa.select(event_cursors.c.xact, event_cursors.c.event_id)
            .where(event_cursors.c.consumer == consumer)
            .with_for_update(skip_locked=True)
        )
    ).first()
    return None if row is None else _position(row)


async def has_events_after(conn: AsyncConnection, position: Position) -> bool:
    """Whether a reader at `position` would get anything now (a cheap look before locking)."""
    found = await conn.scalar(
        sa.select(events.c.id).where(_after(position), *_readable(conn)).limit(1)
    )
    return found is not None


async def read_batch(conn: AsyncConnection, position: Position, limit: int) -> list[Event]:
    """Up to `limit` readable events after `position`, in stream order."""
    rows = (
        await conn.execute(
            sa.select(
                events.c.id,
                events.c.xact,
                events.c.at,
                events.c.type,
                events.c.message_id,
                events.c.delivery_id,
                events.c.recipient,
                events.c.detail,
            )
            .where(_after(position), *_readable(conn))
            .order_by(events.c.xact, events.c.id)
            .limit(limit)
        )
    ).all()
    return [
        Event(int(r.id), int(r.xact), float(r.at), r.type, r.message_id, r.delivery_id,
              r.recipient, dict(r.detail or {}))  # fmt: skip
        for r in rows
    ]


async def end_position(conn: AsyncConnection) -> Position:
    """The position of the last readable event: a cursor here gets every event committed later
    (on PostgreSQL events of transactions still running are after it, whatever their ids)."""
    row = (
        await conn.execute(
            sa.select(events.c.xact, events.c.id)
            .where(*_readable(conn))
            .order_by(events.c.xact.desc(), events.c.id.desc())
            .limit(1)
        )
    ).first()
    return BEGINNING if row is None else _position(row)


async def create_cursor(conn: AsyncConnection, consumer: str, start: StartAt, now: float) -> None:
    """Give the consumer a cursor at the start of the table or at its current end, unless it has
    one (a concurrent daemon may create it first: the insert then does nothing)."""
    position = BEGINNING if start is StartAt.BEGINNING else await end_position(conn)
    values = {
        "consumer": consumer,
        "xact": position.xact,
        "event_id": position.event_id,
        "consumed": 0,
        "created_at": now,
        "updated_at": now,
        "failures": 0,
    }
    if conn.dialect.name == "postgresql":
        statement: sa.Insert = postgresql.insert(event_cursors).values(values).on_conflict_do_nothing()
    else:
        statement = sqlite.insert(event_cursors).values(values).on_conflict_do_nothing()
    await conn.execute(statement)


async def advance(conn: AsyncConnection, consumer: str, last: Position, count: int, now: float) -> None:
    """Move the (locked) cursor past a consumed batch."""
    await conn.execute(
        event_cursors.update()
        .where(event_cursors.c.consumer == consumer)
        .values(
            xact=last.xact,
            event_id=last.event_id,
            consumed=event_cursors.c.consumed + count,
            updated_at=now,
            failures=0,
        )
    )


async def record_failure(
    conn: AsyncConnection, consumer: str, position: Position, error: str, now: float
) -> None:
    """Note a failed batch on the cursor, unless the cursor moved meanwhile (another daemon
    consumed the batch)."""
    await conn.execute(
        event_cursors.update()
        .where(
            event_cursors.c.consumer == consumer,
            event_cursors.c.xact == position.xact,
            event_cursors.c.event_id == position.event_id,
        )
        .values(
            failures=event_cursors.c.failures + 1,
            failed_at=now,
            last_error=error[:MAX_ERROR_TEXT],
        )
    )


async def cursor_statuses(
    engine: AsyncEngine, now: float, count_limit: int = PENDING_COUNT_LIMIT
) -> list[CursorStatus]:
    """Every consumer's position and lag, by consumer name: for operators (a CLI or HTTP view)
    and the lag gauges. `pending` counts every committed event after the cursor, up to
    `count_limit`; `lag_seconds` is how long ago the next event to consume was written."""
    with translate_errors("reading the event cursors"):
        async with read_only(engine).connect() as conn:
            rows = (
                await conn.execute(sa.select(event_cursors).order_by(event_cursors.c.consumer))
            ).all()
            statuses = []
            for row in rows:
                position = Position(int(row.xact), int(row.event_id))
                later = sa.select(events.c.id).where(_after(position)).limit(count_limit).subquery()
                pending = int(
                    await conn.scalar(sa.select(sa.func.count()).select_from(later)) or 0
                )
                oldest = await conn.scalar(
                    sa.select(events.c.at)
                    .where(_after(position))
                    .order_by(events.c.xact, events.c.id)
                    .limit(1)
                )
                oldest_at = None if oldest is None else float(oldest)
                statuses.append(
                    CursorStatus(
                        consumer=row.consumer,
                        position=position,
                        consumed=int(row.consumed),
                        created_at=float(row.created_at),
                        updated_at=float(row.updated_at),
                        failures=int(row.failures),
                        failed_at=row.failed_at,
                        last_error=row.last_error,
                        pending=pending,
                        oldest_pending_at=oldest_at,
                        lag_seconds=0.0 if oldest_at is None else max(0.0, now - oldest_at),
                    )
                )
    return statuses
