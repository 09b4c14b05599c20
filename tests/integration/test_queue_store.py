"""The `QueueStore` contract against real databases, one suite for every implementation: the
SQLAlchemy path (`SqlQueueStore`) on SQLite and on PostgreSQL, and the writer-thread path
(`SqliteQueueStore`) on SQLite, as the daemon builds it there (insert, claim with lease, extend,
release, reap, operator commands and idempotent inserts); reads go through `SqlQueueViews`.

Assertions read the tables directly where the store has no read method for the fact in question
(leases, attempts, events): the rows are the observable result of a queue write.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.config import DatabaseSettings
from postroom.core.clock import FakeClock
from postroom.core.errors import ConflictError, NotFoundError
from postroom.core.types import DeliveryState, IdempotencyKey, Submission
from postroom.queue.models import ClaimedDelivery, Release
from postroom.queue.protocols import QueueStore, RecipientScreen
from postroom.queue.sql_store import SqlQueueStore
from postroom.queue.sqlite_store import SqliteQueueStore
from postroom.queue.statements import IDEMPOTENCY_WINDOW, request_hash
from postroom.queue.views import SqlQueueViews
from postroom.store.engine import WriteGate
from postroom.store.sqlite_writer import SqliteBatchWriter
from postroom.store.tables import deliveries, events, idempotency_keys, messages
from postroom.suppression.model import NewEntry
from postroom.suppression.service import SuppressionScreen
from postroom.suppression.sql_store import SqlSuppressionStore
from tests.support import claim
from tests.conftest import fresh_pg_database

LEASE = 300.0
CONTENT = b"From: app@postroom.test\r\nTo: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=[
    "sqlite-sqlalchemy",
    "sqlite-writer",
    pytest.param("postgres-sqlalchemy", marks=pytest.mark.postgres),
])  # fmt: skip
def backend(request: pytest.FixtureRequest) -> str:
    """Each implementation on each engine it runs on: the SQLAlchemy path everywhere, the writer
    thread on SQLite (where the daemon uses it)."""
    return str(request.param)


@pytest.fixture
async def db_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """The conftest's databases, one per backend (this module's `engine` is built on it)."""
    if backend.startswith("sqlite"):
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    async with fresh_pg_database() as url:
        yield url


@pytest.fixture
def store(engine: AsyncEngine, backend: str) -> Iterator[QueueStore]:
    yield from stores(engine, backend)


@pytest.fixture
def screened_store(engine: AsyncEngine, backend: str) -> Iterator[QueueStore]:
    """The store as the daemon builds it: the suppression list screens what it queues."""
    yield from stores(engine, backend, SuppressionScreen())


def stores(engine: AsyncEngine, backend: str, screen: RecipientScreen | None = None) -> Iterator[QueueStore]:
    settings = DatabaseSettings(url=str(engine.url))
    if backend != "sqlite-writer":
        yield SqlQueueStore(engine, WriteGate.for_database(settings), screen)
        return
    writer = SqliteBatchWriter(settings)
    try:
        yield SqliteQueueStore(engine, writer, WriteGate.for_database(settings), screen)
    finally:
        writer.close()


@pytest.fixture
def views(engine: AsyncEngine) -> SqlQueueViews:
    return SqlQueueViews(engine)


def submission(*recipients: str, **fields: Any) -> Submission:
    values: dict[str, Any] = {
        "mail_from": "app@postroom.test",
        "recipients": recipients or ("a@example.com",),
        "content": CONTENT,
        "source": "api",
    }
    values.update(fields)
    return Submission(**values)


async def select_rows(engine: AsyncEngine, table: sa.Table, *where: Any) -> list[sa.Row[Any]]:
    order = table.c.id if "id" in table.c else table.c.key
    async with engine.connect() as conn:
        return list((await conn.execute(sa.select(table).where(*where).order_by(order))).all())


async def delivery(engine: AsyncEngine, delivery_id: int) -> sa.Row[Any]:
    (row,) = await select_rows(engine, deliveries, deliveries.c.id == delivery_id)
    return row


async def count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


async def event_types(engine: AsyncEngine, message_id: str) -> list[str]:
    return [e.type for e in await select_rows(engine, events, events.c.message_id == message_id)]


def release(claimed: ClaimedDelivery, state: DeliveryState, reply: str = "250 2.0.0 Ok",
            **fields: Any) -> Release:  # fmt: skip
    return Release(claimed.id, claimed.message_id, claimed.recipient, state, reply, **fields)


async def claim_one(store: QueueStore, clock: FakeClock, owner: str = "w1") -> ClaimedDelivery:
    claimed = await claim(store, owner, 10, clock.now(), LEASE)
    assert len(claimed) == 1, claimed
    return claimed[0]


# -- insert ---------------------------------------------------------------------------------------


async def test_insert_many_writes_messages_deliveries_and_accepted_events(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    batch = [
        submission("a@example.com", "b@example.com", mail_from="first@postroom.test"),
        submission("c@example.com", mail_from="second@postroom.test", source="smtp"),
        submission(
            "d@example.com", "e@example.com", "f@example.com", mail_from="third@postroom.test"
        ),
    ]
    ids = await store.insert_many(batch, clock.now())

    assert len(ids) == len(set(ids)) == 3
    for message_id, item in zip(ids, batch):  # ids come back in the order of the batch
        (row,) = await select_rows(engine, messages, messages.c.id == message_id)
        assert row.mail_from == item.mail_from
        assert row.created_at == clock.now()
        assert row.size == len(item.content)
        assert row.error is None
        rows = await select_rows(engine, deliveries, deliveries.c.message_id == message_id)
        assert sorted(d.recipient for d in rows) == sorted(item.recipients)
        assert {(d.state, d.attempts, d.next_attempt_at, d.lease_owner) for d in rows} == {
            ("queued", 0, clock.now(), None)
        }
        (accepted,) = await select_rows(engine, events, events.c.message_id == message_id)
        assert accepted.type == "accepted"
        assert accepted.detail == {"source": item.source, "recipients": len(item.recipients)}
    assert await count(engine, messages) == 3
    assert await count(engine, deliveries) == 6
    assert await count(engine, events) == 3


async def test_insert_many_respects_an_explicit_message_id(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    chosen = "01JXK9ZB7N0000000000000000"
    ids = await store.insert_many(
        [submission(mail_from="x@postroom.test"), submission(message_id=chosen)], clock.now()
    )

    assert ids[1] == chosen
    assert ids[0] != chosen
    (row,) = await select_rows(engine, messages, messages.c.id == chosen)
    assert row.mail_from == "app@postroom.test"
    assert [d.message_id for d in await select_rows(engine, deliveries)].count(chosen) == 1


async def test_content_round_trips_byte_for_byte(store: QueueStore, clock: FakeClock, views: SqlQueueViews) -> None:
    content = (
        b"From: app@postroom.test\r\nSubject: =?utf-8?q?h=C3=A9?=\r\n\r\n"
        + "héllo wörld ✉\r\n".encode()
        + bytes(range(256))
        + b"\r\n.\r\n..dot\r\nbare LF\nbare CR\rtrailing space \r\n\r\n"
    )
    (message_id,) = await store.insert_many([submission(content=content)], clock.now())

    assert await views.content(message_id) == content
    loaded = await store.load_messages([message_id])
    assert loaded[message_id].content == content
    assert (await views.show(message_id)).summary.size == len(content)


async def test_large_contents_round_trip_beside_small_ones_in_one_batch(
    store: QueueStore, clock: FakeClock, views: SqlQueueViews
) -> None:
    """Large messages take the incremental blob path on SQLite's writer thread."""
    large = [os.urandom(300 * 1024), b"x" * (1024 * 1024 + 7)]
    contents = [large[0], CONTENT, large[1]]
    ids = await store.insert_many([submission(content=c) for c in contents], clock.now())
    for message_id, content in zip(ids, contents):
        assert await views.content(message_id) == content
        assert (await views.show(message_id)).summary.size == len(content)
    loaded = await store.load_messages(ids)
    assert [loaded[i].content for i in ids] == contents


