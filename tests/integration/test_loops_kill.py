"""A daemon killed with SIGKILL mid-run and restarted sends no recipient twice through Loops: the
Idempotency-Key of each delivery holds (issue 14, docs/loops-route.md "Idempotency").

A real `postroom serve` (two processes, SQLite) routes the transactional stream to Loops (`postroom
route set --mode legacy`), with `base_url` a fake Loops on 127.0.0.1 that keeps keys as Loops does:
the first request with a key is accepted (recorded when it arrives, before its answer), a later one
with the same key is answered 409. Templated messages to a few hundred recipients are queued through
the native API while the fake holds its answers; then the fake answers each request after 20-50 ms
(every 8th after 1.5 s), and once it has accepted 30% of the recipients the supervisor and both
children are killed with SIGKILL. At that moment requests are in flight: Loops took them, the
daemon never learnt it. The daemon restarts on the same database; the deliveries leased to the dead
processes come back when their lease runs out and are sent again with the same keys.

In the end every recipient was accepted by the fake exactly once, every delivery is `delivered`,
and the kill did land mid-run: sends were accepted before it and after the restart, and retries
after the restart reused keys the killed daemon had sent (answered 409, recorded as delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.loops_fake import FakeLoops, Received, fake_loops
from tests.support import Serving, alive, children_of, postroom_cli, start_serving, wait_until

pytestmark = pytest.mark.slow

MESSAGES = 80
PER_MESSAGE = 4  # recipients of one message go to Loops one after another in one job
RECIPIENTS = MESSAGES * PER_MESSAGE
KILL_AT = 0.4  # share of the recipients Loops has accepted when the daemon is killed
LEASE_SECONDS = 2.0
TRANSACTIONAL_ID = "cltx-receipt"
TEMPLATE = {
    "id": "receipt",
    "subject": "Receipt {{ order }}",
    "from": "shop@postroom.test",
    "html": "<p>{{ name }}: order {{ order }}</p>",
    "schema": {"type": "object", "required": ["name", "order"]},
}


def write_config(tmp_path: Path, database: Path, loops_url: str) -> Path:
    """Capture delivery in-house (nothing should go there), Loops at the fake, two processes."""
    path = tmp_path / "postroom.toml"
    path.write_text(
        f"""state_dir = "{tmp_path}"
[database]
url = "sqlite+aiosqlite:///{database}"
[http]
listen = "127.0.0.1:0"
[http.rate_limit]
enabled = false
[smtp]
hostname = "mail.postroom.test"
submission_listen = "127.0.0.1:0"
mx_listen = "127.0.0.1:0"
trusted_networks = []
[delivery]
mode = "capture"
capture_dir = "{tmp_path / 'outbox'}"
lease_seconds = {LEASE_SECONDS}
poll_interval = 0.1
retry_base = 1
retry_max = 2
[log]
format = "json"
level = "info"
[processes]
count = 2
[loops]
api_key = "test"
base_url = "{loops_url}"
rate_limit = "1000/s"
timeout = 10
[loops.templates]
receipt = "{TRANSACTIONAL_ID}"

