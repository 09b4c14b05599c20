"""When nothing fails, every message is delivered exactly once, however many processes share the
queue: two `postroom serve` daemons on one PostgreSQL database, and one daemon of two processes on
SQLite.

2,000 messages, each with its own token, go in over SMTP (sessions spread over the daemons and
their processes); every one must reach the one sink exactly once, with no duplicate and none
missing, still so a second after the last arrival; `postroom_delivered_total` summed over the
daemons must say 2,000, and the database one delivered attempt and one `delivered` event each. Each daemon hands what it accepts to its own worker under a lease written in
the accepting commit, while that worker has room (`max_in_flight`). The first daemon takes most of
the sessions and may hold only a few deliveries, so much of its mail is queued instead and claimed
from the database by whichever worker gets to it first: the second daemon must have delivered more
than it accepted. So both ways to a worker are exercised, and the daemons' claims race (on SQLite,
both processes hold few and claim).

(With a kill, at-least-once allows duplicates: see test_scale_out.py and test_crash_safety.py.)
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import Counter
from pathlib import Path

import aiosmtplib
import pytest
import sqlalchemy as sa
from aiosmtpd.smtp import SMTP, Envelope, Session

from postroom.config import DatabaseSettings
from postroom.store.engine import create_engine
from postroom.store.tables import deliveries, events
from tests.support import (
    Serving,
    SinkHandler,
    postroom_cli,
    smtp_sink,
    start_serving,
    token_of,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow

MESSAGES = 2000
SESSIONS = 8
PER_CONNECTION = 50  # reconnect now and then, so connections spread over processes too
# The first daemon's worker may hold few deliveries at once, so much of what it accepts is queued
# rather than handed to it, and the other daemon's worker (or another process) claims it.
MAX_IN_FLIGHT = (10, 200)


class TimedSink(SinkHandler):
    """Records when each message arrived, too."""

    def __init__(self) -> None:
        super().__init__()
        self.arrival_times: list[float] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.arrival_times.append(time.monotonic())
        return await super().handle_DATA(server, session, envelope)

    def tokens(self) -> Counter[str]:
        return Counter(t for t in (token_of(m.content) for m in self.messages) if t)


def message(token: str) -> bytes:
    return (f"From: load@postroom.test\r\nTo: sink@example.com\r\nSubject: once {token}\r\n"
            f"X-Test-Token: {token}\r\n\r\nbody of {token}\r\n").encode()  # fmt: skip


async def submit(ports: list[int], tokens: list[str]) -> None:
    """Send every token once. Nothing may fail here: a client resending after an error could
    itself make a duplicate, so any error fails the test instead."""

    async def session(port: int, chunk: list[str]) -> None:
        for start in range(0, len(chunk), PER_CONNECTION):
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60) as smtp:
                for token in chunk[start : start + PER_CONNECTION]:
                    await smtp.sendmail("load@postroom.test", ["sink@example.com"], message(token))

    # Most sessions to the first daemon: it has more than its worker may hold, so the rest waits in
    # the queue for whichever worker claims it first.
    sessions = [ports[0] if i % 4 or len(ports) == 1 else ports[-1] for i in range(SESSIONS)]
    chunks = [tokens[i::SESSIONS] for i in range(SESSIONS)]
    await asyncio.gather(*(session(port, chunk) for port, chunk in zip(sessions, chunks)))


async def recorded(db_url: str) -> tuple[Counter[tuple[str, int]], Counter[str]]:
    """(deliveries by state and attempts, events by type) as the database has them."""
    engine = create_engine(DatabaseSettings(url=db_url))
    try:
        async with engine.connect() as conn:
            states = Counter({(row[0], row[1]): row[2] for row in await conn.execute(
                sa.select(deliveries.c.state, deliveries.c.attempts, sa.func.count())
                .group_by(deliveries.c.state, deliveries.c.attempts)
            )})  # fmt: skip
            types = Counter({row[0]: row[1] for row in await conn.execute(
                sa.select(events.c.type, sa.func.count()).group_by(events.c.type)
            )})  # fmt: skip
    finally:
        await engine.dispose()
    return states, types


def metric_total(serving: Serving, name: str) -> float:
    with urllib.request.urlopen(serving.url("/metrics"), timeout=10) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{"))


async def deliver_exactly_once(tmp_path: Path, db_url: str, daemons: int, processes: int) -> list[Serving]:
    """Run `daemons` daemons of `processes` processes each on `db_url`, push MESSAGES through them
    and check the sink and the counters; return the daemons (stopped) for further checks."""
    handler = TimedSink()
    servings: list[Serving] = []
    async with smtp_sink(handler) as (_, sink_port):
        configs = []
        for i in range(daemons):
            config = write_config(tmp_path / f"d{i}.toml", db_url=db_url, submission_port=0, http_port=0,
                                  mx_port=0, sink_port=sink_port, processes=processes)  # fmt: skip
            limit = f"[delivery]\nmax_in_flight = {MAX_IN_FLIGHT[min(i, 1)]}\n"
            config.write_text(config.read_text().replace("[delivery]\n", limit))
            configs.append(config)
        postroom_cli("db", "upgrade", "--config", str(configs[0]))
        try:
            for i, config in enumerate(configs):
                servings.append(await start_serving(config, tmp_path / f"d{i}.log"))
            alive = [s.process for s in servings]
            tokens = [f"t{n}" for n in range(MESSAGES)]
            await asyncio.wait_for(submit([s.port("submission") for s in servings], tokens), 300)
            await wait_until(lambda: len(handler.tokens()) >= MESSAGES, 180, interval=0.1, alive=alive,
                             what=f"all {MESSAGES} messages at the sink")  # fmt: skip
            # Whatever is still coming comes within a second: wait until the last arrival is a
            # second old (a late duplicate counts as an arrival and starts the second again).
            while (quiet := handler.arrival_times[-1] + 1.0 - time.monotonic()) > 0:
                await asyncio.sleep(quiet)
            received = handler.tokens()
            duplicates = {t: n for t, n in received.items() if n > 1}
            assert not duplicates, f"{len(duplicates)} messages delivered more than once, e.g. {list(duplicates.items())[:5]}"
            assert set(received) == set(tokens) and len(handler.messages) == MESSAGES

            # The outcome is counted once it is recorded, just after the message has left.
            def delivered() -> float:
                return sum(metric_total(s, "postroom_delivered_total") for s in servings)

            await wait_until(lambda: delivered() == MESSAGES, 5, alive=alive,
                             what=f"postroom_delivered_total summed over the daemons to say {MESSAGES}")  # fmt: skip
            accepted = [metric_total(s, "postroom_messages_accepted_total") for s in servings]
            assert sum(accepted) == MESSAGES and all(accepted), accepted
            per_daemon = [metric_total(s, "postroom_delivered_total") for s in servings]
            print(f"\naccepted per daemon {accepted}; delivered per daemon {per_daemon}")
            if daemons > 1:
                assert per_daemon[-1] > accepted[-1], "the second daemon claimed mail the first accepted"
        finally:
            codes = [await s.stop() for s in servings]
    assert codes == [0] * len(servings), [s.process.log_tail() for s in servings]
    assert len(handler.messages) == MESSAGES, "nothing more arrived while the daemons stopped"
    # The records agree: each delivery delivered in one attempt, one `delivered` event each.
    states, types = await recorded(db_url)
    assert states == Counter({("delivered", 1): MESSAGES}), states
    assert types == Counter({"accepted": MESSAGES, "delivered": MESSAGES}), types
    for serving in servings:
        text = serving.process.log.read_text()
        assert "Traceback" not in text, text[-3000:]
    return servings


@pytest.mark.postgres
async def test_two_daemons_on_one_postgresql_database_deliver_every_message_exactly_once(
    tmp_path: Path, pg_url: str
) -> None:
    await deliver_exactly_once(tmp_path, pg_url, daemons=2, processes=1)


async def test_a_daemon_of_two_processes_on_sqlite_delivers_every_message_exactly_once(tmp_path: Path) -> None:
    await deliver_exactly_once(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}", daemons=1, processes=2)
