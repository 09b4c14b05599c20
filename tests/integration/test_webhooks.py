"""Outbound webhooks against real databases and a real receiver on 127.0.0.1 that verifies every
request with the `standardwebhooks` library: events become one delivery per subscribed endpoint
exactly once, failures are retried with growing delays, an endpoint failing in a row is disabled,
replays send events again; and in a running daemon a receiver that hangs or fails never holds up
mail delivery."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.config import DatabaseSettings
from postroom.core.clock import FakeClock
from postroom.events import EventOutbox
from postroom.metrics import Metrics
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import WriteGate, read_only
from postroom.store.tables import events, messages, webhook_deliveries
from postroom.webhooks.consumer import WebhookConsumer
from postroom.webhooks.sender import WebhookSender, http_session
from postroom.webhooks.service import WebhookService
from postroom.webhooks.settings import WebhookSettings
from postroom.webhooks.store import SqlWebhookStore
from tests.conftest import running
from tests.support import make_settings, wait_until
from tests.webhook_receiver import Receiver, webhook_receiver


@pytest.fixture
def clock() -> FakeClock:
    # Near the real time: receivers check webhook-timestamp against their own clock (5 minutes).
    return FakeClock(time.time())


@pytest.fixture
def gate(engine: AsyncEngine) -> Iterator[WriteGate]:
    gate = WriteGate.for_database(DatabaseSettings(url=engine.url.render_as_string(hide_password=False)))
    yield gate
    gate.close()


class Rig:
    def __init__(self, engine: AsyncEngine, gate: WriteGate, clock: FakeClock, session: aiohttp.ClientSession,
                 **settings: Any):  # fmt: skip
        self.engine = engine
        self.clock = clock
        self.metrics = Metrics(CollectorRegistry())
        self.settings = WebhookSettings(**{"retry_jitter": 0.0, **settings})
        self.store = SqlWebhookStore(engine, gate)
        self.service = WebhookService(self.store, clock)
        self.outbox = EventOutbox(engine, gate, clock, self.metrics, [WebhookConsumer(clock)])
        self.sender = WebhookSender(self.store, session, self.settings, clock, self.metrics, random.Random(1))
        self.session = session

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    async def consume(self, expected: int) -> None:
        """Drain the outbox until `expected` delivery rows exist. On PostgreSQL an event is readable
        only once every older transaction on the server has ended (events.cursors), and other
        test runs share the server: one drain may come too early."""

        async def enough() -> bool:
            await self.outbox.drain()
            return len(await self.rows()) >= expected

        await wait_until(enough, 20, what=f"{expected} webhook deliveries enqueued")

    async def rows(self) -> list[dict[str, Any]]:
        async with read_only(self.engine).connect() as conn:
            found = await conn.execute(sa.select(webhook_deliveries).order_by(webhook_deliveries.c.id))
            return [dict(r) for r in found.mappings()]


@pytest.fixture
async def rig(engine: AsyncEngine, gate: WriteGate, clock: FakeClock) -> AsyncIterator[Rig]:
    session = http_session(WebhookSettings(timeout=1.0))
    try:
        yield Rig(engine, gate, clock, session, timeout=1.0)
    finally:
        await session.close()


async def add_message(engine: AsyncEngine, message_id: str, at: float, *kinds: str,
                      stream: str = "transactional", template: str | None = "welcome") -> list[int]:  # fmt: skip
    """A stored message and events of the given types about it; return the event ids."""
    async with engine.begin() as conn:
        await conn.execute(messages.insert().values(
            id=message_id, created_at=at, source="api", mail_from="app@postroom.test", stream=stream,
            route="inhouse", tags=["signup"], size=10, content=b"x", template_id=template, template_version=1,
        ))  # fmt: skip
        ids = []
        for kind in kinds:
            detail: dict[str, Any] = {"reply": "250 ok"} if kind != "bounced" else {
                "reply": "550 5.1.1 no such user", "reason": "userunknown", "bounce_class": "hard"}
            result = await conn.execute(events.insert().values(
                at=at, type=kind, message_id=message_id, delivery_id=None if kind == "accepted" else 1,
                recipient=None if kind == "accepted" else "user@example.com", detail=detail,
            ).returning(events.c.id))  # fmt: skip
            ids.append(int(result.scalar_one()))
        return ids


async def test_events_become_signed_webhooks_exactly_once(rig: Rig, clock: FakeClock) -> None:
    async with webhook_receiver() as receiver:
        endpoint, secret = await rig.service.create(receiver.url, ["delivered", "bounced", "failed"])
        receiver.secret = secret
        other, _ = await rig.service.create(receiver.url, ["queued"])
        await add_message(rig.engine, "M1", clock.now(), "accepted", "deferred", "delivered")
        await add_message(rig.engine, "M2", clock.now(), "accepted", "bounced", "held", "expired")
        await rig.consume(5)
        await rig.outbox.drain()  # nothing new: no second row for anything
        rows = await rig.rows()
        mine = sorted(r["type"] for r in rows if r["endpoint_id"] == endpoint.id)
        assert mine == ["bounced", "delivered", "failed"]
        assert sorted(r["type"] for r in rows if r["endpoint_id"] == other.id) == ["queued", "queued"]

        assert await rig.sender.drain() == 5
        assert await rig.sender.drain() == 0
        to_me = [r for r in receiver.requests if r.payload["type"] != "email.queued"]
        assert len(to_me) == 3 and all(r.verified for r in to_me)  # verified by standardwebhooks
        bounced = next(r.payload for r in to_me if r.payload["type"] == "email.bounced")
        assert bounced["data"]["message_id"] == "M2"
        assert bounced["data"]["reason"] == "userunknown" and bounced["data"]["bounce_class"] == "hard"
        assert bounced["data"]["stream"] == "transactional" and bounced["data"]["template"] == "welcome"
        assert bounced["data"]["tags"] == ["signup"]
        assert {r["state"] for r in await rig.rows()} == {"delivered"}
        assert rig.metric("postroom_webhook_deliveries_total", result="delivered") == 5


async def test_a_failing_endpoint_is_retried_with_backoff_then_disabled(engine: AsyncEngine, gate: WriteGate,
                                                                       clock: FakeClock) -> None:  # fmt: skip
    async with webhook_receiver("fail") as receiver, http_session(WebhookSettings()) as session:
        rig = Rig(engine, gate, clock, session, retry_base=10.0, retry_max=25.0, disable_after=4, max_attempts=10)
        endpoint, receiver.secret = await rig.service.create(receiver.url, ["*"])
        await add_message(engine, "M1", clock.now(), "delivered")
        await rig.consume(1)
        waits = []
        for _ in range(4):
            assert await rig.sender.drain() == 1
            row = (await rig.rows())[0]
            waits.append(round(row["next_attempt_at"] - clock.now()))
            assert await rig.sender.drain() == 0  # not due yet
            clock.advance(row["next_attempt_at"] - clock.now())
        assert waits[:3] == [10, 20, 25]  # doubling, capped at retry_max
        assert len(receiver.requests) == 4 and all(r.verified for r in receiver.requests)
        disabled = await rig.service.show(endpoint.id)
        assert not disabled.enabled and disabled.failure_streak == 4
        assert "4 failed attempts in a row" in (disabled.disabled_reason or "")
        assert rig.metric("postroom_webhook_endpoints_disabled_total") == 1
        assert rig.metric("postroom_webhook_deliveries_total", result="retry") == 4
        clock.advance(3600)
        assert await rig.sender.drain() == 0  # disabled: nothing is sent
        row = (await rig.rows())[0]
        assert row["state"] == "pending" and row["attempts"] == 4 and row["last_status"] == 500

        receiver.mode = "ok"
        await rig.service.set_enabled(endpoint.id, True)
        assert await rig.sender.drain() == 1
        assert (await rig.rows())[0]["state"] == "delivered"
        assert (await rig.service.show(endpoint.id)).failure_streak == 0


async def test_a_delivery_fails_after_its_last_attempt(engine: AsyncEngine, gate: WriteGate,
                                                      clock: FakeClock) -> None:  # fmt: skip
    async with webhook_receiver("fail") as receiver, http_session(WebhookSettings()) as session:
        rig = Rig(engine, gate, clock, session, retry_base=1.0, max_attempts=2)
        _, receiver.secret = await rig.service.create(receiver.url, ["delivered"])
        await add_message(engine, "M1", clock.now(), "delivered")
        await rig.consume(1)
        await rig.sender.drain()
        clock.advance(5)
        await rig.sender.drain()
        row = (await rig.rows())[0]
        assert row["state"] == "failed" and row["attempts"] == 2
        assert rig.metric("postroom_webhook_deliveries_total", result="failed") == 1


async def test_a_hanging_endpoint_times_out_and_is_retried(engine: AsyncEngine, gate: WriteGate,
                                                          clock: FakeClock) -> None:  # fmt: skip
    async with webhook_receiver("hang") as receiver, http_session(WebhookSettings(timeout=0.3)) as session:
        rig = Rig(engine, gate, clock, session, timeout=0.3)
        _, receiver.secret = await rig.service.create(receiver.url, ["delivered"])
        await add_message(engine, "M1", clock.now(), "delivered")
        await rig.consume(1)
        started = time.monotonic()
        assert await rig.sender.drain() == 1
        assert time.monotonic() - started < 3
        row = (await rig.rows())[0]
        assert row["state"] == "pending" and row["last_error"] == "timed out" and row["last_status"] is None
        assert row["next_attempt_at"] > clock.now()


async def test_replay_by_event_id_and_by_time_range(rig: Rig, clock: FakeClock) -> None:
    async with webhook_receiver() as receiver:
        first = await add_message(rig.engine, "OLD", clock.now() - 7200, "delivered")
        second = await add_message(rig.engine, "NEW", clock.now() - 60, "delivered", "bounced")
        await rig.outbox.drain()  # no endpoint yet: nothing enqueued
        assert await rig.rows() == []
        endpoint, receiver.secret = await rig.service.create(receiver.url, ["delivered"])
        assert await rig.service.replay(event_ids=first) == 1
        progress: list[tuple[int, int]] = []
        count = await rig.service.replay(since=clock.now() - 3600, until=clock.now(), endpoint_id=endpoint.id,
                                         progress=lambda done, rows: progress.append((done, rows)))  # fmt: skip
        assert count == 1  # the bounce is not a type it subscribes to
        assert progress == [(2, 1)]
        await rig.sender.drain()
        got = sorted((r.payload["data"]["message_id"], r.headers["webhook-id"]) for r in receiver.requests)
        assert got == [("NEW", f"msg_{second[0]}"), ("OLD", f"msg_{first[0]}")]
        assert all(r.verified for r in receiver.requests)


async def test_endpoint_and_subscription_checks(rig: Rig) -> None:
    from postroom.core.errors import InvalidMessageError, NotFoundError

    with pytest.raises(InvalidMessageError, match="unknown event type"):
        await rig.service.create("https://example.com/hook", ["opened"])
    with pytest.raises(InvalidMessageError, match="URL"):
        await rig.service.create("ftp://example.com/hook", ["delivered"])
    with pytest.raises(InvalidMessageError, match="whsec_"):
        await rig.service.create("https://example.com/hook", ["delivered"], secret="hunter2")
    with pytest.raises(NotFoundError):
        await rig.service.delete("we_missing")
    with pytest.raises(InvalidMessageError):
        await rig.service.replay()


# -- in a running daemon ----------------------------------------------------------------------


async def test_a_hanging_and_a_failing_receiver_never_hold_up_mail(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, webhooks={"timeout": 2.0, "retry_base": 0.2, "retry_max": 0.5,
                                                         "poll_interval": 0.05})  # fmt: skip
    async with (
        webhook_receiver("hang") as hanging,
        webhook_receiver("fail") as failing,
        webhook_receiver("ok") as working,
        running(settings) as daemon,
        aiohttp.ClientSession(daemon.http) as http,
    ):
        from postroom.store.engine import create_engine

        engine = create_engine(settings.database)
        try:
            _, admin = await SqlApiKeys(engine).create("admin", Role.ADMIN, time.time())
        finally:
            await engine.dispose()
        auth = {"Authorization": f"Bearer {admin}"}
        for receiver in (hanging, failing, working):
            async with http.post("/v1/webhook-endpoints", json={"url": receiver.url, "event_types": ["*"]},
                                 headers=auth) as resp:  # fmt: skip
                assert resp.status == 201
                receiver.secret = (await resp.json())["secret"]
        started = time.monotonic()
        for n in range(5):
            message = {"from": "app@postroom.test", "to": f"user{n}@example.com", "subject": "hi", "text": "x"}
            async with http.post("/v1/messages", json=message, headers=auth) as resp:
                assert resp.status == 202
        outbox = Path(settings.delivery.capture_dir)
        await wait_until(lambda: len(list(outbox.glob("*"))) >= 5, 10, what="five messages delivered")
        mail_seconds = time.monotonic() - started
        # Each receiver got both kinds; the working one verified all of them.
        await wait_until(lambda: len(working.verified) >= 10, 10, what="queued and delivered webhooks")
        assert {r.payload["type"] for r in working.verified} == {"email.queued", "email.delivered"}
        await wait_until(lambda: len(failing.requests) >= 20, 10, what="retries to the failing receiver")
        assert mail_seconds < 5  # the hanging receiver's 2 s timeouts did not hold up delivery
        assert hanging.requests and all(r.verified for r in hanging.requests + failing.requests)
        assert daemon.metric("postroom_webhook_deliveries_total", {"result": "retry"}) >= 10
        async with http.get("/v1/webhook-endpoints", headers=auth) as resp:
            listed = {e["url"]: e for e in (await resp.json())["data"]}
        failing_id = listed[failing.url]["id"]
        assert listed[failing.url]["failure_streak"] >= 2
        async with http.get(f"/v1/webhook-endpoints/{failing_id}/deliveries", params={"limit": "3"},
                            headers=auth) as resp:  # fmt: skip
            recent = (await resp.json())["data"]
        assert len(recent) == 3 and all(d["last_status"] == 500 for d in recent if d["attempts"])
        assert "payload" not in recent[0]


async def test_http_api_create_list_test_delete(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, delivery={"hold": True})
    async with webhook_receiver() as receiver, running(settings) as daemon, \
            aiohttp.ClientSession(daemon.http) as http:  # fmt: skip
        from postroom.store.engine import create_engine

        engine = create_engine(settings.database)
        try:
            keys = {role: (await SqlApiKeys(engine).create(role.value, role, time.time()))[1] for role in Role}
        finally:
            await engine.dispose()

        def auth(role: Role) -> dict[str, str]:
            return {"Authorization": f"Bearer {keys[role]}"}

        body = {"url": receiver.url, "event_types": ["delivered", "email.bounced"], "description": "crm"}
        async with http.post("/v1/webhook-endpoints", json=body, headers=auth(Role.VIEWER)) as resp:
            assert resp.status == 403
        async with http.post("/v1/webhook-endpoints", json=body, headers=auth(Role.ADMIN)) as resp:
            assert resp.status == 201
            made = await resp.json()
        assert made["secret"].startswith("whsec_") and made["event_types"] == ["delivered", "bounced"]
        receiver.secret = made["secret"]
        async with http.get("/v1/webhook-endpoints", headers=auth(Role.VIEWER)) as resp:
            listed = (await resp.json())["data"]
        assert [e["id"] for e in listed] == [made["id"]] and "secret" not in json.dumps(listed)
        async with http.post(f"/v1/webhook-endpoints/{made['id']}/test", headers=auth(Role.ADMIN)) as resp:
            assert resp.status == 200
            assert await resp.json() == {"ok": True, "status": 204, "error": None}
        assert receiver.verified[-1].payload["type"] == "webhook.test"
        async with http.get(f"/v1/webhook-endpoints/{made['id']}/deliveries", headers=auth(Role.VIEWER)) as resp:
            assert resp.status == 200 and (await resp.json()) == {"data": []}  # a test is not a delivery
        async with http.get("/v1/webhook-endpoints/we_nope/deliveries", headers=auth(Role.VIEWER)) as resp:
            assert resp.status == 404
        async with http.post("/v1/webhook-endpoints", json={**body, "event_types": ["opened"]},
                             headers=auth(Role.ADMIN)) as resp:  # fmt: skip
            assert resp.status == 400
        async with http.patch(f"/v1/webhook-endpoints/{made['id']}", json={"enabled": False},
                              headers=auth(Role.ADMIN)) as resp:  # fmt: skip
            assert (await resp.json())["enabled"] is False
        async with http.post("/v1/webhook-endpoints/replay", json={"from": "2020-01-01T00:00:00Z"},
                             headers=auth(Role.ADMIN)) as resp:  # fmt: skip
            assert resp.status == 202 and (await resp.json()) == {"enqueued": 0}
        async with http.delete(f"/v1/webhook-endpoints/{made['id']}", headers=auth(Role.ADMIN)) as resp:
            assert resp.status == 204
        async with http.delete(f"/v1/webhook-endpoints/{made['id']}", headers=auth(Role.ADMIN)) as resp:
            assert resp.status == 404


async def test_finished_deliveries_are_pruned_after_the_retention(rig: Rig, clock: FakeClock) -> None:
    async with webhook_receiver() as receiver:
        _, receiver.secret = await rig.service.create(receiver.url, ["delivered"])
        await add_message(rig.engine, "M1", clock.now(), "delivered")
        await add_message(rig.engine, "M2", clock.now(), "delivered")
        await rig.consume(2)
        assert await rig.sender.drain() == 2
        await rig.sender.refresh_gauges()
        assert len(await rig.rows()) == 2  # not old enough
        assert rig.metric("postroom_webhook_queue_depth", state="delivered") == 2
        clock.advance(rig.settings.retention + 1)
        await rig.sender.refresh_gauges()
        assert await rig.rows() == []
        assert rig.metric("postroom_webhook_queue_depth", state="delivered") == 0


async def test_two_senders_never_claim_one_delivery(rig: Rig, clock: FakeClock, gate: WriteGate) -> None:
    from postroom.store.engine import create_engine

    endpoint, _ = await rig.service.create("http://127.0.0.1:9/hook", ["delivered"])
    second, _ = await rig.service.create("http://127.0.0.1:9/other", ["delivered"])
    for n in range(30):
        await add_message(rig.engine, f"M{n}", clock.now(), "delivered")
    await rig.consume(60)
    other_engine = create_engine(DatabaseSettings(url=rig.engine.url.render_as_string(hide_password=False)))
    try:
        other = SqlWebhookStore(other_engine, gate)
        claims: list[list[int]] = [[], []]

        async def claim(store: SqlWebhookStore, into: list[int]) -> None:
            while batch := await store.claim(7, clock.now(), 60, per_endpoint=3):
                assert max(sum(1 for d in batch if d.endpoint_id == e) for e in (endpoint.id, second.id)) <= 3
                into.extend(d.id for d in batch)

        await asyncio.gather(claim(rig.store, claims[0]), claim(other, claims[1]))
    finally:
        await other_engine.dispose()
    assert not set(claims[0]) & set(claims[1])
    assert len(claims[0]) + len(claims[1]) == 60
    busy = await rig.store.claim(10, clock.now() + 61, 60, busy={endpoint.id})  # leases ran out
    assert busy and {d.endpoint_id for d in busy} == {second.id}


async def test_a_refused_recipient_becomes_a_signed_bounce_webhook_and_a_stat(tmp_path: Path, db_url: str) -> None:
    """End to end: a smarthost (aiosmtpd on 127.0.0.1) refuses one recipient with 550 5.1.1; the
    receiver gets `email.delivered` and `email.bounced`, both verified; /v1/stats counts them."""
    from tests.support import SinkHandler, smtp_sink

    handler = SinkHandler(replies={"gone@example.org": "550 5.1.1 <gone@example.org>: no such user"})
    async with smtp_sink(handler) as (_, port), webhook_receiver() as receiver:
        settings = make_settings(tmp_path, db_url, webhooks={"poll_interval": 0.05}, delivery={
            "mode": "smarthost", "smarthost": f"127.0.0.1:{port}", "smarthost_tls": "none", "poll_interval": 0.05})  # fmt: skip
        async with running(settings) as daemon, aiohttp.ClientSession(daemon.http) as http:
            from postroom.store.engine import create_engine

            engine = create_engine(settings.database)
            try:
                _, admin = await SqlApiKeys(engine).create("admin", Role.ADMIN, time.time())
            finally:
                await engine.dispose()
            auth = {"Authorization": f"Bearer {admin}"}
            hook = {"url": receiver.url, "event_types": ["delivered", "bounced"]}
            async with http.post("/v1/webhook-endpoints", json=hook, headers=auth) as resp:
                receiver.secret = (await resp.json())["secret"]
            message = {"from": "app@postroom.test", "to": ["ok@example.org", "gone@example.org"],
                       "subject": "hi", "text": "x", "stream": "transactional"}  # fmt: skip
            async with http.post("/v1/messages", json=message, headers=auth) as resp:
                assert resp.status == 202
                message_id = (await resp.json())["id"]
            await wait_until(lambda: len(receiver.verified) >= 2, 15, what="two verified webhooks")
            by_type = {r.payload["type"]: r.payload["data"] for r in receiver.verified}
            assert set(by_type) == {"email.delivered", "email.bounced"}
            assert by_type["email.bounced"]["recipient"] == "gone@example.org"
            assert by_type["email.bounced"]["message_id"] == message_id
            assert "5.1.1" in by_type["email.bounced"]["reply"]
            async with http.get("/v1/stats", params={"group_by": "domain"}, headers=auth) as resp:
                stats = await resp.json()
            assert stats["totals"]["sent"] == 2 and stats["totals"]["delivered"] == 1
            assert stats["totals"]["bounced"]["total"] == 1
            assert stats["totals"]["latency_seconds"]["count"] == 1


async def test_an_endpoint_added_while_the_outbox_lags_gets_no_older_events(rig: Rig, clock: FakeClock) -> None:
    await add_message(rig.engine, "BEFORE", clock.now(), "delivered")  # not consumed yet
    clock.advance(10)
    endpoint, _ = await rig.service.create("http://127.0.0.1:9/hook", ["delivered"])
    clock.advance(10)
    await add_message(rig.engine, "AFTER", clock.now(), "delivered")
    await rig.consume(1)
    await rig.outbox.drain()
    rows = await rig.rows()
    assert [r["payload"]["data"]["message_id"] for r in rows] == ["AFTER"]
    assert await rig.service.replay(since=clock.now() - 60, endpoint_id=endpoint.id) == 2  # replay: both
