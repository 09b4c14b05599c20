"""PostHog capture with the real `posthog` SDK against a local server speaking PostHog's legacy
batch endpoint (`POST /batch/`, gzip, `{"api_key", "batch": [...]}`): events are sent batched,
once per event id (the same uuid on a resend), and a PostHog that fails or is unreachable leaves
the cursor where it was, costs only the capture task, and never holds up mail."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.config import DatabaseSettings
from postroom.core.clock import FakeClock
from postroom.metrics import Metrics
from postroom.sources.posthog.capture import CaptureFailed, PostHogCapture, event_uuid
from postroom.sources.posthog.settings import PostHogCaptureSettings
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import WriteGate, create_engine
from postroom.store.tables import events, messages
from tests.conftest import running
from tests.support import make_settings, wait_until

API_KEY = "phc_test_project_key"


@dataclass
class FakePostHog:
    url: str = ""
    mode: str = "ok"  # ok, fail (503)
    batches: list[list[dict[str, Any]]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    async def batch(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if raw[:2] == b"\x1f\x8b":  # aiohttp did not decode Content-Encoding: gzip itself
            raw = gzip.decompress(raw)
        body = json.loads(raw)
        if self.mode == "fail":
            return web.json_response({"error": "down"}, status=503)
        self.keys.append(body["api_key"])
        self.batches.append(body["batch"])
        return web.json_response({"status": 1})

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for b in self.batches for e in b]


@contextlib.asynccontextmanager
async def fake_posthog() -> AsyncIterator[FakePostHog]:
    server = FakePostHog()
    app = web.Application()
    app.router.add_post("/batch/", server.batch)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        yield server
    finally:
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def gate(engine: AsyncEngine) -> Iterator[WriteGate]:
    gate = WriteGate.for_database(DatabaseSettings(url=engine.url.render_as_string(hide_password=False)))
    yield gate
    gate.close()


async def add_events(engine: AsyncEngine, message_id: str, *kinds: str) -> list[int]:
    async with engine.begin() as conn:
        await conn.execute(messages.insert().values(
            id=message_id, created_at=time.time(), source="api", mail_from="a@postroom.test", stream="news",
            route="inhouse", tags=[], size=1, content=b"x", template_id="digest", template_version=3))  # fmt: skip
        ids = []
        for kind in kinds:
            detail = {"reason": "userunknown", "bounce_class": "hard"} if kind == "bounced" else {}
            result = await conn.execute(events.insert().values(
                at=time.time(), type=kind, message_id=message_id, delivery_id=1, recipient="Ann@Example.com",
                detail={"reply": "x", **detail}).returning(events.c.id))  # fmt: skip
            ids.append(int(result.scalar_one()))
        return ids


def capture(engine: AsyncEngine, gate: WriteGate, host: str, **settings: Any) -> tuple[PostHogCapture, Metrics]:
    metrics = Metrics(CollectorRegistry())
    values = {"enabled": True, "host": host, "api_key": API_KEY, "max_retries": 0, "timeout": 2.0, **settings}
    return PostHogCapture(engine, gate, FakeClock(), metrics, PostHogCaptureSettings(**values)), metrics


async def run_until_read(task: PostHogCapture, expected: int) -> int:
    """run_once until it has read `expected` events (PostgreSQL may show them a moment later)."""
    total = 0
    deadline = time.monotonic() + 20
    while total < expected and time.monotonic() < deadline:
        total += await task.run_once()
        if total < expected:
            await asyncio.sleep(0.05)
    return total


async def test_events_are_captured_batched_once_each(engine: AsyncEngine, gate: WriteGate) -> None:
    async with fake_posthog() as posthog:
        task, metrics = capture(engine, gate, posthog.url)
        assert await task.run_once() == 0  # the cursor starts at the end: no history
        ids = await add_events(engine, "M1", "accepted", "delivered", "bounced", "deferred")
        assert await run_until_read(task, 4) == 4
        assert await task.run_once() == 0
        await asyncio.to_thread(task._client.shutdown)
    assert posthog.keys and set(posthog.keys) == {API_KEY}
    assert len(posthog.batches) == 1  # one flush, one batch
    by_name = {e["event"]: e for e in posthog.events}
    assert set(by_name) == {"email delivered", "email bounced"}  # the default types only
    bounced = by_name["email bounced"]
    assert bounced["distinct_id"] == "Ann@Example.com" and bounced["uuid"] == event_uuid(ids[2])
    props = bounced["properties"]
    assert (props["reason"], props["bounce_class"], props["stream"], props["template"]) == (
        "userunknown", "hard", "news", "digest")
    assert props["recipient_domain"] == "example.com" and props["message_id"] == "M1"
    assert metrics.registry.get_sample_value("postroom_posthog_events_total", {"result": "sent"}) == 2
    assert metrics.registry.get_sample_value("postroom_posthog_events_total", {"result": "skipped"}) == 2


async def test_a_failing_posthog_keeps_the_cursor_and_the_batch_is_sent_again(engine: AsyncEngine,
                                                                             gate: WriteGate) -> None:  # fmt: skip
    async with fake_posthog() as posthog:
        task, metrics = capture(engine, gate, posthog.url)
        await task.run_once()
        posthog.mode = "fail"
        ids = await add_events(engine, "M1", "delivered")
        with pytest.raises(CaptureFailed, match="503|did not take"):
            for _ in range(200):  # until the event is readable (PostgreSQL) and the send fails
                if await task.run_once() == 0:
                    await asyncio.sleep(0.05)
        assert posthog.events == []
        posthog.mode = "ok"
        assert await task.run_once() == 1  # the same event again: at-least-once
        await asyncio.to_thread(task._client.shutdown)
    assert [e["uuid"] for e in posthog.events] == [event_uuid(ids[0])]
    assert metrics.registry.get_sample_value("postroom_posthog_events_total", {"result": "failed"}) == 1


async def test_an_unreachable_posthog_never_holds_up_mail(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, posthog_capture={
        "enabled": True, "host": f"http://127.0.0.1:{closed_port()}", "api_key": API_KEY, "max_retries": 1,
        "poll_interval": 0.1, "retry_max": 0.5, "event_types": ["accepted", "delivered"]})  # fmt: skip
    engine = create_engine(settings.database)
    try:
        from postroom.store import schema

        await schema.upgrade(engine)
        _, token = await SqlApiKeys(engine).create("sender", Role.SENDER, time.time())
    finally:
        await engine.dispose()
    async with running(settings) as daemon, aiohttp.ClientSession(daemon.http) as http:
        started = time.monotonic()
        for n in range(3):
            message = {"from": "app@postroom.test", "to": f"u{n}@example.com", "subject": "hi", "text": "x"}
            async with http.post("/v1/messages", json=message, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 202
        outbox = Path(settings.delivery.capture_dir)
        await wait_until(lambda: len(list(outbox.glob("*"))) >= 3, 10, what="mail delivered")
        assert time.monotonic() - started < 5
        await wait_until(lambda: daemon.metric("postroom_posthog_events_total", {"result": "failed"}) >= 1, 20,
                         what="a failed capture round")  # fmt: skip


async def test_capture_in_a_running_daemon(tmp_path: Path) -> None:
    async with fake_posthog() as posthog:
        settings = make_settings(tmp_path, posthog_capture={"enabled": True, "host": posthog.url, "api_key": API_KEY,
                                                            "poll_interval": 0.1})  # fmt: skip
        engine = create_engine(settings.database)
        try:
            from postroom.store import schema

            await schema.upgrade(engine)
            _, token = await SqlApiKeys(engine).create("sender", Role.SENDER, time.time())
        finally:
            await engine.dispose()
        async with running(settings) as daemon, aiohttp.ClientSession(daemon.http) as http:
            await asyncio.sleep(0.3)  # the capture cursor starts at the end of the stream
            message = {"from": "app@postroom.test", "to": "reader@example.com", "subject": "hi", "text": "x"}
            async with http.post("/v1/messages", json=message, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 202
            await wait_until(lambda: any(e["event"] == "email delivered" for e in posthog.events), 20,
                             what="the delivery captured")  # fmt: skip
        delivered = [e for e in posthog.events if e["event"] == "email delivered"]
        assert len(delivered) == 1 and delivered[0]["distinct_id"] == "reader@example.com"
