"""Transports: how a message leaves. Each returns one `RecipientResult` per recipient, never raises
for a peer's behaviour (refusals, timeouts, dropped connections are results); an exception out of
`send` means a bug, and the worker parks that message as dead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import aiosmtplib

from postroom.config import DeliverySettings, parse_hostport
from postroom.core.types import RecipientResult, Verdict
from postroom.delivery.replies import classify_reply, format_reply
from postroom.queue.models import QueuedMessage

logger = logging.getLogger(__name__)


class Transport(Protocol):
    async def send(
        self, message: QueuedMessage, content: bytes, recipients: Sequence[str]
    ) -> list[RecipientResult]: ...

    async def close(self) -> None: ...


def _all(recipients: Sequence[str], verdict: Verdict, reply: str) -> list[RecipientResult]:
    return [RecipientResult(r, verdict, reply) for r in recipients]


class CaptureTransport:
    """Writes each message exactly as it would go on the wire to `capture_dir/<id>.eml`."""

    def __init__(self, directory: Path):
        self._directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _write(self, message_id: str, content: bytes) -> None:
        final = self._directory / f"{message_id}.eml"
        temporary = self._directory / f".{message_id}.eml.tmp"
        with open(temporary, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)

    async def send(
        self, message: QueuedMessage, content: bytes, recipients: Sequence[str]
    ) -> list[RecipientResult]:
        try:
            await asyncio.to_thread(self._write, message.id, content)
        except OSError as exc:
            return _all(recipients, Verdict.DEFERRED, f"capture write failed: {exc.strerror}")
        return _all(recipients, Verdict.DELIVERED, f"250 captured as {message.id}.eml")

    async def close(self) -> None:
        return None


class SmarthostTransport:
    """Relays everything to one SMTP server over a pool of reused connections.

    One TLS context is shared by every connection (aiosmtplib builds one per connection otherwise,
    at ~30 ms each). A connection carries at most `messages_per_connection` messages, then QUITs.
    """

    def __init__(self, settings: DeliverySettings, local_hostname: str, tls_context: ssl.SSLContext):
        self._host, self._port = parse_hostport(settings.smarthost, default_port=25)
        self._settings = settings
        self._local_hostname = local_hostname
        self._tls_context = tls_context
        self._idle: list[tuple[aiosmtplib.SMTP, int]] = []
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._closing: set[asyncio.Task[None]] = set()  # QUITs in progress, awaited by close()

    async def _connect(self) -> aiosmtplib.SMTP:
        mode = self._settings.smarthost_tls
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            local_hostname=self._local_hostname,
            timeout=self._settings.command_timeout,
            use_tls=mode == "implicit",
            start_tls={"none": False, "opportunistic": None, "required": True}.get(mode, False),
            tls_context=self._tls_context,
        )
        await client.connect(timeout=self._settings.connect_timeout)
        if self._settings.smarthost_username:
            await client.login(self._settings.smarthost_username, self._settings.smarthost_password)
        return client

    async def send(
        self, message: QueuedMessage, content: bytes, recipients: Sequence[str]
    ) -> list[RecipientResult]:
        async with self._slots:
            client, used = self._idle.pop() if self._idle else (None, 0)
            try:
                if client is None or not client.is_connected:
                    client, used = await self._connect(), 0
                errors, _reply = await client.sendmail(message.mail_from, list(recipients), content)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                self._keep(client, used + 1)
                return [
                    RecipientResult(
                        r.recipient, classify_reply(r.code, r.message), format_reply(r.code, r.message)
                    )
                    for r in exc.recipients
                ]
            except aiosmtplib.SMTPAuthenticationError as exc:
                await self._discard(client)
                reply = f"smarthost refused our login: {format_reply(exc.code, exc.message)}"
                return _all(recipients, Verdict.DEFERRED, reply)
            except aiosmtplib.SMTPResponseException as exc:
                self._keep(client, used + 1)
                reply = format_reply(exc.code, exc.message)
                return _all(recipients, classify_reply(exc.code, exc.message), reply)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                await self._discard(client)
                reply = f"smarthost {self._host}:{self._port}: {type(exc).__name__}: {exc}"
                return _all(recipients, Verdict.DEFERRED, reply)
            self._keep(client, used + 1)
            results = []
            for recipient in recipients:
                refused = errors.get(recipient)
                if refused is None:
                    results.append(RecipientResult(recipient, Verdict.DELIVERED, "250 accepted"))
                else:
                    code, text = refused.code, refused.message
                    results.append(
                        RecipientResult(recipient, classify_reply(code, text), format_reply(code, text))
                    )
            return results

    def _keep(self, client: aiosmtplib.SMTP | None, used: int) -> None:
        if client is None:
            return
        if used >= self._settings.messages_per_connection or not client.is_connected:
            task = asyncio.ensure_future(self._discard(client))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        else:
            self._idle.append((client, used))

    @staticmethod
    async def _discard(client: aiosmtplib.SMTP | None) -> None:
        if client is None or not client.is_connected:
            return
        try:
            await asyncio.wait_for(client.quit(), timeout=5)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._discard(client) for client, _ in idle), *self._closing)


def client_tls_context(verify: bool, ca_file: str = "") -> ssl.SSLContext:
    """One context for every outbound connection: TLS 1.2 minimum; verification per settings."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
