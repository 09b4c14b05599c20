"""The event outbox against real databases: every event reaches each consumer exactly once and in
order, across consumer crashes, kill -9, several daemons, transactions that commit out of id order
(PostgreSQL) and ids freed by `queue purge` (SQLite); a failing consumer holds up nobody else.

The consumers here record the ids they get in their own table through the outbox's transaction,
so "exactly once" is read from the database: a batch that did not commit leaves no rows.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from alembic import command
from postroom.config import DatabaseSettings
from postroom.core.clock import FakeClock, SystemClock
from postroom.events import (
    Event,
    EventOutbox,
    OutboxOptions,
    Position,
    StartAt,
    Subscription,
    cursor_statuses,
)
from postroom.metrics import Metrics
from postroom.store import schema
from postroom.store.engine import WriteGate, create_engine, read_only
from postroom.store.sqlite_writer import SqliteBatchWriter, sql_and_rows
from postroom.store.tables import event_cursors, events, metadata
from tests.support import ROOT, wait_until

# The consumers' own table: what they did, written through the outbox's transaction.
consumer_tables = sa.MetaData()
seen = sa.Table(
    "test_seen_events",
    consumer_tables,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("consumer", sa.String(64), nullable=False),
    sa.Column("event_id", sa.BigInteger, nullable=False),
    sa.Column("runner", sa.String(16), nullable=False),
)


class Recorder:
    """Records each event id it is handed; can be told to crash on some calls, after writing."""

    def __init__(self, name: str = "recorder", *, runner: str = "", fail_on_calls: Sequence[int] = (),
                 failing: bool = False, pause: float = 0.0):  # fmt: skip
        self.name = name
        self.runner = runner
        self.fail_on_calls = set(fail_on_calls)
        self.failing = failing
        self.pause = pause
        self.calls = 0
        self.handed: list[list[int]] = []  # every batch handed over, committed or not

    async def handle(self, batch: Sequence[Event], tx: AsyncConnection) -> None:
        self.calls += 1
        self.handed.append([e.id for e in batch])
        await tx.execute(
            seen.insert(),
            [{"consumer": self.name, "event_id": e.id, "runner": self.runner} for e in batch],
        )
        if self.pause:
            await asyncio.sleep(self.pause)  # a slow consumer: the transaction stays open
        if self.failing or self.calls in self.fail_on_calls:
            raise RuntimeError(f"{self.name} crashed on call {self.calls}")


@pytest.fixture
async def db(engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """The migrated database of `engine` (both engines), plus the consumers' table."""
    async with engine.begin() as conn:
        await conn.run_sync(consumer_tables.create_all)
    yield engine


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gate(engine: AsyncEngine) -> Iterator[WriteGate]:
    gate = WriteGate.for_database(settings_of(engine))
    yield gate
    gate.close()


def settings_of(engine: AsyncEngine) -> DatabaseSettings:
    return DatabaseSettings(url=engine.url.render_as_string(hide_password=False))


def outbox(engine: AsyncEngine, gate: WriteGate, clock: Any, *consumers: Any,
           metrics: Metrics | None = None, **options: Any) -> EventOutbox:  # fmt: skip
    return EventOutbox(engine, gate, clock, metrics or Metrics(CollectorRegistry()), consumers,
                       OutboxOptions(**options))  # fmt: skip


def event_row(message_id: str, kind: str = "accepted") -> dict[str, Any]:
    """An events row as the queue writes it: never naming `xact` (a server default)."""
    return {"at": 1_750_000_000.0, "type": kind, "message_id": message_id, "delivery_id": None,
            "recipient": None, "detail": {"source": "api"}}  # fmt: skip


async def add_events(engine: AsyncEngine, count: int, prefix: str = "m") -> list[int]:
    """Commit `count` events in one transaction; return their ids."""
    names = [f"{prefix}{i}" for i in range(count)]
    async with engine.begin() as conn:
        await conn.execute(events.insert(), [event_row(name) for name in names])
        rows = await conn.execute(sa.select(events.c.id).where(events.c.message_id.in_(names)))
        return sorted(rows.scalars())


async def all_event_ids(engine: AsyncEngine) -> list[int]:
    async with read_only(engine).connect() as conn:
        return list((await conn.execute(sa.select(events.c.id).order_by(events.c.id))).scalars())