# -- claim ----------------------------------------------------------------------------------------


async def test_claim_takes_only_due_deliveries_oldest_due_first_up_to_limit(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    ids = await store.insert_many(
        [submission(f"r{i}@example.com") for i in range(5)], clock.now()
    )
    first = {c.recipient: c for c in await claim(store, "w1", 10, clock.now(), LEASE)}
    # Defer them so the due order is the reverse of the insertion (and id) order; r4 is not due yet.
    now = clock.now()
    due_in = {"r0": 40, "r1": 30, "r2": 20, "r3": 10, "r4": 500}
    await store.release(
        "w1",
        [
            release(first[f"{r}@example.com"], DeliveryState.DEFERRED, "451",
                    next_attempt_at=now + d)
            for r, d in due_in.items()
        ],
        now,
    )

    clock.advance(5)
    assert await claim(store, "w2", 10, clock.now(), LEASE) == []  # nothing is due yet

    clock.advance(95)  # r0..r3 are due, r4 is not
    claimed = await claim(store, "w2", 2, clock.now(), LEASE)
    assert {c.recipient for c in claimed} == {"r3@example.com", "r2@example.com"}
    assert {c.message_id for c in claimed} == {ids[3], ids[2]}
    assert all(c.attempts == 1 for c in claimed)

    rest = await claim(store, "w2", 10, clock.now(), LEASE)
    assert {c.recipient for c in rest} == {"r1@example.com", "r0@example.com"}
    (not_due,) = await select_rows(engine, deliveries, deliveries.c.recipient == "r4@example.com")
    assert not_due.state == "deferred"


async def test_claim_leases_rows_to_the_owner(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    (message_id,) = await store.insert_many(
        [submission("a@example.com", "b@example.com")], clock.now()
    )
    clock.advance(7)
    claimed = await claim(store, "worker-1", 10, clock.now(), LEASE)

    assert sorted(c.recipient for c in claimed) == ["a@example.com", "b@example.com"]
    assert all(c.message_id == message_id and c.attempts == 0 for c in claimed)
    assert all(c.accepted_at == clock.now() - 7 for c in claimed)
    for c in claimed:
        row = await delivery(engine, c.id)
        assert row.state == "sending"
        assert row.lease_owner == "worker-1"
        assert row.lease_expires_at == clock.now() + LEASE


async def test_a_second_claim_does_not_return_leased_rows(
    store: QueueStore, clock: FakeClock
) -> None:
    await store.insert_many([submission(f"r{i}@example.com") for i in range(3)], clock.now())
    first = await claim(store, "w1", 2, clock.now(), LEASE)
    second = await claim(store, "w2", 10, clock.now(), LEASE)
    third = await claim(store, "w3", 10, clock.now(), LEASE)

    assert len(first) == 2
    assert len(second) == 1
    assert third == []
    assert {c.id for c in first}.isdisjoint({c.id for c in second})


async def test_concurrent_claimers_never_get_the_same_delivery(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    await store.insert_many(
        [submission(*(f"r{i}-{j}@example.com" for j in range(3))) for i in range(30)], clock.now()
    )
    everything = {d.id for d in await select_rows(engine, deliveries)}
    assert len(everything) == 90

    owners = [f"w{n}" for n in range(24)]
    results = await asyncio.gather(*(claim(store, o, 6, clock.now(), LEASE) for o in owners))
    # SKIP LOCKED may hand a claimer fewer rows than are due; a sweeper picks up what is left.
    leftover = await claim(store, "sweeper", 1000, clock.now(), LEASE)

    got = [c.id for batch in results for c in batch] + [c.id for c in leftover]
    assert len(got) == len(set(got)), "a delivery was leased twice"
    assert set(got) == everything
    assert sum(len(batch) for batch in results) > 0
    for owner, batch in [*zip(owners, results), ("sweeper", leftover)]:
        for c in batch:
            assert (await delivery(engine, c.id)).lease_owner == owner


# -- release --------------------------------------------------------------------------------------


async def test_release_by_another_owner_changes_nothing(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    (message_id,) = await store.insert_many([submission()], clock.now())
    claimed = await claim_one(store, clock, "w1")
    before = await delivery(engine, claimed.id)

    clock.advance(1)
    refused = await store.release(
        "intruder", [release(claimed, DeliveryState.DELIVERED)], clock.now()
    )

    assert refused == 0
    assert await delivery(engine, claimed.id) == before
    assert await event_types(engine, message_id) == ["accepted"]


async def test_release_returns_how_many_outcomes_were_still_ours(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    await store.insert_many([submission("a@example.com", "b@example.com")], clock.now())
    mine = await claim(store, "w1", 1, clock.now(), LEASE)
    theirs = await claim(store, "w2", 1, clock.now(), LEASE)

    recorded = await store.release(
        "w1",
        [
            release(mine[0], DeliveryState.DELIVERED),
            release(theirs[0], DeliveryState.BOUNCED, "550"),
        ],
        clock.now(),
    )

    assert recorded == 1
    assert (await delivery(engine, mine[0].id)).state == "delivered"
    kept = await delivery(engine, theirs[0].id)
    assert (kept.state, kept.lease_owner, kept.attempts) == ("sending", "w2", 0)


@pytest.mark.parametrize(
    ("state", "reply"),
    [
        (DeliveryState.DELIVERED, "250 2.0.0 Ok: queued as 4F2"),
        (DeliveryState.BOUNCED, "550 5.1.1 no such user"),
        (DeliveryState.EXPIRED, "451 4.4.1 timed out for 5 days"),
    ],
)
async def test_release_to_a_final_state_sets_finished_at(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock, state: DeliveryState, reply: str
) -> None:
    (message_id,) = await store.insert_many([submission()], clock.now())
    claimed = await claim_one(store, clock)
    clock.advance(3)

    assert await store.release("w1", [release(claimed, state, reply)], clock.now()) == 1

    row = await delivery(engine, claimed.id)
    assert row.state == state.value
    assert row.attempts == 1
    assert row.finished_at == clock.now()
    assert row.updated_at == clock.now()
    assert row.last_reply == reply
    assert (row.lease_owner, row.lease_expires_at) == (None, None)
    assert await claim(store, "w2", 10, clock.now() + 10 * LEASE, LEASE) == []
    assert await event_types(engine, message_id) == ["accepted", state.value]


async def test_release_deferred_keeps_next_attempt_at_from_the_release(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    await store.insert_many([submission()], clock.now())
    claimed = await claim_one(store, clock)
    retry_at = clock.now() + 900

    await store.release(
        "w1", [release(claimed, DeliveryState.DEFERRED, "421 try later", next_attempt_at=retry_at)],
        clock.now(),
    )

    row = await delivery(engine, claimed.id)
    assert (row.state, row.attempts, row.next_attempt_at) == ("deferred", 1, retry_at)
    assert row.finished_at is None
    assert row.last_reply == "421 try later"
    assert await claim(store, "w1", 10, retry_at - 1, LEASE) == []
    (again,) = await claim(store, "w1", 10, retry_at, LEASE)
    assert (again.id, again.attempts) == (claimed.id, 1)


async def test_release_dead_does_not_count_an_attempt(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    await store.insert_many([submission()], clock.now())
    claimed = await claim_one(store, clock)

    dead = release(claimed, DeliveryState.DEAD, "crashed: ValueError")
    await store.release("w1", [dead], clock.now())

    row = await delivery(engine, claimed.id)
    assert (row.state, row.attempts, row.finished_at) == ("dead", 0, None)
    assert await claim(store, "w1", 10, clock.now() + 10 * LEASE, LEASE) == []


async def test_release_writes_one_event_per_outcome_with_the_reply(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    (message_id,) = await store.insert_many(
        [submission("a@example.com", "b@example.com", "c@example.com")], clock.now()
    )
    claimed = {c.recipient: c for c in await claim(store, "w1", 10, clock.now(), LEASE)}
    clock.advance(2)

    await store.release(
        "w1",
        [
            release(claimed["a@example.com"], DeliveryState.DELIVERED, "250 ok"),
            release(claimed["b@example.com"], DeliveryState.BOUNCED, "550 5.1.1 unknown",
                    detail={"status": "5.1.1"}),
            release(claimed["c@example.com"], DeliveryState.DEFERRED, "451 greylisted",
                    next_attempt_at=clock.now() + 60),
        ],
        clock.now(),
    )  # fmt: skip

    written = [e for e in await select_rows(engine, events, events.c.message_id == message_id)
               if e.type != "accepted"]  # fmt: skip
    assert {(e.type, e.recipient, e.delivery_id) for e in written} == {
        ("delivered", "a@example.com", claimed["a@example.com"].id),
        ("bounced", "b@example.com", claimed["b@example.com"].id),
        ("deferred", "c@example.com", claimed["c@example.com"].id),
    }
    by_type = {e.type: e for e in written}
    assert by_type["delivered"].detail == {"reply": "250 ok"}
    assert by_type["bounced"].detail == {"reply": "550 5.1.1 unknown", "status": "5.1.1"}
    assert by_type["deferred"].detail == {"reply": "451 greylisted"}
    assert all(e.at == clock.now() for e in written)


# -- extend and reap ------------------------------------------------------------------------------


async def test_extend_pushes_the_lease_only_of_the_owners_sending_rows(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    await store.insert_many([submission(f"r{i}@example.com") for i in range(4)], clock.now())
    mine = await claim(store, "w1", 3, clock.now(), LEASE)
    (theirs,) = await claim(store, "w2", 3, clock.now(), LEASE)
    await store.release("w1", [release(mine[2], DeliveryState.DELIVERED)], clock.now())
    until = clock.now() + 3 * LEASE

    extended = await store.extend("w1", [c.id for c in mine] + [theirs.id], until)

    assert extended == 2
    assert (await delivery(engine, mine[0].id)).lease_expires_at == until
    assert (await delivery(engine, mine[1].id)).lease_expires_at == until
    assert (await delivery(engine, mine[2].id)).lease_expires_at is None  # delivered, not ours now
    assert (await delivery(engine, theirs.id)).lease_expires_at == clock.now() + LEASE
    assert await store.extend("w1", [], until) == 0


async def test_reap_requeues_expired_leases_and_leaves_live_ones(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    await store.insert_many([submission("a@example.com", "b@example.com")], clock.now())
    (short,) = await claim(store, "dead-worker", 1, clock.now(), 30)
    (long,) = await claim(store, "live-worker", 1, clock.now(), 600)
    clock.advance(60)

    assert await store.reap(clock.now()) == 1

    reaped = await delivery(engine, short.id)
    assert (reaped.state, reaped.lease_owner, reaped.lease_expires_at) == ("queued", None, None)
    assert reaped.next_attempt_at == clock.now()
    assert reaped.attempts == 0
    live = await delivery(engine, long.id)
    assert (live.state, live.lease_owner) == ("sending", "live-worker")
    assert await store.reap(clock.now()) == 0
    (again,) = await claim(store, "w3", 10, clock.now(), LEASE)  # due right away
    assert again.id == short.id


async def test_after_a_reap_only_the_new_owner_can_release(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    (message_id,) = await store.insert_many([submission()], clock.now())
    old = await claim_one(store, clock, "old")
    clock.advance(LEASE + 1)
    assert await store.reap(clock.now()) == 1
    new = await claim_one(store, clock, "new")
    assert new.id == old.id

    stale = release(old, DeliveryState.BOUNCED, "550 stale")
    assert await store.release("old", [stale], clock.now()) == 0
    row = await delivery(engine, new.id)
    assert (row.state, row.lease_owner) == ("sending", "new")

    current = release(new, DeliveryState.DELIVERED, "250 ok")
    assert await store.release("new", [current], clock.now()) == 1
    row = await delivery(engine, new.id)
    assert (row.state, row.last_reply, row.attempts) == ("delivered", "250 ok", 1)
    assert await event_types(engine, message_id) == ["accepted", "delivered"]


# -- park, retry, purge ---------------------------------------------------------------------------


async def test_park_records_the_error_on_the_message(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock, views: SqlQueueViews
) -> None:
    (message_id,) = await store.insert_many([submission()], clock.now())
    await store.park(message_id, "Traceback: KeyError 'x'")

    assert (await views.show(message_id)).error == "Traceback: KeyError 'x'"
    (row,) = await select_rows(engine, messages, messages.c.id == message_id)
    assert row.error == "Traceback: KeyError 'x'"


async def _outcomes(store: QueueStore, clock: FakeClock, owner: str,
                    states: dict[str, DeliveryState]) -> dict[str, ClaimedDelivery]:  # fmt: skip
    """Claim everything due and release each recipient to the state asked for."""
    claimed = {c.recipient: c for c in await claim(store, owner, 100, clock.now(), LEASE)}
    await store.release(
        owner,
        [
            release(claimed[r], s, "reply", next_attempt_at=clock.now() + 3600
                    if s is DeliveryState.DEFERRED else None)
            for r, s in states.items()
        ],
        clock.now(),
    )  # fmt: skip
    return claimed


async def test_retry_of_a_message_requeues_its_dead_and_deferred_deliveries_and_clears_the_error(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock, views: SqlQueueViews
) -> None:
    (target, other) = await store.insert_many(
        [
            submission("dead@example.com", "deferred@example.com", "done@example.com"),
            submission("other-dead@example.com"),
        ],
        clock.now(),
    )
    claimed = await _outcomes(store, clock, "w1", {
        "dead@example.com": DeliveryState.DEAD,
        "deferred@example.com": DeliveryState.DEFERRED,
        "done@example.com": DeliveryState.DELIVERED,
        "other-dead@example.com": DeliveryState.DEAD,
    })  # fmt: skip
    await store.park(target, "boom")
    await store.park(other, "boom too")
    clock.advance(10)

    assert await store.retry(clock.now(), target) == 2

    for recipient in ("dead@example.com", "deferred@example.com"):
        row = await delivery(engine, claimed[recipient].id)
        assert (row.state, row.next_attempt_at) == ("queued", clock.now())
    assert (await delivery(engine, claimed["done@example.com"].id)).state == "delivered"
    assert (await delivery(engine, claimed["other-dead@example.com"].id)).state == "dead"
    assert (await views.show(target)).error is None
    assert (await views.show(other)).error == "boom too"
    again = await claim(store, "w2", 10, clock.now(), LEASE)
    assert {c.recipient for c in again} == {"dead@example.com", "deferred@example.com"}


async def test_retry_without_a_message_requeues_only_dead_deliveries(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    await store.insert_many(
        [
            submission("x-dead@example.com", "x-deferred@example.com"),
            submission("y-dead@example.com"),
        ],
        clock.now(),
    )
    claimed = await _outcomes(store, clock, "w1", {
        "x-dead@example.com": DeliveryState.DEAD,
        "x-deferred@example.com": DeliveryState.DEFERRED,
        "y-dead@example.com": DeliveryState.DEAD,
    })  # fmt: skip
    deferred_until = (await delivery(engine, claimed["x-deferred@example.com"].id)).next_attempt_at
    clock.advance(10)

    assert await store.retry(clock.now()) == 2

    for recipient in ("x-dead@example.com", "y-dead@example.com"):
        row = await delivery(engine, claimed[recipient].id)
        assert (row.state, row.next_attempt_at) == ("queued", clock.now())
    kept = await delivery(engine, claimed["x-deferred@example.com"].id)
    assert (kept.state, kept.next_attempt_at) == ("deferred", deferred_until)


async def test_purge_by_id_is_refused_while_a_delivery_is_being_sent(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    (message_id,) = await store.insert_many(
        [submission("a@example.com", "b@example.com")], clock.now()
    )
    await claim(store, "w1", 1, clock.now(), LEASE)

    with pytest.raises(ConflictError):
        await store.purge(message_id=message_id)

    assert await count(engine, messages) == 1
    assert await count(engine, deliveries) == 2
    assert await event_types(engine, message_id) == ["accepted"]


async def test_purge_by_id_deletes_the_message_its_deliveries_and_events(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock, views: SqlQueueViews
) -> None:
    (gone, kept) = await store.insert_many(
        [submission("a@example.com", "b@example.com"), submission("c@example.com")], clock.now()
    )
    await _outcomes(store, clock, "w1", {
        "a@example.com": DeliveryState.BOUNCED,
        "b@example.com": DeliveryState.DEFERRED,
        "c@example.com": DeliveryState.DEFERRED,
    })  # fmt: skip

    assert await store.purge(message_id=gone) == 1

    assert [m.id for m in await select_rows(engine, messages)] == [kept]
    assert {d.message_id for d in await select_rows(engine, deliveries)} == {kept}
    assert {e.message_id for e in await select_rows(engine, events)} == {kept}
    with pytest.raises(NotFoundError):
        await views.show(gone)
    assert await store.purge(message_id=gone) == 0


async def test_purge_by_state_deletes_every_message_with_a_delivery_in_that_state(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    (bounced_1, bounced_2, delivered) = await store.insert_many(
        [
            submission("a@example.com", "b@example.com"),
            submission("c@example.com"),
            submission("d@example.com"),
        ],
        clock.now(),
    )
    await _outcomes(store, clock, "w1", {
        "a@example.com": DeliveryState.BOUNCED,
        "b@example.com": DeliveryState.DELIVERED,
        "c@example.com": DeliveryState.BOUNCED,
        "d@example.com": DeliveryState.DELIVERED,
    })  # fmt: skip

    assert await store.purge(state="bounced") == 2

    assert [m.id for m in await select_rows(engine, messages)] == [delivered]
    assert {d.message_id for d in await select_rows(engine, deliveries)} == {delivered}
    assert {e.message_id for e in await select_rows(engine, events)} == {delivered}
    assert await store.purge(state="bounced") == 0
    assert {bounced_1, bounced_2}.isdisjoint((await store.load_messages([bounced_1, bounced_2])))


# -- reads ----------------------------------------------------------------------------------------


async def test_depth_by_state_counts_deliveries(store: QueueStore, clock: FakeClock, views: SqlQueueViews) -> None:
    assert await views.depth_by_state() == {}
    await store.insert_many(
        [
            submission("a@example.com", "b@example.com", "c@example.com"),
            submission("d@example.com"),
        ],
        clock.now(),
    )
    await _outcomes(store, clock, "w1", {
        "a@example.com": DeliveryState.DELIVERED,
        "b@example.com": DeliveryState.DEFERRED,
    })  # fmt: skip
    # c and d stay leased
    await store.insert_many([submission("e@example.com")], clock.now())

    assert await views.depth_by_state() == {
        "delivered": 1, "deferred": 1, "sending": 2, "queued": 1
    }


async def test_oldest_active_created_at_ignores_finished_deliveries(
    store: QueueStore, clock: FakeClock, views: SqlQueueViews
) -> None:
    assert await views.oldest_active_created_at() is None
    first_at = clock.now()
    await store.insert_many([submission("a@example.com")], first_at)
    clock.advance(100)
    second_at = clock.now()
    await store.insert_many([submission("b@example.com")], second_at)
    assert await views.oldest_active_created_at() == first_at

    await _outcomes(store, clock, "w1", {
        "a@example.com": DeliveryState.DELIVERED,
        "b@example.com": DeliveryState.DEFERRED,
    })  # fmt: skip
    assert await views.oldest_active_created_at() == second_at

    claimed = await claim(store, "w2", 10, clock.now() + 3600, LEASE)  # sending counts as active
    assert await views.oldest_active_created_at() == second_at
    await store.release("w2", [release(claimed[0], DeliveryState.BOUNCED, "550")], clock.now())
    assert await views.oldest_active_created_at() is None


async def test_list_messages_filters_orders_newest_first_and_pages(
    store: QueueStore, clock: FakeClock, views: SqlQueueViews
) -> None:
    start = clock.now()
    ids = []
    for i in range(5):
        (message_id,) = await store.insert_many(
            [submission(
                f"to{i}@example.com", "all@example.com",
                mail_from="even@postroom.test" if i % 2 == 0 else "odd@postroom.test",
                stream="broadcast" if i == 4 else "transactional",
            )],
            clock.now(),
        )  # fmt: skip
        ids.append(message_id)
        clock.advance(10)
    claimed = {c.recipient: c for c in await claim(store, "w1", 100, clock.now(), LEASE)}
    await store.release("w1", [release(claimed["to1@example.com"], DeliveryState.BOUNCED, "550")],
                        clock.now())  # fmt: skip

    async def listed(**filters: Any) -> list[str]:
        return [m.id for m in await views.list_messages(**filters)]

    newest_first = list(reversed(ids))
    assert await listed() == newest_first
    assert await listed(mail_from="even@postroom.test") == [ids[4], ids[2], ids[0]]
    assert await listed(stream="broadcast") == [ids[4]]
    assert await listed(recipient="to3@example.com") == [ids[3]]
    assert await listed(recipient="all@example.com") == newest_first
    assert await listed(state="bounced") == [ids[1]]
    assert await listed(state="bounced", recipient="to3@example.com") == []
    assert await listed(since=start + 10, until=start + 30) == [ids[2], ids[1]]
    assert await listed(since=start + 40) == [ids[4]]
    assert await listed(mail_from="nobody@postroom.test") == []

    page_1 = await listed(limit=2)
    page_2 = await listed(limit=2, before=page_1[-1])
    page_3 = await listed(limit=2, before=page_2[-1])
    assert (page_1, page_2, page_3) == (newest_first[:2], newest_first[2:4], newest_first[4:])
    assert await listed(limit=2, before=page_3[-1]) == []

    summary = (await views.list_messages(state="bounced"))[0]
    assert summary.states == {"bounced": 1, "sending": 1}
    assert (summary.mail_from, summary.stream, summary.source) == (
        "odd@postroom.test", "transactional", "api"
    )
    assert summary.created_at == start + 10


async def test_show_returns_the_message_its_deliveries_and_events(
    store: QueueStore, clock: FakeClock, views: SqlQueueViews
) -> None:
    (message_id,) = await store.insert_many(
        [submission("a@example.com", "b@example.com", header_from="App <app@postroom.test>",
                    subject="Your receipt", tags=("receipt", "eu"), submitted_by="key:abc")],
        clock.now(),
    )  # fmt: skip
    claimed = {c.recipient: c for c in await claim(store, "w1", 10, clock.now(), LEASE)}
    clock.advance(5)
    delivered = release(claimed["a@example.com"], DeliveryState.DELIVERED, "250 ok")
    await store.release("w1", [delivered], clock.now())

    detail = await views.show(message_id)

    assert detail.summary.id == message_id
    assert detail.summary.header_from == "App <app@postroom.test>"
    assert detail.summary.subject == "Your receipt"
    assert detail.summary.states == {"delivered": 1, "sending": 1}
    assert detail.tags == ["receipt", "eu"]
    assert detail.submitted_by == "key:abc"
    assert detail.error is None
    assert [
        (d.recipient, d.state, d.attempts, d.last_reply, d.finished_at) for d in detail.deliveries
    ] == [
        ("a@example.com", "delivered", 1, "250 ok", clock.now()),
        ("b@example.com", "sending", 0, None, None),
    ]
    assert [(e["type"], e["recipient"]) for e in detail.events] == [
        ("accepted", None),
        ("delivered", "a@example.com"),
    ]
    assert detail.events[1]["detail"] == {"reply": "250 ok"}


async def test_show_and_content_raise_not_found_for_an_unknown_id(
    store: QueueStore, clock: FakeClock, views: SqlQueueViews
) -> None:
    await store.insert_many([submission()], clock.now())
    with pytest.raises(NotFoundError):
        await views.show("01JXK9ZB7N0000000000000000")
    with pytest.raises(NotFoundError):
        await views.content("01JXK9ZB7N0000000000000000")


# -- idempotent insert ----------------------------------------------------------------------------


def key(
    value: str = "order-42", payload: bytes = b"request-1", scope: str = "key:abc"
) -> IdempotencyKey:
    return IdempotencyKey(scope, value, request_hash(payload))


async def test_insert_idempotent_same_key_and_hash_returns_the_original(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    first, created, _ = await store.insert_idempotent(submission(), key(), clock.now())
    assert created is True
    clock.advance(IDEMPOTENCY_WINDOW - 60)

    again, created_again, _ = await store.insert_idempotent(submission(), key(), clock.now())

    assert (again, created_again) == (first, False)
    assert await count(engine, messages) == 1
    assert await count(engine, deliveries) == 1
    assert await event_types(engine, first) == ["accepted"]


async def test_insert_idempotent_same_key_other_request_is_a_conflict(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    await store.insert_idempotent(submission(), key(payload=b"request-1"), clock.now())

    with pytest.raises(ConflictError):
        await store.insert_idempotent(
            submission(mail_from="other@postroom.test"), key(payload=b"request-2"), clock.now()
        )
    assert await count(engine, messages) == 1


async def test_insert_idempotent_scopes_are_independent(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    a, created_a, _ = await store.insert_idempotent(submission(), key(scope="key:a"), clock.now())
    b, created_b, _ = await store.insert_idempotent(
        submission(), key(scope="key:b", payload=b"other"), clock.now()
    )

    assert created_a and created_b
    assert a != b
    assert await count(engine, messages) == 2


async def test_insert_idempotent_replaces_a_key_older_than_the_window(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    old, _, _ = await store.insert_idempotent(submission(), key(payload=b"request-1"), clock.now())
    clock.advance(IDEMPOTENCY_WINDOW + 1)

    new, created, _ = await store.insert_idempotent(
        submission(), key(payload=b"request-2"), clock.now()
    )

    assert created is True
    assert new != old
    assert await count(engine, messages) == 2
    (row,) = await select_rows(engine, idempotency_keys)
    assert (row.message_id, row.request_hash) == (new, request_hash(b"request-2"))
    assert row.created_at == clock.now()
    clock.advance(60)
    again = await store.insert_idempotent(submission(), key(payload=b"request-2"), clock.now())
    assert again[:2] == (new, False)


async def test_concurrent_insert_idempotent_with_the_same_key_makes_one_message(
    engine: AsyncEngine, store: QueueStore, clock: FakeClock
) -> None:
    results = await asyncio.gather(
        *(store.insert_idempotent(submission(), key(), clock.now()) for _ in range(8))
    )

    assert len({message_id for message_id, _, _ in results}) == 1
    assert [created for _, created, _ in results].count(True) == 1
    assert await count(engine, messages) == 1
    assert await count(engine, deliveries) == 1
    assert await count(engine, idempotency_keys) == 1


async def test_the_screen_takes_suppressed_recipients_out_in_the_queueing_transaction(
    engine: AsyncEngine, screened_store: QueueStore, clock: FakeClock
) -> None:
    suppressions = SqlSuppressionStore(engine)
    await suppressions.add([
        NewEntry("news@example.com", "stream:news", "unsubscribe", "one-click"),
        NewEntry("All@Example.com", "global", "bounce", "userunknown"),
        NewEntry("both@example.com", "stream:billing", "manual", "asked"),
        NewEntry("old@example.com", "global", "bounce", "mailboxfull", expires_at=clock.now() - 1),
    ], clock.now())  # fmt: skip
    await suppressions.erase("both@example.com")  # kept as a hash, still blocking
    everyone = ("news@example.com", "all@example.com", "both@example.com", "old@example.com")
    batch = [submission(*everyone, stream=stream) for stream in ("news", "billing", "ops")]

    inserted = await screened_store.insert_leased(batch, clock.now(), None)

    expected = {"news": {"news@example.com", "all@example.com"}, "billing": {"all@example.com", "both@example.com"},
                "ops": {"all@example.com"}}  # fmt: skip
    for stream, message_id, queued in zip(("news", "billing", "ops"), inserted.ids, inserted.submissions):
        assert set(queued.suppressed) == expected[stream], stream
        assert set(queued.recipients) == set(everyone) - expected[stream]
        states = {row.recipient: row.state for row in await select_rows(engine, deliveries)
                  if row.message_id == message_id}  # fmt: skip
        assert states == {r: "suppressed" if r in expected[stream] else "queued" for r in everyone}
    assert inserted.submissions[0].suppressed["all@example.com"]["reason"] == "userunknown"
    # Nothing suppressed: the submission is written as given.
    [plain] = (await screened_store.insert_leased([submission("new@example.com")], clock.now(), None)).submissions
    assert plain.suppressed == {} and plain.recipients == ("new@example.com",)
