"""A fake of Loops' transactional API on 127.0.0.1 for tests: records every request it gets and
answers from a programme of responses (200, 409, 429 with Retry-After, 500, 400 with Loops' error
body, slow ones), then `default` (200 `{"success": true}`) once the programme is used up.

`idempotent=True` makes it keep Idempotency-Keys as Loops does: a 2xx answer accepts the send and
its key (recorded in `accepted` when the request arrives, before any delay: Loops has taken it even
if the answer never reaches the client), and a request whose key was accepted before is answered
409 instead (`reused`). `delay_of` gives each request its own delay; `hold()` keeps requests
waiting, unanswered and not accepted, until `release()`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
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


@dataclass(frozen=True)
class Accepted:
    """A send an idempotent fake accepted: Loops would deliver this email."""

    at: float  # loop time it arrived
    email: str
    transactional_id: str
    key: str | None  # its Idempotency-Key


class FakeLoops:
    def __init__(self, idempotent: bool = False) -> None:
        self.requests: list[Received] = []
        self.programme: deque[Answer] = deque()
        self.default = OK
        self.url = ""
        self.idempotent = idempotent
        self.keys: set[str] = set()  # Idempotency-Keys of accepted sends
        self.accepted: list[Accepted] = []
        self.reused: list[str] = []  # keys answered 409, one entry per such answer
        self.delay_of: Callable[[Received], float] | None = None
        self._gate: asyncio.Event | None = None

    def answer(self, *answers: Answer) -> None:
        self.programme.extend(answers)

    def hold(self) -> None:
        self._gate = asyncio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    async def _transactional(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        received = Received(asyncio.get_running_loop().time(), dict(request.headers), body)
        self.requests.append(received)
        if self._gate is not None:
            await self._gate.wait()
        answer = self.programme.popleft() if self.programme else self.default
        if self.delay_of is not None:
            answer = replace(answer, delay=self.delay_of(received))
        if self.idempotent and 200 <= answer.status < 300:
            key = request.headers.get("Idempotency-Key")
            if key is not None and key in self.keys:
                answer = replace(DUPLICATE, delay=answer.delay)
                self.reused.append(key)
            else:
                if key is not None:
                    self.keys.add(key)
                self.accepted.append(Accepted(asyncio.get_running_loop().time(), str(body.get("email")),
                                              str(body.get("transactionalId")), key))  # fmt: skip
        if answer.delay:
            await asyncio.sleep(answer.delay)
        return web.json_response(answer.body, status=answer.status, headers=answer.headers)


@contextlib.asynccontextmanager
async def fake_loops(idempotent: bool = False) -> AsyncIterator[FakeLoops]:
    """The fake on a free port of 127.0.0.1; `fake.url` is its API root (the `base_url`)."""
    fake = FakeLoops(idempotent)
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
