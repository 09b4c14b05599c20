"""`/healthz`, `/readyz` and `/metrics`: what load balancers, systemd checks and Prometheus read.
Public (no API key), JSON except the metrics exposition."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from postroom.http.errors import error_response
from postroom.http.openapi import operation
from postroom.metrics import Metrics, scrape_registry

ReadinessCheck = Callable[[], Awaitable[str | None]]  # None when ready, else the reason


class Status(BaseModel):
    status: str


class OperationsRoutes:
    def __init__(self, metrics: Metrics, readiness: ReadinessCheck):
        self._metrics = metrics
        self._readiness = readiness

    def register(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_page)

    @operation(summary="Liveness: the process answers", responses={200: ('`{"status": "ok"}`', Status)},
               tags=("operations",))  # fmt: skip
    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response(Status(status="ok").model_dump())

    @operation(summary="Readiness: serving, and the database answers",
               responses={200: ('`{"status": "ready"}`', Status),
                          503: ("starting, stopping, or the database does not answer (not_ready)", None)},
               tags=("operations",))  # fmt: skip
    async def readyz(self, request: web.Request) -> web.Response:
        reason = await self._readiness()
        if reason is not None:
            return error_response(503, "not_ready", reason, {"Retry-After": "5"})
        return web.json_response(Status(status="ready").model_dump())

    @operation(summary="Prometheus metrics", responses={200: ("the Prometheus text exposition format", None)},
               tags=("operations",))  # fmt: skip
    async def metrics_page(self, request: web.Request) -> web.Response:
        body = generate_latest(scrape_registry(self._metrics.registry))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
