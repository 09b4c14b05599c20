"""A message acknowledged with 250 is never lost: not even on `kill -9` of the daemon mid-load.

A client sends 2,000 messages over 10 sessions, each with a unique token, and records every 250.
The daemon (a real `postroom serve` process, SQLite, smarthost delivery to a sink in this test) is
killed with SIGKILL midway and restarted; clients retry what was not acknowledged. In the end every
acknowledged token must have reached the sink.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiosmtplib
import pytest

from tests.support import (
    SinkHandler,
    free_port,
    postroom_cli,
    smtp_sink,
    start_daemon,
    token_of,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow

SESSIONS = 10
PER_SESSION = 200
BODY = b"x" * 70 + b"\r\n"


def message(token: str) -> bytes:
    return (
        f"From: load@postroom.test\r\nTo: sink@example.com\r\nSubject: crash {token}\r\n"
        f"X-Test-Token: {token}\r\n\r\n"
    ).encode() + BODY * 60


async def client_session(port: int, tokens: list[str], acked: set[str], deadline: float) -> None:
    """Send every token, reconnecting and resending whatever did not get a 250."""
    loop = asyncio.get_running_loop()
    pending = list(tokens)
    while pending and loop.time() < deadline:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
        try:
            await smtp.connect()
            while pending:
                token = pending[0]
                await smtp.sendmail("load@postroom.test", ["sink@example.com"], message(token))
                acked.add(token)  # only after the 250
                pending.pop(0)
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()
            await asyncio.sleep(0.1)


async def test_every_acknowledged_message_survives_kill_9(tmp_path: Path) -> None:
    handler = SinkHandler()
    async with smtp_sink(handler) as (_, sink_port):
        submission = free_port()
        config = write_config(
            tmp_path / "postroom.toml",
            db_url=f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}",
            submission_port=submission,
            http_port=free_port(),
            mx_port=free_port(),
            sink_port=sink_port,
        )
        postroom_cli("db", "upgrade", "--config", str(config))
        log = tmp_path / "daemon.log"
        daemon = start_daemon(config, log)
        acked: set[str] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 240
        clients = asyncio.gather(
            *(
                client_session(
                    submission, [f"s{s}-m{m}" for m in range(PER_SESSION)], acked, deadline
                )
                for s in range(SESSIONS)
            )
        )
        try:
            await wait_until(lambda: len(acked) >= 700, 120, what="700 acknowledged messages")
            os.kill(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=10)
            acked_at_kill = len(acked)
            await asyncio.sleep(0.5)  # clients see refused connections meanwhile
            daemon = start_daemon(config, log)
            await asyncio.wait_for(clients, timeout=240)
        except BaseException:
            daemon.kill()
            raise
        assert acked_at_kill < SESSIONS * PER_SESSION, "the kill must happen mid-load"
        assert len(acked) == SESSIONS * PER_SESSION

        def delivered() -> set[str]:
            return {t for t in (token_of(m.content) for m in handler.messages) if t}

        try:
            await wait_until(lambda: acked <= delivered(), 120, interval=0.2,
                             what="every acknowledged message at the sink")  # fmt: skip
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=30) == 0, log.read_text()[-3000:]
        missing = acked - delivered()
        assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
