"""`GET /v1/reports` (viewer): the definitions with their last run; `POST /v1/reports/{name}/run`
(admin): run one now (a period, other recipients); `GET /v1/reports/{name}/runs` (viewer): its
history."""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from postroom.http.auth import requires
from postroom.http.bodies import json_payload, validated, validated_query
from postroom.http.errors import ApiError
from postroom.http.openapi import operation
from postroom.reports.periods import parse_period
from postroom.reports.runs import Run
from postroom.reports.service import ReportNotSent, ReportService, UnknownReport
from postroom.store.credentials import Role


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    period: Annotated[str, Field(max_length=40)] | None = None  # 2026-02, 2026-W09, 2026-Q1, a..b
    to: list[Annotated[str, Field(max_length=320)]] = Field(default_factory=list, max_length=50)


class HistoryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: Annotated[int, Field(ge=1, le=500)] = 20


def run_json(run: Run) -> dict[str, Any]:
    return {"id": run.id, "report": run.report, "period": run.period, "slot": run.slot, "trigger": run.trigger,
            "status": run.status, "scheduled_for": run.scheduled_for, "started_at": run.started_at,
            "finished_at": run.finished_at, "render_seconds": run.render_seconds, "figures": run.figures,
            "deliveries": run.deliveries, "error": run.error}  # fmt: skip


async def listing(service: ReportService) -> list[dict[str, Any]]:
    """Each definition with its next and last run (`GET /v1/reports`, `postroom reports ls`)."""
    found = []
    for name, definition in sorted(service.definitions().items()):
        last = await service.runs.last(name)
        found.append({"name": name, "title": definition.title or name, "cron": definition.cron,
                      "timezone": definition.timezone or service.timezone, "period": definition.period,
                      "sections": list(definition.sections), "recipients": list(definition.recipients),
                      "formats": list(definition.formats), "enabled": definition.enabled,
                      "next_run_at": service.next_run(name), "last_run": run_json(last) if last else None})  # fmt: skip
    return found


class ReportRoutes:
    def __init__(self, service: ReportService):
        self._service = service

    def register(self, app: web.Application) -> None:
        app.router.add_get("/v1/reports", self.list)
        app.router.add_post("/v1/reports/{name}/run", self.run)
        app.router.add_get("/v1/reports/{name}/runs", self.history)

    @operation(summary="The report definitions (schedule, period, sections, recipients) with their last run",
               responses={200: ("`reports`", None)}, tags=("reports",))  # fmt: skip
    @requires(Role.VIEWER)
    async def list(self, request: web.Request) -> web.Response:
        found = await listing(self._service)
        return web.json_response({"reports": found})

    @operation(summary="Run a report now for a period (default: the last complete one) and mail it to its "
                       "recipients or to `to`; recorded as a manual run",
               body=RunRequest,
               responses={200: ("the run: status sent (or built, without recipients), figures, message ids", None),
                          400: ("a bad period or address", None), 404: ("no such report", None),
                          422: ("the mail was refused (report_not_sent)", None)},
               tags=("reports",))  # fmt: skip
    @requires(Role.ADMIN)
    async def run(self, request: web.Request) -> web.Response:
        body = validated(RunRequest, await json_payload(request) if request.can_read_body else {})
        name = request.match_info["name"]
        try:
            self._service.definition(name)
            period = parse_period(body.period) if body.period else None
        except UnknownReport as exc:
            raise ApiError(404, "not_found", str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, "invalid_period", str(exc)) from None
        try:
            outcome = await self._service.run_now(name, period, tuple(body.to), "manual")
        except ReportNotSent as exc:
            raise ApiError(422, "report_not_sent", str(exc)) from None
        run = await self._service.runs.get(outcome.run.id)
        return web.json_response(run_json(run or outcome.run))

    @operation(summary="A report's runs, newest first", query=HistoryParams,
               responses={200: ("`runs`", None), 404: ("no such report", None)}, tags=("reports",))  # fmt: skip
    @requires(Role.VIEWER)
    async def history(self, request: web.Request) -> web.Response:
        params = validated_query(HistoryParams, request)
        name = request.match_info["name"]
        try:
            self._service.definition(name)
        except UnknownReport as exc:
            raise ApiError(404, "not_found", str(exc)) from None
        return web.json_response({"runs": [run_json(r) for r in await self._service.runs.history(name, params.limit)]})
