"""`/v1/routes`: shadow mode's route settings (read, change, roll back) and the comparison of the
paths (`/v1/routes/compare`)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from postroom.core.clock import Clock
from postroom.http.auth import caller, requires
from postroom.http.bodies import json_payload, validated, validated_query
from postroom.http.errors import ApiError
from postroom.http.openapi import operation
from postroom.shadow.compare import SqlComparison
from postroom.shadow.route_store import RouteChange
from postroom.shadow.routing import Mode, RouteSetting
from postroom.shadow.service import RouteRefused, RouteService
from postroom.store.credentials import Role

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


def setting_json(setting: RouteSetting) -> dict[str, Any]:
    return {"stream": setting.stream, "template": setting.template or None, "mode": setting.mode.value,
            "percent": setting.percent if setting.mode is Mode.SPLIT else setting.inhouse_share,
            "inhouse_percent": setting.inhouse_share, "fallback": setting.fallback, "ramp": setting.ramp}  # fmt: skip


def change_json(change: RouteChange) -> dict[str, Any]:
    return {"id": change.id, "at": change.at, "route": setting_json(change.setting),
            "previous": setting_json(change.previous) if change.previous else None, "source": change.source,
            "changed_by": change.changed_by, "reason": change.reason}  # fmt: skip


class RouteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream: str = Field(pattern=_NAME)
    template: str | None = Field(default=None, pattern=_NAME, description="absent: every template of the stream")
    mode: Mode
    percent: int = Field(default=0, ge=0, le=100, description="the in-house share of mode `split`")
    fallback: bool = Field(default=False, description="inhouse: hand sender-side failures to Loops")
    ramp: bool = Field(default=False, description="split: follow the ramp plan of [shadow.ramp]")
    reason: str = Field(min_length=1, max_length=1000, description="why: recorded with the change")


class CompareQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    stream: str | None = None
    template: str | None = None
    window: Annotated[float, Field(gt=0, le=90 * 86400)] = Field(default=86400.0, description="seconds back from now")


class RouteRoutes:
    def __init__(self, routes: RouteService, comparison: SqlComparison, clock: Clock):
        self._routes = routes
        self._comparison = comparison
        self._clock = clock

    def register(self, app: web.Application) -> None:
        app.router.add_get("/v1/routes", self.status)
        app.router.add_put("/v1/routes", self.change)
        app.router.add_get("/v1/routes/compare", self.compare)

    @operation(summary="Route settings of shadow mode and their latest changes",
               responses={200: ("`routes` and `changes` (newest first)", None)}, tags=("routes",))  # fmt: skip
    @requires(Role.VIEWER)
    async def status(self, request: web.Request) -> web.Response:
        await self._routes.refresh()
        routes = [{**setting_json(r.setting), "changed_at": r.changed_at, "changed_by": r.changed_by,
                   "reason": r.reason} for r in self._routes.routes]  # fmt: skip
        changes = await self._routes.changes(limit=50)
        return web.json_response({"routes": routes, "changes": [change_json(c) for c in changes]})

    @operation(summary="Set the route of a stream (or of one template of it); every process follows within seconds",
               body=RouteIn, responses={200: ("the change (`changed`: false when it was already so)", None),
                                        422: ("a setting that cannot apply, and why", None)},
               tags=("routes",))  # fmt: skip
    @requires(Role.ADMIN)
    async def change(self, request: web.Request) -> web.Response:
        body = validated(RouteIn, await json_payload(request))
        setting = RouteSetting(body.stream, body.template or "", body.mode, body.percent, body.fallback, body.ramp)
        try:
            change = await self._routes.change(setting, changed_by=f"apikey:{caller(request).id}", reason=body.reason)
        except RouteRefused as exc:
            raise ApiError(422, "route_refused", str(exc)) from exc
        if change is None:
            return web.json_response({"changed": False, "route": setting_json(setting)})
        return web.json_response({"changed": True, **change_json(change)})

    @operation(summary="Compare the paths (loops, inhouse, shadow copies) over a window", query=CompareQuery,
               responses={200: ("`since`, `until` and one group per stream, template and route", None)},
               tags=("routes",))  # fmt: skip
    @requires(Role.VIEWER)
    async def compare(self, request: web.Request) -> web.Response:
        query = validated_query(CompareQuery, request)
        until = self._clock.now()
        since = until - query.window
        started = time.perf_counter()
        groups = await self._comparison.figures(since, until, query.stream, query.template)
        return web.json_response({"since": since, "until": until, "groups": [g.as_dict() for g in groups],
                                  "seconds": round(time.perf_counter() - started, 4)})  # fmt: skip
