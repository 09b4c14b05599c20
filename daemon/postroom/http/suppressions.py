"""`/v1/suppressions` (list, add, remove), `GET /v1/bounces` (what reached the return path), and
the public one-click unsubscribe endpoint `/u/{token}` (RFC 8058: POST with the body
`List-Unsubscribe=One-Click`; GET shows a page with a button that POSTs)."""

from __future__ import annotations

import html
from typing import Annotated, Any

from aiohttp import web
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from postroom.bounces.records import SqlBounceRecords
from postroom.bounces.verp import TokenProblem, Unsubscribe, decode_unsubscribe
from postroom.core.addresses import valid_mailbox
from postroom.core.clock import Clock
from postroom.http.auth import caller, requires
from postroom.http.bodies import json_payload, validated, validated_query
from postroom.http.errors import ApiError
from postroom.http.openapi import operation
from postroom.metrics import Metrics
from postroom.store.credentials import Role
from postroom.suppression.model import SOURCES, Entry, NewEntry, valid_scope
from postroom.suppression.rules import GLOBAL, stream_scope
from postroom.suppression.service import SuppressionService


def scope_of(value: str) -> str:
    """`global`, `stream:<name>`, or a bare stream name."""
    value = value.strip()
    if value == GLOBAL or value.startswith("stream:"):
        return value
    return stream_scope(value)


def entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "id": entry.id, "address": entry.address, "erased": entry.erased, "scope": entry.scope,
        "source": entry.source, "reason": entry.reason, "bounce_record_id": entry.bounce_record_id,
        "created_by": entry.created_by, "created_at": entry.created_at, "expires_at": entry.expires_at,
    }  # fmt: skip


class SuppressionSearch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    address: str | None = None
    scope: str | None = Field(default=None, description="`global`, `stream:<name>` or a stream name")
    source: str | None = Field(default=None, description="bounce, complaint, unsubscribe, manual, import")
    after: int = Field(default=0, ge=0, description="an entry id: the page after it")
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    include_expired: bool = False


class SuppressionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(validation_alias=AliasChoices("address", "email"), min_length=3, max_length=320)
    scope: str = GLOBAL
    reason: str = Field(default="manual", min_length=1, max_length=255)
    expires_at: float | None = None

    @field_validator("address")
    @classmethod
    def _mailbox(cls, value: str) -> str:
        if not valid_mailbox(value.strip()):
            raise ValueError("not an email address")
        return value.strip()

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str) -> str:
        if not valid_scope(scope_of(value)):
            raise ValueError("scope is `global`, `stream:<name>` or a stream name")
        return scope_of(value)


class SuppressionRemoval(BaseModel):
    model_config = ConfigDict(extra="ignore")

    address: str = Field(min_length=3, max_length=320)
    scope: str | None = Field(default=None, description="only this scope; absent: every entry of the address")


class BounceSearch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    recipient: str | None = None
    kind: str | None = Field(default=None, description="dsn, feedback, autoreply, not_bounce")
    bounce_class: str | None = Field(default=None, alias="class", description="hard, soft, none")
    delivery_id: int | None = None
    since: float | None = None
    before: int | None = Field(default=None, description="a record id: the page after it (newest first)")
    limit: Annotated[int, Field(ge=1, le=500)] = 100


