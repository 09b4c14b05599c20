"""`postroom serve` as systemd runs it: READY=1 and STOPPING=1 on $NOTIFY_SOCKET, exit 0 on SIGTERM,
a refusal on an unmigrated database, and several processes behind one port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import time
import urllib.request
from collections import Counter
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest

from postroom.config import DatabaseSettings
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import create_engine

from tests.conftest import Tls
from tests.support import (
    DaemonProcess,
    SinkHandler,
    listeners_in_status,
    postroom_cli,
    smtp_sink,
    start_daemon,
    start_serving,
    wait_until,
    write_config,
)

MESSAGE = b"From: app@postroom.test\r\nTo: x@example.com\r\nSubject: s\r\n\r\nbody\r\n"


MESSAGES = 20


def serve(config: Path, log: Path, env: dict[str, str]) -> DaemonProcess:
    return start_daemon(config, log, env=env)


def status_of(seen: list[str]) -> dict[str, tuple[str, int]]:
    """The listeners the READY status names (the configs bind port 0: the daemon picks, then says)."""
    [status] = [line for line in seen if line.startswith("STATUS=")]
    return listeners_in_status(status.removeprefix("STATUS="))


def notifications(sock: socket.socket) -> list[str]:
    found = []
    while True:
        try:
            found.extend(sock.recv(4096).decode().splitlines())
        except BlockingIOError:
            return found


def metric_sum(http_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{"))


@pytest.mark.parametrize("processes", [1, 2])
async def test_serve_notifies_systemd_and_drains_on_sigterm(tmp_path: Path, processes: int) -> None:
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.setblocking(False)
    handler = SinkHandler()
    async with smtp_sink(handler) as (_, sink_port):
        config = write_config(
            tmp_path / "postroom.toml",
            db_url=f"sqlite+aiosqlite:///{tmp_path / 'q.db'}",
            submission_port=0, http_port=0, mx_port=0, sink_port=sink_port, processes=processes,
        )  # fmt: skip
        postroom_cli("db", "upgrade", "--config", str(config))
        daemon = serve(config, tmp_path / "serve.log", {"NOTIFY_SOCKET": str(notify_path),
                                                        "WATCHDOG_USEC": "400000"})  # fmt: skip
        seen: list[str] = []
        try:
            await wait_until(lambda: seen.extend(notifications(listener)) or "READY=1" in seen, 60,
                             what="READY=1", alive=[daemon])  # fmt: skip
            bound = status_of(seen)
            submission, http = bound["submission"][1], bound["http"][1]
            for n in range(MESSAGES):  # several connections, so with 2 processes both take some
                smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=submission, start_tls=False)
                await smtp.connect()
                await smtp.sendmail("app@postroom.test", [f"r{n}@example.com"], MESSAGE)
                await smtp.quit()
            await wait_until(lambda: len(handler.messages) >= MESSAGES, 30, what=f"{MESSAGES} deliveries",
                             alive=[daemon])  # fmt: skip
            assert metric_sum(http, "postroom_messages_accepted_total") == MESSAGES
            await wait_until(lambda: metric_sum(http, "postroom_delivered_total") == MESSAGES, 10,
                             what="delivered counter summed over processes", alive=[daemon])  # fmt: skip
            await wait_until(lambda: seen.extend(notifications(listener)) or "WATCHDOG=1" in seen, 5,
                             what="WATCHDOG=1", alive=[daemon])  # fmt: skip
            daemon.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(daemon.wait, 30) == 0
            seen.extend(notifications(listener))
        finally:
            if daemon.poll() is None:
                daemon.kill()
            listener.close()
        # The daemon has exited: every arrival there will ever be is here. Count them all, not
        # only until the 20th (a duplicate arriving after it would otherwise pass unseen).
        arrivals = Counter(recipient for m in handler.messages for recipient in m.recipients)
    assert arrivals == Counter({f"r{n}@example.com": 1 for n in range(MESSAGES)}), (
        f"{len(handler.messages)} arrivals: {sorted(r for r, k in arrivals.items() if k != 1)[:5]}"
    )
    # And the queue agrees: each delivery recorded as delivered, in one attempt, with one event.
    with contextlib.closing(sqlite3.connect(tmp_path / "q.db")) as db:
        states = db.execute("SELECT state, attempts, count(*) FROM deliveries GROUP BY 1, 2").fetchall()
        delivered_events = db.execute("SELECT count(*) FROM events WHERE type = 'delivered'").fetchone()
    assert states == [("delivered", 1, MESSAGES)] and delivered_events == (MESSAGES,), (states, delivered_events)
    assert seen.count("READY=1") == 1
    assert "STOPPING=1" in seen
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log, log[-2000:]


async def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "postroom.toml", db_url=f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}",
        submission_port=0, http_port=0, mx_port=0, sink_port=2525,  # nothing is sent
    )  # fmt: skip
    result = await asyncio.to_thread(postroom_cli, "serve", "--config", str(config), check=False)
    assert result.returncode == 1
    assert "postroom db upgrade" in result.stderr


async def test_kill_9_of_the_supervisor_takes_its_processes_with_it(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "postroom.toml", db_url=f"sqlite+aiosqlite:///{tmp_path / 'q.db'}",
        submission_port=0, http_port=0, mx_port=0, sink_port=2525, processes=2,  # nothing is sent
    )  # fmt: skip
    postroom_cli("db", "upgrade", "--config", str(config))
    serving = await start_serving(config, tmp_path / "serve.log")
    daemon, http = serving.process, serving.port("http")
    try:
        await wait_until(lambda: _ready(http), 60, what="/readyz", alive=[daemon])
        children = _children_of(daemon.pid)
        assert len(children) == 2
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=10)
        await wait_until(lambda: not any(_alive(pid) for pid in children), 10,
                         what="the daemon processes to die with their supervisor")  # fmt: skip
    finally:
        if daemon.poll() is None:
            daemon.kill()
        serving.close_notify_socket()


def _ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _children_of(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; it waits only for init to reap it


@pytest.mark.parametrize("uvloop", ["1", "0"], ids=["uvloop", "asyncio-loop"])
async def test_serve_does_starttls_and_auth_on_either_event_loop(
    tmp_path: Path, tls: Tls, uvloop: str
) -> None:
    """`postroom serve` runs on uvloop unless POSTROOM_UVLOOP=0; STARTTLS is where event loops
    differ (aiosmtpd swaps the protocol under the transport), so check it on both."""
    handler = SinkHandler()
    async with smtp_sink(handler) as (_, sink_port):
        config = write_config(
            tmp_path / "postroom.toml",
            db_url=f"sqlite+aiosqlite:///{tmp_path / 'q.db'}",
            submission_port=0, http_port=0, mx_port=0, sink_port=sink_port,
        )  # fmt: skip
        text = config.read_text().replace(
            'trusted_networks = ["127.0.0.1/32"]',
            f'trusted_networks = []\ntls_cert = "{tls.cert}"\ntls_key = "{tls.key}"',
        )
        config.write_text(text)
        postroom_cli("db", "upgrade", "--config", str(config))
        postroom_cli("smtp-users", "add", "app", "--password", "secret-pass", "--config", str(config))
        notify_path = tmp_path / "notify.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(str(notify_path))
        listener.setblocking(False)
        daemon = serve(config, tmp_path / "serve.log",
                       {"POSTROOM_UVLOOP": uvloop, "NOTIFY_SOCKET": str(notify_path)})  # fmt: skip
        seen: list[str] = []
        try:
            await wait_until(lambda: seen.extend(notifications(listener)) or "READY=1" in seen, 60,
                             what="READY=1", alive=[daemon])  # fmt: skip
            # The status names every listener, the HTTP one included (uvloop's server is not an
            # asyncio.Server, and the bound address was once lost that way), with the port bound.
            bound = status_of(seen)
            assert set(bound) == {"submission", "mx", "http"} and all(port for _, port in bound.values())
            submission, http = bound["submission"][1], bound["http"][1]
            assert _ready(http)
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=submission, start_tls=True,
                                   tls_context=tls.client, local_hostname="client.test")  # fmt: skip
            await smtp.connect()
            await smtp.login("app", "secret-pass")
            await smtp.sendmail("app@postroom.test", ["r@example.com"], MESSAGE)
            await smtp.quit()
            await wait_until(lambda: len(handler.messages) == 1, 30, what="the delivery", alive=[daemon])
        finally:
            daemon.send_signal(signal.SIGTERM)
            await asyncio.to_thread(daemon.wait, 30)
            listener.close()
    assert handler.messages[0].content.endswith(MESSAGE)
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log, log[-2000:]


async def test_a_keys_quota_is_one_for_every_process_of_the_daemon(tmp_path: Path) -> None:
    """Two processes serve the API from one socket, each connection to whichever accepts it; a
    key's 20/min is spent from the table they share. Were each process to keep its own buckets,
    60 requests on 60 connections split between them would pass more than 20."""
    async with smtp_sink(SinkHandler()) as (_, sink_port):
        config = write_config(
            tmp_path / "postroom.toml", db_url=f"sqlite+aiosqlite:///{tmp_path / 'q.db'}",
            submission_port=0, http_port=0, mx_port=0, sink_port=sink_port, processes=2,
        )  # fmt: skip
        postroom_cli("db", "upgrade", "--config", str(config))
        engine = create_engine(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"))
        _, token = await SqlApiKeys(engine).create("app", Role.VIEWER, time.time())
        await engine.dispose()
        serving = await start_serving(config, tmp_path / "serve.log",
                                      env={"POSTROOM_HTTP__RATE_LIMIT__DEFAULT": "20/min"})  # fmt: skip
        try:
            statuses = Counter()
            for _ in range(60):
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
                    async with session.get(serving.url("/api/v1/api-key"),
                                           headers={"Authorization": f"Bearer {token}"}) as response:  # fmt: skip
                        statuses[response.status] += 1
                        assert response.headers["x-ratelimit-limit"] == "20"
            assert statuses == Counter({200: 20, 429: 40})
            assert metric_sum(serving.port("http"), "postroom_http_rate_limited_total") == 40
        finally:
            serving.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(serving.process.wait, 30)
