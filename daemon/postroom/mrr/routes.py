"""`GET /v1/mrr` and `GET /v1/mrr/movements`: the figures `postroom mrr show|movements` print, in
the same JSON shapes."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from postroom.core.clock import Clock
from postroom.http.auth import requires
from postroom.http.bodies import validated_query
from postroom.http.errors import ApiError
from postroom.http.openapi import operation
from postroom.mrr.money import UnknownRate
from postroom.mrr.service import MrrService
from postroom.store.credentials import Role


class MrrParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: dt.date | None = None  # last day of the period (UTC); default today
    since: dt.date | None = None  # first day; default the first of `at`'s month


class MovementParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: dt.date
    until: dt.date | None = None  # last day, inclusive; default today
    customer: Annotated[str, Field(max_length=255)] | None = None


class MrrRoutes:
    def __init__(self, service: MrrService, clock: Clock):
        self._service = service
        self._clock = clock

    def register(self, app: web.Application) -> None:
        app.router.add_get("/v1/mrr", self.show)
        app.router.add_get("/v1/mrr/movements", self.movements)

    def _today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self._clock.now(), dt.UTC).date()

    @operation(summary="MRR at the end of `at`, the period's movements (new, expansion, contraction, churn, "
                       "reactivation, reconciliation) and FX line since `since`, and the policies used",
               query=MrrParams,
               responses={200: ("`at`, `currency`, `mrr_cents`, `arr_cents`, `paying_customers`, `arpa_cents`, "
                                "`movements`, `policies`", None),
                          400: ("a bad date, or a period that ends before it begins", None),
                          422: ("no exchange rate for a currency held (unknown_rate)", None)},
               tags=("revenue",))  # fmt: skip
    @requires(Role.VIEWER)
    async def show(self, request: web.Request) -> web.Response:
        params = validated_query(MrrParams, request)
        at = params.at or self._today()
        try:
            report = await self._service.report(at, params.since)
        except UnknownRate as exc:
            raise ApiError(422, "unknown_rate", str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, "invalid_query", str(exc)) from None
        return web.json_response(report.as_json())

    @operation(summary="Each MRR movement of a period, with the Stripe events that caused it",
               query=MovementParams,
               responses={200: ("`since`, `until`, `currency`, `movements`: customer, kind, amount_cents, "
                                "native amount and currency, occurred_at, event_id(s), causes", None),
                          400: ("a bad date or range", None), 422: ("no exchange rate (unknown_rate)", None)},
               tags=("revenue",))  # fmt: skip
    @requires(Role.VIEWER)
    async def movements(self, request: web.Request) -> web.Response:
        params = validated_query(MovementParams, request)
        until = params.until or self._today()
        try:
            found = await self._service.movements(params.since, until, params.customer)
        except UnknownRate as exc:
            raise ApiError(422, "unknown_rate", str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, "invalid_query", str(exc)) from None
        return web.json_response({"since": params.since.isoformat(), "until": until.isoformat(),
                                  "currency": self._service.currency, "movements": found})  # fmt: skip
