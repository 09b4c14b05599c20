"""Submission over real SMTP: STARTTLS before AUTH, relay rules, limits, and 250 only after commit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosmtplib
import pytest
import sqlalchemy as sa

from postroom.store.engine import create_engine
from postroom.store.tables import deliveries, messages
from tests.conftest import Tls, running
from tests.support import make_settings

MESSAGE = b"From: app@postroom.test\r\nTo: user@example.com\r\nSubject: hello\r\n\r\nbody\r\n"


async def count_rows(settings) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    engine = create_engine(settings.database)
    try:
        async with engine.connect() as conn:
            m = await conn.scalar(sa.select(sa.func.count()).select_from(messages))
            d = await conn.scalar(sa.select(sa.func.count()).select_from(deliveries))
    finally:
        await engine.dispose()
    return int(m or 0), int(d or 0)


def settings_with_tls(tmp_path: Path, tls: Tls, **smtp: object):  # type: ignore[no-untyped-def]
    return make_settings(
        tmp_path,
        smtp={"tls_cert": tls.cert, "tls_key": tls.key, **smtp},
        delivery={"hold": True, "mode": "capture", "capture_dir": str(tmp_path / "out")},
    )


async def add_user(settings, username: str, password: str) -> None:  # type: ignore[no-untyped-def]
    from postroom.store.credentials import SqlSmtpUsers

    from postroom.store import schema

    engine = create_engine(settings.database)
    try:
        await schema.upgrade(engine)
        await SqlSmtpUsers(engine).add(username, password, 0.0)
    finally:
        await engine.dispose()


def client(d, tls: Tls, **kwargs: object) -> aiosmtplib.SMTP:  # type: ignore[no-untyped-def]
    host, port = d.submission
    return aiosmtplib.SMTP(
        hostname=host, port=port, tls_context=tls.client, start_tls=False, timeout=10, **kwargs
    )


async def test_auth_is_not_offered_before_starttls(tmp_path: Path, tls: Tls) -> None:
    settings = settings_with_tls(tmp_path, tls)
    async with running(settings) as d:
        smtp = client(d, tls)
        await smtp.connect()
        await smtp.ehlo()
        assert smtp.supports_extension("starttls")
        assert not smtp.supports_extension("auth")
        code, _ = await smtp.execute_command(b"AUTH", b"PLAIN", b"AHVzZXIAcGFzcw==")
        assert code == 538
        await smtp.starttls()
        await smtp.ehlo()
        assert "PLAIN" in smtp.esmtp_extensions["auth"] and "LOGIN" in smtp.esmtp_extensions["auth"]
        await smtp.quit()


async def test_untrusted_client_cannot_relay_without_auth(tmp_path: Path, tls: Tls) -> None:
    settings = settings_with_tls(tmp_path, tls)
    async with running(settings) as d:
        smtp = client(d, tls)
        await smtp.connect()
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await smtp.sendmail("app@postroom.test", ["user@example.com"], MESSAGE)
        assert refused.value.code == 530
        await smtp.quit()
    assert await count_rows(settings) == (0, 0)


async def test_trusted_network_relays_without_auth(tmp_path: Path, tls: Tls) -> None:
    settings = settings_with_tls(tmp_path, tls, trusted_networks=["127.0.0.0/8"])
    async with running(settings) as d:
        smtp = client(d, tls)
        await smtp.connect()
        _, reply = await smtp.sendmail("app@postroom.test", ["user@example.com"], MESSAGE)
        assert reply.startswith("2.0.0 Ok: queued as ")
        await smtp.quit()
        assert d.metric("postroom_messages_accepted_total",
                        {"source": "smtp", "stream": "transactional", "route": "inhouse"}) == 1  # fmt: skip
    assert await count_rows(settings) == (1, 1)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_authenticated_submission_over_starttls(tmp_path: Path, tls: Tls, mechanism: str) -> None:
    settings = settings_with_tls(tmp_path, tls)
    await add_user(settings, "app", "s3cret-password")
    async with running(settings) as d:
        smtp = client(d, tls)
        await smtp.connect()
        await smtp.starttls()
        await smtp.ehlo()
        method = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
        response = await method("app", "s3cret-password")
        assert response.code == 235
        _, reply = await smtp.sendmail("app@postroom.test", ["a@example.com", "b@example.com"], MESSAGE)
        assert "queued as" in reply
        await smtp.quit()
    assert await count_rows(settings) == (1, 2)


async def test_wrong_password_gets_535_and_failures_are_throttled(tmp_path: Path, tls: Tls) -> None:
    settings = settings_with_tls(tmp_path, tls, login_failure_limit=3)
    await add_user(settings, "app", "right-password")
    async with running(settings) as d:
        smtp = client(d, tls)
        await smtp.connect()
        await smtp.starttls()
        await smtp.ehlo()
        for _ in range(3):
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failed:
                await smtp.auth_plain("app", "wrong")
            assert failed.value.code == 535
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as throttled:
            await smtp.auth_plain("app", "right-password")  # right, but this client is throttled
        assert throttled.value.code == 454
        await smtp.quit()
        assert d.metric("postroom_smtp_auth_total", {"result": "failed"}) == 3
        assert d.metric("postroom_smtp_auth_total", {"result": "throttled"}) == 1


async def test_implicit_tls_listener_accepts_auth(tmp_path: Path, tls: Tls) -> None:
    settings = settings_with_tls(tmp_path, tls, submissions_listen="127.0.0.1:0")
    await add_user(settings, "app", "pw-for-465")
    async with running(settings) as d:
        host, port = d.daemon.smtp_bound["submissions"]
        smtp = aiosmtplib.SMTP(hostname=host, port=port, use_tls=True, tls_context=tls.client, timeout=10)
        await smtp.connect()
        await smtp.ehlo()
        assert (await smtp.auth_plain("app", "pw-for-465")).code == 235
        _, reply = await smtp.sendmail("app@postroom.test", ["x@example.com"], MESSAGE)
        assert "queued as" in reply
        await smtp.quit()


async def test_oversized_message_gets_552_and_nothing_is_stored(tmp_path: Path, tls: Tls) -> None:
    settings = settings_with_tls(tmp_path, tls, trusted_networks=["127.0.0.1/32"], max_message_size=2048)
    async with running(settings) as d:
        smtp = client(d, tls)
        await smtp.connect()
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await smtp.sendmail("app@postroom.test", ["x@example.com"], MESSAGE + b"x" * 4096 + b"\r\n")
        assert refused.value.code == 552
        await smtp.quit()
    assert await count_rows(settings) == (0, 0)


async def test_recipient_limit_gets_452(tmp_path: Path, tls: Tls) -> None:
    settings = settings_with_tls(tmp_path, tls, trusted_networks=["127.0.0.1/32"], max_recipients=2)
    async with running(settings) as d:
        smtp = client(d, tls)
        await smtp.connect()
        await smtp.ehlo()
        await smtp.mail("app@postroom.test")
        assert (await smtp.rcpt("a@example.com")).code == 250
        assert (await smtp.rcpt("b@example.com")).code == 250
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await smtp.rcpt("c@example.com")
        assert refused.value.code == 452
        await smtp.rset()
        await smtp.quit()
    assert await count_rows(settings) == (0, 0)


async def test_malformed_commands_get_syntax_errors(tmp_path: Path, tls: Tls) -> None:
    settings = settings_with_tls(tmp_path, tls, trusted_networks=["127.0.0.1/32"])
    async with running(settings) as d:
        smtp = client(d, tls)
        await smtp.connect()
        await smtp.ehlo()
        assert (await smtp.execute_command(b"FROBNICATE"))[0] == 500
        assert (await smtp.execute_command(b"MAIL", b"TO:<x@example.com>"))[0] == 501
        assert (await smtp.execute_command(b"RCPT", b"TO:<x@example.com>"))[0] == 503
        assert (await smtp.execute_command(b"DATA"))[0] == 503
        assert (await smtp.execute_command(b"MAIL", b"FROM:<not an address>"))[0] in (501, 553)
        await smtp.mail("app@postroom.test")
        assert (await smtp.execute_command(b"RCPT", b"TO:<@@bad>"))[0] in (501, 553)
        await smtp.quit()
    assert await count_rows(settings) == (0, 0)


async def test_commit_failure_gets_451_not_250(tmp_path: Path, tls: Tls) -> None:
    settings = settings_with_tls(tmp_path, tls, trusted_networks=["127.0.0.1/32"])
    async with running(settings) as d:
        engine = create_engine(settings.database)
        try:
            async with engine.begin() as conn:  # make every insert fail, as a broken disk would
                await conn.execute(sa.text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON messages "
                    "BEGIN SELECT RAISE(FAIL, 'disk full'); END"
                ))  # fmt: skip
            smtp = client(d, tls)
            await smtp.connect()
            with pytest.raises(aiosmtplib.SMTPDataError) as failed:
                await smtp.sendmail("app@postroom.test", ["x@example.com"], MESSAGE)
            assert failed.value.code == 451
            assert failed.value.message.startswith("4.3.0")
            await smtp.quit()
            async with engine.begin() as conn:
                await conn.execute(sa.text("DROP TRIGGER refuse"))
            smtp = client(d, tls)  # and it recovers once the store does
            await smtp.connect()
            _, reply = await smtp.sendmail("app@postroom.test", ["x@example.com"], MESSAGE)
            assert "queued as" in reply
            await smtp.quit()
        finally:
            await engine.dispose()
    assert await count_rows(settings) == (1, 1)


async def test_mx_refuses_every_recipient(tmp_path: Path, tls: Tls) -> None:
    settings = settings_with_tls(tmp_path, tls)
    async with running(settings) as d:
        host, port = d.mx
        smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=10)
        await smtp.connect()
        await smtp.ehlo()
        assert not smtp.supports_extension("auth")
        await smtp.mail("mailer-daemon@example.com")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await smtp.rcpt("anyone@postroom.test")
        assert refused.value.code == 550 and refused.value.message.startswith("5.7.1")
        await smtp.quit()


async def test_received_header_and_missing_ids_are_added(tmp_path: Path, tls: Tls) -> None:
    settings = settings_with_tls(tmp_path, tls, trusted_networks=["127.0.0.1/32"])
    async with running(settings) as d:
        smtp = client(d, tls)
        await smtp.connect()
        _, reply = await smtp.sendmail("app@postroom.test", ["x@example.com"], MESSAGE)
        await smtp.quit()
    message_id = reply.rsplit(" ", 1)[1]
    engine = create_engine(settings.database)
    try:
        async with engine.connect() as conn:
            content = await conn.scalar(sa.select(messages.c.content).where(messages.c.id == message_id))
    finally:
        await engine.dispose()
    head = bytes(content).split(b"\r\n\r\n")[0]
    assert head.startswith(b"Received: from ")
    assert f"id {message_id}".encode() in head
    assert b"\r\nDate: " in head
    assert f"Message-ID: <{message_id}@mail.postroom.test>".encode() in head
    assert bytes(content).endswith(b"\r\n\r\nbody\r\n")


async def test_many_concurrent_sessions_are_all_committed(tmp_path: Path, tls: Tls) -> None:
    settings = settings_with_tls(tmp_path, tls, trusted_networks=["127.0.0.1/32"])
    async with running(settings) as d:
        async def session(n: int) -> int:
            smtp = client(d, tls)
            await smtp.connect()
            for i in range(10):
                await smtp.sendmail("app@postroom.test", [f"u{n}-{i}@example.com"], MESSAGE)
            await smtp.quit()
            return 10

        assert sum(await asyncio.gather(*(session(n) for n in range(10)))) == 100
    assert await count_rows(settings) == (100, 100)


async def test_idle_sessions_time_out_and_commands_keep_them_alive(tmp_path: Path, tls: Tls) -> None:
    settings = settings_with_tls(tmp_path, tls, session_timeout=0.6)
    async with running(settings) as d:
        smtp = client(d, tls)
        await smtp.connect()
        for _ in range(4):  # 1.2 s of activity in all, never 0.6 s idle
            await asyncio.sleep(0.3)
            assert (await smtp.noop()).code == 250
        await asyncio.sleep(1.0)
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await smtp.noop()


async def test_a_login_limited_to_some_senders_cannot_use_others(tmp_path: Path, tls: Tls) -> None:
    from postroom.store import schema
    from postroom.store.credentials import SqlSmtpUsers

    settings = make_settings(
        tmp_path,
        smtp={"tls_cert": tls.cert, "tls_key": tls.key},
        delivery={"hold": True},
        domains=[{"name": "postroom.test", "dkim": "off"}, {"name": "other.test", "dkim": "off"}],
    )
    engine = create_engine(settings.database)
    try:
        await schema.upgrade(engine)
        await SqlSmtpUsers(engine).add("shop", "pw-shop", 0.0, ("postroom.test",))
    finally:
        await engine.dispose()
    async with running(settings) as d:
        smtp = client(d, tls)
        await smtp.connect()
        await smtp.starttls()
        await smtp.ehlo()
        await smtp.auth_plain("shop", "pw-shop")
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await smtp.sendmail("x@other.test", ["a@example.com"], MESSAGE)
        assert refused.value.code == 550
        with pytest.raises(aiosmtplib.SMTPDataError) as refused_from:  # allowed envelope, other From
            await smtp.sendmail("app@postroom.test", ["a@example.com"],
                                MESSAGE.replace(b"From: app@postroom.test", b"From: x@other.test"))  # fmt: skip
        assert refused_from.value.code == 550
        _, reply = await smtp.sendmail("app@postroom.test", ["a@example.com"], MESSAGE)
        assert "queued as" in reply
        await smtp.quit()
    assert await count_rows(settings) == (1, 1)
