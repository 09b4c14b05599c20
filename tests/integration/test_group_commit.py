"""`GroupCommitter` on real databases: concurrent submissions share transactions, each caller gets
its own id, a failed commit fails the whole batch and stores nothing, and `run(stop)` drains what is
already pending before it returns. The failure test uses a SQLite trigger, so it runs on SQLite
only; the rest run on both engines through the `engine` fixture."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.config import DatabaseSettings
from postroom.core.clock import FakeClock
from postroom.core.errors import StoreError
from postroom.core.types import Submission
from postroom.queue.committer import GroupCommitter
from postroom.queue.models import ClaimedDelivery, QueuedMessage
from postroom.queue.sql_store import SqlQueueStore
from postroom.queue.sqlite_store import SqliteQueueStore
from postroom.queue.statements import Lease
from postroom.store.sqlite_writer import SqliteBatchWriter
from postroom.store import schema
from postroom.store.engine import create_engine
from postroom.store.tables import deliveries, events, messages
from tests.support import make_settings


def submission(n: int) -> Submission:
    return Submission(
        mail_from=f"sender{n}@postroom.test",
        recipients=(f"r{n}@example.com", "all@example.com"),
        content=f"Subject: message {n}\r\n\r\nbody {n}\r\n".encode(),
        source="smtp",
    )


async def count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


async def stored_senders(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(messages.c.id, messages.c.mail_from))).all()
    return {r.id: r.mail_from for r in rows}


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    settings = make_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'commit.db'}")
    engine = create_engine(settings.database)
    await schema.upgrade(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


class Running:
    """A committer whose `run` task is started and confirmed to be accepting submissions."""

    def __init__(self, engine: AsyncEngine, **options: int):
        self.batches: list[list[Submission]] = []
        self.committer = GroupCommitter(
            SqlQueueStore(engine), FakeClock(), on_commit=lambda batch, _seconds: self.batches.append(batch), **options
        )
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.committer.run(self.stop), name="group-commit")
        await asyncio.sleep(0)  # one loop turn: `run` marks itself accepting before its first wait
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout=10)


async def test_concurrent_submits_share_transactions_and_each_caller_gets_its_own_id(
    engine: AsyncEngine,
) -> None:
    items = [submission(n) for n in range(50)]
    async with Running(engine) as running:
        ids = [queued.message_id for queued in await asyncio.gather(*(running.committer.submit(item) for item in items))]

    assert len(set(ids)) == 50
    assert 1 <= len(running.batches) < 50
    committed = [s.mail_from for batch in running.batches for s in batch]
    assert sorted(committed) == sorted(item.mail_from for item in items)
    stored = await stored_senders(engine)
    assert {message_id: stored[message_id] for message_id in ids} == {
        message_id: item.mail_from for message_id, item in zip(ids, items)
    }
    assert await count(engine, deliveries) == 100
    assert await count(engine, events) == 50


async def test_batches_never_exceed_max_batch(engine: AsyncEngine) -> None:
    async with Running(engine, max_batch=8) as running:
        ids = [q.message_id for q in await asyncio.gather(*(running.committer.submit(submission(n)) for n in range(50)))]

    assert len(set(ids)) == 50
    assert max(len(b) for b in running.batches) <= 8
    assert sum(len(b) for b in running.batches) == 50
    assert await count(engine, messages) == 50


async def test_a_failed_commit_fails_every_caller_in_the_batch_and_stores_nothing(
    sqlite_engine: AsyncEngine,
) -> None:
    async with sqlite_engine.begin() as conn:
        await conn.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON messages "
            "BEGIN SELECT RAISE(FAIL, 'disk full'); END"
        )
    async with Running(sqlite_engine) as running:
        results = await asyncio.gather(
            *(running.committer.submit(submission(n)) for n in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, StoreError) for r in results), results
        assert running.batches == []
        assert await count(sqlite_engine, messages) == 0
        assert await count(sqlite_engine, deliveries) == 0
        assert await count(sqlite_engine, events) == 0

        # The committer survives the failure: once the store works again, submissions commit.
        async with sqlite_engine.begin() as conn:
            await conn.exec_driver_sql("DROP TRIGGER refuse")
        message_id = (await running.committer.submit(submission(99))).message_id
    assert await stored_senders(sqlite_engine) == {message_id: "sender99@postroom.test"}


async def test_submit_after_run_has_stopped_raises_store_error(engine: AsyncEngine) -> None:
    async with Running(engine) as running:
        await running.committer.submit(submission(1))

    with pytest.raises(StoreError):
        await running.committer.submit(submission(2))
    assert await count(engine, messages) == 1


async def test_submit_before_run_has_started_raises_store_error(engine: AsyncEngine) -> None:
    committer = GroupCommitter(SqlQueueStore(engine), FakeClock())
    with pytest.raises(StoreError):
        await committer.submit(submission(1))
    assert await count(engine, messages) == 0


async def test_run_flushes_submissions_pending_when_stop_is_set(engine: AsyncEngine) -> None:
    running = Running(engine, max_batch=4)
    async with running:
        submits = [asyncio.create_task(running.committer.submit(submission(n))) for n in range(20)]
        await asyncio.sleep(0)  # one loop turn: every submit has queued itself and now waits
        running.stop.set()
        assert running.task is not None
        await asyncio.wait_for(running.task, timeout=10)  # returns only after the drain

        assert all(task.done() for task in submits)
        ids = [task.result().message_id for task in submits]  # none was failed by the stop

    assert len(set(ids)) == 20
    assert set(await stored_senders(engine)) == set(ids)
    assert sum(len(b) for b in running.batches) == 20
    with pytest.raises(StoreError):
        await running.committer.submit(submission(21))


class RecordingHandoff:
    """A worker stand-in: leases while `room`, and records what it is handed."""

    def __init__(self, room: bool) -> None:
        self.room = room
        self.asked: list[int] = []
        self.taken: list[tuple[list[QueuedMessage], list[ClaimedDelivery]]] = []

    def lease_for(self, deliveries: int) -> Lease | None:
        self.asked.append(deliveries)
        return Lease("local-worker", 5000.0) if self.room else None

    def take(self, messages: list[QueuedMessage], claimed: list[ClaimedDelivery]) -> None:
        self.taken.append((messages, claimed))


async def delivery_states(engine: AsyncEngine) -> list[tuple[str, str | None, float | None]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(deliveries.c.state, deliveries.c.lease_owner,
                                             deliveries.c.lease_expires_at))).all()  # fmt: skip
    return sorted((r[0], r[1], r[2]) for r in rows)


@pytest.mark.parametrize("writer", [False, True], ids=["sqlalchemy", "sqlite-writer"])
async def test_committed_mail_is_leased_and_handed_to_a_worker_with_room(
    engine: AsyncEngine, writer: bool
) -> None:
    if writer and engine.dialect.name != "sqlite":
        pytest.skip("the writer thread is SQLite's")
    sqlite_writer = SqliteBatchWriter(DatabaseSettings(url=str(engine.url))) if writer else None
    handoff = RecordingHandoff(room=True)
    store = SqliteQueueStore(engine, sqlite_writer) if sqlite_writer else SqlQueueStore(engine)
    committer = GroupCommitter(store, FakeClock(), handoff=handoff)
    stop = asyncio.Event()
    task = asyncio.create_task(committer.run(stop))
    try:
        ids = [q.message_id for q in await asyncio.gather(*(committer.submit(submission(n)) for n in range(3)))]
    finally:
        stop.set()
        await task
        if sqlite_writer is not None:
            sqlite_writer.close()
    assert sum(handoff.asked) == 6  # two recipients each
    handed_messages = [m for messages, _ in handoff.taken for m in messages]
    handed = [d for _, claimed in handoff.taken for d in claimed]
    assert sorted(m.id for m in handed_messages) == sorted(ids)
    assert {m.content for m in handed_messages} == {submission(n).content for n in range(3)}
    assert sorted((d.message_id, d.recipient) for d in handed) == sorted(
        (message_id, recipient) for message_id, n in zip(ids, range(3))
        for recipient in submission(n).recipients)  # fmt: skip
    assert all(d.attempts == 0 for d in handed)
    assert await delivery_states(engine) == [("sending", "local-worker", 5000.0)] * 6


async def test_a_worker_without_room_leaves_committed_mail_queued(engine: AsyncEngine) -> None:
    handoff = RecordingHandoff(room=False)
    committer = GroupCommitter(SqlQueueStore(engine), FakeClock(), handoff=handoff)
    stop = asyncio.Event()
    task = asyncio.create_task(committer.run(stop))
    await asyncio.sleep(0)  # let it start accepting
    try:
        await committer.submit(submission(1))
    finally:
        stop.set()
        await task
    assert handoff.asked == [2] and handoff.taken == []
    assert await delivery_states(engine) == [("queued", None, None)] * 2