async def seen_ids(engine: AsyncEngine, consumer: str = "recorder") -> list[int]:
    """What the consumer committed, in the order it committed it (read without the SQLite write
    lock, which a running outbox keeps taking)."""
    async with read_only(engine).connect() as conn:
        rows = await conn.execute(
            sa.select(seen.c.event_id).where(seen.c.consumer == consumer).order_by(seen.c.seq)
        )
        return list(rows.scalars())


def sample(metrics: Metrics, name: str, consumer: str) -> float:
    value = metrics.registry.get_sample_value(name, {"consumer": consumer})
    return 0.0 if value is None else value


# -- exactly once, in order, across crashes ----------------------------------------------------


async def test_each_event_once_in_order_across_a_consumer_crash(
    db: AsyncEngine, gate: WriteGate, clock: FakeClock
) -> None:
    ids = await add_events(db, 20)
    recorder = Recorder(fail_on_calls=[3])  # writes its rows, then raises: the batch rolls back
    metrics = Metrics(CollectorRegistry())
    box = outbox(db, gate, clock, recorder, metrics=metrics, batch_size=4, retry_base=5.0)

    assert await box.drain() == 8  # two batches, then the third crashed
    assert recorder.handed[2] == ids[8:12]
    assert await seen_ids(db) == ids[:8]
    assert await box.drain() == 0  # waiting out the delay: no sleep, nothing handed over
    assert recorder.calls == 3
    assert sample(metrics, "postroom_event_consumer_failures_total", "recorder") == 1

    clock.advance(5.0)
    assert await box.drain() == 12
    assert recorder.handed[3] == ids[8:12]  # the same batch again
    assert await seen_ids(db) == ids
    assert sample(metrics, "postroom_events_consumed_total", "recorder") == 20
    (status,) = await cursor_statuses(db, clock.now())
    assert (status.consumer, status.position.event_id, status.consumed) == ("recorder", ids[-1], 20)
    assert status.failures == 0 and status.pending == 0 and status.lag_seconds == 0
    assert status.last_error == "RuntimeError: recorder crashed on call 3"


def run_child_outbox(url: str) -> None:
    """The daemon of the kill -9 test: a slow consumer, run until killed."""

    async def main() -> None:
        settings = DatabaseSettings(url=url)
        engine = create_engine(settings)
        box = EventOutbox(engine, WriteGate.for_database(settings), SystemClock(),
                          Metrics(CollectorRegistry()), [Recorder(runner="child", pause=0.02)],
                          OutboxOptions(batch_size=5, poll_interval=0.01))  # fmt: skip
        await box.run(asyncio.Event())

    asyncio.run(main())


