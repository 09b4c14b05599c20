"""The bodies and queries of the Loops-compatible API's calls as pydantic models (the transactional
send's is in `transactional`): handlers read requests through them, and the OpenAPI document shows
them. A model checks shape and types; what depends on stored state or on Loops' own rules (whether
an address is valid, a custom property's stored type, a reserved name, a mailing list that exists)
stays with the contacts service and the catalogue, which answer with their own messages. A model's
refusal is a Loops 400 naming the field."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from postroom.contacts.model import PropertyType
from postroom.contacts.service import MAX_EVENT_NAME
from postroom.http.bodies import json_payload, validation_message
from postroom.loops.catalogue import PER_PAGE_MAX, PER_PAGE_MIN
from postroom.loops.errors import LoopsError

M = TypeVar("M", bound=BaseModel)
# A custom property's value: Loops' types (a date is an ISO 8601 string or a Unix time in ms); null resets it.
PropertyValue = StrictStr | StrictInt | StrictFloat | StrictBool | None


def _refusal(exc: ValidationError) -> LoopsError:
    where = ".".join(str(part) for part in exc.errors()[0]["loc"]) or "body"
    return LoopsError(400, validation_message(exc), where)


async def loops_body(request: web.Request, model: type[M], *, optional: bool = False) -> M:
    """The JSON object body as `model`; with `optional`, no body at all reads as `{}`."""
    payload = await json_payload(request) if request.body_exists or not optional else {}
    if not isinstance(payload, dict):
        raise LoopsError(400, "The body must be a JSON object.")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise _refusal(exc) from None


def loops_query(request: web.Request, model: type[M]) -> M:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise _refusal(exc) from None


def fields_of(body: BaseModel) -> dict[str, Any]:
    """The fields the request gave (custom properties included), for the contacts service."""
    return body.model_dump(exclude_unset=True)


class ContactFields(BaseModel):
    """A contact's built-in fields and, as further keys, its custom properties."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, PropertyValue]

    firstName: StrictStr | None = None
    lastName: StrictStr | None = None
    source: StrictStr | None = None
    subscribed: StrictBool | None = None
    userGroup: StrictStr | None = None
    userId: StrictStr | None = None
    mailingLists: dict[str, StrictBool] | None = Field(default=None, description="list id -> subscribed")


class ContactCreateIn(ContactFields):
    email: StrictStr


class ContactUpdateIn(ContactFields):
    """Found by `userId` when given (then `email` is its new address), else by `email`; created
    when there is none."""

    email: StrictStr | None = None


class EventIn(ContactUpdateIn):
    """An event of a contact (found by `email` or `userId`, created when missing), with contact
    properties to set as further keys."""

    eventName: Annotated[StrictStr, Field(min_length=1, max_length=MAX_EVENT_NAME)]
    eventProperties: dict[str, StrictStr | StrictInt | StrictFloat | StrictBool] | None = None


class ContactRef(BaseModel):
    """A contact by address or by user id: exactly one of them."""

    email: StrictStr | None = None
    userId: StrictStr | None = None


class PropertyList(BaseModel):
    which: Literal["all", "custom"] = Field(default="all", alias="list")


class ContactPropertyIn(BaseModel):
    name: StrictStr = Field(description="camelCase letters and digits, at most 64 characters")
    type: PropertyType


class TransactionalEmailIn(BaseModel):
    name: Annotated[StrictStr, Field(min_length=1, max_length=255)]
    transactionalGroupId: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None


class TransactionalEmailChange(BaseModel):
    name: Annotated[StrictStr, Field(min_length=1, max_length=255)] | None = None
    transactionalGroupId: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None


class CataloguePage(BaseModel):
    perPage: Annotated[int, Field(ge=PER_PAGE_MIN, le=PER_PAGE_MAX)] = 20
    cursor: str | None = Field(default=None, description="`nextCursor` of the page before")


class LoopsSuccess(BaseModel):
    success: Literal[True]


class ContactSaved(BaseModel):
    success: Literal[True]
    id: str
