"""SMTP ingress against the outside probe's findings (issue 10): uploads bounded by the byte budget
with temporary refusals (finding 4), failed TLS handshakes as one rate-limited line and a counter
(finding 5), no empty AUTH on the MX after STARTTLS and an idle, not total, DATA timeout
(finding 8). Real daemon on loopback, raw sockets where the client must misbehave."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from pathlib import Path

import aiosmtplib
import pytest
import sqlalchemy as sa
from postroom.store.engine import create_engine
from postroom.store.tables import messages

from tests.conftest import Tls, running
from tests.support import make_settings

MESSAGE = b"From: app@postroom.test\r\nTo: user@example.com\r\nSubject: hello\r\n\r\nbody\r\n"
MIB = 1024 * 1024


class RawSmtp:
    """A client that says exactly what the test tells it to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> RawSmtp:
        reader, writer = await asyncio.open_connection(*address)
        client = cls(reader, writer)
        assert (await client.reply())[0] == 220
        return client

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            if not line:
                raise ConnectionResetError("closed by the server")
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(entry[4:] for entry in lines)

    async def command(self, line: str) -> tuple[int, str]:
        self.writer.write(line.encode() + b"\r\n")
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def stored_count(settings) -> int:  # type: ignore[no-untyped-def]
    engine = create_engine(settings.database)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(messages)) or 0)
    finally:
        await engine.dispose()


def budget_settings(tmp_path: Path, **smtp: object):  # type: ignore[no-untyped-def]
    return make_settings(tmp_path, smtp={"trusted_networks": ["127.0.0.1/32"], **smtp},
                         limits={"bytes_in_flight": MIB}, delivery={"hold": True})  # fmt: skip


# -- finding 4: the byte budget ---------------------------------------------------------------


async def test_a_declared_size_that_does_not_fit_gets_452_at_mail(tmp_path: Path) -> None:
    settings = budget_settings(tmp_path)
    async with running(settings) as d:
        holder = await RawSmtp.connect(d.submission)
        await holder.command("EHLO one.test")
        assert (await holder.command("MAIL FROM:<app@postroom.test> SIZE=900000"))[0] == 250
        assert d.metric("postroom_ingress_bytes_in_flight") == 900_000

        other = await RawSmtp.connect(d.submission)
        await other.command("EHLO two.test")
        code, text = await other.command("MAIL FROM:<app@postroom.test> SIZE=300000")
        assert (code, text.split()[0]) == (452, "4.3.1")
        assert d.metric("postroom_ingress_busy_refusals_total", {"ingress": "smtp"}) == 1
        # The refused transaction did not start: a small one from the same session fits later.
        assert (await holder.command("RSET"))[0] == 250  # the holder gives its reservation back
        assert d.metric("postroom_ingress_bytes_in_flight") == 0
        assert (await other.command("MAIL FROM:<app@postroom.test> SIZE=300000"))[0] == 250
        assert (await other.command("RCPT TO:<u@example.com>"))[0] == 250
        assert (await other.command("DATA"))[0] == 354
        other.writer.write(MESSAGE + b".\r\n")
        code, text = await other.reply()
        assert code == 250 and "queued as" in text
        assert d.metric("postroom_ingress_bytes_in_flight") == 0  # released once committed
        for client in (holder, other):
            await client.command("QUIT")
            await client.close()
    assert await stored_count(settings) == 1


