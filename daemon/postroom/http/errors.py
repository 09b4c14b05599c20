"""JSON errors: `{"error": {"code", "message"}}` with the right status, for every failure path."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import BaseModel

from postroom.core.errors import (
    ConflictError,
    InvalidMessageError,
    NotFoundError,
    StoreError,
    TemplateError,
)
from postroom.submission.outcome import Refusal

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """Raised by routes for a JSON error response."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


# A refusal of the submission door as an API error: (status, error code) by refusal code; the
# rest are 422 with the refusal's own code (unknown_sender_domain, dkim_unavailable, ...).
_REFUSAL_STATUS = {
    "too_large": (413, "payload_too_large"),
    "idempotency_conflict": (409, "conflict"),
    "store_unavailable": (503, "unavailable"),
}


def refusal_error(refusal: Refusal) -> ApiError:
    status, code = _REFUSAL_STATUS.get(refusal.code, (422, refusal.code))
    headers = {"Retry-After": "5"} if status == 503 else None
    return ApiError(status, code, refusal.reason, headers)


class ErrorDetail(BaseModel):
    code: str
    message: str
    problems: list[str] | None = None  # every problem, each naming its place (a path, a file:line)


class ErrorBody(BaseModel):
    """The body of every native API error: `{"error": {"code", "message", "problems"?}}`."""

    error: ErrorDetail


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None,
    problems: list[str] | None = None,
) -> web.Response:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, problems=problems or None))
    return web.json_response(body.model_dump(exclude_none=True), status=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    503: "unavailable",
}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    except InvalidMessageError as exc:
        return error_response(400, "invalid_message", str(exc))
    except TemplateError as exc:
        return error_response(422, exc.code, str(exc), problems=exc.problems)
    except NotFoundError as exc:
        return error_response(404, "not_found", str(exc))
    except ConflictError as exc:
        return error_response(409, "conflict", str(exc))
    except StoreError as exc:
        logger.error("store unavailable during %s %s: %s", request.method, request.path, exc)
        return error_response(
            503, "unavailable", "storage is unavailable, retry later", {"Retry-After": "5"}
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "error")
        message = exc.reason if exc.status != 413 else "request body is too large"
        return error_response(exc.status, code, message)
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error")
