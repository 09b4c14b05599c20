"""Loops' events in, on both databases: matching an event to the `loops` delivery it is about
(address, template, time), what each kind does to the delivery, the events and - through the
suppression consumer draining the outbox - the suppression list, and that a replayed webhook id
changes nothing."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.bounces.classify import reason_of_reply
from postroom.core.clock import FakeClock
from postroom.core.types import INHOUSE_ROUTE, LOOPS_ROUTE, DeliveryState, Submission
from postroom.events.outbox import EventOutbox
from postroom.metrics import Metrics
from postroom.queue.models import Release
from postroom.queue.sql_store import SqlQueueStore
from postroom.shadow.loops_events_store import SqlLoopsEvents
from postroom.shadow.loops_webhooks import KINDS, LoopsEvent, LoopsEventKind
from postroom.store.engine import WriteGate
from postroom.store.tables import deliveries, events, loops_events, suppressions
from postroom.suppression.rules import SoftPolicy
from postroom.suppression.service import SuppressionConsumer

from tests.integration.test_suppression_store import drained
from tests.support import claim

DAY = 86400.0
TEMPLATES = {"welcome": "tx-welcome", "receipt": "tx-receipt"}  # [loops] templates


async def sent_through_loops(
    engine: AsyncEngine, clock: FakeClock, recipient: str, template: str | None = "welcome",
    stream: str = "transactional", route: str = LOOPS_ROUTE,
) -> int:  # fmt: skip
    """A delivery Loops accepted: queued, claimed and released `delivered` (with its `delivered`
    event) as the Loops transport releases it; its id."""
    store = SqlQueueStore(engine)
    submission = Submission("app@postroom.test", (recipient,), b"Subject: x\r\n\r\nx\r\n", "api", stream=stream,
                            route=route, template=(template, 1) if template else None)  # fmt: skip
    await store.insert_many([submission], clock.now())
    [delivery] = await claim(store, "w", 10, clock.now(), 60)
    await store.release("w", [Release(delivery.id, delivery.message_id, delivery.recipient, DeliveryState.DELIVERED,
                                      "202 accepted by Loops", route=route)], clock.now())  # fmt: skip
    return int(delivery.id)


def event(name: str, email: str, at: float, webhook_id: str, **fields: Any) -> LoopsEvent:
    values: dict[str, Any] = {"source_type": "transactional", "transactional_id": None, "email_id": "cm0x1"}
    values.update(fields)
    return LoopsEvent(webhook_id, name, KINDS.get(name, LoopsEventKind.OTHER), at, email,
                      values["source_type"], values["transactional_id"], values["email_id"],
                      {"eventName": name, "eventTime": at, "contactIdentity": {"email": email}})  # fmt: skip


def intake(engine: AsyncEngine, clock: FakeClock, metrics: Metrics) -> SqlLoopsEvents:
    return SqlLoopsEvents(engine, WriteGate(None), TEMPLATES, 30 * DAY, clock, metrics)


def outbox(engine: AsyncEngine, clock: FakeClock, metrics: Metrics) -> EventOutbox:
    consumer = SuppressionConsumer(SoftPolicy(limit=2, window=7 * DAY, lasts=30 * DAY), metrics, reason_of_reply)
    return EventOutbox(engine, WriteGate(None), clock, metrics, [consumer])


async def rows(engine: AsyncEngine, statement: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(statement)).all())


async def count(engine: AsyncEngine, table: sa.Table, *where: Any) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table).where(*where)) or 0)


async def state_of(engine: AsyncEngine, delivery_id: int) -> str:
    [(state,)] = await rows(engine, sa.select(deliveries.c.state).where(deliveries.c.id == delivery_id))
    return str(state)


async def suppressed(engine: AsyncEngine) -> dict[str, tuple[str, str, str, str | None]]:
    found = await rows(engine, sa.select(suppressions.c.address_key, suppressions.c.scope, suppressions.c.source,
                                         suppressions.c.reason, suppressions.c.created_by))  # fmt: skip
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in found}


async def test_an_event_is_matched_to_the_latest_loops_delivery_of_its_address_and_template(
    engine: AsyncEngine,
) -> None:
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    inhouse = await sent_through_loops(engine, clock, "ada@example.com", route=INHOUSE_ROUTE)
    clock.advance(60)
    welcome = await sent_through_loops(engine, clock, "Ada@Example.com", "welcome")
    clock.advance(60)
    receipt = await sent_through_loops(engine, clock, "ada@example.com", "receipt")
    clock.advance(60)
    later = clock.now() + 3600
    await sent_through_loops(engine, clock.__class__(later), "ada@example.com", "receipt")  # after the events
    store = intake(engine, clock, metrics)
    at = clock.now()

    # The template named: its delivery, though a later one of another template exists.
    taken = await store.take(event("email.delivered", "ADA@example.com", at, "w1", transactional_id="tx-welcome"))
    assert (taken.result, taken.effect, taken.delivery_id) == ("applied", "confirmed", welcome)
    # No template named: the latest loops delivery created before the event (never the in-house one).
    assert (await store.take(event("email.delivered", "ada@example.com", at, "w2"))).delivery_id == receipt
    # A delivery created after the event is not what it is about.
    assert (await store.take(event("email.delivered", "ada@example.com", at - 90, "w3"))).delivery_id == welcome
    assert (await store.take(event("email.delivered", "ada@example.com", at - 200, "w4"))).result == "unmatched"
    # Outside the window; a transactionalId postroom does not map; a campaign's mail; another address.
    assert (await store.take(event("email.delivered", "ada@example.com", at + 31 * DAY, "w5"))).result == "unmatched"
    assert (await store.take(event("email.delivered", "ada@example.com", at, "w6",
                                   transactional_id="tx-unknown"))).result == "unmatched"  # fmt: skip
    assert (await store.take(event("email.delivered", "ada@example.com", at, "w7", source_type="campaign",
                                   transactional_id=None))).result == "unmatched"  # fmt: skip
    assert (await store.take(event("email.delivered", "bob@example.com", at, "w8"))).result == "unmatched"
    assert inhouse not in {r[0] for r in await rows(engine, sa.select(loops_events.c.delivery_id))}

    # A confirmation writes no second `delivered` event: stats and webhooks count each once.
    assert await count(engine, events, events.c.type == "delivered") == 4
    recorded = await rows(engine, sa.select(loops_events.c.webhook_id, loops_events.c.email, loops_events.c.outcome,
                                            loops_events.c.event_time).order_by(loops_events.c.id))  # fmt: skip
    assert [(r[0], r[1], r[2]) for r in recorded][:2] == [("w1", "ada@example.com", "applied"),
                                                          ("w2", "ada@example.com", "applied")]  # fmt: skip
    assert recorded[0][3] == at and len(recorded) == 8


async def test_a_hard_bounce_bounces_the_delivery_and_the_consumer_suppresses_once(engine: AsyncEngine) -> None:
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    delivery_id = await sent_through_loops(engine, clock, "gone@example.com")
    clock.advance(120)
    store = intake(engine, clock, metrics)
    bounce = event("email.hardBounced", "Gone@Example.com", clock.now() - 10, "msg_hard", transactional_id="tx-welcome")
    taken = await store.take(bounce)
    assert (taken.result, taken.effect, taken.delivery_id) == ("applied", "bounced", delivery_id)
    assert await state_of(engine, delivery_id) == "bounced"
    [(detail, event_delivery)] = await rows(engine, sa.select(events.c.detail, events.c.delivery_id)
                                            .where(events.c.type == "bounced"))  # fmt: skip
    assert event_delivery == delivery_id
    assert (detail["reason"], detail["bounce_class"], detail["source"], detail["late"]) == (
        "hardbounce", "hard", "loops", True)
    labels = {"stream": "transactional", "route": "loops", "bounce_class": "hard", "reason": "hardbounce"}
    assert metrics.registry.get_sample_value("postroom_bounced_total", labels) == 1

    # Replayed by Loops (same webhook id): nothing more.
    assert await store.take(replace(bounce, at=bounce.at + 1)) == replace(taken, result="duplicate", effect="none",
                                                                          delivery_id=None)  # fmt: skip
    assert await count(engine, events, events.c.type == "bounced") == 1
    assert await count(engine, loops_events) == 1
    assert await suppressed(engine) == {}  # not yet: the consumer has not read the event
    assert await drained(outbox(engine, clock, metrics), 3) >= 3  # accepted, delivered, bounced
    assert await suppressed(engine) == {"gone@example.com": ("global", "bounce", "hardbounce", "events")}


async def test_a_soft_bounce_counts_as_bounced_and_suppresses_nothing(engine: AsyncEngine) -> None:
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    delivery_id = await sent_through_loops(engine, clock, "full@example.com")
    taken = await intake(engine, clock, metrics).take(event("email.softBounced", "full@example.com", clock.now() + 5,
                                                            "msg_soft"))  # fmt: skip
    assert (taken.result, taken.effect) == ("applied", "bounced")
    assert await state_of(engine, delivery_id) == "bounced"
    [detail] = [r[0] for r in await rows(engine, sa.select(events.c.detail).where(events.c.type == "bounced"))]
    assert (detail["reason"], detail["bounce_class"]) == ("softbounce", "soft")
    await drained(outbox(engine, clock, metrics), 3)
    assert await suppressed(engine) == {}


async def test_a_spam_report_is_a_complaint_and_an_unsubscribe_suppresses_the_stream(engine: AsyncEngine) -> None:
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    spam_id = await sent_through_loops(engine, clock, "angry@example.com")
    news_id = await sent_through_loops(engine, clock, "reader@example.com", stream="newsletter")
    store = intake(engine, clock, metrics)
    spam = await store.take(event("email.spamReported", "angry@example.com", clock.now() + 1, "msg_spam"))
    unsub = await store.take(event("email.unsubscribed", "READER@example.com", clock.now() + 1, "msg_unsub"))
    assert (spam.effect, spam.delivery_id, unsub.effect, unsub.delivery_id) == (
        "complained", spam_id, "unsubscribed", news_id)
    # The deliveries stand: they were delivered.
    assert (await state_of(engine, spam_id), await state_of(engine, news_id)) == ("delivered", "delivered")
    found = await rows(engine, sa.select(events.c.type, events.c.delivery_id, events.c.recipient, events.c.detail)
                       .where(events.c.type.in_(["complained", "unsubscribed"])).order_by(events.c.id))  # fmt: skip
    assert [(r[0], r[1], r[2]) for r in found] == [("complained", spam_id, "angry@example.com"),
                                                   ("unsubscribed", news_id, "reader@example.com")]  # fmt: skip
    assert found[1][3] == {"scope": "stream:newsletter", "source": "unsubscribe"}
    # The unsubscribe is in the list at once; the complaint once the consumer read it.
    assert await suppressed(engine) == {"reader@example.com": ("stream:newsletter", "unsubscribe", "loops", "loops")}
    await drained(outbox(engine, clock, metrics), 6)
    assert (await suppressed(engine))["angry@example.com"] == ("global", "complaint", "feedback", "events")


async def test_unmatched_events_are_recorded_and_still_feed_the_list_without_events(engine: AsyncEngine) -> None:
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    store = intake(engine, clock, metrics)
    now = clock.now()
    results = [
        await store.take(event("email.hardBounced", "Dead@example.com", now, "u1")),
        await store.take(event("email.spamReported", "spam@example.com", now, "u2", source_type="campaign")),
        await store.take(event("email.unsubscribed", "bye@example.com", now, "u3", source_type="loop")),
        await store.take(event("email.softBounced", "soft@example.com", now, "u4")),
        await store.take(event("email.delivered", "fine@example.com", now, "u5")),
    ]
    assert [(t.result, t.effect) for t in results] == [
        ("unmatched", "suppressed"), ("unmatched", "suppressed"), ("unmatched", "suppressed"),
        ("unmatched", "none"), ("unmatched", "none")]  # fmt: skip
    assert await suppressed(engine) == {
        "dead@example.com": ("global", "bounce", "hardbounce", "loops"),
        "spam@example.com": ("global", "complaint", "feedback", "loops"),
        "bye@example.com": ("global", "unsubscribe", "loops", "loops"),
    }  # fmt: skip
    assert await count(engine, events) == 0
    recorded = await rows(engine, sa.select(loops_events.c.outcome, loops_events.c.effect, loops_events.c.delivery_id)
                          .order_by(loops_events.c.id))  # fmt: skip
    assert [tuple(r) for r in recorded] == [(t.result, t.effect, None) for t in results]


async def test_an_unknown_event_is_stored_and_ignored(engine: AsyncEngine) -> None:
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    delivery_id = await sent_through_loops(engine, clock, "ada@example.com")
    store = intake(engine, clock, metrics)
    taken = await store.take(event("email.opened", "ada@example.com", clock.now() + 1, "o1"))
    assert (taken.result, taken.effect, taken.delivery_id) == ("ignored", "none", None)
    [row] = await rows(engine, sa.select(loops_events.c.event_name, loops_events.c.outcome, loops_events.c.payload))
    assert (row[0], row[1], row[2]["eventName"]) == ("email.opened", "ignored", "email.opened")
    assert await state_of(engine, delivery_id) == "delivered"
    assert await count(engine, events, events.c.type.not_in(["accepted", "delivered"])) == 0
    assert await suppressed(engine) == {}
