"""Bounces, suppression and unsubscribe end to end (issue 13), on SQLite and PostgreSQL.

A message to a dead address goes through a local SMTP sink, which accepts it; a DSN (a standard
RFC 3464 multipart/report) then comes back over SMTP to the VERP return path at the daemon's MX.
The delivery ends `bounced / userunknown`, the address is suppressed with provenance, and the next
message to it is reported suppressed. A forged or expired return path is refused at RCPT. A
one-click unsubscribe suppresses the address for its stream only.
"""

from __future__ import annotations

import email
import email.policy
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
import sqlalchemy as sa
from postroom.bounces.verp import encode_verp
from postroom.contacts.service import ContactService
from postroom.contacts.sql_store import SqlContactStore
from postroom.core.clock import FakeClock
from postroom.store.credentials import Role
from postroom.store.tables import bounce_records, deliveries, events, suppressions
from postroom.suppression.sql_store import SqlSuppressionStore

from tests.integration.test_http_api import Api, serving
from tests.support import SinkHandler, smtp_sink, wait_until
from tests.webhook_receiver import webhook_receiver

KEY = "test-verp-key-0123456789abcdef"
DOMAINS = [{"name": "postroom.test", "dkim": "off", "bounce_domain": "bounces.postroom.test"}]


def sections(sink_port: int, **extra: Any) -> dict[str, Any]:
    return {
        "delivery": {"mode": "smarthost", "smarthost": f"127.0.0.1:{sink_port}", "smarthost_tls": "none",
                     "poll_interval": 0.05},
        "domains": DOMAINS,
        "bounces": {"verp_keys": [KEY], "soft_failure_limit": 2},
        "http": {"listen": "127.0.0.1:0", "rate_limit": {"enabled": False}, "public_url": "https://mail.postroom.test"},
        **extra,
    }  # fmt: skip


def dsn(verp: str, recipient: str, status: str = "5.1.1", diagnostic: str = "550 5.1.1 User unknown") -> bytes:
    """A standard RFC 3464 report, as an MTA that accepted the message and failed later sends it."""
    return (
        f"From: Mail Delivery System <MAILER-DAEMON@sink.test>\r\nTo: {verp}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="RB"\r\n\r\n'
        "--RB\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n"
        "--RB\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; sink.test\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Remote-MTA: dns; mailbox.example.net\r\nDiagnostic-Code: smtp; {diagnostic}\r\n\r\n"
        "--RB\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: app@postroom.test\r\n"
        f"To: {recipient}\r\nSubject: Hello\r\n\r\n--RB--\r\n"
    ).encode()


async def mx_send(address: tuple[str, int], recipient: str, content: bytes) -> tuple[int, str]:
    """MAIL FROM:<> (a bounce), RCPT TO the address; the RCPT reply, and DATA if it was accepted."""
    smtp = aiosmtplib.SMTP(hostname=address[0], port=address[1], start_tls=False, timeout=10)
    await smtp.connect()
    try:
        await smtp.ehlo()
        await smtp.mail("")
        rcpt = await smtp.execute_command(b"RCPT", b"TO:<" + recipient.encode() + b">")
        if rcpt.code != 250:
            return rcpt.code, rcpt.message
        data = await smtp.data(content)
        return data.code, data.message
    finally:
        await smtp.quit()


async def delivered(sink: SinkHandler, count: int) -> None:
    await wait_until(lambda: len(sink.messages) >= count, 15, what=f"{count} messages at the sink")


async def delivery_states(api: Api, recipient: str) -> list[str]:
    async with api.engine.connect() as conn:
        rows = await conn.execute(sa.select(deliveries.c.state).where(deliveries.c.recipient == recipient)
                                  .order_by(deliveries.c.id))  # fmt: skip
        return [r[0] for r in rows]