@pytest.mark.slow
async def test_kill_9_mid_stream_then_a_fresh_daemon_resumes(
    db: AsyncEngine, gate: WriteGate, clock: FakeClock
) -> None:
    ids = await add_events(db, 1000)
    url = db.url.render_as_string(hide_password=False)
    child = subprocess.Popen(
        [sys.executable, "-c",
         f"from tests.integration.test_event_outbox import run_child_outbox; run_child_outbox({url!r})"],
        cwd=ROOT, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_until(lambda: _count_seen(db, 40), timeout=30, what="the child to consume events")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        _, stderr = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL, stderr.decode()
    before = await seen_ids(db)
    assert 40 <= len(before) < len(ids)  # killed mid-stream
    assert before == ids[: len(before)]

    more = await add_events(db, 10, prefix="after")
    fresh = Recorder(runner="fresh")
    box = outbox(db, gate, clock, fresh, batch_size=7)

    async def caught_up() -> bool:
        await box.drain()  # a PostgreSQL backend may hold the cursor lock until it sees the kill
        return len(await seen_ids(db)) >= len(ids) + len(more)

    await wait_until(caught_up, timeout=30, what="the fresh outbox to catch up")
    assert await seen_ids(db) == ids + more  # each event exactly once, in order
    assert fresh.handed[0][0] == ids[len(before)]  # resumed right after the last committed batch


async def _count_seen(engine: AsyncEngine, at_least: int) -> bool:
    return len(await seen_ids(engine)) >= at_least


# -- several daemons, concurrent writers -------------------------------------------------------


async def test_two_daemons_with_concurrent_writers_consume_each_event_once(db: AsyncEngine) -> None:
    """Two engines and gates, as two daemon processes have; writers commit events in overlapping
    transactions (on PostgreSQL their ids commit out of order) while both daemons consume."""
    settings = settings_of(db)
    engines = [create_engine(settings) for _ in range(2)]
    gates = [WriteGate.for_database(settings) for _ in range(2)]
    boxes = [
        outbox(engines[i], gates[i], SystemClock(), Recorder(runner=f"daemon{i}"),
               batch_size=7, poll_interval=0.005, retry_base=0.01)  # fmt: skip
        for i in range(2)
    ]
    stop = asyncio.Event()
    runners = [asyncio.create_task(box.run(stop)) for box in boxes]

    async def writer(n: int) -> None:
        for i in range(25):
            async with db.begin() as conn:
                await conn.execute(events.insert(), [event_row(f"w{n}-{i}-{k}") for k in range(1 + i % 3)])
                await asyncio.sleep(0.001 * ((n * 7 + i) % 5))  # hold the transaction a while
            for box in boxes:
                box.wake()

    try:
        await asyncio.gather(*(writer(n) for n in range(4)))
        total = len(await all_event_ids(db))
        await wait_until(lambda: _count_seen(db, total), timeout=30, what="every event consumed")
        await asyncio.sleep(0.1)  # time for a duplicate to show, were one coming
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*runners), timeout=10)
        for engine in engines:
            await engine.dispose()
        for each in gates:
            each.close()

    consumed = await seen_ids(db)
    assert sorted(consumed) == await all_event_ids(db)  # none missed, none twice
    assert total == 4 * sum(1 + i % 3 for i in range(25))
    async with db.connect() as conn:
        rows = await conn.execute(sa.select(events.c.id, events.c.xact))
        order = {row.id: (row.xact, row.id) for row in rows}
    assert [order[i] for i in consumed] == sorted(order[i] for i in consumed)  # in stream order


# -- commit order, not id order ----------------------------------------------------------------


@pytest.mark.postgres
async def test_an_event_committed_after_a_larger_id_was_consumed_is_still_delivered(
    pg_url: str, clock: FakeClock
) -> None:
    """A draws the smaller id but commits after B's event (larger id) was consumed: a reader
    cursoring on `id` alone would step over A's event for good.

    Transactions elsewhere on the server (other databases too) hold events back until they end,
    so the outbox is polled until it has what it may have; what it must not have is asserted
    while the transaction that holds it back is still open.
    """
    engine = create_engine(DatabaseSettings(url=pg_url))
    await schema.upgrade(engine)
    async with engine.begin() as conn:
        await conn.run_sync(consumer_tables.create_all)
    box = outbox(engine, WriteGate(None), clock, Recorder())

    async def consumed(count: int) -> bool:
        await box.drain()
        return len(await seen_ids(engine)) >= count

    try:
        async with engine.connect() as a, engine.connect() as b:
            await b.begin()
            await b.execute(sa.text("SELECT pg_current_xact_id()"))  # B's transaction is older
            await a.begin()
            id_a = await a.scalar(events.insert().values(event_row("a")).returning(events.c.id))
            id_b = await b.scalar(events.insert().values(event_row("b")).returning(events.c.id))
            assert id_a is not None and id_b is not None and id_a < id_b
            await b.commit()
            await wait_until(lambda: consumed(1), timeout=30, what="B's event")
            assert await seen_ids(engine) == [id_b]  # A still open: its event is not readable
            await a.commit()
        await wait_until(lambda: consumed(2), timeout=30, what="A's event")
        assert await seen_ids(engine) == [id_b, id_a]

        # The other way round: the older transaction still running holds the younger one's
        # event back (it could still commit events before it); then both come in stream order.
        async with engine.connect() as a, engine.connect() as b:
            await a.begin()
            id_a = await a.scalar(events.insert().values(event_row("a2")).returning(events.c.id))
            await b.begin()
            id_b = await b.scalar(events.insert().values(event_row("b2")).returning(events.c.id))
            await b.commit()
            assert await box.drain() == 0
            await a.commit()
        await wait_until(lambda: consumed(4), timeout=30, what="both events")
        assert (await seen_ids(engine))[2:] == [id_a, id_b]
    finally:
        await engine.dispose()


