"""Delivery status notifications to SMTP senders end to end (issue 13), on SQLite and PostgreSQL.

A message submitted over SMTP to a recipient the smarthost refuses with 550 5.1.1 bounces; the
DSN consumer queues an RFC 3464 report in the outbox transaction and the worker delivers it to
the message's envelope sender with MAIL FROM:<> (not a VERP return path). The same failure of a
message submitted through the API, or with `[smtp] dsn = "off"`, queues nothing. The consumer
on its own, through the outbox: one report per message per batch, none for a null sender or about a
report, none for API mail, and each failure reported once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosmtplib
import sqlalchemy as sa

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.bounces.dsn_notify import DsnConsumer
from postroom.bounces.parser import parse_bounce
from postroom.core.clock import FakeClock
from postroom.core.types import Submission
from postroom.events.outbox import EventOutbox
from postroom.metrics import Metrics
from postroom.queue.sql_store import SqlQueueStore
from postroom.store.engine import WriteGate
from postroom.store.tables import deliveries, event_cursors, events, messages

from tests.integration.test_http_api import Api, serving
from tests.support import SinkHandler, smtp_sink, wait_until

KEY = "test-verp-key-0123456789abcdef"
DEAD = "dead@example.net"
ORIGINAL = (
    "From: App <app@postroom.test>\r\nTo: dead@example.net, live@example.net\r\nSubject: Hello\r\n"
    "Message-ID: <hello-1@postroom.test>\r\n\r\nthe body\r\n"
).encode()


def sections(sink_port: int, dsn: str = "failures") -> dict[str, Any]:
    return {
        "delivery": {"mode": "smarthost", "smarthost": f"127.0.0.1:{sink_port}", "smarthost_tls": "none",
                     "poll_interval": 0.05},
        "domains": [{"name": "postroom.test", "dkim": "off", "bounce_domain": "bounces.postroom.test"}],
        "bounces": {"verp_keys": [KEY]},
        "smtp": {"trusted_networks": ["127.0.0.1/32"], "dsn": dsn},
    }  # fmt: skip


def refusing_sink() -> SinkHandler:
    return SinkHandler(replies={DEAD: "550 5.1.1 <dead@example.net>: Recipient address rejected: User unknown"})


async def submit_smtp(api: Api, mail_from: str, recipients: list[str], content: bytes = ORIGINAL) -> None:
    host, port = api.daemon.submission
    smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=10)
    await smtp.connect()
    try:
        await smtp.ehlo()
        await smtp.mail(mail_from)  # "" is MAIL FROM:<>
        for recipient in recipients:
            await smtp.rcpt(recipient)
        await smtp.data(content)
    finally:
        await smtp.quit()


async def rows(api: Api, statement: sa.Select[Any]) -> list[Any]:
    async with api.engine.connect() as conn:
        return list((await conn.execute(statement)).all())


async def consumed_past_bounces(api: Api, count: int) -> bool:
    """Whether `count` bounced events exist and the dsn consumer's cursor is past all of them."""
    bounced = await rows(api, sa.select(events.c.id).where(events.c.type == "bounced"))
    cursor = await rows(api, sa.select(event_cursors.c.event_id).where(event_cursors.c.consumer == "dsn"))
    return len(bounced) >= count and bool(cursor) and cursor[0][0] >= max(r[0] for r in bounced)


async def test_a_bounce_of_smtp_mail_sends_a_dsn_to_the_envelope_sender_with_a_null_sender(
    tmp_path: Path, db_url: str
) -> None:
    async with smtp_sink(refusing_sink()) as (sink, port), serving(tmp_path, db_url, **sections(port)) as api:
        await submit_smtp(api, "app@postroom.test", [DEAD, "live@example.net"])
        await wait_until(lambda: len(sink.messages) >= 2, 20, what="the original and the DSN at the sink")
        original, report = sink.messages
        assert original.recipients == ["live@example.net"]
        assert original.mail_from.startswith("bounces+")  # the original went with its VERP path
        assert report.mail_from == "<>"  # MAIL FROM:<> (as aiosmtpd records it), never VERP
        assert report.recipients == ["app@postroom.test"]

        parsed = parse_bounce(report.content)
        [item] = parsed.recipients
        assert (item.address, item.status, item.reason, item.action, item.reply_code) == (
            DEAD, "5.1.1", "userunknown", "failed", 550)
        assert parsed.original_message_id == "hello-1@postroom.test"
        assert b"MAILER-DAEMON@mail.postroom.test" in report.content
        assert b"Auto-Submitted: auto-replied" in report.content

        # Queued through the queue's own path: a message with an accepted event, delivered.
        [row] = await rows(api, sa.select(messages.c.id, messages.c.mail_from, messages.c.header_from)
                           .where(messages.c.source == "dsn"))  # fmt: skip
        assert (row.mail_from, row.header_from) == ("", "MAILER-DAEMON@mail.postroom.test")
        async def dsn_delivered() -> bool:
            found = await rows(api, sa.select(deliveries.c.state).where(deliveries.c.message_id == row.id))
            return [r[0] for r in found] == ["delivered"]

        await wait_until(dsn_delivered, 10, what="the DSN's delivery recorded")
        accepted = await rows(api, sa.select(events.c.detail).where(events.c.message_id == row.id,
                                                                    events.c.type == "accepted"))  # fmt: skip
        assert [a[0]["source"] for a in accepted] == ["dsn"]
        assert api.daemon.metric("postroom_dsn_sent_total", {"failure": "bounced"}) == 1