async def test_an_undeclared_upload_past_the_budget_is_read_dropped_and_refused_after_data(
    tmp_path: Path,
) -> None:
    settings = budget_settings(tmp_path)
    async with running(settings) as d:
        holder = await RawSmtp.connect(d.submission)
        await holder.command("EHLO one.test")
        assert (await holder.command("MAIL FROM:<app@postroom.test> SIZE=700000"))[0] == 250

        sender = await RawSmtp.connect(d.submission)
        await sender.command("EHLO two.test")
        assert (await sender.command("MAIL FROM:<app@postroom.test>"))[0] == 250
        assert (await sender.command("RCPT TO:<u@example.com>"))[0] == 250
        assert (await sender.command("DATA"))[0] == 354  # the first block fits
        body = MESSAGE + (b"x" * 998 + b"\r\n") * 600  # 600 kB: more than is left
        sender.writer.write(body + b".\r\n")
        code, text = await sender.reply()  # only once the whole message was sent
        assert (code, text.split()[0]) == (452, "4.3.1")
        assert d.metric("postroom_ingress_busy_refusals_total", {"ingress": "smtp"}) == 1
        assert d.metric("postroom_ingress_bytes_in_flight") == 700_000  # the holder's only

        await holder.command("QUIT")
        await holder.close()
        assert (await sender.command("MAIL FROM:<app@postroom.test>"))[0] == 250  # sent again
        assert (await sender.command("RCPT TO:<u@example.com>"))[0] == 250
        assert (await sender.command("DATA"))[0] == 354
        sender.writer.write(body + b".\r\n")
        code, text = await sender.reply()
        assert code == 250 and "queued as" in text
        await sender.command("QUIT")
        await sender.close()
        assert d.metric("postroom_ingress_bytes_in_flight") == 0
    assert await stored_count(settings) == 1


async def test_data_is_refused_before_354_when_the_budget_is_spent(tmp_path: Path) -> None:
    settings = budget_settings(tmp_path)
    async with running(settings) as d:
        holder = await RawSmtp.connect(d.submission)
        await holder.command("EHLO one.test")
        assert (await holder.command(f"MAIL FROM:<app@postroom.test> SIZE={MIB - 1000}"))[0] == 250
        sender = await RawSmtp.connect(d.submission)
        await sender.command("EHLO two.test")
        assert (await sender.command("MAIL FROM:<app@postroom.test>"))[0] == 250
        assert (await sender.command("RCPT TO:<u@example.com>"))[0] == 250
        code, text = await sender.command("DATA")
        assert (code, text.split()[0]) == (452, "4.3.1")
        assert (await sender.command("NOOP"))[0] == 250  # the session goes on
        for client in (holder, sender):
            await client.close()
        await asyncio.sleep(0.1)
        assert d.metric("postroom_ingress_bytes_in_flight") == 0  # a dropped session gives back
    assert await stored_count(settings) == 0


# -- finding 8 (3): the session timeout is an idle timeout during DATA --------------------------


async def test_a_slow_upload_that_keeps_moving_is_not_cut(tmp_path: Path) -> None:
    settings = budget_settings(tmp_path, session_timeout=1.0)
    async with running(settings) as d:
        client = await RawSmtp.connect(d.submission)
        await client.command("EHLO slow.test")
        await client.command("MAIL FROM:<app@postroom.test>")
        await client.command("RCPT TO:<u@example.com>")
        assert (await client.command("DATA"))[0] == 354
        client.writer.write(MESSAGE)
        for n in range(10):  # 3 s in all, three times the session timeout, never 1 s idle
            await asyncio.sleep(0.3)
            client.writer.write(f"line {n}\r\n".encode())
            await client.writer.drain()
        client.writer.write(b".\r\n")
        code, text = await client.reply()
        assert code == 250 and "queued as" in text
        await asyncio.sleep(1.5)  # idle now: the timeout still applies
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await client.command("NOOP")
        await client.close()
    assert await stored_count(settings) == 1


# -- finding 8 (2): the MX offers no AUTH, not even an empty one after STARTTLS -----------------