async def test_ids_freed_by_purge_are_not_reused_below_a_cursor(
    db: AsyncEngine, gate: WriteGate, clock: FakeClock
) -> None:
    """SQLite reuses the largest rowid after it is deleted unless the table is AUTOINCREMENT.
    New events go in as the queue writes them (on SQLite through the writer thread)."""
    ids = await add_events(db, 5)
    box = outbox(db, gate, clock, Recorder())
    assert await box.drain() == 5
    async with db.begin() as conn:  # what `queue purge` does to the events of two messages
        await conn.execute(events.delete().where(events.c.message_id.in_(["m3", "m4"])))

    rows = [event_row("new0"), event_row("new1")]
    if db.dialect.name == "sqlite":
        writer = SqliteBatchWriter(settings_of(db))
        try:
            await writer.run(lambda connection: connection.executemany(*sql_and_rows(events.insert(), rows)))
        finally:
            writer.close()
    else:
        async with db.begin() as conn:
            await conn.execute(events.insert(), rows)
    new = (await all_event_ids(db))[3:]
    assert await box.drain() == 2
    assert await seen_ids(db) == ids + new
    assert min(new) > max(ids)


# -- failures, start positions, the loop, lag --------------------------------------------------


async def test_a_failing_consumer_holds_up_no_other_and_is_counted(
    db: AsyncEngine, gate: WriteGate, clock: FakeClock
) -> None:
    ids = await add_events(db, 12)
    broken = Recorder("broken", failing=True)
    good = Recorder("good")
    metrics = Metrics(CollectorRegistry())
    box = outbox(db, gate, clock, broken, good, metrics=metrics, batch_size=5, retry_base=1.0,
                 retry_max=4.0, stuck_after=3)  # fmt: skip

    assert await box.drain() == 12
    assert await seen_ids(db, "good") == ids
    assert await seen_ids(db, "broken") == []
    for failures, delay in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 4.0)):  # doubling, capped
        assert sample(metrics, "postroom_event_consumer_failures_total", "broken") == failures
        assert sample(metrics, "postroom_event_consumer_stuck", "broken") == (failures >= 3)
        clock.advance(delay - 0.01)
        assert await box.drain() == 0 and broken.calls == failures  # not due yet
        clock.advance(0.01)
        assert await box.drain() == 0 and broken.calls == failures + 1
    assert sample(metrics, "postroom_event_consumer_failures_total", "good") == 0

    statuses = {s.consumer: s for s in await box.refresh_lag()}
    assert statuses["broken"].failures == 5 and statuses["broken"].pending == 12
    assert statuses["broken"].last_error == "RuntimeError: broken crashed on call 5"
    assert statuses["broken"].lag_seconds == pytest.approx(clock.now() - 1_750_000_000.0)
    assert statuses["good"].pending == 0 and statuses["good"].position.event_id == ids[-1]
    assert sample(metrics, "postroom_event_consumer_lag_events", "broken") == 12
    assert sample(metrics, "postroom_event_consumer_lag_events", "good") == 0

    broken.failing = False
    clock.advance(4.0)
    assert await box.drain() == 12
    assert await seen_ids(db, "broken") == ids
    assert sample(metrics, "postroom_event_consumer_stuck", "broken") == 0
    assert sample(metrics, "postroom_events_consumed_total", "broken") == 12


async def test_a_new_consumer_starts_at_the_beginning_or_at_the_end(
    db: AsyncEngine, gate: WriteGate, clock: FakeClock
) -> None:
    old = await add_events(db, 3, prefix="old")
    box = outbox(db, gate, clock, Recorder("all"), Subscription(Recorder("new"), StartAt.END))
    assert await box.drain() == 3
    new = await add_events(db, 2, prefix="new")
    assert await box.drain() == 4
    assert await seen_ids(db, "all") == old + new
    assert await seen_ids(db, "new") == new
    # Positions live in the database: another outbox (a restart) resumes them.
    again = outbox(db, gate, clock, Recorder("all"), Subscription(Recorder("new"), StartAt.END))
    assert await again.drain() == 0


