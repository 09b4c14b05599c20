"""Two daemons on one PostgreSQL database drain 5,000 queued messages; one is killed with SIGKILL
midway. None is lost, and the only duplicates are exactly the deliveries the killed daemon had sent
but not yet recorded: those leased to it in the database right after the kill (read at once, before
the leases run out) that had reached the sink by then. Each of those arrives exactly twice (the
survivor sends it again once the reaper returns it), every other message exactly once.

(Exactly once without a kill, for two daemons and for two processes: test_exactly_once.py.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
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
    Serving,
    SinkHandler,
    smtp_sink,
    start_serving,
    token_of,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

MESSAGES = 5000
# The killed daemon's leases were extended at most lease/3 before the kill, so none runs out (and
# is resent) sooner than 2/3 of this after it: the window for reading what it held and had sent.
LEASE_SECONDS = 6.0


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


async def undelivered(db_url: str) -> int:
    engine = create_engine(DatabaseSettings(url=db_url))
    try:
        async with engine.connect() as conn:
            count = await conn.scalar(
                sa.select(sa.func.count()).select_from(deliveries).where(deliveries.c.state != "delivered")
            )
    finally:
        await engine.dispose()
    return int(count or 0)


def delivered_metric(serving: Serving) -> float:
    with urllib.request.urlopen(serving.url("/metrics"), timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("postroom_delivered_total{")
    )


async def test_killing_one_of_two_daemons_loses_nothing_and_resends_only_what_it_sent_unrecorded(
    tmp_path: Path, pg_url: str
) -> None:
    await queue_messages(pg_url, MESSAGES)
    handler = SlowSink()

    def arrivals() -> Counter[str]:
        return Counter(t for t in (token_of(m.content) for m in handler.messages) if t)

    async with smtp_sink(handler) as (_, sink_port):
        configs = [
            write_config(tmp_path / f"d{i}.toml", db_url=pg_url, submission_port=0, http_port=0,
                         mx_port=0, sink_port=sink_port, lease_seconds=LEASE_SECONDS)  # fmt: skip
            for i in range(2)
        ]
        daemons: list[Serving] = []
        try:
            for i, config in enumerate(configs):
                daemons.append(await start_serving(config, tmp_path / f"d{i}.log"))
            victim, survivor = daemons
            await wait_until(lambda: len(handler.messages) >= 1500, 120, what="1,500 deliveries",
                             alive=[victim.process, survivor.process])  # fmt: skip
            assert delivered_metric(victim) > 0, "the first daemon must have been delivering"
            assert not [t for t, n in arrivals().items() if n > 1], "a duplicate before any kill"
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            victim.process.wait(timeout=10)
            in_flight = await leased_tokens(pg_url, victim.pid)
            await asyncio.sleep(0.5)  # its last sends, already on the wire, reach the sink
            sent_unrecorded = in_flight & set(arrivals())
            looked = time.monotonic() - killed_at
            assert looked < LEASE_SECONDS * 2 / 3, f"too slow ({looked:.1f}s) to tell sent from resent"

            async def finished() -> bool:
                return len(arrivals()) >= MESSAGES and await undelivered(pg_url) == 0

            await wait_until(finished, 180, interval=0.5, what="all 5,000 messages delivered",
                             alive=[survivor.process])  # fmt: skip
            await asyncio.sleep(1.0)  # anything still coming
            assert delivered_metric(survivor) > 0, "the second daemon must have delivered too"
        finally:
            for daemon in daemons:
                await daemon.stop(30)
    received = arrivals()
    assert set(received) == {f"t{n}" for n in range(MESSAGES)}, "every message delivered"
    duplicates = {token: count for token, count in received.items() if count > 1}
    print(f"\nleased to the killed daemon: {len(in_flight)}, of which sent before it died:"
          f" {len(sent_unrecorded)}; duplicates: {len(duplicates)}")  # fmt: skip
    assert set(duplicates) == sent_unrecorded, (
        f"duplicates not sent unrecorded by the killed daemon: {sorted(set(duplicates) - sent_unrecorded)[:5]};"
        f" sent unrecorded but not sent again: {sorted(sent_unrecorded - set(duplicates))[:5]}"
    )
    assert all(count == 2 for count in duplicates.values()), sorted(duplicates.items())[:5]
