"""The HTTP side of rate limiting: each authenticated request spends from its API key's bucket
(`postroom.ratelimit`); every response to it carries `x-ratelimit-limit` and
`x-ratelimit-remaining`; one over the quota is refused with 429 and `Retry-After`, in the error
shape of the API it was sent to (`refuse`).

The middleware runs after an API's own authentication (it needs the caller's key); requests
without a key (health, metrics, a refused key) are not counted here.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware

from postroom.http.auth import CALLER
from postroom.http.errors import Handler
from postroom.metrics import Metrics
from postroom.ratelimit.policy import RateLimiter
from postroom.ratelimit.quota import Verdict
from postroom.store.credentials import ApiKey

F = TypeVar("F", bound=Callable[..., Awaitable[web.StreamResponse]])

VERDICT: Any = web.RequestKey("postroom_rate_verdict", Verdict) if hasattr(web, "RequestKey") else "postroom.rate"


def limited_as(route_class: str) -> Callable[[F], F]:
    """Mark a handler's route class ("send"); unmarked ones are "read" (GET, HEAD) or "write"."""

    def mark(handler: F) -> F:
        handler.route_class = route_class  # type: ignore[attr-defined]
        return handler

    return mark


def route_class(request: web.Request, handler: Handler) -> str:
    marked: str | None = getattr(handler, "route_class", None)
    if marked is not None:
        return marked
    return "read" if request.method in ("GET", "HEAD") else "write"


def retry_after(verdict: Verdict) -> str:
    return str(max(1, math.ceil(verdict.retry_after)))


def rate_headers(verdict: Verdict) -> dict[str, str]:
    return {"x-ratelimit-limit": str(verdict.limit), "x-ratelimit-remaining": str(verdict.remaining)}


def rate_limit(limiter: RateLimiter, refuse: Callable[[Verdict], Exception], metrics: Metrics) -> Middleware:
    """Spend the caller's quota; over it, raise `refuse(verdict)` (an error of the API's own shape
    that carries Retry-After and the rate headers)."""

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        key: ApiKey | None = request.get(CALLER)
        if key is None:
            return await handler(request)
        charge, verdict = limiter.check(key.id, key.name, route_class(request, handler))
        request[VERDICT] = verdict
        if not verdict.allowed:
            metrics.http_rate_limited.labels(charge.route_class).inc()
            raise refuse(verdict)
        return await handler(request)

    return limit


async def add_rate_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer to a counted request says where its quota stands, errors
    included (they are rendered by the outer middlewares, after `rate_limit` has run)."""
    verdict: Verdict | None = request.get(VERDICT)
    if verdict is not None:
        response.headers.update(rate_headers(verdict))