[[domains]]
name = "postroom.test"
dkim = "off"
"""
    )
    return path


def recipient(message: int, n: int) -> str:
    return f"r{message:03d}-{n}@example.com"


class Pace:
    """20-50 ms per answer; until the kill, 1 s for every 8th recipient: answers still on their way
    when the daemon dies, for sends Loops has already accepted."""

    def __init__(self) -> None:
        self.slow = True

    def __call__(self, received: Received) -> float:
        index = int(received.body["email"][1:4]) * PER_MESSAGE + int(received.body["email"][5])
        return 1.0 if self.slow and index % 8 == 3 else 0.02 + (index % 4) * 0.01


def _query(database: Path, sql: str, *params: object) -> list[Any]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
        return db.execute(sql, params).fetchall()


def states(database: Path) -> dict[tuple[str, str], int]:
    """(route, state) -> deliveries."""
    return {(route, state): n for route, state, n in
            _query(database, "SELECT route, state, count(*) FROM deliveries GROUP BY route, state")}  # fmt: skip


def final(database: Path) -> bool:
    current = states(database)
    return sum(current.values()) == RECIPIENTS and not any(
        state in ("queued", "deferred", "sending") for _, state in current
    )


async def kill_daemon(serving: Serving) -> None:
    """SIGKILL to the supervisor and both its children at once, as a power cut would."""
    children = children_of(serving.pid)
    assert len(children) == 2, f"children of the supervisor: {children}"
    for pid in (*children, serving.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    await asyncio.to_thread(serving.process.wait, 10)
    serving.close_notify_socket()
    await wait_until(lambda: not any(alive(pid) for pid in children), 10, what="the children to die")


async def submit(serving: Serving, token: str) -> None:
    """Publish the template and queue every message through the native API."""
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(serving.url(), headers=headers) as session:
        async with session.post("/v1/templates", json=TEMPLATE) as response:
            assert response.status == 201, await response.text()
        async with session.post("/v1/templates/receipt/publish", json={"version": 1}) as response:
            assert response.status == 200, await response.text()

        async def send(m: int) -> None:
            body = {"to": [recipient(m, n) for n in range(PER_MESSAGE)], "template": {"id": "receipt"},
                    "data": {"name": f"Customer {m}", "order": str(1000 + m)}}  # fmt: skip
            async with session.post("/v1/messages", json=body) as response:
                assert response.status == 202, await response.text()

        for first in range(0, MESSAGES, 10):
            await asyncio.gather(*(send(m) for m in range(first, min(first + 10, MESSAGES))))


async def test_a_daemon_killed_mid_run_sends_no_recipient_twice_through_loops(tmp_path: Path) -> None:
    database = tmp_path / "queue.db"
    log = tmp_path / "daemon.log"
    everyone = {recipient(m, n) for m in range(MESSAGES) for n in range(PER_MESSAGE)}
    async with fake_loops(idempotent=True) as loops:
        loops.delay_of = pace = Pace()
        config = write_config(tmp_path, database, loops.url)
        postroom_cli("db", "upgrade", "--config", str(config))
        token = postroom_cli("apikeys", "create", "--name", "t", "--role", "admin",
                             "--config", str(config)).stdout.strip().splitlines()[-1]  # fmt: skip
        postroom_cli("route", "set", "--stream", "transactional", "--mode", "legacy", "--reason", "test",
                     "--config", str(config))  # fmt: skip

        loops.hold()  # nothing answered (nor accepted) until every message is queued
        serving = await start_serving(config, log)
        try:
            await submit(serving, token)
            assert sum(states(database).values()) == RECIPIENTS
            assert {route for route, _ in states(database)} == {"loops"}, states(database)
            loops.release()
            await wait_until(lambda: len(loops.accepted) >= KILL_AT * RECIPIENTS, 60, interval=0.005,
                             what=f"Loops to accept {KILL_AT:.0%} of the recipients",
                             alive=[serving.process])  # fmt: skip
            accepted_at_kill = len(loops.accepted)
            await kill_daemon(serving)
            pace.slow = False
            at_kill = states(database)
            leased = sum(n for (_, state), n in at_kill.items() if state == "sending")
            accepted_before_restart = len(loops.accepted)
            requests_before_restart = len(loops.requests)
            serving = await start_serving(config, log)
            await wait_until(lambda: final(database), 120, interval=0.2, what="every delivery final",
                             alive=[serving.process])  # fmt: skip
            await asyncio.sleep(0.5)  # anything still on its way to Loops
        finally:
            loops.release()
            exit_code = await serving.stop(30)
    assert exit_code == 0, log.read_text()[-3000:]

    per_recipient = Counter(sent.email for sent in loops.accepted)
    twice = {email: n for email, n in per_recipient.items() if n > 1}
    reused = Counter(loops.reused)
    accepted_after_restart = len(loops.accepted) - accepted_before_restart
    end = states(database)
    print(
        f"\nrecipients={RECIPIENTS} accepted_at_kill={accepted_at_kill}"
        f" accepted_before_restart={accepted_before_restart} accepted_after_restart={accepted_after_restart}"
        f" requests={len(loops.requests)} (before restart {requests_before_restart})"
        f" answered_409={len(loops.reused)} (keys {len(reused)}) leased_at_kill={leased} states={end}"
    )
    assert not twice, f"{len(twice)} recipients sent twice through Loops, e.g. {sorted(twice.items())[:5]}"
    assert set(per_recipient) == everyone, f"never sent: {sorted(everyone - set(per_recipient))[:5]}"
    assert {sent.transactional_id for sent in loops.accepted} == {TRANSACTIONAL_ID}
    assert end == {("loops", "delivered"): RECIPIENTS}, end
    assert not (tmp_path / "outbox").exists() or not any((tmp_path / "outbox").iterdir()), "sent in-house"
    # The kill landed mid-run: Loops accepted sends before it and after the restart, ...
    assert KILL_AT * RECIPIENTS <= accepted_at_kill < RECIPIENTS
    assert accepted_after_restart > 0
    # ... and sends Loops had taken whose answer the killed daemon never recorded were tried again
    # after the restart with their key, answered 409: without the key they would be sent twice.
    assert reused, "no retry reused a key after the kill"
    keys_before = {sent.key for sent in loops.accepted[:accepted_before_restart]}
    assert set(reused) <= keys_before
    replies = dict(_query(database, "SELECT last_reply, count(*) FROM deliveries WHERE last_reply LIKE"
                                    " 'Loops 409: sent before%' GROUP BY 1"))  # fmt: skip
    assert sum(replies.values()) == len(reused.keys()), replies
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert all(json.loads(line).get("level") != "error" for line in text.splitlines() if line.startswith("{")), \
        [line for line in text.splitlines() if '"error"' in line][:5]  # fmt: skip
