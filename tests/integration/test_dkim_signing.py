"""The daemon signs what it sends, for configured domains only, and refuses clearly otherwise."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import aiohttp
import aiosmtplib
import dkim
import pytest
import sqlalchemy as sa

from postroom.dkim.management import create_selector
from postroom.store import schema
from postroom.store.dkim_keys import SqlDkimKeys
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import create_engine
from postroom.store.tables import messages
from tests.conftest import running
from tests.support import make_settings, smtp_sink, wait_until

DOMAIN = "signed.example"


def settings_for(tmp_path: Path, **delivery: object):  # type: ignore[no-untyped-def]
    return make_settings(
        tmp_path,
        smtp={"trusted_networks": ["127.0.0.1/32"]},
        domains=[{"name": DOMAIN}, {"name": "postroom.test", "dkim": "off"}],
        **({"delivery": delivery} if delivery else {}),
    )


async def prepare(settings, with_keys: bool = True) -> tuple[dict[str, str], str]:  # type: ignore[no-untyped-def]
    """Migrate, create an RSA and an Ed25519 selector, and an API key; return DNS and the key."""
    engine = create_engine(settings.database)
    records: dict[str, str] = {}
    try:
        await schema.upgrade(engine)
        keys = SqlDkimKeys(engine)
        if with_keys:
            for selector, algorithm in (("r1", "rsa"), ("e1", "ed25519")):
                _, published = await create_selector(
                    keys, Path(settings.dkim_key_dir), DOMAIN, selector, algorithm, 2048, 0.0
                )
                records[published.name] = published.value
        _, token = await SqlApiKeys(engine).create("t", Role.SENDER, 0.0)
    finally:
        await engine.dispose()
    return records, token


def verify_all(message: bytes, records: dict[str, str]) -> list[bool]:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name.decode().rstrip("."), "").encode()

    results = []
    signatures = message.count(b"DKIM-Signature:")
    for index in range(signatures):
        verifier = dkim.DKIM(message)
        results.append(verifier.verify(idx=index, dnsfunc=dnsfunc))
    return results


async def outbox_message(directory: Path) -> bytes:
    await wait_until(lambda: any(directory.glob("*.eml")), 20, what="a captured message")
    return next(directory.glob("*.eml")).read_bytes()


async def test_api_mail_is_signed_with_rsa_and_ed25519(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    records, token = await prepare(settings)
    async with running(settings) as d, aiohttp.ClientSession() as http:
        body = {"from": f"Shop <shop@{DOMAIN}>", "to": "x@example.com", "subject": "Ünïcode " + "long " * 30,
                "text": "héllo\\n" * 20, "html": "<p>héllo</p>",
                "attachments": [{"filename": "a.bin", "content": base64.b64encode(os.urandom(3000)).decode()}]}
        async with http.post(f"{d.http}/v1/messages", json=body,
                             headers={"Authorization": f"Bearer {token}"}) as response:  # fmt: skip
            assert response.status == 202, await response.text()
        sent = await outbox_message(Path(settings.delivery.capture_dir))
        await wait_until(lambda: d.metric("postroom_dkim_signatures_total", {"result": "signed"}) == 1, 5,
                         what="the signing counter")  # fmt: skip
        assert d.metric("postroom_dkim_sign_seconds_count") == 1
    headers = sent.split(b"\r\n\r\n")[0]
    assert headers.count(b"DKIM-Signature:") == 2
    assert b"a=rsa-sha256" in headers and b"a=ed25519-sha256" in headers
    assert f"d={DOMAIN}".encode() in headers
    assert verify_all(sent, records) == [True, True]


async def test_smtp_mail_is_signed_and_verifies(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    records, _ = await prepare(settings)
    message = (f"From: app@{DOMAIN}\r\nTo: x@example.com\r\nSubject: hi\r\n"
               "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
               "Content-Transfer-Encoding: 8bit\r\n\r\nh\u00e9llo w\u00f6rld\r\n").encode()  # fmt: skip
    async with running(settings) as d:
        smtp = aiosmtplib.SMTP(hostname=d.submission[0], port=d.submission[1], start_tls=False)
        await smtp.connect()
        await smtp.sendmail(f"app@{DOMAIN}", ["x@example.com"], message)
        await smtp.quit()
        sent = await outbox_message(Path(settings.delivery.capture_dir))
    assert verify_all(sent, records) == [True, True]


async def test_unknown_sender_domain_is_refused_and_nothing_stored(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    _, token = await prepare(settings)
    async with running(settings) as d, aiohttp.ClientSession() as http:
        body = {"from": "a@not-ours.example", "to": "x@example.com", "subject": "s", "text": "t"}
        async with http.post(f"{d.http}/v1/messages", json=body,
                             headers={"Authorization": f"Bearer {token}"}) as response:  # fmt: skip
            assert response.status == 422
            error = (await response.json())["error"]
        assert error["code"] == "unknown_sender_domain"
        assert "not-ours.example" in error["message"]
        smtp = aiosmtplib.SMTP(hostname=d.submission[0], port=d.submission[1], start_tls=False)
        await smtp.connect()
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.sendmail("a@not-ours.example", ["x@example.com"],
                                b"From: a@not-ours.example\r\nSubject: s\r\n\r\nbody\r\n")  # fmt: skip
        assert refused.value.code == 550 and refused.value.message.startswith("5.7.1")
        await smtp.quit()
    assert await count_messages(settings) == 0


@pytest.mark.parametrize("damage", ["missing", "corrupted", "wrong-type"])
async def test_an_unusable_key_is_a_clear_refusal_at_submission(tmp_path: Path, damage: str) -> None:
    settings = settings_for(tmp_path)
    _, token = await prepare(settings)
    key_file = Path(settings.dkim_key_dir) / DOMAIN / "r1.pem"
    secret = key_file.read_text()
    if damage == "missing":
        key_file.unlink()
    elif damage == "corrupted":
        key_file.write_text(secret[:200] + "garbage" + secret[260:])
    else:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key_file.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))  # fmt: skip
    # The Ed25519 key still works, so the domain still signs: break that one too.
    (Path(settings.dkim_key_dir) / DOMAIN / "e1.pem").unlink()
    async with running(settings) as d, aiohttp.ClientSession() as http:
        body = {"from": f"a@{DOMAIN}", "to": "x@example.com", "subject": "s", "text": "t"}
        async with http.post(f"{d.http}/v1/messages", json=body,
                             headers={"Authorization": f"Bearer {token}"}) as response:  # fmt: skip
            assert response.status == 422
            error = (await response.json())["error"]
    assert error["code"] == "dkim_unavailable"
    assert "r1.pem" in error["message"]
    assert secret.splitlines()[1][:20] not in error["message"]  # no key material
    assert await count_messages(settings) == 0


async def count_messages(settings) -> int:  # type: ignore[no-untyped-def]
    engine = create_engine(settings.database)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(messages)) or 0)
    finally:
        await engine.dispose()


async def test_a_reload_picks_up_a_new_key_without_a_restart(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    _, token = await prepare(settings, with_keys=False)
    body = {"from": f"a@{DOMAIN}", "to": "x@example.com", "subject": "s", "text": "t"}
    async with running(settings) as d, aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(f"{d.http}/v1/messages", json=body, headers=headers) as response:
            assert response.status == 422  # no key yet
        engine = create_engine(settings.database)
        try:
            await create_selector(SqlDkimKeys(engine), Path(settings.dkim_key_dir), DOMAIN, "r9",
                                  "rsa", 2048, 0.0)  # fmt: skip
        finally:
            await engine.dispose()
        d.daemon.request_reload()  # what SIGHUP does

        async def accepted() -> bool:
            async with http.post(f"{d.http}/v1/messages", json=body, headers=headers) as response:
                return response.status == 202

        await wait_until(accepted, 10, interval=0.1, what="the new key to be loaded")


async def test_a_retry_sends_the_signature_of_the_first_attempt(tmp_path: Path) -> None:
    """DESIGN flow 2: signed once, not per retry. The worker keeps the DKIM-Signature fields when
    an attempt is deferred; the retry sends them unchanged (t= of the first attempt)."""
    async with smtp_sink() as (sink, port):
        sink.replies["x@example.com"] = "451 4.3.0 try again soon"
        settings = settings_for(tmp_path, mode="smarthost", smarthost=f"127.0.0.1:{port}",
                                smarthost_tls="none", retry_base=0.3, retry_max=0.5,
                                poll_interval=0.05)  # fmt: skip
        records, _ = await prepare(settings)
        message = f"From: app@{DOMAIN}\r\nTo: x@example.com\r\nSubject: twice\r\n\r\nbody\r\n".encode()
        async with running(settings) as d:
            smtp = aiosmtplib.SMTP(hostname=d.submission[0], port=d.submission[1], start_tls=False)
            await smtp.connect()
            await smtp.sendmail(f"app@{DOMAIN}", ["x@example.com"], message)
            await smtp.quit()
            await wait_until(lambda: d.metric("postroom_deferred_total",
                                              {"stream": "transactional", "route": "inhouse"}) == 1,
                             10, what="the first attempt deferred")  # fmt: skip
            kept = await stored_signature(settings)
            del sink.replies["x@example.com"]
            await wait_until(lambda: len(sink.messages) == 1, 20, what="the retry delivered")
            signed = d.metric("postroom_dkim_signatures_total", {"result": "signed"})
            reused = d.metric("postroom_dkim_signatures_total", {"result": "reused"})
    assert (signed, reused) == (1, 1)
    assert kept is not None and kept.count(b"DKIM-Signature:") == 2
    sent = sink.messages[0].content
    assert sent.startswith(kept)  # the bytes of the first attempt's signing, t= included
    assert verify_all(sent, records) == [True, True]


async def stored_signature(settings) -> bytes | None:  # type: ignore[no-untyped-def]
    engine = create_engine(settings.database)
    try:
        async with engine.connect() as conn:
            value = await conn.scalar(sa.select(messages.c.signature))
    finally:
        await engine.dispose()
    return None if value is None else bytes(value)
