"""One SMTP client connection and one transaction on it, on aiosmtplib's command level.

`open_session` connects to one address, reads the greeting, says EHLO with our host name and
applies the TLS policy (RFC 3207 STARTTLS; "required" never sends in clear; "verify" also checks
the certificate against the MX host name). `SmtpSession.deliver` runs MAIL / RCPT... / DATA and
turns every reply into a per-recipient result (RFC 5321 §3.3: each RCPT has its own answer; DATA's
answer applies to the recipients that were accepted). Timeouts follow RFC 5321 §4.5.3.2.

Errors of the peer are results, not exceptions: `deliver` returns results for every recipient;
a connection that broke mid-way is marked unusable (`usable` False) and its recipients deferred.
`open_session` raises `PeerError` describing why this address cannot be used now.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import aiosmtplib

from postroom.core.types import RecipientResult, Verdict
from postroom.delivery.replies import classify, format_reply

TlsPolicy = Literal["none", "opportunistic", "required", "verify", "implicit"]


@dataclass(frozen=True)
class Timeouts:
    """RFC 5321 §4.5.3.2 client timeouts (seconds); labs and tests shorten them."""

    connect: float = 30.0
    greeting: float = 300.0  # §4.5.3.2.1: initial 220 message, 5 minutes
    command: float = 300.0  # MAIL (§4.5.3.2.2), RCPT (§4.5.3.2.3), EHLO/RSET: 5 minutes
    data_end: float = 600.0  # §4.5.3.2.6: the reply to the final ".", 10 minutes


@dataclass(frozen=True)
class Peer:
    """One address to try: the host name it came from (the MX, or the smarthost) and the port."""

    name: str
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.name} [{self.address}]:{self.port}"


class PeerError(Exception):
    """This peer cannot take mail now. `reply` is its SMTP reply when it gave one."""

    def __init__(
        self, reason: str, code: int | None = None, throttled: bool = False, tls_failed: bool = False
    ):
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.throttled = throttled
        self.tls_failed = tls_failed  # the STARTTLS handshake failed (opportunistic may retry in clear)


@dataclass
class SmtpSession:
    client: aiosmtplib.SMTP
    peer: Peer
    tls_version: str | None
    timeouts: Timeouts
    messages: int = 0
    usable: bool = True
    last_used: float = field(default_factory=time.monotonic)
    throttled_reply: str | None = None  # set when the server pushed back during the transaction

    @property
    def details(self) -> dict[str, object]:
        return {"mx": self.peer.name, "ip": self.peer.address, "port": self.peer.port,
                "tls": self.tls_version or "none"}  # fmt: skip

    async def deliver(
        self, mail_from: str, recipients: Sequence[str], content: bytes
    ) -> list[RecipientResult]:
        """One transaction; a result for every recipient, in order."""
        self.messages += 1
        self.last_used = time.monotonic()
        self.throttled_reply = None
        client = self.client
        needs_utf8 = not (mail_from.isascii() and all(r.isascii() for r in recipients))
        refused = self._local_refusal(content, needs_utf8)
        if refused is not None:
            return [self._result(r, refused[0], refused[1], local=True) for r in recipients]
        stage = "MAIL FROM"
        accepted: list[str] = []
        results: dict[str, RecipientResult] = {}
        try:
            await client.mail(mail_from, options=self._mail_options(content, needs_utf8),
                              encoding="utf-8", timeout=self.timeouts.command)  # fmt: skip
            stage = "RCPT TO"
            for recipient in recipients:
                try:
                    await client.rcpt(recipient, encoding="utf-8", timeout=self.timeouts.command)
                    accepted.append(recipient)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    results[recipient] = self._reply(recipient, exc.code, exc.message, "RCPT")
                    if exc.code == 421:
                        raise
            if not accepted:
                await client.rset(timeout=self.timeouts.command)
                return [results[r] for r in recipients]
            stage = "DATA"
            response = await client.data(content, timeout=self.timeouts.data_end)
            for recipient in accepted:
                results[recipient] = self._reply(recipient, response.code, response.message, "DATA")
        except aiosmtplib.SMTPResponseException as exc:
            # A refusal of MAIL or DATA applies to every recipient still open; 421 closes.
            for recipient in recipients:
                if recipient not in results:
                    results[recipient] = self._reply(recipient, exc.code, exc.message, stage.split()[0])
            if exc.code == 421 or not client.is_connected:
                self.usable = False
            else:
                await self._reset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self.usable = False
            client.close()
            reason = _describe(exc)
            for recipient in recipients:
                if recipient not in results:
                    results[recipient] = self._result(
                        recipient, Verdict.DEFERRED, f"connection to {self.peer} lost at {stage}: {reason}"
                    )
        return [results[r] for r in recipients]

    async def _reset(self) -> None:
        try:
            await self.client.rset(timeout=self.timeouts.command)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self.usable = False
            self.client.close()

    def _local_refusal(self, content: bytes, needs_utf8: bool) -> tuple[Verdict, str] | None:
        limit = self.client.esmtp_extensions.get("size", "")
        if limit.isdigit() and int(limit) and len(content) > int(limit):
            return (Verdict.BOUNCED,
                    f"552 5.3.4 message of {len(content)} bytes exceeds {self.peer.name}'s limit of {limit}")  # fmt: skip
        if needs_utf8 and not self.client.supports_extension("smtputf8"):
            return (Verdict.BOUNCED,
                    f"553 5.6.7 {self.peer.name} does not support SMTPUTF8 for non-ASCII addresses")  # fmt: skip
        return None

    def _mail_options(self, content: bytes, needs_utf8: bool) -> list[str]:
        options = []
        if self.client.supports_extension("size"):
            options.append(f"SIZE={len(content)}")
        if self.client.supports_extension("8bitmime") and not content.isascii():
            options.append("BODY=8BITMIME")
        if needs_utf8:
            options.append("SMTPUTF8")
        return options

    def _reply(self, recipient: str, code: int, text: str, command: str) -> RecipientResult:
        classified = classify(code, text)
        reply = format_reply(code, text)
        if classified.throttled:
            self.throttled_reply = reply
        result = self._result(recipient, classified.verdict, reply)
        result.details["code"] = code
        result.details["command"] = command
        if classified.enhanced:
            result.details["status"] = classified.enhanced
        return result

    def _result(
        self, recipient: str, verdict: Verdict, reply: str, local: bool = False
    ) -> RecipientResult:
        details = dict(self.details)
        if local:
            details["local"] = True
        return RecipientResult(recipient, verdict, reply, details)

    async def close(self) -> None:
        if not self.client.is_connected:
            return
        try:
            await self.client.quit(timeout=5)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self.client.close()


async def open_session(
    peer: Peer,
    local_hostname: str,
    timeouts: Timeouts,
    tls: TlsPolicy,
    tls_context: ssl.SSLContext,
    username: str = "",
    password: str = "",
) -> SmtpSession:
    """Connect, greet, EHLO, apply `tls`, log in if asked; raise `PeerError` when it cannot."""
    client = aiosmtplib.SMTP(
        hostname=peer.address,
        local_hostname=local_hostname,
        timeout=timeouts.command,
        use_tls=tls == "implicit",
        start_tls=False,
        tls_context=tls_context,
    )
    try:
        # aiosmtplib's connect bounds the TCP connection and the greeting by one timeout, but the
        # greeting has its own (RFC 5321 §4.5.3.2.1: 5 minutes), so the socket is connected here.
        sock = await _connect_socket(peer, timeouts.connect)
        try:
            await client.connect(sock=sock, timeout=timeouts.greeting)
        except aiosmtplib.SMTPConnectResponseError as exc:
            classified = classify(exc.code, exc.message)
            raise PeerError(f"{peer} greeted with {format_reply(exc.code, exc.message)}",
                            exc.code, classified.throttled or exc.code == 421) from None  # fmt: skip
        except BaseException:
            sock.close()  # ours until asyncio's transport takes it over (closing twice is harmless)
            raise
        await client.ehlo(timeout=timeouts.command)
        if tls in ("opportunistic", "required", "verify"):
            if client.supports_extension("starttls"):
                try:
                    await client.starttls(server_hostname=peer.name, tls_context=tls_context,
                                          timeout=timeouts.command)  # fmt: skip
                except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
                    if tls != "opportunistic":
                        raise
                    raise PeerError(f"{peer}: STARTTLS failed: {_describe(exc)}", tls_failed=True) from None
                # RFC 3207 §4.2: the extensions offered before TLS are void; ask again now, so
                # SIZE, 8BITMIME and SMTPUTF8 are known before the first MAIL.
                await client.ehlo(timeout=timeouts.command)
            elif tls != "opportunistic":
                raise PeerError(f"{peer} does not offer STARTTLS and TLS is required; not sent in clear")
        if username:
            await client.login(username, password, timeout=timeouts.command)
    except PeerError:
        client.close()
        raise
    except aiosmtplib.SMTPAuthenticationError as exc:
        client.close()
        raise PeerError(f"{peer} refused our login: {format_reply(exc.code, exc.message)}", exc.code) from None
    except aiosmtplib.SMTPResponseException as exc:
        client.close()
        classified = classify(exc.code, exc.message)
        raise PeerError(f"{peer} answered {format_reply(exc.code, exc.message)}", exc.code,
                        classified.throttled) from None  # fmt: skip
    except (aiosmtplib.SMTPException, OSError, TimeoutError, ssl.SSLError) as exc:
        client.close()
        raise PeerError(f"{peer}: {_describe(exc)}") from None
    ssl_object = client.get_transport_info("ssl_object")
    version = ssl_object.version() if ssl_object is not None else None
    return SmtpSession(client, peer, version, timeouts)


async def _connect_socket(peer: Peer, timeout: float) -> socket.socket:
    """A TCP connection to `peer` within `timeout` seconds, trying each address its name has."""
    loop = asyncio.get_running_loop()

    async def connect() -> socket.socket:
        infos = await loop.getaddrinfo(peer.address, peer.port, type=socket.SOCK_STREAM)
        error: OSError = OSError(f"no address for {peer.address}")
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
            except BaseException:
                sock.close()
                raise
        raise error

    try:
        return await asyncio.wait_for(connect(), timeout)
    except TimeoutError:
        raise TimeoutError(f"connecting took more than {timeout:g}s") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message}"
    if isinstance(exc, (TimeoutError, aiosmtplib.SMTPTimeoutError)):
        return f"timed out ({exc})" if str(exc) else "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text
