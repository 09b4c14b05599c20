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

from postroom.core.clock import FakeClock
from postroom.core.errors import StoreError
from postroom.core.types import Submission
from postroom.queue.committer import GroupCommitter
from postroom.queue.store import SqlQueueStore
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
        ids = await asyncio.gather(*(running.committer.submit(item) for item in items))

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
        ids = await asyncio.gather(*(running.committer.submit(submission(n)) for n in range(50)))

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
        message_id = await running.committer.submit(submission(99))
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
        ids = [task.result() for task in submits]  # none was failed by the stop

    assert len(set(ids)) == 20
    assert set(await stored_senders(engine)) == set(ids)
    assert sum(len(b) for b in running.batches) == 20
    with pytest.raises(StoreError):
        await running.committer.submit(submission(21))
