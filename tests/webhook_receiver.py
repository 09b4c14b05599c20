"""A webhook receiver on 127.0.0.1:0 for tests: it verifies each request with the
`standardwebhooks` library (not postroom's code) and answers as told: 200, 500, or never (hang)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified: bool

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    secret: str = ""  # set once the endpoint is created
    mode: str = "ok"  # ok, fail (500), hang
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        try:
            Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        self.requests.append(Received(headers, body, verified))
        self.arrived.set()
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "fail":
            return web.Response(status=500, text="receiver broken")
        return web.Response(status=204)

    @property
    def verified(self) -> list[Received]:
        return [r for r in self.requests if r.verified]


@contextlib.asynccontextmanager
async def webhook_receiver(mode: str = "ok") -> AsyncIterator[Receiver]:
    receiver = Receiver(mode=mode)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield receiver
    finally:
        await runner.cleanup()
