"""The SQLite ingest fast path writes exactly what the SQLAlchemy path writes."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from postroom.config import DatabaseSettings
from postroom.core.types import Submission
from postroom.queue.sql_store import SqlQueueStore
from postroom.queue.sqlite_store import SqliteQueueStore
from postroom.store import schema
from postroom.store.engine import create_engine
from postroom.store.sqlite_writer import SqliteBatchWriter
from postroom.store.tables import deliveries, events, messages

BATCH = [
    Submission("a@postroom.test", ("x@example.com", "y@example.com"), b"Subject: 1\r\n\r\n\xc3\xa9\r\n",
               "smtp", tags=("t1", "t2"), message_id="01AAAAAAAAAAAAAAAAAAAAAAAA"),
    Submission("b@postroom.test", ("z@example.com",), b"Subject: 2\r\n\r\nbody\r\n", "api",
               submitted_by="apikey:k", header_from="B <b@postroom.test>", subject="2",
               message_id="01BBBBBBBBBBBBBBBBBBBBBBBB"),
]  # fmt: skip


async def dump(url: str) -> list[list[tuple[object, ...]]]:
    engine = create_engine(DatabaseSettings(url=url))
    try:
        async with engine.connect() as conn:
            return [
                [tuple(r) for r in (await conn.execute(sa.select(t).order_by(*t.primary_key))).all()]
                for t in (messages, deliveries, events)
            ]
    finally:
        await engine.dispose()


async def write_with(url: str, use_writer: bool) -> None:
    settings = DatabaseSettings(url=url)
    engine = create_engine(settings)
    writer = SqliteBatchWriter(settings) if use_writer else None
    try:
        await schema.upgrade(engine)
        store = SqliteQueueStore(engine, writer) if writer else SqlQueueStore(engine)
        await store.insert_many(BATCH, now=1000.0)
    finally:
        if writer is not None:
            writer.close()
        await engine.dispose()


async def test_the_writer_thread_stores_the_same_rows_as_sqlalchemy(tmp_path: Path) -> None:
    fast, plain = f"sqlite+aiosqlite:///{tmp_path / 'fast.db'}", f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}"
    await write_with(fast, use_writer=True)
    await write_with(plain, use_writer=False)
    written = await dump(fast)
    assert written == await dump(plain)
    assert len(written[0]) == 2 and len(written[1]) == 3 and len(written[2]) == 2
    content = list(messages.c.keys()).index("content")
    assert written[0][0][content] == b"Subject: 1\r\n\r\n\xc3\xa9\r\n"  # byte for byte
