"""Loops as a delivery route, end to end on both databases: a queued delivery whose route is
"loops" goes through the worker and `LoopsTransport` to a fake Loops on 127.0.0.1, and what Loops
answers is what the queue records (delivered, deferred no earlier than Retry-After, or failed with
Loops' message and the recipient not suppressed). Also: the data a message was rendered with
survives the queue on every store path, and Loops' rate limit holds across requests."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.bounces.classify import reason_of_reply
from postroom.config import DatabaseSettings
from postroom.core.clock import Clock, FakeClock, SystemClock
from postroom.core.compose import Attachment, Draft, compose
from postroom.core.types import LOOPS_ROUTE, Submission
from postroom.delivery.worker import DeliveryWorker, WorkerOptions
from postroom.events.outbox import EventOutbox
from postroom.loops.settings import LoopsSettings
from postroom.metrics import Metrics
from postroom.queue.committer import GroupCommitter
from postroom.queue.models import ClaimedDelivery, QueuedMessage
from postroom.queue.protocols import QueueStore
from postroom.queue.retry import RetryPolicy
from postroom.queue.sql_store import SqlQueueStore
from postroom.queue.sqlite_store import SqliteQueueStore
from postroom.queue.statements import Lease
from postroom.queue.views import SqlQueueViews
from postroom.ratelimit.table import RateTable
from postroom.shadow.loops_transport import build_loops_transport
from postroom.store.engine import WriteGate
from postroom.store.sqlite_writer import SqliteBatchWriter
from postroom.store.tables import messages
from postroom.suppression.rules import SoftPolicy
from postroom.suppression.service import SuppressionConsumer, SuppressionService
from postroom.suppression.sql_store import SqlSuppressionStore
from postroom.store import schema
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import create_engine
from postroom.templates.service import TemplateService
from postroom.templates.sql_store import SqlTemplateStore
from tests.conftest import running
from tests.integration.test_loops_api import RECEIPT
from tests.support import make_settings, wait_until
from tests.loops_fake import DUPLICATE, SERVER_ERROR, Answer, FakeLoops, fake_loops, rate_limited, refused

API_KEY = "loops-test-key"
TEMPLATES = {"welcome": "cltx-welcome", "report": "cltx-report"}
DATA = {"name": "Ada", "plan": "pro", "items": [{"sku": "a", "n": 2}]}


@pytest.fixture
async def loops() -> AsyncIterator[FakeLoops]:
    async with fake_loops() as fake:
        yield fake


def rendered_content(*files: Attachment) -> bytes:
    draft = Draft(sender="app@postroom.test", to=("a@example.com",), subject="Welcome", text="hi Ada",
                  html="<p>hi Ada</p>", attachments=files)  # fmt: skip
    return compose(draft, message_id="01JLOOPSROUTE00000000000000", hostname="postroom.test", now=1.75e9)


def templated(*recipients: str, template: str | None = "welcome", data: dict[str, Any] | None = None,
              content: bytes | None = None) -> Submission:  # fmt: skip
    return Submission(
        "app@postroom.test", recipients or ("a@example.com",), content or rendered_content(), "api",
        route=LOOPS_ROUTE,
        template=(template, 3) if template else None,
        template_data=(DATA if data is None else data) if template else None,
    )  # fmt: skip


class LoopsRoute:
    """A worker whose only transport is Loops (the fake), on `engine`."""

    def __init__(self, engine: AsyncEngine, url: str, clock: Clock, rate_limit: str = "10/s", timeout: float = 2.0):
        self.engine = engine
        self.clock = clock
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.store = SqlQueueStore(engine)
        self.session = aiohttp.ClientSession()
        settings = LoopsSettings(api_key=API_KEY, base_url=url, templates=TEMPLATES, rate_limit=rate_limit,
                                 timeout=timeout)  # fmt: skip
        self.table = RateTable.in_memory(clock.now)
        transport = build_loops_transport(settings, self.session, self.table, clock, self.metrics)
        self.worker = DeliveryWorker(self.store, {LOOPS_ROUTE: transport}, RetryPolicy(), clock, self.metrics,
                                     WorkerOptions(owner="loops-worker"))  # fmt: skip

    async def close(self) -> None:
        await self.session.close()
        self.table.close()

    async def deliveries(self, message_id: str) -> dict[str, tuple[str, str | None, float]]:
        detail = await SqlQueueViews(self.engine).show(message_id)
        return {d.recipient: (d.state, d.last_reply, d.next_attempt_at) for d in detail.deliveries}

    def requests(self, outcome: str) -> float | None:
        return self.registry.get_sample_value("postroom_loops_requests_total", {"outcome": outcome})


@pytest.fixture
async def route(engine: AsyncEngine, loops: FakeLoops) -> AsyncIterator[LoopsRoute]:
    route = LoopsRoute(engine, loops.url, FakeClock())
    try:
        yield route
    finally:
        await route.close()


async def test_a_loops_delivery_is_sent_with_its_template_data_files_and_key(route: LoopsRoute,
                                                                             loops: FakeLoops) -> None:
    content = rendered_content(Attachment("invoice.pdf", b"%PDF-1.7\x00\xff", "application/pdf"))
    [message_id] = await route.store.insert_many([templated(content=content)], route.clock.now())
    assert await route.worker.drain() == 1

    [sent] = loops.requests
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["Idempotency-Key"] == f"postroom-{message_id}-a@example.com"
    assert sent.body == {
        "transactionalId": "cltx-welcome", "email": "a@example.com", "dataVariables": DATA,
        "addToAudience": False,
        "attachments": [{"filename": "invoice.pdf", "contentType": "application/pdf",
                         "data": base64.b64encode(b"%PDF-1.7\x00\xff").decode()}],
    }  # fmt: skip
    state, reply, _ = (await route.deliveries(message_id))["a@example.com"]
    assert (state, reply) == ("delivered", "Loops 200: sent as cltx-welcome")
    assert route.requests("sent") == 1.0
    assert route.registry.get_sample_value("postroom_delivered_total",
                                           {"stream": "transactional", "route": "loops"}) == 1.0  # fmt: skip
    assert route.registry.get_sample_value("postroom_loops_request_seconds_count") == 1.0


async def test_a_server_error_is_retried_with_the_same_key_and_sends_once(route: LoopsRoute,
                                                                          loops: FakeLoops) -> None:
    loops.answer(SERVER_ERROR)
    [message_id] = await route.store.insert_many([templated()], route.clock.now())
    await route.worker.drain()
    state, reply, due = (await route.deliveries(message_id))["a@example.com"]
    assert (state, reply) == ("deferred", "Loops 500: Internal server error")
    assert due > route.clock.now()
    assert isinstance(route.clock, FakeClock)
    route.clock.advance(due - route.clock.now())
    await route.worker.drain()
    assert (await route.deliveries(message_id))["a@example.com"][0] == "delivered"
    keys = [r.headers["Idempotency-Key"] for r in loops.requests]
    assert keys == [f"postroom-{message_id}-a@example.com"] * 2
    assert (route.requests("retry"), route.requests("sent")) == (1.0, 1.0)


async def test_an_answer_lost_to_a_timeout_is_retried_and_loops_sends_once(engine: AsyncEngine,
                                                                            loops: FakeLoops) -> None:
    route = LoopsRoute(engine, loops.url, FakeClock(), timeout=0.3)
    try:
        # Loops takes the first request but answers too late; the retry is told the key was used.
        loops.answer(Answer(delay=1.0), DUPLICATE)
        [message_id] = await route.store.insert_many([templated()], route.clock.now())
        await route.worker.drain()
        state, reply, due = (await route.deliveries(message_id))["a@example.com"]
        assert (state, reply) == ("deferred", "Loops: no answer from Loops in time")
        assert isinstance(route.clock, FakeClock)
        route.clock.advance(due - route.clock.now())
        await route.worker.drain()
        state, reply, _ = (await route.deliveries(message_id))["a@example.com"]
        assert state == "delivered" and reply is not None and reply.startswith("Loops 409")
        assert len({r.headers["Idempotency-Key"] for r in loops.requests}) == 1 and len(loops.requests) == 2
    finally:
        await route.close()


async def test_a_used_idempotency_key_counts_as_delivered(route: LoopsRoute, loops: FakeLoops) -> None:
    loops.answer(DUPLICATE)
    [message_id] = await route.store.insert_many([templated()], route.clock.now())
    await route.worker.drain()
    state, reply, _ = (await route.deliveries(message_id))["a@example.com"]
    assert state == "delivered" and reply is not None and reply.startswith("Loops 409: sent before")
    assert route.requests("duplicate") == 1.0


async def test_a_refusal_fails_with_loops_message_and_suppresses_only_an_invalid_address(
    route: LoopsRoute, loops: FakeLoops, engine: AsyncEngine
) -> None:
    loops.answer(refused("Missing required dataVariables: plan"), refused("Invalid email address"))
    [message_id] = await route.store.insert_many([templated("a@example.com", "b@example.com")], route.clock.now())
    await route.worker.drain()
    found = await route.deliveries(message_id)
    assert found["a@example.com"][:2] == ("bounced", "Loops 400: Missing required dataVariables: plan")
    assert found["b@example.com"][:2] == ("bounced", "Loops 400: Invalid email address")
    assert route.requests("failed") == 2.0
    # The suppression consumer reads the bounced events: the invalid address is suppressed, the
    # recipient of a refusal about the data is not.
    clock = FakeClock()
    suppressions = SuppressionService(SqlSuppressionStore(engine), clock, route.metrics)
    consumer = SuppressionConsumer(SoftPolicy(3, 86400.0, 86400.0), route.metrics, reason_of_reply)
    outbox = EventOutbox(engine, WriteGate(None), clock, route.metrics, [consumer])
    deadline = time.monotonic() + 10
    while not await suppressions.search() and time.monotonic() < deadline:
        await outbox.drain()  # PostgreSQL: the outbox reads below the oldest running transaction
        await asyncio.sleep(0.05)
    assert [e.address for e in await suppressions.search()] == ["b@example.com"]


async def test_a_429_defers_no_earlier_than_retry_after(route: LoopsRoute, loops: FakeLoops) -> None:
    loops.answer(rate_limited(retry_after="600"))
    [message_id] = await route.store.insert_many([templated()], route.clock.now())
    await route.worker.drain()
    state, reply, due = (await route.deliveries(message_id))["a@example.com"]
    assert (state, reply) == ("deferred", "Loops 429: Rate limit exceeded.")
    # The retry policy alone would retry within a minute; Loops asked for ten minutes.
    assert due == pytest.approx(route.clock.now() + 600, abs=1)


async def test_a_template_without_a_loops_id_fails_without_asking_loops(route: LoopsRoute,
                                                                        loops: FakeLoops) -> None:
    ids = await route.store.insert_many([templated(template="unmapped"), templated(template=None)],
                                        route.clock.now())  # fmt: skip
    await route.worker.drain()
    assert loops.requests == []
    unmapped, composed = [(await route.deliveries(m))["a@example.com"] for m in ids]
    assert unmapped[:2] == ("bounced", "not sent through Loops: no Loops transactionalId for template "
                                       "unmapped ([loops.templates])")  # fmt: skip
    assert composed[0] == "bounced" and composed[1] is not None and "not rendered from a template" in composed[1]


async def test_loops_unreachable_defers_the_message(engine: AsyncEngine) -> None:
    async with fake_loops() as gone:
        url = gone.url  # a port that was Loops' and is closed now
    route = LoopsRoute(engine, url, FakeClock())
    try:
        [message_id] = await route.store.insert_many([templated("a@example.com", "b@example.com")],
                                                     route.clock.now())  # fmt: skip
        await route.worker.drain()
        found = await route.deliveries(message_id)
        assert {state for state, _, _ in found.values()} == {"deferred"}
        assert all(reply is not None and reply.startswith("Loops: cannot connect") for _, reply, _ in found.values())
        assert route.requests("retry") == 1.0  # the second recipient waited with the first
    finally:
        await route.close()


async def test_loops_rate_limit_holds(engine: AsyncEngine, loops: FakeLoops) -> None:
    route = LoopsRoute(engine, loops.url, SystemClock(), rate_limit="5/s")
    try:
        recipients = tuple(f"r{n}@example.com" for n in range(12))
        await route.store.insert_many([templated(*recipients[:6]), templated(*recipients[6:])],
                                      route.clock.now())  # fmt: skip
        started = time.monotonic()
        assert await route.worker.drain() == 12
        elapsed = time.monotonic() - started
    finally:
        await route.close()
    assert len(loops.requests) == 12
    # 5 at once (the bucket starts full), then one every 0.2 s: the 12th after 1.4 s at the earliest.
    assert elapsed >= 1.35
    arrivals = sorted(r.at for r in loops.requests)
    for n, at in enumerate(arrivals):  # the n-th (from 0) no earlier than (n - 4) intervals after the first
        assert at - arrivals[0] >= (n - 4) * 0.2 - 0.02
    assert route.registry.get_sample_value("postroom_loops_rate_limited_total") >= 7.0


# -- the data a message was rendered with, through the queue ---------------------------------

@pytest.fixture(params=["sqlalchemy", "sqlite-writer"])
def store(request: pytest.FixtureRequest, engine: AsyncEngine) -> Iterator[QueueStore]:
    """Both store paths: SQLAlchemy (both databases), the SQLite writer thread (SQLite only)."""
    settings = DatabaseSettings(url=str(engine.url))
    if request.param == "sqlalchemy":
        yield SqlQueueStore(engine, WriteGate.for_database(settings))
        return
    if engine.dialect.name != "sqlite":
        pytest.skip("the writer thread is SQLite's")
    writer = SqliteBatchWriter(settings)
    try:
        yield SqliteQueueStore(engine, writer, WriteGate.for_database(settings))
    finally:
        writer.close()


async def test_template_data_survives_the_queue(store: QueueStore, engine: AsyncEngine) -> None:
    clock = FakeClock()
    with_data, without = await store.insert_many([templated(data=DATA), templated(template=None)], clock.now())
    claimed, loaded = await store.claim_with_messages("w1", 10, clock.now(), 60.0)
    assert len(claimed) == 2
    assert (loaded[with_data].template_id, loaded[with_data].template_data) == ("welcome", DATA)
    assert (loaded[without].template_id, loaded[without].template_data) == (None, None)
    assert (await store.load_messages([with_data]))[with_data].template_data == DATA
    async with engine.connect() as conn:
        rows = dict((await conn.execute(sa.select(messages.c.id, messages.c.template_data))).all())
        nulls = (await conn.execute(sa.select(messages.c.id).where(messages.c.template_data.is_(None)))).all()
    assert rows == {with_data: DATA, without: None}
    assert [r[0] for r in nulls] == [without]  # SQL NULL, not a JSON null, on every path


class Taken:
    """A `Handoff` that keeps what the committer hands over."""

    def __init__(self) -> None:
        self.messages: list[QueuedMessage] = []

    def lease_for(self, deliveries: int) -> Lease | None:
        return Lease("w1", 2e9)

    def take(self, messages: list[QueuedMessage], claimed: list[ClaimedDelivery]) -> None:
        self.messages.extend(messages)


async def test_the_committers_handoff_carries_the_template_data(store: QueueStore) -> None:
    taken = Taken()
    clock = FakeClock()
    committer = GroupCommitter(store, clock, handoff=taken)
    stop = asyncio.Event()
    running = asyncio.create_task(committer.run(stop))
    await asyncio.sleep(0)  # one loop turn: `run` marks itself accepting before its first wait
    try:
        await committer.submit(templated(data={"code": 123456}))
    finally:
        stop.set()
        await running
    [message] = taken.messages
    assert (message.template_id, message.template_data) == ("welcome", {"code": 123456})
    assert json.loads(json.dumps(message.template_data)) == {"code": 123456}


# -- the daemon -----------------------------------------------------------------------------

async def test_the_daemon_keeps_template_data_and_sends_loops_mail_through_loops(
    tmp_path: Path, loops: FakeLoops
) -> None:
    settings = make_settings(tmp_path, loops={"api_key": API_KEY, "base_url": loops.url,
                                              "templates": {"receipt": "cltx-receipt"}})  # fmt: skip
    engine = create_engine(settings.database)
    await schema.upgrade(engine)
    token = (await SqlApiKeys(engine).create("admin", Role.ADMIN, time.time()))[1]
    templates = TemplateService(SqlTemplateStore(engine), SystemClock())
    made = await templates.create("receipt", RECEIPT, "test")
    await templates.publish("receipt", made.version)
    data = {"name": "Ada", "order": "A-17"}
    auth = {"Authorization": f"Bearer {token}"}
    try:
        async with running(settings) as daemon, aiohttp.ClientSession(daemon.http) as session:
            # Every path that renders a template stores the data it rendered with.
            loops_compatible = {"transactionalId": "cltx-receipt", "email": "a@example.com", "dataVariables": data}
            async with session.post("/api/v1/transactional", json=loops_compatible, headers=auth) as response:
                assert response.status == 200
            native = {"to": "b@example.com", "template": {"id": "receipt"}, "data": data}
            async with session.post("/v1/messages", json=native, headers=auth) as response:
                assert response.status == 202
            async with engine.connect() as conn:
                stored = (await conn.execute(sa.select(messages.c.template_id, messages.c.template_data))).all()
            assert [tuple(row) for row in stored] == [("receipt", data), ("receipt", data)]
            # Mail routed to Loops (the routing step's job; written here directly) goes to Loops.
            [message_id] = await SqlQueueStore(engine).insert_many(
                [templated(template="receipt", data=data)], time.time())
            await wait_until(lambda: loops.requests, timeout=10, what="a request to Loops")
            [sent] = loops.requests
            assert (sent.body["transactionalId"], sent.body["dataVariables"]) == ("cltx-receipt", data)
            assert sent.headers["Idempotency-Key"] == f"postroom-{message_id}-a@example.com"
    finally:
        await engine.dispose()