class SuppressionRoutes:
    def __init__(self, service: SuppressionService, records: SqlBounceRecords):
        self._service = service
        self._records = records

    def register(self, app: web.Application) -> None:
        app.router.add_get("/v1/suppressions", self.search)
        app.router.add_post("/v1/suppressions", self.add)
        app.router.add_delete("/v1/suppressions", self.remove)
        app.router.add_get("/v1/bounces", self.bounces)

    @operation(summary="The suppression list, oldest entry first", query=SuppressionSearch,
               responses={200: ("`data` (entries) and `next` (the id for `after`, or null)", None)},
               tags=("suppressions",))  # fmt: skip
    @requires(Role.VIEWER)
    async def search(self, request: web.Request) -> web.Response:
        query = validated_query(SuppressionSearch, request)
        if query.source and query.source not in SOURCES:
            raise ApiError(400, "invalid_query", f"source: one of {', '.join(SOURCES)}")
        found = await self._service.search(
            address=query.address, scope=scope_of(query.scope) if query.scope else None, source=query.source,
            after=query.after, limit=query.limit + 1, include_expired=query.include_expired,
        )  # fmt: skip
        page = found[: query.limit]
        nxt = page[-1].id if len(found) > query.limit else None
        return web.json_response({"data": [entry_json(e) for e in page], "next": nxt})

    @operation(summary="Suppress an address (globally or for one stream)", body=SuppressionIn,
               responses={201: ("the entry", None)}, tags=("suppressions",))  # fmt: skip
    @requires(Role.SENDER)
    async def add(self, request: web.Request) -> web.Response:
        body = validated(SuppressionIn, await json_payload(request))
        await self._service.add([NewEntry(body.address, body.scope, "manual", body.reason,
                                          created_by=f"apikey:{caller(request).id}", expires_at=body.expires_at)])  # fmt: skip
        found = await self._service.search(address=body.address, scope=body.scope, limit=1, include_expired=True)
        return web.json_response(entry_json(found[0]) if found else {}, status=201)

    @operation(summary="Lift the suppression of an address", query=SuppressionRemoval,
               responses={200: ("`removed`: how many entries", None), 404: ("no entry for the address", None)},
               tags=("suppressions",))  # fmt: skip
    @requires(Role.ADMIN)
    async def remove(self, request: web.Request) -> web.Response:
        query = validated_query(SuppressionRemoval, request)
        removed = await self._service.remove(query.address, scope_of(query.scope) if query.scope else None,
                                             by=f"apikey:{caller(request).id}")  # fmt: skip
        if not removed:
            raise ApiError(404, "not_found", "no suppression entry for that address")
        return web.json_response({"removed": removed})

    @operation(summary="Bounce records: mail that reached the return path, newest first", query=BounceSearch,
               responses={200: ("`data` (records) and `next` (the id for `before`, or null)", None)},
               tags=("suppressions",))  # fmt: skip
    @requires(Role.VIEWER)
    async def bounces(self, request: web.Request) -> web.Response:
        query = validated_query(BounceSearch, request)
        found = await self._records.search(
            recipient=query.recipient, kind=query.kind, bounce_class=query.bounce_class,
            delivery_id=query.delivery_id, since=query.since, before=query.before, limit=query.limit + 1,
        )  # fmt: skip
        page = found[: query.limit]
        nxt = page[-1].id if len(found) > query.limit else None
        return web.json_response({"data": [r.as_dict() for r in page], "next": nxt})


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<meta name="viewport" content="width=device-width"><title>Unsubscribe</title></head><body
style="font-family:sans-serif;max-width:32em;margin:3em auto">{body}</body></html>"""


class UnsubscribeRoutes:
    """Public: the token is the credential (signed; bound to one recipient and stream)."""

    def __init__(self, service: SuppressionService, keys: tuple[str, ...], clock: Clock, metrics: Metrics):
        self._service = service
        self._keys = keys
        self._clock = clock
        self._metrics = metrics

    def register(self, app: web.Application) -> None:
        app.router.add_get("/u/{token}", self.page)
        app.router.add_post("/u/{token}", self.unsubscribe)

    def _item(self, request: web.Request) -> Unsubscribe:
        found = decode_unsubscribe(request.match_info["token"], self._keys)
        if isinstance(found, TokenProblem):
            raise ApiError(404, "not_found", "this unsubscribe link is not valid")
        return found

    @operation(summary="One-click unsubscribe: a confirmation page with a button",
               responses={200: ("an HTML page", None), 404: ("not a valid link", None)}, tags=("unsubscribe",))  # fmt: skip
    async def page(self, request: web.Request) -> web.Response:
        item = self._item(request)
        body = (f"<p>Unsubscribe <b>{html.escape(item.recipient)}</b> from <b>{html.escape(item.stream)}</b> mail?</p>"
                f'<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
                f'<button type="submit">Unsubscribe</button></form>')  # fmt: skip
        return web.Response(text=_PAGE.format(body=body), content_type="text/html")

    @operation(summary="One-click unsubscribe (RFC 8058): suppress the address for the link's stream",
               responses={200: ("unsubscribed (an HTML page)", None), 400: ("not a one-click POST", None),
                          404: ("not a valid link", None)}, tags=("unsubscribe",))  # fmt: skip
    async def unsubscribe(self, request: web.Request) -> web.Response:
        item = self._item(request)
        form = await request.post()
        if form.get("List-Unsubscribe") != "One-Click":  # RFC 8058 §3.1: the body says what it is
            raise ApiError(400, "invalid_request", "the body must be List-Unsubscribe=One-Click")
        entry = NewEntry(item.recipient, stream_scope(item.stream), "unsubscribe", "one-click",
                         created_by="recipient")  # fmt: skip
        await self._service.unsubscribe(entry, item.message_id)
        self._metrics.unsubscribed.labels(item.stream).inc()
        body = f"<p><b>{html.escape(item.recipient)}</b> is unsubscribed from <b>{html.escape(item.stream)}</b> mail.</p>"
        return web.Response(text=_PAGE.format(body=body), content_type="text/html")
