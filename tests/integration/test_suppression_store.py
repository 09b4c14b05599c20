"""The suppression list on both databases: upserts that never shorten an entry, erasure to a hash
that still blocks, and the event consumer's rules applied exactly once through the outbox
(hard bounces and complaints at once, soft ones after N within the window, sender-side never)."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.bounces.classify import reason_of_reply
from postroom.core.clock import FakeClock
from postroom.events.outbox import EventOutbox
from postroom.metrics import Metrics
from postroom.store.engine import WriteGate
from postroom.store.tables import events, suppressions
from postroom.suppression.model import NewEntry
from postroom.suppression.rules import SoftPolicy
from postroom.suppression.service import SuppressionConsumer, SuppressionService
from postroom.suppression.sql_store import SqlSuppressionStore

DAY = 86400.0


def service(engine: AsyncEngine, clock: FakeClock) -> SuppressionService:
    return SuppressionService(SqlSuppressionStore(engine), clock, Metrics(CollectorRegistry()))


async def test_entries_match_by_scope_and_case_and_are_never_shortened(engine: AsyncEngine) -> None:
    clock = FakeClock()
    list_ = service(engine, clock)
    await list_.add([NewEntry("Ada@Example.com", "stream:news", "manual", "asked", expires_at=clock.now() + DAY)])
    assert set(await list_.check(["ada@example.com", "bob@example.com"], "news")) == {"ada@example.com"}
    assert await list_.check(["ada@example.com"], "transactional") == {}
    # A permanent entry replaces a temporary one; a temporary one does not shorten a permanent one.
    await list_.add([NewEntry("ada@example.com", "stream:news", "bounce", "userunknown")])
    await list_.add([NewEntry("ada@example.com", "stream:news", "bounce", "mailboxfull", expires_at=clock.now() + 1)])
    [entry] = await list_.search()
    assert (entry.reason, entry.expires_at) == ("userunknown", None)
    # Expired entries stop matching.
    await list_.add([NewEntry("tmp@example.com", "global", "bounce", "mailboxfull", expires_at=clock.now() + 60)])
    assert await list_.check(["tmp@example.com"], "news")
    clock.advance(61)
    assert await list_.check(["tmp@example.com"], "news") == {}
    assert await list_.remove("ADA@example.com") == 1
    assert await list_.check(["ada@example.com"], "news") == {}


async def test_erasure_keeps_only_a_hash_that_still_blocks(engine: AsyncEngine) -> None:
    clock = FakeClock()
    list_ = service(engine, clock)
    await list_.add([NewEntry("gone@example.com", "global", "complaint", "abuse")])
    assert await list_.erase("Gone@example.com") == 1
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(suppressions.c.address_key, suppressions.c.address))).all()
    assert len(rows) == 1 and rows[0][1] is None and rows[0][0].startswith("sha256:")
    assert "gone" not in rows[0][0]
    found = await list_.check(["gone@example.com"], "transactional")
    assert found["gone@example.com"].erased and found["gone@example.com"].reason == "abuse"
    assert await list_.is_suppressed("GONE@example.com")
    assert await list_.lift("gone@example.com", "test")
    assert not await list_.is_suppressed("gone@example.com")


async def drained(outbox: EventOutbox, expected: int, timeout: float = 10.0) -> int:
    """Drain until `expected` events were handed over. On PostgreSQL the outbox reads only below
    the oldest transaction running on the server, which may be another client's for a moment."""
    total = 0
    deadline = asyncio.get_running_loop().time() + timeout
    while total < expected and asyncio.get_running_loop().time() < deadline:
        total += await outbox.drain()
        if total < expected:
            await asyncio.sleep(0.05)
    return total


def bounce(recipient: str, reason: str | None, at: float, kind: str = "bounced", **detail: Any) -> dict[str, Any]:
    body = {"reason": reason, "bounce_class": detail.pop("bounce_class", None), **detail} if reason else detail
    return {"at": at, "type": kind, "message_id": "m1", "delivery_id": 1, "recipient": recipient, "detail": body}


async def test_the_consumer_applies_the_rules_once(engine: AsyncEngine) -> None:
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    policy = SoftPolicy(limit=2, window=7 * DAY, lasts=30 * DAY)
    consumer = SuppressionConsumer(policy, metrics, reason_of_reply)
    gate = WriteGate(None)
    outbox = EventOutbox(engine, gate, clock, metrics, [consumer])
    now = clock.now()
    rows = [
        bounce("hard@example.com", "userunknown", now, bounce_class="hard", bounce_record_id=7),
        bounce("plaint@example.com", "feedback", now, kind="complained", bounce_class="none"),
        bounce("full@example.com", "mailboxfull", now, bounce_class="soft"),
        bounce("blocked@example.com", "blocked", now, bounce_class="soft"),
        bounce("old@example.com", "mailboxfull", now - 10 * DAY, bounce_class="soft"),
        bounce("old@example.com", "mailboxfull", now, bounce_class="soft"),
        # A synchronous refusal carries only the reply: read by its status code.
        bounce("sync@example.com", None, now, reply="550 5.1.1 <sync@example.com>: no such user"),
        bounce("later@example.com", "userunknown", now, kind="delivered"),
    ]
    async with engine.begin() as conn:
        await conn.execute(events.insert(), rows)
    assert await drained(outbox, len(rows)) == len(rows)
    list_ = service(engine, clock)
    found = {e.address: e for e in await list_.search()}
    assert set(found) == {"hard@example.com", "plaint@example.com", "sync@example.com"}
    assert (found["hard@example.com"].source, found["hard@example.com"].bounce_record_id) == ("bounce", 7)
    assert found["plaint@example.com"].source == "complaint"
    assert metrics.registry.get_sample_value("postroom_sender_reputation_bounces_total", {"reason": "blocked"}) == 1
    # The second mailboxfull within the window suppresses, for `lasts`.
    async with engine.begin() as conn:
        await conn.execute(events.insert(), [bounce("full@example.com", "mailboxfull", now + 60, bounce_class="soft")])
    assert await drained(outbox, 1) == 1
    entry = {e.address: e for e in await list_.search()}["full@example.com"]
    assert entry.expires_at == now + 60 + 30 * DAY and entry.reason.startswith("mailboxfull")
    assert await outbox.drain() == 0  # consumed once