async def test_the_mx_offers_no_auth_after_starttls(tmp_path: Path, tls: Tls) -> None:
    settings = make_settings(tmp_path, smtp={"tls_cert": tls.cert, "tls_key": tls.key}, delivery={"hold": True})
    async with running(settings) as d:
        host, port = d.mx
        smtp = aiosmtplib.SMTP(hostname=host, port=port, tls_context=tls.client, start_tls=False, timeout=10)
        await smtp.connect()
        await smtp.ehlo()
        assert smtp.supports_extension("starttls") and "auth" not in smtp.esmtp_extensions
        await smtp.starttls()
        response = await smtp.ehlo()
        assert "AUTH" not in response.message.upper()
        assert "auth" not in smtp.esmtp_extensions
        code, _ = await smtp.execute_command(b"AUTH", b"PLAIN", b"AHVzZXIAcGFzcw==")
        assert code in (500, 502, 504)
        await smtp.quit()


# -- finding 5: failed TLS handshakes -----------------------------------------------------------


def tls10_client_hello() -> bytes:
    """A TLS 1.0-only ClientHello (RFC 2246 §7.4.1.2), as an old or hostile client sends it."""
    body = b"\x03\x01" + os.urandom(32) + b"\x00" + struct.pack("!H", 2) + b"\x00\x2f" + b"\x01\x00"
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


async def fail_a_handshake(address: tuple[str, int], garbage: bytes) -> None:
    client = await RawSmtp.connect(address)
    await client.command("EHLO probe.test")
    assert (await client.command("STARTTLS"))[0] == 220
    client.writer.write(garbage)
    await client.writer.drain()
    try:  # the server answers with an alert, or nothing, and closes
        await asyncio.wait_for(client.reader.read(), 10)
    except (ConnectionResetError, asyncio.IncompleteReadError):
        pass
    await client.close()


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [(b"GET / HTTP/1.0\r\n\r\n", "HTTP_REQUEST"), (tls10_client_hello(), "UNSUPPORTED_PROTOCOL")],
    ids=["garbage", "tls1.0-hello"],
)
async def test_a_failed_handshake_is_one_line_and_a_count(
    tmp_path: Path, tls: Tls, caplog: pytest.LogCaptureFixture, garbage: bytes, reason: str
) -> None:
    caplog.set_level(logging.INFO)
    settings = make_settings(tmp_path, smtp={"tls_cert": tls.cert, "tls_key": tls.key}, delivery={"hold": True})
    async with running(settings) as d:
        await fail_a_handshake(d.mx, garbage)
        await asyncio.sleep(0.2)
        assert d.metric("postroom_smtp_tls_failures_total", {"listener": "mx"}) == 1
        assert d.metric("postroom_smtp_sessions_active", {"listener": "mx"}) == 0  # counted once
        # The listener still serves.
        smtp = aiosmtplib.SMTP(hostname=d.mx[0], port=d.mx[1], tls_context=tls.client, start_tls=True, timeout=10)
        await smtp.connect()
        await smtp.quit()
    lines = [r for r in caplog.records if r.name == "postroom.smtp.handshakes"]
    assert [r.getMessage() for r in lines] == [f"TLS handshake failed on the mx listener from 127.0.0.1: {reason}"]
    assert lines[0].levelno == logging.INFO
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING], caplog.text
    assert "Traceback" not in caplog.text


async def test_many_failed_handshakes_are_counted_but_logged_at_a_bounded_rate(
    tmp_path: Path, tls: Tls, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = make_settings(tmp_path, smtp={"tls_cert": tls.cert, "tls_key": tls.key}, delivery={"hold": True})
    async with running(settings) as d:
        await asyncio.gather(*(fail_a_handshake(d.submission if n % 2 else d.mx, b"\x00" * 64)
                               for n in range(30)))  # fmt: skip
        await asyncio.sleep(0.2)
        counted = d.metric("postroom_smtp_tls_failures_total", {"listener": "mx"}) + d.metric(
            "postroom_smtp_tls_failures_total", {"listener": "submission"}
        )
        assert counted == 30
    lines = [r.getMessage() for r in caplog.records if r.name == "postroom.smtp.handshakes"]
    # 10 lines a minute, then (when the listeners close) one summing up the rest.
    assert len(lines) == 11 and lines[-1].startswith("... 20 more failed TLS handshakes"), lines
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING], caplog.text