async def test_a_late_dsn_bounces_the_delivery_suppresses_the_address_and_the_next_message_is_reported(
    tmp_path: Path, db_url: str
) -> None:
    async with (
        smtp_sink() as (sink, port),
        serving(tmp_path, db_url, **sections(port)) as api,
        webhook_receiver() as receiver,
    ):
        # A receiver subscribed to bounces and suppressions: it verifies every request with the
        # standardwebhooks library.
        auth = {"Authorization": f"Bearer {api.token(Role.ADMIN)}"}
        async with api.session.post("/v1/webhook-endpoints", headers=auth,
                                    json={"url": receiver.url, "event_types": ["bounced", "suppressed"]}) as made:
            assert made.status == 201, await made.text()
            receiver.secret = (await made.json())["secret"]
        status, body, _ = await api.send({"from": "app@postroom.test", "to": "dead@example.net", "subject": "Hello",
                                          "text": "hi", "stream": "transactional"})  # fmt: skip
        assert status == 202 and body["suppressed"] == []
        await delivered(sink, 1)
        [sent] = sink.messages
        verp = sent.mail_from
        assert re.fullmatch(r"bounces\+[a-z2-7]{32}@bounces\.postroom\.test", verp), verp
        assert b"List-Unsubscribe" not in sent.content  # transactional mail carries none
        await wait_until(lambda: delivery_states(api, "dead@example.net"), 10, what="the delivery row")
        await wait_until(lambda: _state_is(api, "dead@example.net", "delivered"), 10, what="delivered")

        # Remote MTAs may change the case of the local part: the token is case-insensitive.
        code, reply = await mx_send(api.daemon.mx, verp.upper(), dsn(verp, "dead@example.net"))
        assert code == 250, reply

        assert await delivery_states(api, "dead@example.net") == ["bounced"]
        async with api.engine.connect() as conn:
            event = (await conn.execute(sa.select(events.c.detail).where(events.c.type == "bounced"))).scalar_one()
            record = (await conn.execute(sa.select(bounce_records))).one()
        assert (event["reason"], event["bounce_class"], event["status"], event["late"]) == (
            "userunknown", "hard", "5.1.1", True)
        assert event["bounce_record_id"] == record.id

        # The bounce reaches the webhook receiver, signed.
        await wait_until(lambda: len(receiver.requests) >= 1, 15, what="the bounced webhook")
        [hook] = receiver.requests
        assert hook.verified, hook.headers
        assert hook.payload["type"] == "email.bounced"
        assert (hook.payload["data"]["recipient"], hook.payload["data"]["reason"]) == ("dead@example.net", "userunknown")
        assert (record.kind, record.reason, record.recipient, record.reply_code) == ("dsn", "userunknown",
                                                                                      "dead@example.net", 550)
        assert record.raw_size == len(dsn(verp, "dead@example.net")) and bytes(record.raw).startswith(b"From: Mail")

        # The suppression consumer reads the event from the outbox.
        async def suppressed() -> Any:
            found = await api.get("/v1/suppressions", address="dead@example.net")
            return found[1]["data"]

        await wait_until(suppressed, 10, what="the suppression entry")
        [entry] = await suppressed()
        assert (entry["address"], entry["scope"], entry["source"], entry["reason"]) == (
            "dead@example.net", "global", "bounce", "userunknown")
        assert entry["bounce_record_id"] == record.id and entry["expires_at"] is None

        status, bounces = await api.get("/v1/bounces", recipient="dead@example.net")
        assert status == 200 and [b["reason"] for b in bounces["data"]] == ["userunknown"]

        # The next message: the dead address is skipped and reported, the other one is sent.
        status, body, _ = await api.send({"from": "app@postroom.test", "to": ["Dead@Example.net", "live@example.net"],
                                          "subject": "Again", "text": "hi"})  # fmt: skip
        assert status == 202 and body["recipients"] == 1
        assert body["suppressed"] == [{"recipient": "Dead@Example.net", "scope": "global", "reason": "userunknown",
                                       "source": "bounce"}]  # fmt: skip
        await delivered(sink, 2)
        assert sink.messages[1].recipients == ["live@example.net"]
        status, detail = await api.get(f"/v1/messages/{body['id']}")
        states = {d["recipient"]: (d["state"], [e["type"] for e in d["events"]]) for d in detail["deliveries"]}
        assert states["Dead@Example.net"] == ("suppressed", ["suppressed"])
        async with api.engine.connect() as conn:
            skipped = (await conn.execute(
                sa.select(events.c.delivery_id, deliveries.c.id, events.c.detail)
                .join(deliveries, deliveries.c.message_id == events.c.message_id)
                .where(events.c.type == "suppressed", deliveries.c.state == "suppressed")
            )).all()  # fmt: skip
        [(event_delivery, delivery_id, why)] = skipped
        assert event_delivery == delivery_id and why == {"scope": "global", "reason": "userunknown", "source": "bounce"}
        assert api.daemon.metric("postroom_suppressed_total", {"stream": "transactional", "source": "bounce"}) == 1
        await wait_until(lambda: len(receiver.requests) >= 2, 15, what="the suppressed webhook")
        assert [r.payload["type"] for r in receiver.requests] == ["email.bounced", "email.suppressed"]
        assert all(r.verified for r in receiver.requests)
        assert api.daemon.metric("postroom_bounces_received_total", {"kind": "dsn", "bounce_class": "hard"}) == 1

        # The same DSN again (a retried bounce) records a second bounce record, changes nothing else.
        code, _ = await mx_send(api.daemon.mx, verp, dsn(verp, "dead@example.net"))
        assert code == 250
        assert await delivery_states(api, "dead@example.net") == ["bounced"]


