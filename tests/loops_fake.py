"""A fake of Loops' transactional API on 127.0.0.1 for tests: records every request it gets and
answers from a programme of responses (200, 409, 429 with Retry-After, 500, 400 with Loops' error
body, slow ones), then 200 `{"success": true}` once the programme is used up."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: Any = field(default_factory=lambda: {"success": True})
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (a slow Loops)


OK = Answer()
DUPLICATE = Answer(409, {"success": False, "message": "Idempotency key has already been used."})
SERVER_ERROR = Answer(500, {"success": False, "message": "Internal server error"})


def rate_limited(retry_after: str | None = "2") -> Answer:
    headers = {"x-ratelimit-limit": "10", "x-ratelimit-remaining": "0"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return Answer(429, {"success": False, "message": "Rate limit exceeded."}, headers)


def refused(message: str, status: int = 400) -> Answer:
    return Answer(status, {"success": False, "path": "transactionalId", "message": message})


@dataclass(frozen=True)
class Received:
    at: float  # loop time it arrived
    headers: dict[str, str]
    body: dict[str, Any]


class FakeLoops:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.programme: deque[Answer] = deque()
        self.url = ""

    def answer(self, *answers: Answer) -> None:
        self.programme.extend(answers)

    async def _transactional(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.requests.append(Received(asyncio.get_running_loop().time(), dict(request.headers), body))
        answer = self.programme.popleft() if self.programme else OK
        if answer.delay:
            await asyncio.sleep(answer.delay)
        return web.json_response(answer.body, status=answer.status, headers=answer.headers)


@contextlib.asynccontextmanager
async def fake_loops() -> AsyncIterator[FakeLoops]:
    """The fake on a free port of 127.0.0.1; `fake.url` is its API root (the `base_url`)."""
    fake = FakeLoops()
    app = web.Application()
    app.router.add_post("/api/v1/transactional", fake._transactional)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}/api/v1"
    try:
        yield fake
    finally:
        await runner.cleanup()