async def test_no_dsn_for_api_mail(tmp_path: Path, db_url: str) -> None:
    async with smtp_sink(refusing_sink()) as (sink, port), serving(tmp_path, db_url, **sections(port)) as api:
        status, _, _ = await api.send({"from": "app@postroom.test", "to": DEAD, "subject": "Hi", "text": "hi"})
        assert status == 202
        await wait_until(lambda: consumed_past_bounces(api, 1), 20, what="the bounce read by the dsn consumer")
        assert await rows(api, sa.select(messages.c.id).where(messages.c.source == "dsn")) == []
        assert api.daemon.metric("postroom_dsn_sent_total", {"failure": "bounced"}) == 0
        assert sink.messages == []


async def test_no_dsn_when_off(tmp_path: Path, db_url: str) -> None:
    async with smtp_sink(refusing_sink()) as (sink, port), serving(tmp_path, db_url, **sections(port, "off")) as api:
        await submit_smtp(api, "app@postroom.test", [DEAD])

        async def bounced() -> bool:
            found = await rows(api, sa.select(deliveries.c.state).where(deliveries.c.recipient == DEAD))
            return bool(found) and all(r[0] == "bounced" for r in found)

        await wait_until(bounced, 20, what="the bounce")
        assert await rows(api, sa.select(event_cursors.c.consumer).where(event_cursors.c.consumer == "dsn")) == []
        assert await rows(api, sa.select(messages.c.id).where(messages.c.source == "dsn")) == []


def submission(source: str, mail_from: str, recipients: tuple[str, ...], content: bytes = ORIGINAL) -> Submission:
    return Submission(mail_from=mail_from, recipients=recipients, content=content, source=source,
                      header_from="app@postroom.test", subject="Hello")  # fmt: skip


async def failed(engine: AsyncEngine, kind: str, message_id: str, recipient: str, at: float) -> None:
    detail = ({"reply": "550 5.1.1 User unknown", "code": 550, "status": "5.1.1", "mx": "mx.example.net",
               "reason": "userunknown", "bounce_class": "hard"} if kind == "bounced" else
              {"reply": "expired after 9 attempts; last reply: 451 4.3.0 later", "code": 451, "status": "4.3.0",
               "reason": "expired", "bounce_class": "soft"})  # fmt: skip
    async with engine.begin() as conn:
        await conn.execute(events.insert().values(at=at, type=kind, message_id=message_id, delivery_id=None,
                                                  recipient=recipient, detail=detail))  # fmt: skip


async def test_the_consumer_reports_once_per_message_and_batch_and_only_what_it_should(engine: AsyncEngine) -> None:
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    store = SqlQueueStore(engine)
    report_about = ("From: MAILER-DAEMON@x.example\r\nAuto-Submitted: auto-replied\r\nContent-Type: multipart/report;"
                    ' report-type=delivery-status; boundary="b"\r\n\r\n--b--\r\n').encode()  # fmt: skip
    smtp, null, report, api = await store.insert_many([
        submission("smtp", "app@postroom.test", ("a@example.net", "b@example.net", "c@example.net")),
        submission("smtp", "", ("a@example.net",)),
        submission("smtp", "app@postroom.test", ("a@example.net",), report_about),
        submission("api", "app@postroom.test", ("a@example.net",)),
    ], clock.now())  # fmt: skip
    for message_id in (smtp, null, report, api):
        await failed(engine, "bounced", message_id, "a@example.net", clock.now())
    await failed(engine, "expired", smtp, "b@example.net", clock.now())
    outbox = EventOutbox(engine, WriteGate(None), clock, metrics,
                         [DsnConsumer("mail.postroom.test", clock, metrics)])  # fmt: skip

    async def reports() -> list[Any]:
        async with engine.connect() as conn:
            found = (await conn.execute(sa.select(messages.c.id, messages.c.mail_from, messages.c.content)
                                        .where(messages.c.source == "dsn").order_by(messages.c.id))).all()  # fmt: skip
            queued = (await conn.execute(sa.select(deliveries.c.message_id, deliveries.c.recipient,
                                                   deliveries.c.state, deliveries.c.mail_from)
                                         .where(deliveries.c.message_id.in_([r.id for r in found])))).all()  # fmt: skip
            accepted = (await conn.execute(sa.select(events.c.message_id).where(
                events.c.type == "accepted", events.c.message_id.in_([r.id for r in found])))).all()  # fmt: skip
        assert sorted(q.message_id for q in queued) == sorted(r.id for r in found)
        assert all((q.recipient, q.state, q.mail_from) == ("app@postroom.test", "queued", None) for q in queued)
        assert sorted(a[0] for a in accepted) == sorted(r.id for r in found)
        return list(found)

    await outbox.drain()
    [first] = await reports()
    assert first.mail_from == ""
    parsed = parse_bounce(bytes(first.content))
    assert sorted((r.address, r.status) for r in parsed.recipients) == [
        ("a@example.net", "5.1.1"), ("b@example.net", "4.4.7")]
    assert parsed.original_message_id == "hello-1@postroom.test"
    assert metrics.dsn_sent.labels("bounced")._value.get() == 1
    assert metrics.dsn_sent.labels("expired")._value.get() == 1
    assert metrics.dsn_skipped.labels("null_sender")._value.get() == 1
    assert metrics.dsn_skipped.labels("automatic")._value.get() == 1

    # Exactly once: nothing new, nothing more; a later failure of the same message gets its own.
    await outbox.drain()
    assert len(await reports()) == 1
    clock.advance(60)
    await failed(engine, "bounced", smtp, "c@example.net", clock.now())
    await outbox.drain()
    first_again, second = await reports()
    assert first_again.id == first.id
    assert [r.address for r in parse_bounce(bytes(second.content)).recipients] == ["c@example.net"]
