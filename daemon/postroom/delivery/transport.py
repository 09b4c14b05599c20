"""Transports: where a recipient domain's mail goes (`route`) and how a message gets there (`send`).

A `Route` names the destination (the scheduler's unit of shaping), its shaping rule, the peers to
try in order and the TLS policy. Three transports:

- `SmtpTransport` with an `MxRouter`: direct delivery to each domain's MX hosts (RFC 5321 §5.1).
- `SmtpTransport` with a `SmarthostRouter`: everything to one relay, with its TLS mode and login.
- `CaptureTransport`: writes each message as it would go on the wire into a directory.

`send` never raises for a peer's behaviour: refusals, timeouts and dropped connections are
results, and an `Attempt` also says whether the destination throttled us or could not be reached
at all (the scheduler then slows it down or suspends it). An exception out of `send` is a bug; the
worker parks that message as dead.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from postroom.config import DeliverySettings, DestinationSettings, parse_hostport
from postroom.core.types import RecipientResult, Verdict
from postroom.delivery.mx import MxCache, MxRoute
from postroom.delivery.session import Peer, PeerError, SmtpSession, Timeouts, TlsPolicy, open_session
from postroom.delivery.shaping import destination_key, rule_for
from postroom.queue.models import QueuedMessage

logger = logging.getLogger(__name__)

MAX_PEERS = 10  # addresses tried per attempt at most, across all MX hosts


@dataclass(frozen=True)
class Route:
    key: str  # the destination: what shaping, pooling and suspension are counted by
    rule: DestinationSettings
    peers: tuple[Peer, ...] = ()
    tls: TlsPolicy = "opportunistic"
    # Opportunistic TLS whose handshake fails is retried in clear (Postfix's "may"), unless the
    # certificate was to be verified: then a failure defers instead of sending in clear.
    clear_fallback: bool = True


@dataclass(frozen=True)
class RouteFailure:
    """No way to `domain` now; `permanent` bounces (null MX, no such domain), else defers."""

    reason: str
    permanent: bool


@dataclass
class Attempt:
    results: list[RecipientResult]
    throttled: str | None = None  # the destination's push-back reply, when it pushed back
    unreachable: str | None = None  # why no peer of the destination could be used
    details: dict[str, object] = field(default_factory=dict)


class Transport(Protocol):
    async def route(self, domain: str) -> Route | RouteFailure: ...

    async def send(
        self, route: Route, message: QueuedMessage, content: bytes, recipients: Sequence[str],
        mail_from: str,
    ) -> Attempt: ...

    def sweep(self) -> None:
        """Close what has been idle too long (the worker's heartbeat calls it)."""
        ...

    async def close(self) -> None: ...


def _all(recipients: Sequence[str], verdict: Verdict, reply: str) -> list[RecipientResult]:
    return [RecipientResult(r, verdict, reply) for r in recipients]


def timeouts_of(settings: DeliverySettings) -> Timeouts:
    return Timeouts(
        connect=settings.connect_timeout,
        greeting=settings.greeting_timeout,
        command=settings.command_timeout,
        data_end=settings.data_timeout,
    )


class CaptureTransport:
    """Writes each message exactly as it would go on the wire to `capture_dir/<id>.eml`."""

    def __init__(self, directory: Path, concurrency: int = 20):
        self._directory = directory
        self._route = Route("capture", DestinationSettings(match="*", max_connections=concurrency))
        directory.mkdir(parents=True, exist_ok=True)

    async def route(self, domain: str) -> Route:
        return self._route

    def _write(self, message_id: str, content: bytes) -> None:
        final = self._directory / f"{message_id}.eml"
        temporary = self._directory / f".{message_id}.eml.tmp"
        with open(temporary, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)

    async def send(
        self, route: Route, message: QueuedMessage, content: bytes, recipients: Sequence[str],
        mail_from: str,
    ) -> Attempt:
        # One file per message; a copy with its own envelope sender (VERP) gets its own file.
        name = message.id
        if mail_from != message.mail_from:
            name += "-" + hashlib.sha256(mail_from.encode()).hexdigest()[:12]
        try:
            await asyncio.to_thread(self._write, name, content)
        except OSError as exc:
            reason = f"capture write failed: {exc.strerror}"
            return Attempt(_all(recipients, Verdict.DEFERRED, reason), unreachable=reason)
        return Attempt(_all(recipients, Verdict.DELIVERED, f"250 captured as {name}.eml"))

    def sweep(self) -> None:
        return None

    async def close(self) -> None:
        return None


class SmarthostRouter:
    """Every domain goes to the one relay: a single destination."""

    def __init__(self, settings: DeliverySettings):
        host, port = parse_hostport(settings.smarthost, default_port=25)
        tls: TlsPolicy = settings.smarthost_tls
        self._route = Route(
            f"smarthost {host}:{port}",
            DestinationSettings(match="*", max_connections=settings.concurrency,
                                messages_per_connection=settings.messages_per_connection),
            (Peer(host, host, port),),
            tls,
            clear_fallback=not settings.smarthost_verify,
        )  # fmt: skip

    async def route(self, domain: str) -> Route:
        return self._route


class MxRouter:
    """A domain's route from its MX records (cached), with the shaping rule that matches it."""

    def __init__(
        self,
        cache: MxCache,
        rules: Sequence[DestinationSettings],
        port: int,
    ):
        self._cache = cache
        self._rules = tuple(rules)
        self._port = port

    async def route(self, domain: str) -> Route | RouteFailure:
        destination = await self._cache.resolve(domain)
        if not isinstance(destination, MxRoute):
            return RouteFailure(destination.reason, destination.permanent)
        names = [host.name for host in destination.hosts]
        rule = rule_for(destination.domain, names, self._rules)
        peers = tuple(
            Peer(host.name, address, self._port)
            for host in destination.hosts
            for address in host.addresses
        )[:MAX_PEERS]
        key = destination_key(names)
        if rule.tls != "opportunistic":
            key += f" (tls {rule.tls})"  # a policy is per connection: keep its pool apart
        return Route(key, rule, peers, rule.tls)


class SessionOpener(Protocol):
    async def __call__(self, peer: Peer, tls: TlsPolicy) -> SmtpSession: ...


class SmtpTransport:
    """Sends over pooled SMTP sessions per destination, trying the route's peers in order.

    A session carries at most the rule's `messages_per_connection` messages (RSET between them),
    and is closed once unused for `idle_timeout` (found stale when taken, or by `sweep`). The scheduler bounds how many sessions a destination
    has at once, so the pool never holds more than that.
    """

    def __init__(self, router: SmarthostRouter | MxRouter, open_peer: SessionOpener, idle_timeout: float):
        self._router = router
        self._open_peer = open_peer
        self._idle_timeout = idle_timeout
        self._idle: dict[str, list[SmtpSession]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def route(self, domain: str) -> Route | RouteFailure:
        return await self._router.route(domain)

    async def send(
        self, route: Route, message: QueuedMessage, content: bytes, recipients: Sequence[str],
        mail_from: str,
    ) -> Attempt:
        session = await self._take(route.key)
        if session is None:
            session_or_failure = await self._connect(route, recipients)
            if isinstance(session_or_failure, Attempt):
                return session_or_failure
            session = session_or_failure
        results = await session.deliver(mail_from, recipients, content)
        attempt = Attempt(results, throttled=session.throttled_reply, details=session.details)
        if session.usable and session.messages < route.rule.messages_per_connection:
            self._idle.setdefault(route.key, []).append(session)
        else:
            # Closed before the caller may open the next one: a connection saying QUIT still
            # counts against the destination's `max_connections`.
            await session.close()
        return attempt

    async def _take(self, key: str) -> SmtpSession | None:
        while sessions := self._idle.get(key):  # fetched again after each wait: `sweep` replaces it
            session = sessions.pop()
            if session.client.is_connected and time.monotonic() - session.last_used < self._idle_timeout:
                return session
            await session.close()  # before a new one is opened in its place
        return None

    async def _connect(self, route: Route, recipients: Sequence[str]) -> SmtpSession | Attempt:
        reasons: list[str] = []
        throttled: str | None = None
        for peer in route.peers:
            try:
                try:
                    return await self._open_peer(peer, route.tls)
                except PeerError as exc:
                    if not (exc.tls_failed and route.clear_fallback):
                        raise
                    # Opportunistic TLS whose handshake failed: like Postfix, try that peer in clear.
                    logger.info("%s; retrying without TLS", exc.reason)
                    return await self._open_peer(peer, "none")
            except PeerError as exc:
                reasons.append(exc.reason)
                if exc.throttled and throttled is None:
                    throttled = exc.reason
        reason = "; ".join(reasons) or "no address to connect to"
        results = _all(recipients, Verdict.DEFERRED, reason)
        if throttled is not None:
            return Attempt(results, throttled=throttled)
        return Attempt(results, unreachable=reason)

    def sweep(self) -> None:
        """Close sessions idle for longer than `idle_timeout`."""
        now = time.monotonic()
        for key, sessions in list(self._idle.items()):
            stale = [s for s in sessions if now - s.last_used >= self._idle_timeout]
            if stale:
                self._idle[key] = [s for s in sessions if s not in stale]
                for session in stale:
                    self._close_later(session)
            if not self._idle[key]:
                del self._idle[key]

    def _close_later(self, session: SmtpSession) -> None:
        task = asyncio.ensure_future(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        idle, self._idle = self._idle, {}
        await asyncio.gather(
            *(session.close() for sessions in idle.values() for session in sessions), *self._closing
        )


def smtp_opener(
    local_hostname: str,
    timeouts: Timeouts,
    context_for: Callable[[TlsPolicy], ssl.SSLContext],
    username: str = "",
    password: str = "",
) -> SessionOpener:
    """Opens sessions with shared TLS contexts (building one costs ~30 ms of CA loading)."""

    async def open_peer(peer: Peer, tls: TlsPolicy) -> SmtpSession:
        return await open_session(
            peer, local_hostname, timeouts, tls, context_for(tls), username, password
        )

    return open_peer


def client_tls_context(verify: bool, ca_file: str = "") -> ssl.SSLContext:
    """One context for outbound connections: TLS 1.2 minimum; verification per settings."""
    context = ssl.create_default_context(cafile=ca_file or None)
    if ca_file:
        context.load_default_certs()  # the system CAs as well as the extra one
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def smarthost_transport(
    settings: DeliverySettings, local_hostname: str, tls_context: ssl.SSLContext
) -> SmtpTransport:
    """Everything to `settings.smarthost` over pooled sessions sharing `tls_context`."""
    opener = smtp_opener(local_hostname, timeouts_of(settings), lambda tls: tls_context,
                         settings.smarthost_username, settings.smarthost_password)  # fmt: skip
    return SmtpTransport(SmarthostRouter(settings), opener, settings.idle_timeout)


def build_transport(settings: DeliverySettings, local_hostname: str, cache: MxCache | None) -> Transport:
    timeouts = timeouts_of(settings)
    if settings.mode == "capture":
        return CaptureTransport(Path(settings.capture_dir), settings.concurrency)
    if settings.mode == "smarthost":
        tls_context = client_tls_context(settings.smarthost_verify, settings.smarthost_ca)
        return smarthost_transport(settings, local_hostname, tls_context)
    if cache is None:
        raise ValueError("direct MX delivery needs an MX cache")
    # MX hosts: "verify" checks the certificate against the MX name; otherwise TLS only encrypts
    # (RFC 7435 opportunistic security: most MX certificates would not verify).
    verifying, encrypting = client_tls_context(True, settings.tls_ca), client_tls_context(False)
    opener = smtp_opener(
        local_hostname, timeouts, lambda tls: verifying if tls == "verify" else encrypting
    )
    router = MxRouter(cache, settings.destinations, settings.mx_port)
    return SmtpTransport(router, opener, settings.idle_timeout)

