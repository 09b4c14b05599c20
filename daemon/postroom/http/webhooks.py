"""`/v1/webhook-endpoints`: outbound webhook subscriptions. Listing needs a viewer key; creating,
changing, deleting, test sends and replays need admin. The signing secret is in the answer to
create only."""

from __future__ import annotations

import datetime
from typing import Annotated

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from postroom.http.auth import requires
from postroom.http.bodies import json_payload, validated, validated_query
from postroom.http.openapi import operation
from postroom.http.ratelimit import limited_as
from postroom.store.credentials import Role
from postroom.webhooks.service import WebhookService


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class EndpointIn(_Body):
    url: Annotated[str, Field(min_length=8, max_length=2048)]
    event_types: Annotated[list[str], Field(min_length=1, max_length=20)]
    description: Annotated[str, Field(max_length=255)] = ""
    # Bring your own `whsec_...` secret (e.g. the one a receiver already verifies with).
    secret: Annotated[str, Field(max_length=128)] | None = None


class DeliveriesQuery(_Body):
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class EndpointChange(_Body):
    enabled: bool


class ReplayIn(_Body):
    event_ids: Annotated[list[int], Field(max_length=10_000)] = Field(default_factory=list)
    since: datetime.datetime | None = Field(default=None, alias="from")
    until: datetime.datetime | None = Field(default=None, alias="to")
    endpoint_id: str | None = None

    @model_validator(mode="after")
    def _something(self) -> ReplayIn:
        if not self.event_ids and self.since is None and self.until is None:
            raise ValueError("name event_ids, or a time range (from, to)")
        return self


def _epoch(value: datetime.datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.timestamp()


class WebhookRoutes:
    def __init__(self, service: WebhookService, session: aiohttp.ClientSession):
        self._service = service
        self._session = session

    def register(self, app: web.Application) -> None:
        app.router.add_get("/v1/webhook-endpoints", self.list_endpoints)
        app.router.add_post("/v1/webhook-endpoints", self.create)
        app.router.add_post("/v1/webhook-endpoints/replay", self.replay)
        app.router.add_get("/v1/webhook-endpoints/{id}", self.show)
        app.router.add_patch("/v1/webhook-endpoints/{id}", self.change)
        app.router.add_delete("/v1/webhook-endpoints/{id}", self.delete)
        app.router.add_post("/v1/webhook-endpoints/{id}/test", self.test)
        app.router.add_get("/v1/webhook-endpoints/{id}/deliveries", self.deliveries)

    @operation(summary="Every webhook endpoint, with its failure streak and pending deliveries",
               responses={200: ("`data`: one object per endpoint (no secrets)", None)}, tags=("webhooks",))  # fmt: skip
    @requires(Role.VIEWER)
    async def list_endpoints(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [e.as_dict() for e in await self._service.endpoints()]})

    @operation(summary="Subscribe an endpoint to event types; the answer holds its signing secret, shown once",
               body=EndpointIn,
               responses={201: ("the endpoint and `secret` (whsec_...)", None),
                          400: ("a bad URL, event type or secret", None)}, tags=("webhooks",))  # fmt: skip
    @requires(Role.ADMIN)
    async def create(self, request: web.Request) -> web.Response:
        body = validated(EndpointIn, await json_payload(request))
        made, secret = await self._service.create(body.url, body.event_types, body.description, body.secret)
        return web.json_response({**made.as_dict(), "secret": secret}, status=201)

    @operation(summary="One webhook endpoint", responses={200: ("the endpoint (no secret)", None),
               404: ("no such endpoint", None)}, tags=("webhooks",))  # fmt: skip
    @requires(Role.VIEWER)
    async def show(self, request: web.Request) -> web.Response:
        return web.json_response((await self._service.show(request.match_info["id"])).as_dict())

    @operation(summary="An endpoint's newest deliveries: state, attempts, its last answer", query=DeliveriesQuery,
               responses={200: ("`data`: one object per delivery, newest first (no payloads)", None),
                          404: ("no such endpoint", None)}, tags=("webhooks",))  # fmt: skip
    @requires(Role.VIEWER)
    async def deliveries(self, request: web.Request) -> web.Response:
        query = validated_query(DeliveriesQuery, request)
        found = await self._service.deliveries(request.match_info["id"], query.limit)
        return web.json_response({"data": found})

    @operation(summary="Enable (resetting its failure streak) or disable an endpoint", body=EndpointChange,
               responses={200: ("the endpoint", None), 404: ("no such endpoint", None)}, tags=("webhooks",))  # fmt: skip
    @requires(Role.ADMIN)
    async def change(self, request: web.Request) -> web.Response:
        body = validated(EndpointChange, await json_payload(request))
        changed = await self._service.set_enabled(request.match_info["id"], body.enabled)
        return web.json_response(changed.as_dict())

    @operation(summary="Delete an endpoint and its pending deliveries",
               responses={204: ("deleted", None), 404: ("no such endpoint", None)}, tags=("webhooks",))  # fmt: skip
    @requires(Role.ADMIN)
    async def delete(self, request: web.Request) -> web.Response:
        await self._service.delete(request.match_info["id"])
        return web.Response(status=204)

    @limited_as("send")
    @operation(summary="POST a signed `webhook.test` to the endpoint now and report its answer",
               responses={200: ("`ok`, the HTTP `status` it answered (null: none) and `error`", None),
                          404: ("no such endpoint", None)}, tags=("webhooks",))  # fmt: skip
    @requires(Role.ADMIN)
    async def test(self, request: web.Request) -> web.Response:
        result = await self._service.test(request.match_info["id"], self._session)
        return web.json_response(result.as_dict())

    @limited_as("send")
    @operation(summary="Send events again (by id, or `from` <= time < `to`) to the endpoints subscribed "
                       "to them, or to the one named", body=ReplayIn,
               responses={202: ("`enqueued`: deliveries queued", None),
                          404: ("no such endpoint", None)}, tags=("webhooks",))  # fmt: skip
    @requires(Role.ADMIN)
    async def replay(self, request: web.Request) -> web.Response:
        body = validated(ReplayIn, await json_payload(request))
        count = await self._service.replay(event_ids=body.event_ids, since=_epoch(body.since),
                                           until=_epoch(body.until), endpoint_id=body.endpoint_id)  # fmt: skip
        return web.json_response({"enqueued": count}, status=202)
