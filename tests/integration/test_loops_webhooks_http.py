"""`POST /webhooks/loops` on the running daemon, on both databases, signed by the real
`standardwebhooks` package as Loops signs: an event is applied once (a replay answers 200 and
changes nothing), refused requests (unsigned, badly signed, stale, malformed) record nothing, a
hard bounce and a spam report reach the suppression list through the event outbox, an
unsubscribe suppresses its stream, unmatched and unknown events are stored; the endpoint is off
(503) without a secret."""

from __future__ import annotations

import base64
import datetime
import json
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook

from postroom.core.clock import FakeClock
from postroom.store.credentials import Role
from postroom.store.tables import deliveries, events, loops_events, suppressions

from tests.integration.test_http_api import Api, serving
from tests.integration.test_loops_events import count, sent_through_loops
from tests.support import wait_until

SECRET = "whsec_" + base64.b64encode(b"loops-signing-secret-0123456789ab").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"the-secret-being-rolled-out-0000").decode()
LOOPS = {"webhook_secret": SECRET, "webhook_secrets": [OLD_SECRET], "templates": {"welcome": "tx-welcome"}}


def body_of(name: str, email: str, **fields: Any) -> bytes:
    payload = {"eventName": name, "eventTime": int(time.time()), "webhookSchemaVersion": "1.0.0",
               "sourceType": "transactional", "transactionalId": "tx-welcome",
               "contactIdentity": {"id": "c1", "email": email, "userId": None},
               "email": {"id": "cm0x1", "emailMessageId": "<x@loops>", "subject": "Welcome"}}  # fmt: skip
    payload.update(fields)
    return json.dumps(payload).encode()


