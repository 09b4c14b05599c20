"""`GET /v1/stats`: delivery analytics for a period, grouped by stream, template, recipient
domain and/or period (hour, day, week), as `postroom stats` prints them."""

from __future__ import annotations

import datetime
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from postroom.http.auth import requires
from postroom.http.bodies import validated_query
from postroom.http.errors import ApiError
from postroom.http.openapi import operation
from postroom.stats.model import StatsQuery
from postroom.stats.sql_stats import SqlStats
from postroom.store.credentials import Role


class StatsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    since: datetime.datetime | None = Field(default=None, alias="from")
    until: datetime.datetime | None = Field(default=None, alias="to")
    group_by: Annotated[str, Field(max_length=100)] = ""  # comma-separated: stream,template,domain,hour|day|week
    stream: Annotated[str, Field(max_length=64)] | None = None


def epoch(value: datetime.datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.timestamp()


def stats_query(since: float | None, until: float | None, group_by: str, stream: str | None) -> StatsQuery:
    """ValueError with a readable reason for a bad grouping or range."""
    groups = tuple(g.strip() for g in group_by.split(",") if g.strip())
    return StatsQuery(since=since, until=until, group_by=groups, stream=stream)


class StatsRoutes:
    def __init__(self, stats: SqlStats):
        self._stats = stats

    def register(self, app: web.Application) -> None:
        app.router.add_get("/v1/stats", self.stats)

    @operation(summary="Sent, delivered, deferred, bounced by class and reason, complained, suppressed, "
                       "unsubscribed, rates and accept-to-delivered latency percentiles",
               query=StatsParams,
               responses={200: ("`totals` and `groups` (one per combination of `group_by` values)", None),
                          400: ("a bad time, range or grouping", None)}, tags=("stats",))  # fmt: skip
    @requires(Role.VIEWER)
    async def stats(self, request: web.Request) -> web.Response:
        params = validated_query(StatsParams, request)
        try:
            query = stats_query(epoch(params.since), epoch(params.until), params.group_by, params.stream)
        except ValueError as exc:
            raise ApiError(400, "invalid_query", str(exc)) from None
        totals = await self._stats.compute(StatsQuery(query.since, query.until, (), query.stream))
        groups = await self._stats.compute(query) if query.group_by else []
        return web.json_response({
            "from": params.since.isoformat() if params.since else None,
            "to": params.until.isoformat() if params.until else None,
            "group_by": list(query.group_by),
            "totals": totals[0].as_dict(),
            "groups": [g.as_dict() for g in groups],
        })  # fmt: skip
