"""Binding the SMTP listeners on the daemon's loop (never aiosmtpd's threaded Controller).

`SmtpListeners.start` serves every configured listener from the sockets `postroom serve` bound and
handed over (postroom.listen), or, when given none (the in-process test harness), binds them itself;
either way a bad address fails start-up, before READY=1. `run` serves until stop, then closes the
listening sockets and gives open sessions a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from postroom.config import SmtpSettings
from postroom.listen import BACKLOG, Listener, ListenSockets, describe, sockets_for
from postroom.metrics import Metrics
from postroom.smtp.handlers import MxHandler, SubmissionHandler
from postroom.smtp.handshakes import HandshakeFailures
from postroom.smtp.protocol import PostroomSMTP, Verifier
from postroom.submission.budget import ByteBudget

logger = logging.getLogger(__name__)


def server_tls_context(cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.2 minimum for every listener (DESIGN.md, Security)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


@dataclass(frozen=True)
class ListenerSpec:
    name: str  # "submission", "submissions", "mx"
    address: str
    implicit_tls: bool

    @property
    def listener(self) -> Listener:
        return Listener(self.name, f"smtp.{self.name}_listen", self.address)


class SmtpListeners:
    def __init__(
        self,
        settings: SmtpSettings,
        submission: SubmissionHandler,
        mx: MxHandler,
        verifier: Verifier,
        metrics: Metrics,
        tls_context: ssl.SSLContext | None,
        sockets: ListenSockets | None = None,
        budget: ByteBudget | None = None,
    ):
        self._settings = settings
        self._submission = submission
        self._mx = mx
        self._verifier = verifier
        self._metrics = metrics
        self._tls = tls_context
        self._budget = budget  # the process's, shared with HTTP (submission.budget)
        self._handshakes = HandshakeFailures(metrics)
        self._sockets = sockets  # None: bind here (without SO_REUSEPORT)
        self._servers: list[asyncio.Server] = []
        self._sessions = 0
        self.bound: dict[str, tuple[str, int]] = {}

    def _specs(self) -> list[ListenerSpec]:
        specs = [ListenerSpec("submission", self._settings.submission_listen, False)]
        if self._settings.submissions_listen:
            specs.append(ListenerSpec("submissions", self._settings.submissions_listen, True))
        if self._settings.mx_listen:
            specs.append(ListenerSpec("mx", self._settings.mx_listen, False))
        return [spec for spec in specs if spec.address]

    def _factory(self, spec: ListenerSpec) -> Callable[[], PostroomSMTP]:
        gauge = self._metrics.smtp_sessions.labels(spec.name)
        is_mx = spec.name == "mx"
        options: dict[str, Any] = {
            "hostname": self._settings.hostname,
            "ident": "postroom ESMTP",
            "data_size_limit": self._settings.max_message_size,
            "enable_SMTPUTF8": True,
            "decode_data": False,
            "timeout": self._settings.session_timeout,
            # STARTTLS on plain listeners; an implicit-TLS listener is encrypted from the start,
            # where aiosmtpd cannot tell, so its "AUTH only after TLS" check is satisfied by design.
            "tls_context": None if spec.implicit_tls else self._tls,
            "auth_require_tls": not spec.implicit_tls,
        }

        def opened() -> None:
            self._sessions += 1
            gauge.inc()

        def closed() -> None:
            self._sessions -= 1
            gauge.dec()

        busy = self._metrics.ingress_busy.labels("smtp")
        tls_failure = self._handshakes.reporter(spec.name)

        def build() -> PostroomSMTP:
            return PostroomSMTP(
                self._mx if is_mx else self._submission,
                verifier=None if is_mx else self._verifier,
                on_open=opened,
                on_close=closed,
                budget=self._budget,
                on_busy=busy.inc,
                on_tls_failure=tls_failure,
                **options,
            )

        return build

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for spec in self._specs():
            sockets, bound_here = sockets_for(self._sockets, spec.listener)
            try:
                for sock in sockets:
                    server = await loop.create_server(
                        self._factory(spec),
                        sock=sock,
                        ssl=self._tls if spec.implicit_tls else None,
                        backlog=BACKLOG,
                    )
                    self._servers.append(server)  # closing the server closes its socket
            except BaseException:
                if bound_here:
                    for sock in sockets:
                        sock.close()
                raise
            self.bound[spec.name] = describe(sockets[0])
            logger.info("SMTP %s listening on %s:%d", spec.name, *self.bound[spec.name])

    async def run(self, stop: asyncio.Event, grace: float = 10.0) -> None:
        """Serve until `stop`; then stop accepting and give open sessions `grace` seconds."""
        await stop.wait()
        for server in self._servers:
            server.close()
        deadline = asyncio.get_running_loop().time() + grace
        while self._sessions > 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await self.close()

    async def close(self) -> None:
        """Idempotent: close the listening sockets (a start-up failure path uses this too)."""
        servers, self._servers = self._servers, []
        self._handshakes.close()
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout=1.0)
