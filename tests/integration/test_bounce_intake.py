"""The bounce intake with an injected parser, on both databases: which reports change a delivery
(a failure about a delivered one), which are only recorded (delayed, auto-replies, a delivery still
being tried, a report naming other recipients), and that records and events commit together."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.bounces.intake import SqlBounceIntake
from postroom.bounces.model import BounceClass, BounceKind, BounceRecipient, ParsedBounce
from postroom.core.clock import FakeClock
from postroom.core.types import DeliveryState, Submission
from postroom.metrics import Metrics
from postroom.queue.models import Release
from postroom.queue.sql_store import SqlQueueStore
from postroom.store.engine import WriteGate
from postroom.store.tables import bounce_records, deliveries, events

from tests.support import claim


def failed(address: str, reason: str = "userunknown", action: str | None = "failed") -> BounceRecipient:
    cls = BounceClass.HARD if reason == "userunknown" else BounceClass.SOFT
    return BounceRecipient(address, reason, cls, "5.1.1" if cls is BounceClass.HARD else "4.2.2", 550,
                           "550 no such user", "mx.example.net", action=action)  # fmt: skip


def parser(result: ParsedBounce) -> Callable[[bytes], ParsedBounce]:
    return lambda raw: result


async def delivered_ids(engine: AsyncEngine, clock: FakeClock, recipients: tuple[str, ...]) -> list[int]:
    store = SqlQueueStore(engine)
    submission = Submission("app@postroom.test", recipients, b"Subject: x\r\n\r\nx\r\n", "api")
    await store.insert_many([submission], clock.now())
    claimed = await claim(store, "w", 10, clock.now(), 60)
    releases = [Release(d.id, d.message_id, d.recipient, DeliveryState.DELIVERED, "250 ok") for d in claimed]
    await store.release("w", releases[:-1], clock.now())  # the last one stays `sending`
    return [d.id for d in claimed]


async def states(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        return {r[0]: r[1] for r in await conn.execute(sa.select(deliveries.c.recipient, deliveries.c.state))}


async def test_only_a_failure_about_a_delivered_delivery_bounces_it(engine: AsyncEngine) -> None:
    clock = FakeClock()
    ids = await delivered_ids(engine, clock, ("a@example.net", "b@example.net", "c@example.net", "d@example.net"))
    metrics = Metrics(CollectorRegistry())

    def intake(result: ParsedBounce) -> SqlBounceIntake:
        return SqlBounceIntake(engine, WriteGate(None), parser(result), clock, metrics, max_stored=1024)

    # Delayed (RFC 3464 Action: delayed): recorded, the delivery stands.
    await intake(ParsedBounce(BounceKind.DSN, (failed("a@example.net", "mailboxfull", "delayed"),))).take(ids[0], b"x")
    # An auto-reply: recorded only.
    await intake(ParsedBounce(BounceKind.AUTOREPLY)).take(ids[1], b"y" * 5000)
    # A report naming two other recipients: which one is ours cannot be told; recorded only.
    two = ParsedBounce(BounceKind.DSN, (failed("x@example.net"), failed("y@example.net")))
    await intake(two).take(ids[2], b"z")
    # A failure about the delivery still being sent: recorded only.
    await intake(ParsedBounce(BounceKind.DSN, (failed("d@example.net"),))).take(ids[3], b"w")
    assert await states(engine) == {"a@example.net": "delivered", "b@example.net": "delivered",
                                    "c@example.net": "delivered", "d@example.net": "sending"}  # fmt: skip
    # A failure naming ours among others: bounced.
    ours = ParsedBounce(BounceKind.DSN, (failed("x@example.net"), failed("C@Example.net")))
    await intake(ours).take(ids[2], b"v")
    assert (await states(engine))["c@example.net"] == "bounced"
    async with engine.connect() as conn:
        records = (await conn.execute(sa.select(bounce_records.c.delivery_id, bounce_records.c.kind,
                                                bounce_records.c.raw_size, sa.func.length(bounce_records.c.raw))
                                      .order_by(bounce_records.c.id))).all()  # fmt: skip
        bounced = (await conn.execute(sa.select(events.c.delivery_id, events.c.detail)
                                      .where(events.c.type == "bounced"))).all()  # fmt: skip
    assert [(r[0], r[1]) for r in records] == [(ids[0], "dsn"), (ids[1], "autoreply"), (ids[2], "dsn"), (ids[2], "dsn"),
                                               (ids[3], "dsn"), (ids[2], "dsn"), (ids[2], "dsn")]  # fmt: skip
    assert (records[1][2], records[1][3]) == (5000, 1024)  # the raw message is capped
    [(delivery_id, detail)] = bounced
    assert delivery_id == ids[2] and detail["reason"] == "userunknown" and detail["late"] is True
    # The same report again changes nothing more.
    await intake(ours).take(ids[2], b"v")
    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).where(events.c.type == "bounced")) == 1
