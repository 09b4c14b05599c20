"""Per-delivery routes and envelope senders: each recipient goes through the transport its route
names, a recipient with its own envelope sender (VERP) gets its own SMTP transaction, and every
copy carries the same single signing of the message."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.config import DatabaseSettings
from postroom.core.clock import FakeClock
from postroom.core.types import Submission
from postroom.delivery.transport import smarthost_transport
from postroom.delivery.worker import DeliveryWorker, WorkerOptions
from postroom.metrics import Metrics
from postroom.queue.models import QueuedMessage
from postroom.queue.retry import RetryPolicy
from postroom.queue.sql_store import SqlQueueStore
from postroom.queue.views import SqlQueueViews
from postroom.store import schema
from postroom.store.engine import create_engine
from tests.integration.test_delivery import CONTENT, CountingSink, delivery_settings, sink_server

SIGNATURE = b"DKIM-Signature: v=1; a=ed25519-sha256; d=postroom.test; s=t; b=signed-once\r\n"


async def test_routes_and_return_paths_per_recipient(tmp_path: Path) -> None:
    engine = create_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"))
    await schema.upgrade(engine)
    inhouse, other = CountingSink(), CountingSink()
    inhouse_server, inhouse_port = await sink_server(inhouse)
    other_server, other_port = await sink_server(other)
    signings: list[str] = []

    async def sign_once(message: QueuedMessage) -> bytes:
        signings.append(message.id)
        return SIGNATURE + message.content

    clock, registry = FakeClock(), CollectorRegistry()
    transports = {
        "inhouse": smarthost_transport(delivery_settings(inhouse_port), "mail.postroom.test", None),  # type: ignore[arg-type]
        "other": smarthost_transport(delivery_settings(other_port), "mail.postroom.test", None),  # type: ignore[arg-type]
    }
    submission = Submission(
        "app@postroom.test",
        ("a@example.com", "b@example.com", "c@example.com", "d@example.com"),
        CONTENT,
        "api",
        recipient_routes={"c@example.com": "other", "d@example.com": "nowhere"},
        return_paths={"b@example.com": "bounces+b-token@postroom.test"},
    )
    try:
        [message_id] = await SqlQueueStore(engine).insert_many([submission], clock.now())
        worker = DeliveryWorker(SqlQueueStore(engine), transports, RetryPolicy(), clock,
                                Metrics(registry), WorkerOptions(owner="w1"), prepare=sign_once)  # fmt: skip
        assert await worker.drain() == 4
    finally:
        inhouse_server.close()
        other_server.close()

    by_sender = {m.mail_from: m.recipients for m in inhouse.messages}
    assert by_sender == {"app@postroom.test": ["a@example.com"],
                         "bounces+b-token@postroom.test": ["b@example.com"]}  # fmt: skip
    assert [(m.mail_from, m.recipients) for m in other.messages] == [("app@postroom.test", ["c@example.com"])]
    assert signings == [message_id]  # one signing for every copy
    assert {m.content for m in (*inhouse.messages, *other.messages)} == {SIGNATURE + CONTENT}

    detail = await SqlQueueViews(engine).show(message_id)
    states = {d.recipient: (d.state, d.last_reply) for d in detail.deliveries}
    assert {r: s for r, (s, _) in states.items()} == {
        "a@example.com": "delivered", "b@example.com": "delivered", "c@example.com": "delivered",
        "d@example.com": "deferred",  # a route this daemon does not run: waits, never lost
    }  # fmt: skip
    assert states["d@example.com"][1] == "no transport for route 'nowhere' in this daemon"
    delivered = {route: registry.get_sample_value("postroom_delivered_total",
                                                  {"stream": "transactional", "route": route})
                 for route in ("inhouse", "other")}  # fmt: skip
    assert delivered == {"inhouse": 2.0, "other": 1.0}
    await engine.dispose()
