"""`GET /v1/domains/{name}`: a sending domain's DNS checks, as `postroom domains check` prints."""

from __future__ import annotations

from aiohttp import web

from postroom.domains.service import DomainChecker
from postroom.http.auth import requires
from postroom.http.openapi import operation
from postroom.store.credentials import Role


class DomainRoutes:
    def __init__(self, checker: DomainChecker):
        self._checker = checker

    def register(self, app: web.Application) -> None:
        app.router.add_get("/v1/domains/{name}", self.check)

    @operation(summary="A sending domain's DNS checks: DKIM, SPF, DMARC, MX",
               responses={200: ("the domain, `ok`, and each check", None),
                          404: ("not one of this server's sending domains", None)},
               tags=("domains",))  # fmt: skip
    @requires(Role.VIEWER)
    async def check(self, request: web.Request) -> web.Response:
        report = await self._checker.check(request.match_info["name"])  # 404 if not ours
        return web.json_response(report.as_dict())