def headers_for(body: bytes, webhook_id: str, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    sent = int(time.time() if at is None else at)
    signature = Webhook(secret).sign(webhook_id, datetime.datetime.fromtimestamp(sent, datetime.UTC), body)
    return {"webhook-id": webhook_id, "webhook-timestamp": str(sent), "webhook-signature": signature,
            "Content-Type": "application/json"}  # fmt: skip


async def post(api: Api, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with api.session.post("/webhooks/loops", data=body, headers=headers) as response:
        return response.status, await response.json()


def counted(api: Api, event: str, result: str) -> float:
    return api.daemon.metric("postroom_loops_webhook_events_total", {"event": event, "result": result})


async def suppression_of(api: Api, address: str) -> list[dict[str, Any]]:
    status, found = await api.get("/v1/suppressions", address=address)
    assert status == 200
    return list(found["data"])


async def loops_delivery(api: Api, recipient: str, stream: str = "transactional") -> int:
    """A delivery Loops accepted a moment ago (the Loops route itself is another part of issue 14)."""
    return await sent_through_loops(api.engine, FakeClock(time.time() - 60), recipient, stream=stream)


async def test_a_hard_bounce_is_applied_once_and_the_outbox_suppresses_the_address(tmp_path: Path, db_url: str) -> None:
    async with serving(tmp_path, db_url, loops=LOOPS) as api:
        delivery_id = await loops_delivery(api, "gone@example.com")
        body = body_of("email.hardBounced", "Gone@example.com")
        status, answer = await post(api, body, headers_for(body, "msg_hard_1"))
        assert (status, answer) == (200, {"result": "applied", "effect": "bounced"})
        # Loops retries with the same webhook-id (re-signed at a later time): 200, nothing more.
        status, answer = await post(api, body, headers_for(body, "msg_hard_1", at=time.time() + 1))
        assert (status, answer) == (200, {"result": "duplicate", "effect": "none"})

        async with api.engine.connect() as conn:
            state = await conn.scalar(sa.select(deliveries.c.state).where(deliveries.c.id == delivery_id))
            detail = (await conn.execute(sa.select(events.c.detail).where(events.c.type == "bounced"))).scalar_one()
        assert state == "bounced" and (detail["reason"], detail["bounce_class"]) == ("hardbounce", "hard")
        assert await count(api.engine, loops_events) == 1

        await wait_until(lambda: suppression_of(api, "gone@example.com"), 10, what="the suppression entry")
        [entry] = await suppression_of(api, "gone@example.com")
        assert (entry["scope"], entry["source"], entry["reason"]) == ("global", "bounce", "hardbounce")
        assert counted(api, "email.hardBounced", "applied") == 1
        assert counted(api, "email.hardBounced", "duplicate") == 1


async def test_refused_requests_record_nothing(tmp_path: Path, db_url: str) -> None:
    async with serving(tmp_path, db_url, loops=LOOPS) as api:
        await loops_delivery(api, "ada@example.com")
        body = body_of("email.hardBounced", "ada@example.com")
        other = "whsec_" + base64.b64encode(b"somebody-else-entirely-000000000").decode()
        refused = [
            headers_for(body, "msg_1", secret=other),  # not our secret
            headers_for(body, "msg_2", at=time.time() - 600),  # stale: replayed ten minutes later
            headers_for(body, "msg_3", at=time.time() + 600),  # from the future
            {"Content-Type": "application/json"},  # unsigned
            {**headers_for(body, "msg_4"), "webhook-id": "msg_5"},  # signed for another id
        ]
        for headers in refused:
            status, answer = await post(api, body, headers)
            assert (status, answer["error"]["code"]) == (401, "invalid_signature"), headers
        tampered = body.replace(b"ada@", b"bob@")
        status, _ = await post(api, tampered, headers_for(body, "msg_6"))
        assert status == 401
        # Signed, but not a Loops event.
        for number, bad in enumerate([b"{not json", b"[]", json.dumps({"eventName": "email.hardBounced"}).encode(),
                                      body_of("email.hardBounced", "")]):  # fmt: skip
            status, answer = await post(api, bad, headers_for(bad, f"bad_{number}"))
            assert (status, answer["error"]["code"]) == (400, "malformed"), bad
        assert await count(api.engine, loops_events) == 0
        assert await count(api.engine, suppressions) == 0
        assert await count(api.engine, events, events.c.type == "bounced") == 0
        assert counted(api, "unknown", "invalid_signature") == 6
        assert counted(api, "unknown", "malformed") == 4


async def test_complaints_unsubscribes_unmatched_and_unknown_events(tmp_path: Path, db_url: str) -> None:
    async with serving(tmp_path, db_url, loops=LOOPS) as api:
        await loops_delivery(api, "angry@example.com")
        news_id = await loops_delivery(api, "reader@example.com", stream="newsletter")
        cases = [
            # (event, address, webhook id, signing secret, the answer)
            ("email.spamReported", "angry@example.com", "s1", SECRET, ("applied", "complained")),
            ("email.unsubscribed", "reader@example.com", "s2", OLD_SECRET, ("applied", "unsubscribed")),
            ("email.hardBounced", "stranger@example.com", "s3", SECRET, ("unmatched", "suppressed")),
            ("email.clicked", "angry@example.com", "s4", SECRET, ("ignored", "none")),
            ("email.brandNewEvent", "angry@example.com", "s5", SECRET, ("ignored", "none")),
        ]
        for name, address, webhook_id, secret, expected in cases:
            body = body_of(name, address)
            status, answer = await post(api, body, headers_for(body, webhook_id, secret))
            assert (status, (answer["result"], answer["effect"])) == (200, expected), name
        test_event = json.dumps({"eventName": "testing.testEvent", "eventTime": int(time.time()),
                                 "webhookSchemaVersion": "1.0.0", "message": "hello"}).encode()  # fmt: skip
        status, answer = await post(api, test_event, headers_for(test_event, "s6"))
        assert (status, answer["result"]) == (200, "ignored")

        await wait_until(lambda: suppression_of(api, "angry@example.com"), 10, what="the complaint's entry")
        [complaint] = await suppression_of(api, "angry@example.com")
        assert (complaint["scope"], complaint["source"]) == ("global", "complaint")
        [unsubscribe] = await suppression_of(api, "reader@example.com")
        assert (unsubscribe["scope"], unsubscribe["source"]) == ("stream:newsletter", "unsubscribe")
        [stranger] = await suppression_of(api, "stranger@example.com")
        assert (stranger["scope"], stranger["source"], stranger["reason"]) == ("global", "bounce", "hardbounce")
        async with api.engine.connect() as conn:
            stored = dict((await conn.execute(sa.select(loops_events.c.webhook_id, loops_events.c.event_name))).all())
            unsubscribed = (await conn.execute(sa.select(events.c.delivery_id)
                                               .where(events.c.type == "unsubscribed"))).scalar_one()  # fmt: skip
        assert stored == {"s1": "email.spamReported", "s2": "email.unsubscribed", "s3": "email.hardBounced",
                          "s4": "email.clicked", "s5": "email.brandNewEvent", "s6": "testing.testEvent"}  # fmt: skip
        assert unsubscribed == news_id
        assert counted(api, "other", "ignored") == 3 and counted(api, "email.hardBounced", "unmatched") == 1
        # The suppressed address is refused at the door from now on.
        status, sent, _ = await api.send({"from": "app@postroom.test", "to": "stranger@example.com",
                                          "subject": "Hi", "text": "hi"}, role=Role.SENDER)  # fmt: skip
        assert status == 202 and [item["recipient"] for item in sent["suppressed"]] == ["stranger@example.com"], sent


async def test_without_a_secret_the_endpoint_is_off(tmp_path: Path, db_url: str) -> None:
    async with serving(tmp_path, db_url) as api:
        body = body_of("email.hardBounced", "ada@example.com")
        status, answer = await post(api, body, headers_for(body, "msg_1"))
        assert (status, answer["error"]["code"]) == (503, "not_configured")
        assert "webhook_secret" in answer["error"]["message"]
        assert await count(api.engine, loops_events) == 0
