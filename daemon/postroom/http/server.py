"""The aiohttp application and its lifecycle: build routes, serve from the listening socket that
`postroom serve` bound and handed over (or bind one, in-process), serve until stop, drain."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from postroom.config import HttpSettings
from postroom.http.auth import API_KEY, bearer_auth
from postroom.http.errors import Handler, error_response, json_errors
from postroom.http.domains import DomainRoutes
from postroom.http.messages import MessageRoutes
from postroom.listen import BACKLOG, Listener, ListenSockets, describe, sockets_for
from postroom.metrics import Metrics, scrape_registry
from postroom.store.credentials import SqlApiKeys

logger = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[str | None]]  # None when ready, else the reason


def build_app(
    settings: HttpSettings,
    api_keys: SqlApiKeys,
    messages: MessageRoutes,
    metrics: Metrics,
    readiness: ReadinessCheck,
    domains: DomainRoutes | None = None,
) -> web.Application:
    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        metrics.http_requests.labels(name, str(response.status)).inc()
        return response

    app = web.Application(
        client_max_size=settings.max_body_size,
        middlewares=[count_requests, json_errors, bearer_auth],
    )
    app[API_KEY] = api_keys

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        reason = await readiness()
        if reason is not None:
            return error_response(503, "not_ready", reason, {"Retry-After": "5"})
        return web.json_response({"status": "ready"})

    async def metrics_page(request: web.Request) -> web.Response:
        body = generate_latest(scrape_registry(metrics.registry))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    messages.register(app)
    if domains is not None:
        domains.register(app)
    return app


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