async def test_run_wakes_on_nudge_and_returns_on_stop(
    db: AsyncEngine, gate: WriteGate, clock: FakeClock
) -> None:
    box = outbox(db, gate, clock, Recorder(), poll_interval=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(box.run(stop))
    await asyncio.sleep(0.05)  # idle now, polling only once an hour
    ids = await add_events(db, 3)
    box.wake()
    await wait_until(lambda: _count_seen(db, 3), timeout=10, what="the woken outbox to consume")
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert await seen_ids(db) == ids


async def test_run_backs_off_while_the_database_fails(tmp_path: Path, clock: FakeClock) -> None:
    """A database that cannot be opened: `run` keeps going (no exception escapes) until stopped."""
    missing = tmp_path / "no-such-dir" / "x" / "db.sqlite"
    engine = create_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{missing}"))
    missing.parent.rmdir()  # create_engine made the directory; without it nothing opens
    box = outbox(engine, WriteGate(None), clock, Recorder(), retry_base=0.01, retry_max=0.02)
    stop = asyncio.Event()
    task = asyncio.create_task(box.run(stop))
    await asyncio.sleep(0.2)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    await engine.dispose()


async def test_consumer_names_are_checked(tmp_path: Path, clock: FakeClock) -> None:
    engine = create_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"))
    with pytest.raises(ValueError, match="two event consumers"):
        outbox(engine, WriteGate(None), clock, Recorder("x"), Recorder("x"))
    with pytest.raises(ValueError, match="1 to 64"):
        outbox(engine, WriteGate(None), clock, Recorder("x" * 65))
    await engine.dispose()


# -- the schema ----------------------------------------------------------------------------------


async def test_migrations_create_exactly_the_tables_module(engine: AsyncEngine) -> None:
    def differences(connection: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        found = compare_metadata(context, metadata)
        # Alembic reads SQLite's DEFAULT '' back as no default: a false difference.
        return [d for d in found if not (connection.dialect.name == "sqlite" and d[0][0] == "modify_default"
                                         and d[0][2:4] == ("deliveries", "domain"))]  # fmt: skip

    async with engine.connect() as conn:
        assert await conn.run_sync(differences) == []
        if engine.dialect.name == "sqlite":
            sql = await conn.scalar(sa.text("SELECT sql FROM sqlite_master WHERE name = 'events'"))
            assert "AUTOINCREMENT" in sql


async def test_migration_0006_keeps_existing_events_ahead_of_new_ones(
    db_url: str, clock: FakeClock
) -> None:
    settings = DatabaseSettings(url=db_url)
    engine = create_engine(settings)
    gate = WriteGate.for_database(settings)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(schema._alembic_config(c), "0005"))
            await conn.execute(sa.text(
                "INSERT INTO events (at, type, message_id, detail) VALUES (1, 'accepted', 'old0', '{}'),"
                " (2, 'delivered', 'old0', '{}')"))  # fmt: skip
        await schema.upgrade(engine)
        async with engine.begin() as conn:
            await conn.run_sync(consumer_tables.create_all)
        new = await add_events(engine, 2, prefix="new")
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(events.c.id, events.c.xact).order_by(events.c.id))).all()
            found = await conn.run_sync(lambda c: sa.inspect(c).get_indexes("events"))
        indexes = {index["name"] for index in found}
        assert [xact for _, xact in rows[:2]] == [0, 0]  # written before: read first, by id
        assert all(xact > 0 for _, xact in rows[2:]) == (engine.dialect.name == "postgresql")
        # ix_events_type_at: added later (0012) for delivery analytics.
        assert indexes == {"ix_events_message_id", "ix_events_at", "ix_events_xact_id", "ix_events_type_at"}
        assert await outbox(engine, gate, clock, Recorder()).drain() == 4
        assert await seen_ids(engine) == [rows[0][0], rows[1][0], *new]
        async with engine.connect() as conn:
            assert await conn.scalar(sa.select(event_cursors.c.event_id)) == new[-1]
    finally:
        gate.close()
        await engine.dispose()


def test_position_orders_by_transaction_then_id() -> None:
    assert sorted([Position(7, 1), Position(3, 9), Position(3, 2)]) == [
        Position(3, 2), Position(3, 9), Position(7, 1)]  # fmt: skip
