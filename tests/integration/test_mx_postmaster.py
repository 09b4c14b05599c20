"""Mail to postmaster at the inbound MX (issue 10, finding 8; RFC 5321 §4.5.1): accepted bare and
at every domain the server is MX for, then forwarded to the operator attached to a signed,
aligned message, or kept in a Maildir; every other recipient is still refused with 550 5.7.1."""

from __future__ import annotations

import email
import email.policy
import logging
from pathlib import Path

import aiosmtplib
import pytest
import sqlalchemy as sa
from postroom.config import Settings
from postroom.core.errors import ConfigError
from postroom.store.engine import create_engine
from postroom.store.tables import messages

from tests.conftest import running
from tests.support import make_settings, wait_until

ORIGINAL = (b"From: Mailer <mailer-daemon@remote.example>\r\nTo: postmaster@postroom.test\r\n"
            b"Subject: abuse report\r\nMessage-ID: <report-1@remote.example>\r\n\r\n"
            b"Your server sent us \xc3\xa9 something.\r\n.leading dot\r\n")  # fmt: skip
DOMAINS = [{"name": "postroom.test", "dkim": "off", "bounce_domain": "bounces.postroom.test"}]


async def send_to_mx(address: tuple[str, int], recipients: list[str], content: bytes = ORIGINAL) -> str:
    smtp = aiosmtplib.SMTP(hostname=address[0], port=address[1], start_tls=False, timeout=10)
    await smtp.connect()
    try:
        _, reply = await smtp.sendmail("mailer-daemon@remote.example", recipients, content)
    finally:
        await smtp.quit()
    return reply


async def test_postmaster_mail_is_forwarded_to_the_operator(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    settings = make_settings(tmp_path, smtp={"postmaster_forward": "ops@operator.example"},
                             domains=DOMAINS)  # fmt: skip
    async with running(settings) as d:
        reply = await send_to_mx(d.mx, ["postmaster@postroom.test"])
        assert "queued as" in reply
        await wait_until(lambda: list(outbox.glob("*.eml")), 10, what="the forwarded message")
        assert d.metric("postroom_messages_accepted_total",
                        {"source": "mx", "stream": "transactional", "route": "inhouse"}) == 1  # fmt: skip
    [sent] = list(outbox.glob("*.eml"))
    forward = email.message_from_bytes(sent.read_bytes(), policy=email.policy.default)
    assert forward["From"].addresses[0].addr_spec == "postmaster@postroom.test"
    assert forward["To"].addresses[0].addr_spec == "ops@operator.example"
    assert "abuse report" in forward["Subject"] and forward["Auto-Submitted"] == "auto-generated"
    notice, attached = forward.iter_parts()
    assert "mailer-daemon@remote.example" in notice.get_content()
    assert attached.get_content_type() == "message/rfc822"
    raw = sent.read_bytes()
    assert ORIGINAL in raw  # attached byte for byte, after our trace field
    assert b"Received: from " in raw.split(ORIGINAL)[0].rsplit(b"message/rfc822", 1)[1]
    engine = create_engine(settings.database)
    try:
        async with engine.connect() as conn:
            envelope = (await conn.execute(sa.select(messages.c.mail_from, messages.c.source))).one()
    finally:
        await engine.dispose()
    assert tuple(envelope) == ("", "mx")  # null sender: a failed forward cannot loop back


@pytest.mark.parametrize(
    "recipient",
    ["postmaster", "Postmaster", "POSTMASTER@postroom.test", "postmaster@bounces.postroom.test",
     "postmaster@mail.postroom.test"],
)
async def test_postmaster_mail_without_a_forward_goes_to_the_maildir(
    tmp_path: Path, recipient: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="postroom.smtp.postmaster")
    settings = make_settings(tmp_path, domains=DOMAINS)
    async with running(settings) as d:
        reply = await send_to_mx(d.mx, [recipient])
    queue_id = reply.rsplit(" ", 1)[1]
    maildir = tmp_path / "postmaster"
    [stored] = list((maildir / "new").iterdir())
    assert list((maildir / "tmp").iterdir()) == [] and (maildir / "cur").is_dir()
    assert stored.stat().st_mode & 0o777 == 0o600
    content = stored.read_bytes()
    assert content.startswith(b"Return-Path: <mailer-daemon@remote.example>\r\nReceived: from ")
    assert f"id {queue_id}".encode() in content and content.endswith(ORIGINAL)
    logged = [r.getMessage() for r in caplog.records if r.name == "postroom.smtp.postmaster"]
    assert logged == [(f"mail to postmaster from <mailer-daemon@remote.example> (client 127.0.0.1) "
                       f"stored in {stored}; set smtp.postmaster_forward to have it forwarded")]  # fmt: skip
    assert await count_messages(settings) == 0  # nothing was queued for delivery


async def count_messages(settings: Settings) -> int:
    engine = create_engine(settings.database)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(messages)) or 0)
    finally:
        await engine.dispose()


async def test_only_postmaster_is_accepted(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, domains=DOMAINS)
    async with running(settings) as d:
        smtp = aiosmtplib.SMTP(hostname=d.mx[0], port=d.mx[1], start_tls=False, timeout=10)
        await smtp.connect()
        await smtp.ehlo()
        await smtp.mail("mailer-daemon@remote.example")
        for refused in ["abuse@postroom.test", "postmaster@elsewhere.example", "postmaster.x@postroom.test"]:
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as error:
                await smtp.rcpt(refused)
            assert error.value.code == 550 and error.value.message.startswith("5.7.1")
        assert (await smtp.rcpt("postmaster@postroom.test")).code == 250
        await smtp.quit()


def test_a_forward_needs_a_sending_domain_and_must_not_loop(tmp_path: Path) -> None:
    from postroom.config import load_settings

    config = tmp_path / "postroom.toml"
    config.write_text('[smtp]\npostmaster_forward = "ops@operator.example"\n')
    with pytest.raises(ConfigError, match="needs a \\[\\[domains\\]\\]"):
        load_settings(config, {})
    config.write_text('[smtp]\nhostname = "mail.postroom.test"\npostmaster_forward = "Postmaster@postroom.test"\n'
                      '[[domains]]\nname = "postroom.test"\n')  # fmt: skip
    with pytest.raises(ConfigError, match="would loop"):
        load_settings(config, {})
    config.write_text('[smtp]\npostmaster_forward = "not an address"\n[[domains]]\nname = "postroom.test"\n')
    with pytest.raises(ConfigError, match="smtp.postmaster_forward"):
        load_settings(config, {})