async def _state_is(api: Api, recipient: str, state: str) -> bool:
    return (await delivery_states(api, recipient))[-1:] == [state]


async def test_forged_expired_and_unknown_return_paths_are_refused_at_rcpt(tmp_path: Path, db_url: str) -> None:
    clock = FakeClock(time.time())
    async with smtp_sink() as (_, port), serving(tmp_path, db_url, clock=clock, **sections(port)) as api:
        mx = api.daemon.mx
        forged = f"bounces+{encode_verp(1, clock.now(), ['another-key-0123456789abcdef'])}@bounces.postroom.test"
        code, reply = await mx_send(mx, forged, dsn(forged, "x@example.net"))
        assert (code, "5.1.1" in reply, "not valid" in reply) == (550, True, True)
        expired = f"bounces+{encode_verp(1, clock.now() - 40 * 86400, [KEY])}@bounces.postroom.test"
        code, reply = await mx_send(mx, expired, dsn(expired, "x@example.net"))
        assert (code, "5.1.1" in reply, "expired" in reply) == (550, True, True)
        code, reply = await mx_send(mx, "bounces+garbage@bounces.postroom.test", b"Subject: x\r\n\r\nx\r\n")
        assert code == 550 and "5.1.1" in reply
        code, reply = await mx_send(mx, "someone@postroom.test", b"Subject: x\r\n\r\nx\r\n")
        assert code == 550 and "5.7.1" in reply
        # A valid token for a delivery that does not exist is accepted and recorded, nothing more.
        valid = f"bounces+{encode_verp(999999, clock.now(), [KEY])}@bounces.postroom.test"
        code, _ = await mx_send(mx, valid, dsn(valid, "x@example.net"))
        assert code == 250
        async with api.engine.connect() as conn:
            records = (await conn.execute(sa.select(bounce_records.c.delivery_id))).all()
            assert await conn.scalar(sa.select(sa.func.count()).select_from(suppressions)) == 0
        assert [r[0] for r in records] == [None]  # no delivery 999999
        assert api.daemon.metric("postroom_messages_rejected_total", {"source": "mx", "reason": "verp_forged"}) == 1
        assert api.daemon.metric("postroom_messages_rejected_total", {"source": "mx", "reason": "verp_expired"}) == 1


