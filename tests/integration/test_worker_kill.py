"""Killing one daemon process (the OOM killer does) must not take the daemon down.

A real `postroom serve` with two processes delivers to a local sink while clients stream messages
over SMTP. One worker process at a time is killed with SIGKILL, several times. The supervisor must
live on, start a replacement on the same sockets, and stay ready; the deliveries the dead process
held come back when their lease runs out. In the end every acknowledged message is at the sink, and
a message arrives twice only within what the kills left uncertain: deliveries leased to a killed
process (it may have sent them before it could record it) and messages whose 250 was lost with the
connection (the client sends them again).

The supervisor once died here: its restart path called prometheus-client's mark_process_dead
without the metrics directory, raised TypeError, and every worker died with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib
import pytest

from tests.support import (
    SinkHandler,
    alive,
    children_of,
    free_port,
    postroom_cli,
    smtp_sink,
    start_daemon,
    token_of,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow

KILLS = 4
SESSIONS = 4
PER_CONNECTION = 25  # reconnect now and then, so sessions spread over both processes
LEASE_SECONDS = 2.0
BODY = b"y" * 70 + b"\r\n"


def message(token: str) -> bytes:
    return (
        f"From: load@postroom.test\r\nTo: sink@example.com\r\nSubject: kill {token}\r\n"
        f"X-Test-Token: {token}\r\n\r\n"
    ).encode() + BODY * 20


@dataclass
class Clients:
    acked: set[str] = field(default_factory=set)
    uncertain: int = 0  # DATA sent but no reply: maybe committed, and sent again
    errors: int = 0

    async def session(self, port: int, prefix: str, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
            try:
                await smtp.connect()
                for _ in range(PER_CONNECTION):
                    if stop.is_set():
                        break
                    token = f"{prefix}-{n}"
                    await smtp.mail("load@postroom.test")
                    await smtp.rcpt("sink@example.com")
                    try:
                        await smtp.data(message(token))
                    except (aiosmtplib.SMTPException, OSError):
                        self.uncertain += 1
                        raise
                    self.acked.add(token)  # only after the 250
                    n += 1
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                self.errors += 1
                smtp.close()
                await asyncio.sleep(0.05)


def _ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _leased_to(database: Path, pid: int) -> int:
    """Deliveries leased to process `pid` (owner "host:pid:random"), read right after its death,
    before their lease runs out and the reaper hands them to a live process."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
        [(count,)] = db.execute(
            "SELECT count(*) FROM deliveries WHERE state = 'sending' AND lease_owner LIKE ?",
            (f"%:{pid}:%",),
        ).fetchall()
    return int(count)


def _ready_lines(log: Path) -> int:
    """How many daemon processes have said "postroom ready" (each start, replacements included)."""
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            if json.loads(line).get("msg", "").startswith("postroom ready:"):
                count += 1
    return count


async def test_killing_worker_processes_keeps_the_daemon_delivering(tmp_path: Path) -> None:
    handler = SinkHandler()
    async with smtp_sink(handler) as (_, sink_port):
        submission, http = free_port(), free_port()
        database = tmp_path / "queue.db"
        config = write_config(
            tmp_path / "postroom.toml", db_url=f"sqlite+aiosqlite:///{database}",
            submission_port=submission, http_port=http, mx_port=free_port(), sink_port=sink_port,
            lease_seconds=LEASE_SECONDS, processes=2,
        )  # fmt: skip
        # Info level, so each daemon process logs "postroom ready" (replacements included).
        config.write_text(config.read_text().replace('level = "warning"', 'level = "info"'))
        postroom_cli("db", "upgrade", "--config", str(config))
        log = tmp_path / "daemon.log"
        daemon = start_daemon(config, log)
        clients = Clients()
        stop_clients = asyncio.Event()
        sessions: list[asyncio.Task[None]] = []
        killed: list[int] = []
        leased_to_killed = 0

        def delivered() -> Counter[str]:
            return Counter(t for t in (token_of(m.content) for m in handler.messages) if t)

        try:
            await wait_until(lambda: _ready(http) and _ready_lines(log) == 2, 60,
                             what="both daemon processes ready")  # fmt: skip
            sessions = [
                asyncio.create_task(clients.session(submission, f"s{s}", stop_clients))
                for s in range(SESSIONS)
            ]
            for kill in range(KILLS):
                target = len(clients.acked) + 150
                await wait_until(lambda: len(clients.acked) >= target, 60,
                                 what=f"150 more acknowledged messages before kill {kill + 1}")  # fmt: skip
                before = children_of(daemon.pid)
                assert len(before) == 2, f"children before kill {kill + 1}: {before}"
                victim = sorted(before)[kill % 2]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
                leased_to_killed += _leased_to(database, victim)
                await wait_until(lambda: not alive(victim), 10, what=f"pid {victim} to die")
                # The survivor answers at once; the supervisor must still be there to restart.
                await wait_until(lambda: _ready(http), 5, what=f"/readyz after kill {kill + 1}")
                await wait_until(
                    lambda: len(children_of(daemon.pid) - before) == 1
                    and len(children_of(daemon.pid)) == 2,
                    15, what=f"a replacement for pid {victim}",
                )  # fmt: skip
                assert daemon.poll() is None, "the supervisor died"
                await wait_until(lambda: _ready_lines(log) == 3 + kill, 60,
                                 what=f"the replacement after kill {kill + 1} to be ready")  # fmt: skip
                assert _ready(http)
            target = len(clients.acked) + 150
            await wait_until(lambda: len(clients.acked) >= target, 60,
                             what="150 more acknowledged messages after the last kill")  # fmt: skip
            stop_clients.set()
            await asyncio.wait_for(asyncio.gather(*sessions), timeout=30)
            await wait_until(lambda: clients.acked <= set(delivered()), 90, interval=0.2,
                             what="every acknowledged message at the sink")  # fmt: skip
            await asyncio.sleep(LEASE_SECONDS * 2)  # let late redeliveries of reaped leases land
            assert _ready(http)
        finally:
            stop_clients.set()
            for task in sessions:
                task.cancel()
            daemon.send_signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(daemon.wait, 60)
    assert exit_code == 0, log.read_text()[-3000:]
    counts = delivered()
    duplicates = sum(n - 1 for n in counts.values())
    bound = leased_to_killed + clients.uncertain
    print(
        f"\nkills={len(killed)} acknowledged={len(clients.acked)} deliveries={sum(counts.values())}"
        f" unique={len(counts)} duplicates={duplicates} leased_to_killed={leased_to_killed}"
        f" uncertain_sends={clients.uncertain} client_errors={clients.errors}"
    )
    assert len(killed) == KILLS
    missing = clients.acked - set(counts)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
    assert duplicates <= bound, (
        f"{duplicates} duplicate deliveries, more than the {leased_to_killed} deliveries leased to"
        f" killed processes plus {clients.uncertain} sends whose reply was lost"
    )
    text = log.read_text()
    assert "could not clean up the metrics" not in text
    assert "Traceback" not in text, text[-3000:]
