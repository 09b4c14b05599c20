"""Bearer API keys and roles. Routes declare the role they need with `requires`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from aiohttp import web

from postroom.http.errors import ApiError, Handler
from postroom.store.credentials import ApiKey, Role


class ApiKeyAuthenticator(Protocol):
    async def authenticate(self, token: str) -> ApiKey | None: ...


API_KEY = web.AppKey("api_keys", ApiKeyAuthenticator)
# aiohttp 3.14 warns on plain-string request keys (NotAppKeyWarning, an error under the test
# suite's filterwarnings); releases before 3.14 have no RequestKey and take the string.
CALLER: Any = (
    web.RequestKey("postroom_caller", ApiKey) if hasattr(web, "RequestKey") else "postroom.caller"
)

F = TypeVar("F", bound=Callable[..., Awaitable[web.StreamResponse]])


def requires(role: Role) -> Callable[[F], F]:
    def mark(handler: F) -> F:
        handler.required_role = role  # type: ignore[attr-defined]
        return handler

    return mark


def required_role(handler: Callable[..., object]) -> Role | None:
    """The role a native route's handler needs; None: public."""
    needed: Role | None = getattr(handler, "required_role", None)
    return needed


def caller(request: web.Request) -> ApiKey:
    key: ApiKey = request[CALLER]
    return key


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    needed = required_role(handler)
    if needed is None:
        return await handler(request)  # public: health, readiness, metrics
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <api key>",
                       {"WWW-Authenticate": "Bearer"})  # fmt: skip
    key = await request.app[API_KEY].authenticate(token.strip())
    if key is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key",
                       {"WWW-Authenticate": "Bearer"})  # fmt: skip
    if not key.role.allows(needed):
        raise ApiError(403, "forbidden", f"this API key has role {key.role}, {needed} is needed")
    request[CALLER] = key
    return await handler(request)
