"""A message acknowledged with 250 is never lost: not even on `kill -9` of the daemon mid-load.

A client sends 2,000 messages over 10 sessions, each with a unique token, and records every 250.
The daemon (a real `postroom serve` process, SQLite, smarthost delivery to a sink in this test) is
killed with SIGKILL midway and restarted; clients retry what was not acknowledged. In the end every
acknowledged token must have reached the sink, and a token arrives twice only where the kill left it
uncertain: a delivery leased to the killed process that had reached the sink before it could record
that (read from the database right after the kill), or a message whose 250 the client never got
and sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from tests.support import (
    Serving,
    SinkHandler,
    free_port,
    postroom_cli,
    smtp_sink,
    start_serving,
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


async def client_session(port: int, tokens: list[str], acked: set[str], deadline: float,
                         uncertain: set[str]) -> None:  # fmt: skip
    """Send every token, reconnecting and resending whatever did not get a 250. A token whose
    transaction broke off is `uncertain`: it may have been committed, and is sent again."""
    loop = asyncio.get_running_loop()
    pending = list(tokens)
    while pending and loop.time() < deadline:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
        try:
            await smtp.connect()
            while pending:
                token = pending[0]
                try:
                    await smtp.sendmail("load@postroom.test", ["sink@example.com"], message(token))
                except BaseException:
                    uncertain.add(token)
                    raise
                acked.add(token)  # only after the 250
                pending.pop(0)
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()
            await asyncio.sleep(0.1)


def _query(database: Path, sql: str, *params: object) -> list[Any]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
        return db.execute(sql, params).fetchall()


def leased_tokens(database: Path, pid: int) -> set[str]:
    """Tokens of the deliveries leased to process `pid` (owner "host:pid:random"): read right
    after its death, before the leases run out and the reaper hands them to the next process."""
    rows = _query(database, "SELECT m.content FROM deliveries d JOIN messages m ON m.id = d.message_id"
                            " WHERE d.state = 'sending' AND d.lease_owner LIKE ?", f"%:{pid}:%")  # fmt: skip
    return {token for (content,) in rows if (token := token_of(bytes(content)))}


def undelivered(database: Path) -> int:
    [(count,)] = _query(database, "SELECT count(*) FROM deliveries WHERE state != 'delivered'")
    return int(count)


async def test_every_acknowledged_message_survives_kill_9_and_only_uncertain_ones_arrive_twice(
    tmp_path: Path,
) -> None:
    handler = SinkHandler()
    async with smtp_sink(handler) as (_, sink_port):
        # The restarted daemon must listen where the clients reconnect: a fixed submission port.
        submission = free_port()
        database = tmp_path / "queue.db"
        config = write_config(
            tmp_path / "postroom.toml",
            db_url=f"sqlite+aiosqlite:///{database}",
            submission_port=submission,
            http_port=0,
            mx_port=0,
            sink_port=sink_port,
        )
        postroom_cli("db", "upgrade", "--config", str(config))
        log = tmp_path / "daemon.log"
        serving: Serving = await start_serving(config, log)
        acked: set[str] = set()
        uncertain: set[str] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 240
        clients = asyncio.gather(
            *(
                client_session(
                    submission, [f"s{s}-m{m}" for m in range(PER_SESSION)], acked, deadline, uncertain
                )
                for s in range(SESSIONS)
            )
        )

        def arrivals() -> Counter[str]:
            return Counter(t for t in (token_of(m.content) for m in handler.messages) if t)

        try:
            await wait_until(lambda: len(acked) >= 700, 120, what="700 acknowledged messages",
                             alive=[serving.process])  # fmt: skip
            victim = serving.process.pid
            os.kill(victim, signal.SIGKILL)
            serving.process.wait(timeout=10)
            serving.close_notify_socket()
            acked_at_kill = len(acked)
            in_flight = leased_tokens(database, victim)
            await asyncio.sleep(0.5)  # clients see refused connections meanwhile
            # What the killed process had sent and not recorded: here by now (the sink is in this
            # loop), and sent again only once its leases expire, after the restart below.
            sent_unrecorded = in_flight & set(arrivals())
            serving = await start_serving(config, log)
            await asyncio.wait_for(clients, timeout=240)
        except BaseException:
            serving.process.kill()
            raise
        assert acked_at_kill < SESSIONS * PER_SESSION, "the kill must happen mid-load"
        assert len(acked) == SESSIONS * PER_SESSION

        try:
            await wait_until(lambda: acked <= set(arrivals()) and undelivered(database) == 0, 120,
                             interval=0.2, what="every message delivered", alive=[serving.process])  # fmt: skip
            await asyncio.sleep(1.0)  # anything still coming
        finally:
            assert await serving.stop(30) == 0, log.read_text()[-3000:]
        received = arrivals()
    missing = acked - set(received)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
    duplicates = {t: n for t, n in received.items() if n > 1}
    print(f"\nleased to the killed process: {len(in_flight)}, of which sent: {len(sent_unrecorded)};"
          f" uncertain client sends: {len(uncertain)}; duplicates: {len(duplicates)}")  # fmt: skip
    allowed = {t: 1 + (t in sent_unrecorded) + (t in uncertain) for t in received}
    beyond = {t: n for t, n in received.items() if n > allowed[t]}
    assert not beyond, f"arrivals beyond what the kill left uncertain: {sorted(beyond.items())[:5]}"
    # And at least once: what the killed process sent without recording it was sent again.
    assert all(received[t] >= 2 for t in sent_unrecorded), "unrecorded sends not sent again"
