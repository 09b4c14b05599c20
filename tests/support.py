"""Shared test machinery: settings builders, a recording SMTP sink, databases, a daemon in-process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from postroom.config import Settings

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("POSTROOM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def make_settings(tmp_path: Path, db_url: str | None = None, **sections: dict[str, Any]) -> Settings:
    """Settings on loopback port 0 with capture delivery, overridable per section."""
    tree: dict[str, Any] = {
        "state_dir": str(tmp_path),
        "database": {"url": db_url or f"sqlite+aiosqlite:///{tmp_path / 'postroom.db'}"},
        "http": {"listen": "127.0.0.1:0"},
        "smtp": {
            "hostname": "mail.postroom.test",
            "submission_listen": "127.0.0.1:0",
            "mx_listen": "127.0.0.1:0",
            "trusted_networks": [],
        },
        "delivery": {"mode": "capture", "capture_dir": str(tmp_path / "outbox"), "poll_interval": 0.05},
        "log": {"format": "text", "level": "warning"},
        # A sending domain that is not signed, so tests about other things need no keys.
        "domains": [{"name": "postroom.test", "dkim": "off"}],
    }
    for name, values in sections.items():
        tree[name] = values if isinstance(values, list) else {**tree.get(name, {}), **values}
    return Settings.model_validate(tree)


@dataclass
class Received:
    mail_from: str
    recipients: list[str]
    content: bytes


@dataclass
class SinkHandler:
    """Records every message; `replies` maps a recipient to the RCPT reply to give instead of 250."""

    messages: list[Received] = field(default_factory=list)
    replies: dict[str, str] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(
            Received(envelope.mail_from or "", list(envelope.rcpt_tos), envelope.original_content or b"")
        )
        self.arrived.set()
        return "250 2.0.0 stored"


@contextlib.asynccontextmanager
async def smtp_sink(handler: SinkHandler | None = None) -> AsyncIterator[tuple[SinkHandler, int]]:
    """A real aiosmtpd server on 127.0.0.1:0 in this loop."""
    handler = handler or SinkHandler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.test", decode_data=False), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield handler, port
    finally:
        server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


async def create_pg_database() -> str:
    """A fresh, empty PostgreSQL database; returns its SQLAlchemy URL."""
    import asyncpg

    name = f"postroom_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


async def drop_pg_database(url: str) -> None:
    import asyncpg

    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def postroom_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "postroom.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        input=input,
        timeout=60,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"postroom {' '.join(args)} failed: {result.stderr}")
    return result


def wait_for_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port}")


def write_config(path: Path, *, db_url: str, submission_port: int, http_port: int, mx_port: int,
                 sink_port: int, lease_seconds: float = 3.0, processes: int = 1) -> Path:  # fmt: skip
    """A daemon config for subprocess tests: smarthost delivery to a local sink, 127.0.0.1 trusted."""
    path.write_text(
        f"""state_dir = "{path.parent}"
[database]
url = "{db_url}"
[http]
listen = "127.0.0.1:{http_port}"
[smtp]
hostname = "mail.postroom.test"
submission_listen = "127.0.0.1:{submission_port}"
mx_listen = "127.0.0.1:{mx_port}"
trusted_networks = ["127.0.0.1/32"]
[delivery]
mode = "smarthost"
smarthost = "127.0.0.1:{sink_port}"
smarthost_tls = "none"
lease_seconds = {lease_seconds}
poll_interval = 0.2
retry_base = 1
retry_max = 2
[log]
format = "json"
level = "warning"
[processes]
count = {processes}

[[domains]]
name = "postroom.test"
dkim = "off"
"""
    )
    return path


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "postroom.cli", "serve", "--config", str(config)],
            stdout=handle,
            stderr=handle,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


async def wait_until(predicate: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    """Poll `predicate()` (sync or async) until true or raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^>]+)>", re.IGNORECASE | re.MULTILINE)
TOKEN = re.compile(rb"^X-Test-Token:\s*(\S+)", re.IGNORECASE | re.MULTILINE)


def token_of(content: bytes) -> str | None:
    found = TOKEN.search(content)
    return found.group(1).decode() if found else None


async def claim(store: Any, owner: str, limit: int, now: float, lease_seconds: float,
                exclude_domains: Any = ()) -> Any:  # fmt: skip
    """Lease due deliveries without loading their messages (what the store tests look at)."""
    claimed, _ = await store.claim_with_messages(owner, limit, now, lease_seconds, exclude_domains, load=False)
    return claimed
