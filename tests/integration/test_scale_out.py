"""Two daemons on one PostgreSQL database drain 5,000 messages, each delivered exactly once; when one
is killed midway, none is lost and the only duplicates are messages it had in flight."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from postroom.core.types import Submission
from postroom.queue.sql_store import SqlQueueStore
from postroom.store import schema
from postroom.store.engine import create_engine
from postroom.store.tables import deliveries
from postroom.config import DatabaseSettings
from tests.support import (
    SinkHandler,
    free_port,
    smtp_sink,
    start_daemon,
    token_of,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

MESSAGES = 5000


class SlowSink(SinkHandler):
    """Takes a little time per message, so the drain lasts long enough to kill a daemon midway."""

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.004)
        return await super().handle_DATA(server, session, envelope)


async def queue_messages(db_url: str, count: int) -> None:
    engine = create_engine(DatabaseSettings(url=db_url))
    try:
        await schema.upgrade(engine)
        store = SqlQueueStore(engine)
        for start in range(0, count, 500):
            await store.insert_many(
                [
                    Submission(
                        mail_from="load@postroom.test",
                        recipients=("sink@example.com",),
                        content=(f"From: load@postroom.test\r\nSubject: n{n}\r\n"
                                 f"X-Test-Token: t{n}\r\n\r\nbody {n}\r\n").encode(),  # fmt: skip
                        source="cli",
                    )
                    for n in range(start, min(start + 500, count))
                ],
                now=0.0,
            )
    finally:
        await engine.dispose()


async def leased_tokens(db_url: str, pid: int) -> set[str]:
    """Tokens of the deliveries the process `pid` holds a lease on (its in-flight work)."""
    engine = create_engine(DatabaseSettings(url=db_url))
    try:
        async with engine.connect() as conn:
            ids = list((await conn.execute(
                sa.select(deliveries.c.message_id).where(
                    deliveries.c.state == "sending",
                    deliveries.c.lease_owner.like(f"%:{pid}:%"),
                )
            )).scalars())  # fmt: skip
        store = SqlQueueStore(engine)
        loaded = await store.load_messages(ids)
    finally:
        await engine.dispose()
    return {token for m in loaded.values() if (token := token_of(m.content))}


def delivered_metric(http_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("postroom_delivered_total{")
    )


async def test_two_daemons_share_the_queue_and_survive_a_kill(tmp_path: Path, pg_url: str) -> None:
    await queue_messages(pg_url, MESSAGES)
    handler = SlowSink()
    async with smtp_sink(handler) as (_, sink_port):
        ports = [(free_port(), free_port(), free_port()) for _ in range(2)]
        configs = [
            write_config(tmp_path / f"d{i}.toml", db_url=pg_url, submission_port=s, http_port=h,
                         mx_port=m, sink_port=sink_port, lease_seconds=3)  # fmt: skip
            for i, (s, h, m) in enumerate(ports)
        ]
        daemons = [start_daemon(c, tmp_path / f"d{i}.log") for i, c in enumerate(configs)]
        try:
            await wait_until(lambda: len(handler.messages) >= 1500, 120, what="1,500 deliveries")
            victim, survivor = daemons
            assert delivered_metric(ports[0][1]) > 0, "the first daemon must have been delivering"
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(timeout=10)
            in_flight = await leased_tokens(pg_url, victim.pid)

            def tokens() -> Counter[str]:
                return Counter(t for t in (token_of(m.content) for m in handler.messages) if t)

            await wait_until(lambda: len(tokens()) >= MESSAGES, 180, interval=0.2,
                             what="all 5,000 messages at the sink")  # fmt: skip
            assert delivered_metric(ports[1][1]) > 0, "the second daemon must have delivered too"
        finally:
            for daemon in daemons:
                if daemon.poll() is None:
                    daemon.send_signal(signal.SIGTERM)
                    daemon.wait(timeout=30)
    received = tokens()
    assert set(received) == {f"t{n}" for n in range(MESSAGES)}, "every message delivered"
    duplicates = {token for token, count in received.items() if count > 1}
    print(f"\nin flight on the killed daemon: {len(in_flight)}; duplicates: {len(duplicates)}")
    assert duplicates <= in_flight, f"duplicates outside the killed daemon's leases: {sorted(duplicates - in_flight)[:5]}"
    assert all(count <= 2 for count in received.values())
