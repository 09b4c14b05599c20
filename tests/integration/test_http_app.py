"""`http.app.build_app`: the native API's groups on the root, a mounted API with its own error
shape and authentication beside them (the seam the Loops-compatible API plugs into)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from postroom.config import HttpSettings
from postroom.http.app import Mount, build_app
from postroom.http.auth import requires
from postroom.http.errors import Handler
from postroom.metrics import Metrics
from postroom.store.credentials import ApiKey, Role


class OneKey:
    async def authenticate(self, token: str) -> ApiKey | None:
        return ApiKey("k1", "test", Role.SENDER, 0.0, None) if token == "good" else None


class Native:
    def register(self, app: web.Application) -> None:
        app.router.add_get("/v1/thing", self.thing)

    @requires(Role.SENDER)
    async def thing(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})


def foreign_api() -> web.Application:
    """An API with another error shape (`{"success": false, "message"}`) and its own key check."""

    @web.middleware
    async def own_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.headers.get("Authorization") != "Bearer other-key":
            return web.json_response({"error": "Invalid API key"}, status=401)
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return web.json_response({"success": False, "message": "no such endpoint"}, status=404)
        except Exception:
            return web.json_response({"success": False, "message": "broken"}, status=500)

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"success": True})

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    app = web.Application(middlewares=[own_errors])
    app.router.add_get("/hello", hello)
    app.router.add_get("/broken", broken)
    return app


async def test_each_api_answers_in_its_own_shape(aiohttp_client: Any) -> None:
    registry = CollectorRegistry()
    app = build_app(HttpSettings(listen="127.0.0.1:0"), OneKey(), Metrics(registry), [Native()],
                    [Mount("/api/v1", foreign_api())])  # fmt: skip
    client: TestClient[Any, Any] = await aiohttp_client(app)

    async def get(path: str, token: str) -> tuple[int, Any]:
        async with client.get(path, headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, await resp.json()

    assert await get("/v1/thing", "good") == (200, {"ok": True})
    status, body = await get("/v1/thing", "bad")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert await get("/api/v1/hello", "other-key") == (200, {"success": True})
    assert await get("/api/v1/hello", "good") == (401, {"error": "Invalid API key"})
    assert await get("/api/v1/broken", "other-key") == (500, {"success": False, "message": "broken"})
    assert await get("/api/v1/missing", "other-key") == (404, {"success": False, "message": "no such endpoint"})
    counted = registry.get_sample_value("postroom_http_requests_total", {"route": "/api/v1/hello", "status": "200"})
    assert counted == 1.0
