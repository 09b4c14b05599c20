"""The delivery worker with real transports: a smarthost (aiosmtpd on 127.0.0.1 with STARTTLS and
AUTH from trustme) and the capture directory. Per-recipient outcomes, retries, expiry, dead
messages, leases and connection reuse."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.config import DeliverySettings
from postroom.core.clock import FakeClock
from postroom.core.types import Submission
from postroom.delivery.transport import CaptureTransport, client_tls_context, smarthost_transport
from postroom.delivery.worker import DeliveryWorker, WorkerOptions
from postroom.metrics import Metrics
from postroom.queue.models import QueuedMessage
from postroom.queue.retry import RetryPolicy
from postroom.queue.sql_store import SqlQueueStore
from postroom.queue.views import SqlQueueViews
from tests.conftest import Tls
from tests.support import claim, SinkHandler

CONTENT = b"From: app@postroom.test\r\nTo: a@example.com\r\nSubject: hi\r\n\r\nh\xc3\xa9llo\r\n"


class CountingSink(SinkHandler):
    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.sessions = 0
        self.delay = 0.0

    async def handle_EHLO(self, server: SMTP, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:  # fmt: skip
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


async def sink_server(handler: SinkHandler, tls: Tls | None = None, auth: tuple[str, str] | None = None
                      ) -> tuple[asyncio.Server, int]:  # fmt: skip
    context = None
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert, tls.key)

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and auth is not None and (
            data.login.decode(), data.password.decode()) == auth  # fmt: skip
        return AuthResult(success=ok)

    def factory() -> SMTP:
        return SMTP(handler, hostname="relay.test", decode_data=False, tls_context=context,
                    require_starttls=context is not None, auth_required=auth is not None,
                    authenticator=authenticator if auth else None)  # fmt: skip

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def delivery_settings(port: int, **overrides: Any) -> DeliverySettings:
    values: dict[str, Any] = {"mode": "smarthost", "smarthost": f"127.0.0.1:{port}", "smarthost_tls": "none",
                              "connect_timeout": 5, "command_timeout": 10}  # fmt: skip
    return DeliverySettings(**{**values, **overrides})


def make_worker(engine: AsyncEngine, transport: Any, clock: FakeClock, registry: CollectorRegistry,
                **options: Any) -> DeliveryWorker:  # fmt: skip
    return DeliveryWorker(
        SqlQueueStore(engine), {"inhouse": transport}, RetryPolicy(base=60, cap=3600, max_age=3 * 3600), clock,
        Metrics(registry), WorkerOptions(owner=options.pop("owner", "w1"), **options),
        draw=lambda: 0.5,
    )  # fmt: skip


async def queue(engine: AsyncEngine, clock: FakeClock, *recipients: str, content: bytes = CONTENT) -> str:
    ids = await SqlQueueStore(engine).insert_many(
        [Submission("app@postroom.test", recipients, content, "api")], clock.now()
    )
    return ids[0]


async def states(engine: AsyncEngine, message_id: str) -> dict[str, str]:
    detail = await SqlQueueViews(engine).show(message_id)
    return {d.recipient: d.state for d in detail.deliveries}


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """Delivery does not depend on the engine (the store tests run on both, and the scale-out
    test delivers from PostgreSQL), so these run on SQLite only."""
    from postroom.config import DatabaseSettings
    from postroom.store import schema
    from postroom.store.engine import create_engine

    engine = create_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"))
    await schema.upgrade(engine)
    yield engine
    await engine.dispose()


async def test_smarthost_with_starttls_and_auth_delivers(sqlite_engine: AsyncEngine, tls: Tls) -> None:
    handler = CountingSink()
    server, port = await sink_server(handler, tls=tls, auth=("relay-user", "relay-pass"))
    clock, registry = FakeClock(), CollectorRegistry()
    settings = delivery_settings(port, smarthost_tls="required", smarthost_username="relay-user",
                                 smarthost_password="relay-pass")  # fmt: skip
    transport = smarthost_transport(settings, "mail.postroom.test", tls.client)  # trusts trustme's CA
    try:
        message_id = await queue(sqlite_engine, clock, "a@example.com", "b@example.com")
        worker = make_worker(sqlite_engine, transport, clock, registry)
        assert await worker.drain() == 2
        await transport.close()
    finally:
        server.close()
    assert await states(sqlite_engine, message_id) == {"a@example.com": "delivered", "b@example.com": "delivered"}
    assert len(handler.messages) == 1  # one transaction for both recipients
    assert handler.messages[0].content == CONTENT  # byte for byte, 8-bit body included
    assert registry.get_sample_value("postroom_delivered_total",
                                     {"stream": "transactional", "route": "inhouse"}) == 2  # fmt: skip


async def test_required_tls_against_a_relay_without_starttls_defers(sqlite_engine: AsyncEngine) -> None:
    handler = CountingSink()
    server, port = await sink_server(handler)
    clock = FakeClock()
    transport = smarthost_transport(delivery_settings(port, smarthost_tls="required"), "h", client_tls_context(True))
    try:
        message_id = await queue(sqlite_engine, clock, "a@example.com")
        await make_worker(sqlite_engine, transport, clock, CollectorRegistry()).drain()
        await transport.close()
    finally:
        server.close()
    assert await states(sqlite_engine, message_id) == {"a@example.com": "deferred"}
    assert handler.messages == []  # never sent in clear


async def test_per_recipient_outcomes_from_one_transaction(sqlite_engine: AsyncEngine) -> None:
    handler = CountingSink(replies={"gone@example.com": "550 5.1.1 no such user",
                                    "busy@example.com": "451 4.7.1 try later"})  # fmt: skip
    server, port = await sink_server(handler)
    clock, registry = FakeClock(), CollectorRegistry()
    transport = smarthost_transport(delivery_settings(port), "h", client_tls_context(True))
    try:
        message_id = await queue(sqlite_engine, clock, "ok@example.com", "gone@example.com", "busy@example.com")
        await make_worker(sqlite_engine, transport, clock, registry).drain()
        await transport.close()
    finally:
        server.close()
    assert await states(sqlite_engine, message_id) == {
        "ok@example.com": "delivered", "gone@example.com": "bounced", "busy@example.com": "deferred"}
    detail = await SqlQueueViews(sqlite_engine).show(message_id)
    replies = {d.recipient: d.last_reply for d in detail.deliveries}
    assert replies["gone@example.com"] == "550 5.1.1 no such user"
    busy = next(d for d in detail.deliveries if d.recipient == "busy@example.com")
    assert busy.next_attempt_at == pytest.approx(clock.now() + 60 * 0.75)  # base 60, draw 0.5
    assert registry.get_sample_value("postroom_delivery_attempts_total", {"result": "bounced"}) == 1


async def test_unreachable_relay_defers_then_delivers_when_it_returns(sqlite_engine: AsyncEngine) -> None:
    clock = FakeClock()
    handler = CountingSink()
    server, port = await sink_server(handler)
    server.close()
    await server.wait_closed()  # nothing listens on `port` now
    transport = smarthost_transport(delivery_settings(port), "h", client_tls_context(True))
    worker = make_worker(sqlite_engine, transport, clock, CollectorRegistry())
    message_id = await queue(sqlite_engine, clock, "a@example.com")
    assert await worker.drain() == 1
    detail = await SqlQueueViews(sqlite_engine).show(message_id)
    assert detail.deliveries[0].state == "deferred"
    assert "127.0.0.1" in (detail.deliveries[0].last_reply or "")
    assert await worker.drain() == 0  # not due yet
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(handler, hostname="relay.test", decode_data=False), "127.0.0.1", port)
    try:
        clock.advance(3600)
        assert await worker.drain() == 1
        await transport.close()
    finally:
        server.close()
    assert await states(sqlite_engine, message_id) == {"a@example.com": "delivered"}
    assert (await SqlQueueViews(sqlite_engine).show(message_id)).deliveries[0].attempts == 2


async def test_deferral_past_max_age_expires(sqlite_engine: AsyncEngine) -> None:
    handler = CountingSink(replies={"busy@example.com": "452 4.2.2 mailbox full"})
    server, port = await sink_server(handler)
    clock, registry = FakeClock(), CollectorRegistry()
    transport = smarthost_transport(delivery_settings(port), "h", client_tls_context(True))
    worker = make_worker(sqlite_engine, transport, clock, registry)
    try:
        message_id = await queue(sqlite_engine, clock, "busy@example.com")
        for _ in range(20):
            await worker.drain()
            if (await states(sqlite_engine, message_id))["busy@example.com"] != "deferred":
                break
            clock.advance(3600)
        await transport.close()
    finally:
        server.close()
    detail = await SqlQueueViews(sqlite_engine).show(message_id)
    assert detail.deliveries[0].state == "expired"
    assert detail.deliveries[0].last_reply.startswith("expired after")
    assert registry.get_sample_value("postroom_bounced_total", {"stream": "transactional", "route": "inhouse",
                                                              "bounce_class": "soft", "reason": "expired"}) == 1


async def test_a_message_that_crashes_the_pipeline_is_parked_dead_and_can_be_retried(
    sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    clock, registry = FakeClock(), CollectorRegistry()
    transport = CaptureTransport(tmp_path / "out")

    async def explode(message: QueuedMessage) -> bytes:
        raise RuntimeError("signer blew up")

    broken = DeliveryWorker(SqlQueueStore(sqlite_engine), {"inhouse": transport}, RetryPolicy(), clock, Metrics(registry),
                            WorkerOptions(owner="w1"), prepare=explode)  # fmt: skip
    message_id = await queue(sqlite_engine, clock, "a@example.com")
    assert await broken.drain() == 1
    detail = await SqlQueueViews(sqlite_engine).show(message_id)
    assert detail.deliveries[0].state == "dead"
    assert detail.error == "RuntimeError: signer blew up"
    assert registry.get_sample_value("postroom_dead_total") == 1
    assert await broken.drain() == 0  # parked, not retried hot
    assert await SqlQueueStore(sqlite_engine).retry(clock.now(), message_id) == 1
    healthy = make_worker(sqlite_engine, transport, clock, CollectorRegistry())
    assert await healthy.drain() == 1
    assert await states(sqlite_engine, message_id) == {"a@example.com": "delivered"}
    assert (tmp_path / "out" / f"{message_id}.eml").read_bytes() == CONTENT


async def test_connections_are_reused_up_to_the_cap(sqlite_engine: AsyncEngine) -> None:
    handler = CountingSink()
    server, port = await sink_server(handler)
    clock = FakeClock()
    transport = smarthost_transport(delivery_settings(port, concurrency=1, messages_per_connection=3),
                                   "h", client_tls_context(True))  # fmt: skip
    try:
        for n in range(10):
            await queue(sqlite_engine, clock, f"r{n}@example.com")
        assert await make_worker(sqlite_engine, transport, clock, CollectorRegistry()).drain() == 10
        await transport.close()
    finally:
        server.close()
    assert len(handler.messages) == 10
    assert handler.sessions == 4  # 3 + 3 + 3 + 1


async def test_leases_are_extended_while_a_slow_send_is_in_flight(sqlite_engine: AsyncEngine) -> None:
    from postroom.core.clock import SystemClock

    handler = CountingSink()
    handler.delay = 1.5
    server, port = await sink_server(handler)
    clock = SystemClock()
    transport = smarthost_transport(delivery_settings(port), "h", client_tls_context(True))
    store = SqlQueueStore(sqlite_engine)
    message_id = (await store.insert_many([Submission("app@postroom.test", ("a@example.com",), CONTENT, "api")],
                                          clock.now()))[0]  # fmt: skip
    worker = DeliveryWorker(store, {"inhouse": transport}, RetryPolicy(), clock, Metrics(CollectorRegistry()),
                            WorkerOptions(owner="slow", lease_seconds=0.6, poll_interval=0.05))  # fmt: skip
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.sleep(1.0)  # past the first lease, inside the slow DATA
        stolen = await claim(store, "thief", 10, clock.now(), 60)
        assert stolen == [], "a live, extended lease must not be reaped or claimed"
        for _ in range(100):
            if (await states(sqlite_engine, message_id))["a@example.com"] == "delivered":
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        server.close()
    assert await states(sqlite_engine, message_id) == {"a@example.com": "delivered"}
    assert len(handler.messages) == 1


async def test_recipients_at_several_domains_go_to_the_smarthost_in_one_transaction(
    sqlite_engine: AsyncEngine,
) -> None:
    handler = CountingSink()
    server, port = await sink_server(handler)
    clock = FakeClock()
    transport = smarthost_transport(delivery_settings(port), "h", client_tls_context(True))
    try:
        message_id = await queue(sqlite_engine, clock, "a@example.com", "b@example.net", "c@example.org")
        assert await make_worker(sqlite_engine, transport, clock, CollectorRegistry()).drain() == 3
        await transport.close()
    finally:
        server.close()
    assert set((await states(sqlite_engine, message_id)).values()) == {"delivered"}
    [received] = handler.messages  # one copy, as Postfix sends it through a relayhost
    assert sorted(received.recipients) == ["a@example.com", "b@example.net", "c@example.org"]


async def test_opportunistic_tls_to_a_smarthost_that_fails_verification_is_not_sent_in_clear(
    sqlite_engine: AsyncEngine, tls: Tls
) -> None:
    handler = CountingSink()
    server, port = await sink_server(handler, tls=tls)  # offers STARTTLS with trustme's certificate
    clock = FakeClock()
    settings = delivery_settings(port, smarthost_tls="opportunistic", smarthost_verify=True)
    untrusting = client_tls_context(True)  # the system CAs: trustme's CA is not among them
    transport = smarthost_transport(settings, "h", untrusting)
    try:
        message_id = await queue(sqlite_engine, clock, "a@example.com")
        await make_worker(sqlite_engine, transport, clock, CollectorRegistry()).drain()
        await transport.close()
    finally:
        server.close()
    assert await states(sqlite_engine, message_id) == {"a@example.com": "deferred"}
    assert handler.messages == []
    detail = await SqlQueueViews(sqlite_engine).show(message_id)
    assert "certificate" in (detail.deliveries[0].last_reply or "").lower()
