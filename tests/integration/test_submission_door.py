"""The one submission door: a message the sending policy refuses gets the same reason whichever
way it came in (SMTP, `POST /v1/messages`, `postroom send`), the refusal is counted once by
reason, and nothing is stored."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest
import sqlalchemy as sa

from postroom.store import schema
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import create_engine
from postroom.store.tables import messages
from tests.conftest import running
from tests.support import make_settings, postroom_cli

UNKNOWN_DOMAIN = "evil.example is not a sending domain of this server"


def write_config(tmp_path: Path, db_url: str) -> Path:
    """The same database and domains as `make_settings`, for the command line."""
    path = tmp_path / "postroom.toml"
    path.write_text(
        f'state_dir = "{tmp_path}"\n[database]\nurl = "{db_url}"\n[smtp]\nhostname = "mail.postroom.test"\n'
        '[[domains]]\nname = "postroom.test"\ndkim = "off"\n'
    )
    return path


def raw_message(from_field: str, *extra: str) -> str:
    lines = [f"From: {from_field}", *extra, "To: user@example.com", "Subject: refused", "", "body", ""]
    return "\r\n".join(lines)


@pytest.mark.parametrize(
    ("from_field", "extra", "code", "reason"),
    [
        ("ceo@evil.example", (), "unknown_sender_domain", UNKNOWN_DOMAIN),
        ("app@postroom.test", ("Sender: ceo@evil.example",), "unknown_sender_domain", UNKNOWN_DOMAIN),
        ("app@postroom.test <ceo@evil.example>", (), "invalid_from", "the From field is not a valid address list"),
    ],
    ids=["foreign-from", "foreign-sender", "display-trick"],
)
async def test_a_refused_message_gets_the_same_reason_over_smtp_http_and_the_cli(
    tmp_path: Path, from_field: str, extra: tuple[str, ...], code: str, reason: str
) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'postroom.db'}"
    settings = make_settings(tmp_path, db_url, smtp={"trusted_networks": ["127.0.0.1/32"]},
                             delivery={"hold": True})  # fmt: skip
    engine = create_engine(settings.database)
    await schema.upgrade(engine)
    _, token = await SqlApiKeys(engine).create("sender", Role.SENDER, time.time())
    raw = raw_message(from_field, *extra)
    async with running(settings) as d:
        # SMTP
        host, port = d.submission
        smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=10)
        await smtp.connect()
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp.sendmail("app@postroom.test", ["user@example.com"], raw.encode())
        await smtp.quit()
        assert refused.value.code == 550
        assert refused.value.message.split(" ", 1)[1] == reason  # after the enhanced status code

        # HTTP: the same message as API fields
        headers = {name: value for name, _, value in (h.partition(": ") for h in extra)}
        payload = {"from": from_field, "to": "user@example.com", "subject": "refused", "text": "body",
                   "headers": headers}  # fmt: skip
        async with aiohttp.ClientSession(d.http) as session:
            async with session.post("/v1/messages", data=json.dumps(payload), headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/json"}) as resp:  # fmt: skip
                body = await resp.json()
        assert (resp.status, body) == (422, {"error": {"code": code, "message": reason}})

        for source in ("smtp", "api"):
            assert d.metric("postroom_messages_rejected_total", {"source": source, "reason": code}) == 1.0

    # The command line, raw: the same message, the same reason, exit 1
    config = write_config(tmp_path, db_url)
    result = await asyncio.to_thread(
        postroom_cli, "send", "--config", str(config), "--from", "app@postroom.test",
        "--to", "user@example.com", "--raw", "-", input=raw, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == f"postroom: {reason}"

    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(messages)) == 0
    await engine.dispose()
