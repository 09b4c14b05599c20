"""The HTTP server's lifecycle: serve the application (`http.app`) from the listening socket that
`postroom serve` bound and handed over (or bind one, in-process), serve until stop, drain.

Connections are bounded here, beneath the application (issue 10, finding 7): aiohttp closes idle
keep-alive connections (`keepalive_timeout`) but has no limit on how long a request head may take
to arrive, so a client that sends nothing, or one header byte a second, held a connection for an
hour. `GuardedRequestHandler` adds what is missing, as Go's ReadHeaderTimeout does: the whole head
of a request must arrive within `header_timeout` seconds of its first byte (of the connection, for
the first request), else the client gets `408` and the connection is closed; and one client
address holds at most `max_connections_per_client` connections per process, further ones get
`429` and are closed at once, before aiohttp sees them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from postroom.config import HttpSettings
from postroom.listen import BACKLOG, Listener, ListenSockets, describe, sockets_for
from postroom.metrics import Metrics

logger = logging.getLogger(__name__)


def _response(status: str, code: str, message: str, extra: str = "") -> bytes:
    """A complete HTTP/1.1 error response with postroom's JSON error body, closing the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n").encode() + body  # fmt: skip


TOO_MANY_CONNECTIONS = _response("429 Too Many Requests", "too_many_connections",
                                 "too many connections from this address", "Retry-After: 1\r\n")  # fmt: skip
HEADER_TIMEOUT = _response("408 Request Timeout", "request_timeout", "the request head took too long")


class ConnectionGuard:
    """The open connections of this process per client address, against the cap."""

    def __init__(self, settings: HttpSettings, metrics: Metrics | None = None):
        self.header_timeout = settings.header_timeout
        self._cap = settings.max_connections_per_client
        self._open: dict[str, int] = {}
        self._metrics = metrics

    def admit(self, client: str) -> bool:
        count = self._open.get(client, 0)
        if count >= self._cap:
            self.closed("too_many_connections")
            return False
        self._open[client] = count + 1
        return True

    def release(self, client: str) -> None:
        count = self._open.get(client, 0) - 1
        if count > 0:
            self._open[client] = count
        else:
            self._open.pop(client, None)

    def closed(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.http_connections_closed.labels(reason).inc()


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's connection protocol with a request-head deadline and the per-client cap."""

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **options: Any):
        super().__init__(manager, **options)
        self._guard = guard
        self._client: str | None = None  # the address this connection is counted against
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if not self._guard.admit(client):
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(TOO_MANY_CONNECTIONS)
            transport.close()  # after the write is flushed; aiohttp never sees this connection
            return
        self._client = client
        super().connection_made(transport)
        self._arm()  # the first request's head is due from the start

    def data_received(self, data: bytes) -> None:
        # Bytes while aiohttp waits for the next request start its head: its deadline runs from
        # them. (While a request is handled, `_waiter` is None: those bytes are its body.)
        if self._head_deadline is None and self._waiter is not None and not self._messages:
            self._arm()
        heads = self._request_count
        super().data_received(data)
        if self._request_count > heads:  # a whole head was parsed
            self._disarm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._client is None:
            return  # refused in connection_made
        self._guard.release(self._client)
        self._client = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_deadline = self._loop.call_later(self._guard.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport is None:
            return
        # No request is in progress (the deadline runs only between requests): answer and close.
        self._guard.closed("header_timeout")
        self.transport.write(HEADER_TIMEOUT)
        self.force_close()


class GuardedSockSite(web.SockSite):
    """aiohttp's socket site, serving connections with `protocol` instead of plain RequestHandler."""

    def __init__(self, runner: web.BaseRunner, sock: Any, *, protocol: Callable[[], web.RequestHandler],
                 backlog: int):  # fmt: skip
        super().__init__(runner, sock, backlog=backlog)
        self._protocol = protocol

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner (stop, cleanup)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, sock=self._sock, backlog=self._backlog)


class HttpServer:
    def __init__(
        self,
        settings: HttpSettings,
        app: web.Application,
        sockets: ListenSockets | None = None,
        metrics: Metrics | None = None,
    ):
        self._settings = settings
        self._app = app
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        self._sockets = sockets  # None: bind here (without SO_REUSEPORT)
        self._guard = ConnectionGuard(settings, metrics)
        self.bound: tuple[str, int] | None = None

    async def start(self) -> None:
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        protocol = functools.partial(
            GuardedRequestHandler, server, loop=asyncio.get_running_loop(), guard=self._guard,
            keepalive_timeout=self._settings.keepalive_timeout,
            access_log=None,  # as AppRunner(access_log=None): no access log
        )  # fmt: skip
        sockets, bound_here = sockets_for(
            self._sockets, Listener("http", "http.listen", self._settings.listen)
        )
        try:
            for sock in sockets:
                await GuardedSockSite(self._runner, sock, protocol=protocol, backlog=BACKLOG).start()
        except BaseException:
            if bound_here:
                for sock in sockets:
                    sock.close()
            raise
        self.bound = describe(sockets[0])
        logger.info("HTTP API listening on %s:%d", *self.bound)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await stop.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        """Idempotent: stop listening, let in-flight requests finish (up to 5 s), release."""
        await self._runner.cleanup()