async def test_one_click_unsubscribe_suppresses_the_address_for_that_stream_only(tmp_path: Path, db_url: str) -> None:
    async with smtp_sink() as (sink, port), serving(tmp_path, db_url, **sections(port)) as api:
        news = {"from": "app@postroom.test", "to": "reader@example.org", "subject": "News", "text": "hi",
                "stream": "newsletter"}  # fmt: skip
        status, body, _ = await api.send(news)
        assert status == 202
        await delivered(sink, 1)
        message = email.message_from_bytes(sink.messages[0].content, policy=email.policy.default)
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        url = re.fullmatch(r"<(https://mail\.postroom\.test/u/[^>]+)>", str(message["List-Unsubscribe"]))
        assert url is not None
        path = url.group(1).removeprefix("https://mail.postroom.test")

        async with aiohttp.ClientSession(api.daemon.http) as public:  # no API key
            async with public.get(path) as page:
                assert page.status == 200 and "reader@example.org" in await page.text()
                assert 'method="post"' in await page.text()
            async with public.post(path, data=b"not one-click",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"}) as refused:
                assert refused.status == 400
            async with public.post(path[:-3] + "AAA", data={"List-Unsubscribe": "One-Click"}) as forged:
                assert forged.status == 404
            async with public.post(path, data={"List-Unsubscribe": "One-Click"}) as done:
                assert done.status == 200

        status, found = await api.get("/v1/suppressions", address="reader@example.org")
        [entry] = found["data"]
        assert (entry["scope"], entry["source"]) == ("stream:newsletter", "unsubscribe")
        async with api.engine.connect() as conn:
            kinds = (await conn.execute(sa.select(events.c.type, events.c.recipient, events.c.message_id)
                                        .where(events.c.type == "unsubscribed"))).all()  # fmt: skip
        assert [tuple(k) for k in kinds] == [("unsubscribed", "reader@example.org", body["id"])]

        status, again, _ = await api.send(news)
        assert again["recipients"] == 0 and again["suppressed"][0]["scope"] == "stream:newsletter"
        status, other, _ = await api.send({**news, "stream": "product-updates"})
        assert other["recipients"] == 1 and other["suppressed"] == []
        status, plain, _ = await api.send({**news, "stream": "transactional"})
        assert plain["recipients"] == 1
        await delivered(sink, 3)
        assert [m.recipients for m in sink.messages[1:]] == [["reader@example.org"], ["reader@example.org"]]


async def test_the_suppression_api_and_the_loops_contacts_api_share_the_list(tmp_path: Path, db_url: str) -> None:
    async with smtp_sink() as (_, port), serving(tmp_path, db_url, **sections(port)) as api:
        admin = {"Authorization": f"Bearer {api.token(Role.ADMIN)}"}
        sender = {"Authorization": f"Bearer {api.token(Role.SENDER)}"}
        viewer = {"Authorization": f"Bearer {api.token(Role.VIEWER)}"}
        async with api.session.post("/api/v1/contacts/create", json={"email": "Ada@example.com"},
                                    headers=admin) as made:  # fmt: skip
            assert made.status == 200

        async def loops_check() -> bool:
            async with api.session.get("/api/v1/contacts/suppression", params={"email": "Ada@example.com"},
                                       headers=viewer) as answer:  # fmt: skip
                assert answer.status == 200
                return bool((await answer.json())["isSuppressed"])

        assert not await loops_check()
        async with api.session.post("/v1/suppressions", json={"email": "ada@EXAMPLE.com", "reason": "asked"},
                                    headers=viewer) as refused:  # fmt: skip
            assert refused.status == 403
        async with api.session.post("/v1/suppressions", json={"email": "not an address"}, headers=sender) as bad:
            assert bad.status == 400
        async with api.session.post("/v1/suppressions", json={"email": "ada@EXAMPLE.com", "reason": "asked",
                                                               "scope": "newsletter"}, headers=sender) as added:  # fmt: skip
            assert added.status == 201
            entry = await added.json()
        assert (entry["scope"], entry["source"], entry["reason"]) == ("stream:newsletter", "manual", "asked")
        assert entry["created_by"].startswith("apikey:")
        assert await loops_check()

        async with api.session.delete("/v1/suppressions", params={"address": "ada@example.com"},
                                      headers=sender) as forbidden:  # fmt: skip
            assert forbidden.status == 403
        async with api.session.delete("/api/v1/contacts/suppression", params={"email": "Ada@example.com"},
                                      headers=admin) as lifted:  # fmt: skip
            assert lifted.status == 200
        assert not await loops_check()
        async with api.session.delete("/v1/suppressions", params={"address": "ada@example.com"},
                                      headers=admin) as gone:  # fmt: skip
            assert gone.status == 404

        # Paging with a cursor.
        for i in range(3):
            await api.session.post("/v1/suppressions", json={"email": f"p{i}@example.com"}, headers=sender)
        status, page = await api.get("/v1/suppressions", limit=2)
        assert status == 200 and len(page["data"]) == 2 and page["next"] is not None
        status, rest = await api.get("/v1/suppressions", limit=2, after=page["next"])
        assert [e["address"] for e in rest["data"]] == ["p2@example.com"] and rest["next"] is None


ARF = (b"From: fbl@isp.example\r\nTo: fbl@postroom.test\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n"
       b'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\r\n\r\n'
       b"--F\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n"
       b"--F\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: isp-fbl/1\r\n"
       b"Version: 1\r\nOriginal-Rcpt-To: <Grumpy@example.org>\r\n\r\n"
       b"--F\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: app@postroom.test\r\nTo: grumpy@example.org\r\n\r\n"
       b"--F--\r\n")  # fmt: skip


async def test_a_complaint_to_the_feedback_address_suppresses_and_smtp_submission_reports_it(
    tmp_path: Path, db_url: str
) -> None:
    extra = {"bounces": {"verp_keys": [KEY], "feedback_addresses": ["fbl@postroom.test"]},
             "smtp": {"hostname": "mail.postroom.test", "submission_listen": "127.0.0.1:0", "mx_listen": "127.0.0.1:0",
                      "trusted_networks": ["127.0.0.0/8"]}}  # fmt: skip
    async with smtp_sink() as (sink, port), serving(tmp_path, db_url, **sections(port, **extra)) as api:
        code, reply = await mx_send(api.daemon.mx, "FBL@postroom.test", ARF)
        assert code == 250, reply

        async def suppressed() -> Any:
            return (await api.get("/v1/suppressions", address="grumpy@example.org"))[1]["data"]

        await wait_until(suppressed, 10, what="the complaint's entry")
        [entry] = await suppressed()
        assert (entry["scope"], entry["source"], entry["reason"]) == ("global", "complaint", "feedback")
        status, records = await api.get("/v1/bounces", kind="feedback")
        assert [r["recipient"] for r in records["data"]] == ["grumpy@example.org"]

        # Over SMTP: the message is accepted, the suppressed recipient recorded and counted in the reply.
        host, smtp_port = api.daemon.submission
        smtp = aiosmtplib.SMTP(hostname=host, port=smtp_port, start_tls=False, timeout=10)
        await smtp.connect()
        try:
            content = (b"From: app@postroom.test\r\nTo: grumpy@example.org, happy@example.org\r\n"
                       b"Subject: news\r\n\r\nhello\r\n")  # fmt: skip
            _, reply = await smtp.sendmail("app@postroom.test", ["grumpy@example.org", "happy@example.org"], content)
        finally:
            await smtp.quit()
        assert "queued as" in reply and "1 suppressed" in reply
        await delivered(sink, 1)
        assert sink.messages[0].recipients == ["happy@example.org"]
        assert await delivery_states(api, "grumpy@example.org") == ["suppressed"]


async def test_erasing_a_contact_keeps_its_suppression_only_as_a_hash(tmp_path: Path, db_url: str) -> None:
    async with smtp_sink() as (_, port), serving(tmp_path, db_url, **sections(port)) as api:
        sender = {"Authorization": f"Bearer {api.token(Role.SENDER)}"}
        async with api.session.post("/api/v1/contacts/create", json={"email": "erase@example.com"},
                                    headers={"Authorization": f"Bearer {api.token(Role.ADMIN)}"}) as made:  # fmt: skip
            assert made.status == 200
        async with api.session.post("/v1/suppressions", json={"email": "erase@example.com"}, headers=sender) as added:
            assert added.status == 201
        store = SqlSuppressionStore(api.engine)
        service = ContactService(SqlContactStore(api.engine), [], FakeClock(), erase_suppression=store.erase)
        await service.erase("erase@example.com")
        status, found = await api.get("/v1/suppressions", address="erase@example.com")
        [entry] = found["data"]
        assert entry["address"] is None and entry["erased"] is True
        status, body, _ = await api.send({"from": "app@postroom.test", "to": "erase@example.com", "subject": "x",
                                          "text": "x"})  # fmt: skip
        assert body["recipients"] == 0 and body["suppressed"][0]["recipient"] == "erase@example.com"
        async with api.engine.connect() as conn:
            stored = (await conn.execute(sa.select(suppressions.c.address_key))).scalars().all()
        assert all("erase" not in key for key in stored)
