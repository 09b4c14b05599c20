"""The HTTP server's lifecycle: serve the application (`http.app`) from the listening socket that
`postroom serve` bound and handed over (or bind one, in-process), serve until stop, drain."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from postroom.config import HttpSettings
from postroom.listen import BACKLOG, Listener, ListenSockets, describe, sockets_for

logger = logging.getLogger(__name__)

class HttpServer:
    def __init__(
        self, settings: HttpSettings, app: web.Application, sockets: ListenSockets | None = None
    ):
        self._settings = settings
        self._app = app
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        self._sockets = sockets  # None: bind here (without SO_REUSEPORT)
        self.bound: tuple[str, int] | None = None

    async def start(self) -> None:
        await self._runner.setup()
        sockets, bound_here = sockets_for(
            self._sockets, Listener("http", "http.listen", self._settings.listen)
        )
        try:
            for sock in sockets:
                await web.SockSite(self._runner, sock, backlog=BACKLOG).start()
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
