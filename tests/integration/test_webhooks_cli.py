"""`postroom webhooks add|ls|test|replay|enable|disable|rm` as a process against a migrated
database, with a receiver on 127.0.0.1 that verifies the test webhook with `standardwebhooks`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from postroom.config import DatabaseSettings
from postroom.store import schema
from postroom.store.engine import create_engine
from postroom.store.tables import events, webhook_deliveries
from tests.integration.test_cli import write_cli_config
from tests.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.slow


async def cli(config: Path, *args: str) -> tuple[int, str, str]:
    """The command as a process, awaited (the receiver answers from this event loop meanwhile)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "postroom.cli", "--config", str(config), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_webhooks_commands(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    config = write_cli_config(tmp_path, db_url)
    engine = create_engine(DatabaseSettings(url=db_url))
    try:
        await schema.upgrade(engine)
        async with engine.begin() as conn:
            at = time.time() - 600
            await conn.execute(events.insert(), [
                {"at": at, "type": "delivered", "message_id": "M1", "delivery_id": 1, "recipient": "a@example.com",
                 "detail": {"reply": "250 ok"}},
                {"at": at + 1, "type": "bounced", "message_id": "M2", "delivery_id": 2, "recipient": "b@example.com",
                 "detail": {"reply": "550 no"}},
            ])  # fmt: skip
        async with webhook_receiver() as receiver:
            code, out, err = await cli(config, "webhooks", "add", receiver.url, "--events", "delivered,bounced",
                                       "--json")  # fmt: skip
            assert code == 0, err
            made = json.loads(out)
            receiver.secret = made["secret"]
            code, out, _ = await cli(config, "webhooks", "ls")
            assert made["id"] in out and "enabled" in out and made["secret"] not in out

            code, out, err = await cli(config, "webhooks", "test", made["id"])
            assert code == 0, err
            assert "answered 204" in out and receiver.verified[-1].payload["type"] == "webhook.test"

            code, out, _ = await cli(config, "webhooks", "replay", "--from", "2020-01-01", "--json")
            assert code == 0 and json.loads(out) == {"enqueued": 2}
            async with engine.connect() as conn:
                queued = (await conn.execute(sa.select(webhook_deliveries.c.type))).scalars().all()
            assert sorted(queued) == ["bounced", "delivered"]

            code, out, err = await cli(config, "webhooks", "add", receiver.url, "--events", "opened")
            assert code == 1 and "unknown event type" in err
            code, _, err = await cli(config, "webhooks", "replay")
            assert code == 2 and "--event" in err
            code, out, _ = await cli(config, "webhooks", "disable", made["id"])
            assert code == 0
            receiver.mode = "fail"
            code, out, err = await cli(config, "webhooks", "test", made["id"], "--json")
            assert code == 1 and json.loads(out)["status"] == 500
            code, out, _ = await cli(config, "webhooks", "ls", "--json")
            assert json.loads(out)[0]["enabled"] is False and json.loads(out)[0]["pending"] == 2
            code, _, _ = await cli(config, "webhooks", "rm", made["id"])
            assert code == 0
            code, _, err = await cli(config, "webhooks", "rm", made["id"])
            assert code == 1 and "no webhook endpoint" in err
    finally:
        await engine.dispose()

