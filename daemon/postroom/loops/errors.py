"""Loops' answers for failure, and its authentication.

Loops answers an invalid key with 401 `{"error": "Invalid API key"}`, a refused request with
`{"success": false, "message"}` (and, for a transactional send, also `"path"` naming the field and
`"type": "error"`, or the nested form `{"success": false, "type": "nestedError", "error": {"path",
"message"}, "transactionalId"}`). The official SDK reads `error.message`, `error` or `message`, so each
shape reaches its caller's `APIError` with the text. Nothing here ever shows a Python exception.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel

from postroom.contacts.model import ContactError
from postroom.core.errors import ConflictError, InvalidMessageError, NotFoundError, StoreError, TemplateError
from postroom.http.auth import API_KEY, CALLER
from postroom.http.errors import ApiError, Handler
from postroom.store.credentials import Role
from postroom.http.ratelimit import retry_after
from postroom.ratelimit.quota import Verdict

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
_STATUS = {"invalid": 400, "not_found": 404, "conflict": 409}


class LoopsFailure(BaseModel):
    """A refused request, as Loops answers one."""

    success: Literal[False]
    message: str


class LoopsFieldFailure(BaseModel):
    """A refused request naming the field at fault (`path`: `email`, `attachments.0.data`, ...)."""

    success: Literal[False]
    type: Literal["error"]
    path: str
    message: str


class InvalidApiKey(BaseModel):
    """401, as Loops answers a missing or unknown key: `{"error": "Invalid API key"}`."""

    error: str


class LoopsError(Exception):
    def __init__(self, status: int, message: str, path: str | None = None, *,
                 nested: bool = False, transactional_id: str | None = None,
                 headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status = status
        self.message = message
        self.path = path
        self.nested = nested
        self.transactional_id = transactional_id
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        if self.nested:
            nested: dict[str, Any] = {"success": False, "type": "nestedError",
                                      "error": {"path": self.path or "", "message": self.message}}  # fmt: skip
            if self.transactional_id is not None:
                nested["transactionalId"] = self.transactional_id
            return nested
        if self.path is not None:
            return LoopsFieldFailure(success=False, type="error", path=self.path, message=self.message).model_dump()
        return LoopsFailure(success=False, message=self.message).model_dump()


def over_quota(verdict: Verdict) -> LoopsError:
    """Loops' 429: the SDK raises RateLimitExceededError from its status and rate headers."""
    wait = retry_after(verdict)
    return LoopsError(429, f"Rate limit of {verdict.limit} requests exceeded; retry after {wait} s.",
                      headers={"Retry-After": wait})  # fmt: skip


def loops_response(error: LoopsError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers)


def role_needed(handler: Callable[..., Any]) -> Role:
    """The role a Loops route's handler needs: its mark, else viewer (every Loops call needs a key)."""
    needed: Role = getattr(handler, "loops_role", Role.VIEWER)
    return needed


def requires_role(role: Role) -> Callable[[F], F]:
    """The role a Loops route needs (its own mark: the root's auth leaves sub-app routes alone)."""

    def mark(handler: F) -> F:
        handler.loops_role = role  # type: ignore[attr-defined]
        return handler

    return mark


@web.middleware
async def loops_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except LoopsError as exc:
        return loops_response(exc)
    except ContactError as exc:
        return loops_response(LoopsError(_STATUS.get(exc.kind, 400), exc.message, exc.path or None))
    except ApiError as exc:  # the shared body readers (415, 400 invalid JSON), the byte budget (413, 503)
        return loops_response(LoopsError(exc.status, exc.message, headers=exc.headers))
    except InvalidMessageError as exc:
        return loops_response(LoopsError(400, str(exc)))
    except TemplateError as exc:
        return loops_response(LoopsError(400, str(exc)))
    except NotFoundError as exc:
        return loops_response(LoopsError(404, str(exc)))
    except ConflictError as exc:
        return loops_response(LoopsError(409, str(exc)))
    except StoreError as exc:
        logger.error("store unavailable during %s %s: %s", request.method, request.path, exc)
        return loops_response(LoopsError(503, "Service unavailable, retry later.", headers={"Retry-After": "5"}))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = "Request body is too large." if exc.status == 413 else exc.reason
        return loops_response(LoopsError(exc.status, message))
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return loops_response(LoopsError(500, "Internal server error."))


@web.middleware
async def loops_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every Loops call needs a key: a missing or unknown one is 401 `{"error": "Invalid API key"}`
    as Loops answers it; a key whose role does not allow the call is 403."""
    needed = role_needed(handler)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    key = None
    if scheme.lower() == "bearer" and token.strip():
        key = await request.app[API_KEY].authenticate(token.strip())
    if key is None:
        return web.json_response(InvalidApiKey(error="Invalid API key").model_dump(), status=401,
                                 headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    if not key.role.allows(needed):
        raise LoopsError(403, f"This API key has the role {key.role}; this call needs {needed}.")
    request[CALLER] = key
    return await handler(request)
