"""Reading a JSON request body into a validated model, the same way for every route: 415 without
`Content-Type: application/json`, 400 `invalid_json` for bytes that are not JSON (or nest too
deeply), 400 `invalid_request` naming the field for a lone surrogate or a pydantic error; and a
query string into its model, 400 `invalid_query` naming the parameter."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from postroom.http.errors import ApiError
from postroom.submission.fields import unencodable_field

M = TypeVar("M", bound=BaseModel)


def validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:10]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


async def json_payload(request: web.Request) -> Any:
    """The decoded JSON body; ApiError for anything that is not one."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send a JSON body (application/json)")
    raw = await request.read()
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is nested too deeply") from None
    unencodable = unencodable_field(payload)
    if unencodable is not None:
        raise ApiError(400, "invalid_request", f"{unencodable}: not valid text (a lone UTF-16 surrogate)")
    return payload


def validated(model: type[M], payload: Any) -> M:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise ApiError(400, "invalid_request", validation_message(exc)) from None


def validated_query(model: type[M], request: web.Request) -> M:
    """The query string as `model` (the first value of a repeated parameter)."""
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise ApiError(400, "invalid_query", validation_message(exc)) from None
