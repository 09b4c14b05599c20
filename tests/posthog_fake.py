"""A fake of PostHog's Query API (`POST /api/projects/{id}/query/`) on 127.0.0.1 for tests.

It checks the Bearer key (401 in PostHog's shape otherwise), records every request, and answers
from a programme of answers (500, 429 with Retry-After, a hang, a HogQL error) while there are
any, then from `responder`: by default canned HogQL results chosen by the request's `name`
("postroom:wau" -> weekly rows, ...), 404 in PostHog's shape for a project it does not know."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

API_KEY = "phx_fake_personal_api_key_0123456789"
PROJECT_ID = "12345"


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: Any = None  # None: the responder's answer
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (a slow PostHog; longer than the timeout: a hang)


SERVER_ERROR = Answer(500, {"type": "server_error", "code": "error", "detail": "A server error occurred.",
                            "attr": None})  # fmt: skip
UNAUTHORIZED = {"type": "authentication_error", "code": "invalid_personal_api_key",
                "detail": "Invalid Personal API key."}  # fmt: skip


def rate_limited(retry_after: str | None = "1") -> Answer:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Answer(429, {"type": "throttled_error", "code": "throttled",
                        "detail": f"Request was throttled. Expected available in {retry_after} seconds.",
                        "attr": None}, headers)  # fmt: skip


def hogql_error(detail: str = "Syntax error at line 1, column 8: no viable alternative at input 'SELEC'") -> Answer:
    return Answer(400, {"type": "validation_error", "code": "invalid_input", "detail": detail, "attr": None})


def hang(seconds: float = 30.0) -> Answer:
    return Answer(delay=seconds)


def hogql_response(columns: list[str], types: list[Any], rows: list[list[Any]], sql: str = "") -> dict[str, Any]:
    return {"columns": columns, "types": types, "results": rows, "hasMore": False, "limit": 100, "offset": 0,
            "is_cached": False, "last_refresh": "2026-11-23T07:00:03Z", "hogql": sql, "timings": [],
            "cache_key": "cache_abc", "next_allowed_client_refresh": "2026-11-23T07:01:03Z"}  # fmt: skip


# Results per query name, HogQL-shaped (types as [name, type] pairs as PostHog's schema has them).
CANNED: dict[str, tuple[list[str], list[Any], list[list[Any]]]] = {
    "wau": (["week", "wau"], [["week", "Date"], ["wau", "UInt64"]],
            [["2026-11-02", 1840], ["2026-11-09", 1902], ["2026-11-16", 2051]]),
    "mau": (["month", "mau"], [["month", "Date"], ["mau", "UInt64"]], [["2026-10-01", 6120], ["2026-11-01", 6480]]),
    "signups": (["day", "signups"], [["day", "Date"], ["signups", "UInt64"]],
                [["2026-11-16", 37], ["2026-11-17", 41], ["2026-11-18", 29]]),
    "activation_funnel": (["level", "persons"], [["level", "UInt8"], ["persons", "UInt64"]],
                          [[1, 612], [2, 233], [3, 58]]),
    "top_events": (["event", "events", "users"], [["event", "String"], ["events", "UInt64"], ["users", "UInt64"]],
                   [["$pageview", 48213, 2011], ["$autocapture", 30122, 1780]]),
}  # fmt: skip


@dataclass(frozen=True)
class Received:
    at: float  # loop time it arrived
    project_id: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.body.get("name", ""))

    @property
    def sql(self) -> str:
        return str(self.body.get("query", {}).get("query", ""))


Responder = Callable[[Received], Answer]


def canned(received: Received) -> Answer:
    """The default responder: CANNED by the name after `postroom:`; an empty result otherwise."""
    name = received.name.removeprefix("postroom:")
    columns, types, rows = CANNED.get(name, ([], [], []))
    if received.body.get("query", {}).get("kind") != "HogQLQuery":
        # An insight kind: PostHog's results are objects, with no columns.
        return Answer(body={"results": [{"label": name, "count": 3, "data": [1, 2], "days": ["d1", "d2"]}],
                            "is_cached": True, "last_refresh": "2026-11-23T07:00:03Z"})  # fmt: skip
    return Answer(body=hogql_response(columns, types, rows, received.sql))


class FakePostHog:
    def __init__(self, api_key: str = API_KEY, project_id: str = PROJECT_ID) -> None:
        self.api_key = api_key
        self.project_id = project_id
        self.requests: list[Received] = []
        self.programme: deque[Answer] = deque()
        self.responder: Responder = canned
        self.url = ""

    def answer(self, *answers: Answer) -> None:
        """Answer the next requests with these, in order (then the responder again)."""
        self.programme.extend(answers)

    def always(self, answer: Answer) -> None:
        """Answer every request with this from now on."""
        self.programme.clear()
        self.responder = lambda received: answer

    async def _query(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.json_response({"type": "validation_error", "code": "parse_error",
                                      "detail": "JSON parse error", "attr": None}, status=400)  # fmt: skip
        received = Received(asyncio.get_running_loop().time(), request.match_info["project_id"],
                            dict(request.headers), body)  # fmt: skip
        self.requests.append(received)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response(UNAUTHORIZED, status=401)
        if received.project_id != self.project_id:
            return web.json_response({"type": "invalid_request", "code": "not_found", "detail": "Not found.",
                                      "attr": None}, status=404)  # fmt: skip
        answer = self.programme.popleft() if self.programme else self.responder(received)
        if answer.delay:
            await asyncio.sleep(answer.delay)
        payload = answer.body if answer.body is not None else self.responder(received).body
        return web.json_response(payload, status=answer.status, headers=answer.headers)


@contextlib.asynccontextmanager
async def fake_posthog(api_key: str = API_KEY, project_id: str = PROJECT_ID) -> AsyncIterator[FakePostHog]:
    """The fake on a free port of 127.0.0.1; `fake.url` is its host (PostHog's `host` setting)."""
    fake = FakePostHog(api_key, project_id)
    app = web.Application()
    app.router.add_post("/api/projects/{project_id}/query/", fake._query)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None and server.sockets
    port = server.sockets[0].getsockname()[1]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()
