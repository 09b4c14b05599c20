"""The Loops-compatible sub-application, mounted at `/api/v1`: its routes, its error shapes and its
auth, and a Loops-shaped answer for every call postroom does not do (the marketing side of Loops:
campaigns, themes, components, segments, email messages, workflows), never a bare 404 page."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import BaseModel

from postroom.contacts.service import ContactService
from postroom.core.clock import Clock
from postroom.http.app import RouteGroup
from postroom.http.auth import API_KEY, ApiKeyAuthenticator
from postroom.http.openapi import API_CONVENTIONS, ApiConventions, operation
from postroom.loops.catalogue import TransactionalCatalogue, TransactionalNames
from postroom.loops.catalogue_routes import CatalogueRoutes
from postroom.loops.contact_routes import ContactRoutes, SuppressionList
from postroom.loops.errors import (
    InvalidApiKey,
    LoopsError,
    LoopsFailure,
    LoopsFieldFailure,
    loops_auth,
    loops_errors,
    requires_role,
    role_needed,
)
from postroom.loops.event_routes import EventRoutes
from postroom.loops.settings import EventRule, LoopsSettings
from postroom.loops.transactional import TransactionalRoutes
from postroom.metrics import Metrics
from postroom.store.credentials import Role
from postroom.submission.service import SubmissionService
from postroom.templates.service import TemplateService

# What Loops does and postroom does not: the first path segment, and what to say.
MARKETING = {
    "campaigns": "campaigns",
    "themes": "themes",
    "components": "components",
    "audience-segments": "audience segments",
    "email-messages": "email messages",
    "workflows": "workflows",
    "event-patterns": "event patterns (workflow triggers)",
    "uploads": "uploads",
    "transactional-groups": "transactional groups",
}
TAGS = ("loops: account",)


class ApiKeyInfo(BaseModel):
    success: Literal[True]
    teamName: str


class AccountRoutes:
    """`api-key`, `dedicated-sending-ips`, and the catch-all for what is not here."""

    def __init__(self, team_name: str, sending_ips: Sequence[str]):
        self._team_name = team_name
        self._sending_ips = list(sending_ips)

    def register(self, app: web.Application) -> None:
        app.router.add_get("/v1/api-key", self.api_key)
        app.router.add_get("/v1/dedicated-sending-ips", self.sending_ips)

    def register_fallback(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.unsupported)

    @operation(summary="Test the API key", responses={200: ("the key is valid", ApiKeyInfo)}, tags=TAGS)
    @requires_role(Role.VIEWER)
    async def api_key(self, request: web.Request) -> web.Response:
        return web.json_response(ApiKeyInfo(success=True, teamName=self._team_name).model_dump())

    @operation(summary="The dedicated sending IP addresses (delivery.sending_ips)",
               responses={200: ("a list of IP addresses", None)}, tags=TAGS)  # fmt: skip
    @requires_role(Role.VIEWER)
    async def sending_ips(self, request: web.Request) -> web.Response:
        return web.json_response(self._sending_ips)

    @operation(summary="Any other path: Loops' marketing calls (campaigns, themes, workflows, ...) are 501, "
                       "the rest 404 (`tail` may span several path segments)",
               responses={501: ("a part of Loops that postroom does not do", None), 404: ("no such endpoint", None)},
               tags=TAGS)  # fmt: skip
    @requires_role(Role.VIEWER)
    async def unsupported(self, request: web.Request) -> web.Response:
        parts = request.match_info["tail"].strip("/").split("/")
        feature = MARKETING.get(parts[1]) if len(parts) > 1 and parts[0] == "v1" else None
        if feature is not None:
            raise LoopsError(501, f"postroom does not do Loops' {feature}: it replaces Loops' transactional "
                             "email, contacts and events; send marketing mail from Loops or another tool.")  # fmt: skip
        raise LoopsError(404, f"No such endpoint: {request.method} {request.path}.")


def build_loops_app(api_keys: ApiKeyAuthenticator, account: AccountRoutes, groups: Sequence[RouteGroup],
                    extra_middlewares: Sequence[Middleware] = ()) -> web.Application:  # fmt: skip
    """The sub-application: Loops' errors outermost, then its auth, then `extra_middlewares` (the
    rate limiter, which needs to know the key)."""
    app = web.Application(middlewares=[loops_errors, loops_auth, *extra_middlewares])
    app[API_KEY] = api_keys
    app[API_CONVENTIONS] = ApiConventions("loops", role_needed, (LoopsFailure, LoopsFieldFailure), InvalidApiKey)
    account.register(app)
    for group in groups:
        group.register(app)
    account.register_fallback(app)
    return app


def loops_api(
    *,
    api_keys: ApiKeyAuthenticator,
    contacts: ContactService,
    templates: TemplateService,
    names: TransactionalNames,
    submissions: SubmissionService,
    settings: LoopsSettings,
    rules: Mapping[str, EventRule],
    clock: Clock,
    metrics: Metrics,
    hostname: str,
    sending_ips: Sequence[str] = (),
    suppressions: SuppressionList | None = None,
    extra_middlewares: Sequence[Middleware] = (),
) -> web.Application:
    """The whole Loops-compatible API over postroom's services (what `app.py` mounts)."""
    catalogue = TransactionalCatalogue(templates, names, settings.templates, clock)
    groups: list[RouteGroup] = [
        TransactionalRoutes(submissions, templates, catalogue, contacts, settings, clock, metrics, hostname),
        CatalogueRoutes(catalogue),
        ContactRoutes(contacts, suppressions),
        EventRoutes(contacts, rules, templates, submissions, settings, clock, metrics, hostname),
    ]
    return build_loops_app(api_keys, AccountRoutes(settings.team_name, sending_ips), groups, extra_middlewares)
