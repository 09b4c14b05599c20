"""The aiohttp application: the native API's route groups on the root, other APIs mounted beside
them as sub-applications with their own error shapes and authentication.

The root's middlewares count every request by route and status, turn errors into postroom's JSON
errors (`{"error": {"code", "message"}}`) and check the bearer API key of routes marked with
`requires`, then spend the caller's rate-limit quota (`http.ratelimit`; mounted APIs put the same
limiter after their own auth). A mounted API (the Loops-compatible one at `/api/v1`) brings its own middlewares, which
run inside the root's: its handlers are not marked, so the root's auth leaves them to it, and its
responses arrive already shaped. Route groups call services only; none holds a store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from postroom.config import HttpSettings
from postroom.http.auth import API_KEY, ApiKeyAuthenticator, bearer_auth, required_role
from postroom.http.errors import ApiError, ErrorBody, Handler, json_errors
from postroom.http.openapi import API_CONVENTIONS, ApiConventions
from postroom.http.ratelimit import add_rate_headers, rate_limit, retry_after
from postroom.metrics import Metrics
from postroom.ratelimit.policy import RateLimiter
from postroom.ratelimit.quota import Verdict
from postroom.submission.budget import ByteBudget


class RouteGroup(Protocol):
    def register(self, app: web.Application) -> None: ...


@dataclass(frozen=True)
class Mount:
    """An API of its own under a path prefix, e.g. `Mount("/api/v1", loops_app)`."""

    prefix: str
    app: web.Application


def body_budget(settings: HttpSettings, budget: ByteBudget, metrics: Metrics) -> Middleware:
    """Request bodies reserve their size in the process's byte budget before they are read: one
    larger than `max_body_size` is refused at once (413, unread), one that does not fit now gets
    503 with Retry-After. A body without Content-Length reserves the largest allowed size."""

    @web.middleware
    async def reserve(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.body_exists:
            return await handler(request)
        size = request.content_length
        if size is not None and size > settings.max_body_size:
            raise ApiError(413, "payload_too_large", f"the body is {size} bytes; the limit is "
                           f"{settings.max_body_size} (http.max_body_size)")  # fmt: skip
        with budget.reserved(size if size is not None else settings.max_body_size) as room:
            if not room:
                metrics.ingress_busy.labels("http").inc()
                raise ApiError(503, "busy", "too many large requests in progress; retry shortly",
                               {"Retry-After": "2"})  # fmt: skip
            return await handler(request)

    return reserve


def over_quota(verdict: Verdict) -> ApiError:
    """The native API's 429."""
    return ApiError(429, "rate_limited", f"this API key is over its quota of {verdict.limit} requests; "
                    f"retry after {retry_after(verdict)} s (http.rate_limit)", {"Retry-After": retry_after(verdict)})  # fmt: skip


def build_app(
    settings: HttpSettings,
    api_keys: ApiKeyAuthenticator,
    metrics: Metrics,
    groups: Sequence[RouteGroup],
    mounts: Sequence[Mount] = (),
    budget: ByteBudget | None = None,
    limiter: RateLimiter | None = None,
) -> web.Application:
    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        metrics.http_requests.labels(name, str(response.status)).inc()
        return response

    middlewares: list[Middleware] = [count_requests, json_errors]
    if budget is not None:
        middlewares.append(body_budget(settings, budget, metrics))
    middlewares.append(bearer_auth)
    if limiter is not None:
        middlewares.append(rate_limit(limiter, over_quota, metrics))
    app = web.Application(client_max_size=settings.max_body_size, middlewares=middlewares)
    app.on_response_prepare.append(add_rate_headers)
    app[API_KEY] = api_keys
    app[API_CONVENTIONS] = ApiConventions("postroom", required_role, (ErrorBody,))
    for group in groups:
        group.register(app)
    for mount in mounts:
        app.add_subapp(mount.prefix, mount.app)
    return app
