"""`POST /v1/stripe/reconcile` (admin): read all of Stripe now and record any drift, as the nightly
run does; `GET /v1/stripe/events` (viewer): the Stripe events stored, e.g. the flagged ones."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from postroom.billing.applier import BillingApplier
from postroom.billing.store import STATUSES, SqlBillingStore
from postroom.billing.stripe_errors import StripeApiError
from postroom.http.auth import requires
from postroom.http.bodies import validated_query
from postroom.http.errors import ApiError
from postroom.http.openapi import operation
from postroom.store.credentials import Role


class EventParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Annotated[str, Field(pattern="^(" + "|".join(STATUSES) + ")$")] | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class BillingRoutes:
    def __init__(self, applier: BillingApplier, store: SqlBillingStore, can_read_stripe: bool):
        self._applier = applier
        self._store = store
        self._can_read = can_read_stripe

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/stripe/reconcile", self.reconcile)
        app.router.add_get("/v1/stripe/events", self.events)

    @operation(summary="Read every customer, invoice and subscription from Stripe and record any MRR drift "
                       "as reconciliation changes (a backfill when the ledger is empty)",
               responses={200: ("counts read, customers opened, and each drift", None),
                          409: ("no [stripe] api_key (not_configured)", None),
                          502: ("Stripe's API failed (stripe_unavailable)", None)},
               tags=("revenue",))  # fmt: skip
    @requires(Role.ADMIN)
    async def reconcile(self, request: web.Request) -> web.Response:
        if not self._can_read:
            raise ApiError(409, "not_configured", "no [stripe] api_key: postroom cannot read Stripe")
        try:
            summary = await self._applier.reconcile()
        except StripeApiError as exc:
            raise ApiError(502, "stripe_unavailable", str(exc)) from None
        return web.json_response(summary.as_json())

    @operation(summary="Stripe events as stored, newest first: status pending, applied, ignored, stale "
                       "or flagged (with why)",
               query=EventParams, responses={200: ("`events`", None)}, tags=("revenue",))  # fmt: skip
    @requires(Role.VIEWER)
    async def events(self, request: web.Request) -> web.Response:
        params = validated_query(EventParams, request)
        found = await self._store.events(params.status, params.limit)
        return web.json_response({"events": [
            {"id": e.id, "type": e.type, "created": e.created, "object_id": e.object_id,
             "received_at": e.received_at, "status": e.status, "detail": e.detail} for e in found]})  # fmt: skip
