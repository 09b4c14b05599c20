"""`transactional-emails`: list, get, create, update, draft and publish, as Loops' API has them."""

from __future__ import annotations

from aiohttp import web

from postroom.http.auth import caller
from postroom.http.openapi import operation
from postroom.loops.bodies import CataloguePage, TransactionalEmailChange, TransactionalEmailIn, loops_body, loops_query
from postroom.loops.catalogue import TransactionalCatalogue
from postroom.loops.errors import requires_role
from postroom.store.credentials import Role

TAGS = ("loops: transactional emails",)
RESOURCE = "the transactional email: id, name, draft and published message ids, dataVariables, dates"
NOT_FOUND = "Transactional email not found."


class CatalogueRoutes:
    def __init__(self, catalogue: TransactionalCatalogue):
        self._catalogue = catalogue

    def register(self, app: web.Application) -> None:
        app.router.add_get("/v1/transactional-emails", self.list)
        app.router.add_post("/v1/transactional-emails", self.create)
        app.router.add_get("/v1/transactional-emails/{id}", self.get)
        app.router.add_post("/v1/transactional-emails/{id}", self.update)
        app.router.add_post("/v1/transactional-emails/{id}/draft", self.draft)
        app.router.add_post("/v1/transactional-emails/{id}/publish", self.publish)

    @operation(summary="Transactional emails (templates), a page at a time", query=CataloguePage,
               responses={200: ("`pagination` and `data`", None)}, tags=TAGS)  # fmt: skip
    @requires_role(Role.VIEWER)
    async def list(self, request: web.Request) -> web.Response:
        query = loops_query(request, CataloguePage)
        page = await self._catalogue.page(query.perPage, query.cursor or None)
        pages = max(1, -(-page.total // page.per_page))
        return web.json_response({
            "pagination": {
                "totalResults": page.total, "returnedResults": len(page.items), "perPage": page.per_page,
                "totalPages": pages, "nextCursor": page.next_cursor,
                "nextPage": (f"{request.path}?perPage={page.per_page}&cursor={page.next_cursor}"
                             if page.next_cursor else None),
            },
            "data": page.items,
        })  # fmt: skip

    @operation(summary="A transactional email", responses={200: (RESOURCE, None), 404: (NOT_FOUND, None)},
               tags=TAGS)  # fmt: skip
    @requires_role(Role.VIEWER)
    async def get(self, request: web.Request) -> web.Response:
        return web.json_response(await self._catalogue.get(request.match_info["id"]))

    @operation(summary="Create a transactional email (a new template) and its draft", body=TransactionalEmailIn,
               responses={200: (RESOURCE, None)}, tags=TAGS)  # fmt: skip
    @requires_role(Role.TEMPLATES)
    async def create(self, request: web.Request) -> web.Response:
        body = await loops_body(request, TransactionalEmailIn, optional=True)
        made = await self._catalogue.create(body.name, body.transactionalGroupId, f"apikey:{caller(request).id}")
        return web.json_response(made)

    @operation(summary="Rename a transactional email or change its group", body=TransactionalEmailChange,
               responses={200: (RESOURCE, None), 404: (NOT_FOUND, None)}, tags=TAGS)  # fmt: skip
    @requires_role(Role.TEMPLATES)
    async def update(self, request: web.Request) -> web.Response:
        body = await loops_body(request, TransactionalEmailChange, optional=True)
        return web.json_response(await self._catalogue.update(
            request.match_info["id"], body.name, body.transactionalGroupId))  # fmt: skip

    @operation(summary="Make sure there is a draft (a version newer than the published one)",
               responses={200: (RESOURCE + ", draftEmailMessageContentRevisionId", None), 404: (NOT_FOUND, None)},
               tags=TAGS)  # fmt: skip
    @requires_role(Role.TEMPLATES)
    async def draft(self, request: web.Request) -> web.Response:
        return web.json_response(await self._catalogue.draft(request.match_info["id"], f"apikey:{caller(request).id}"))

    @operation(summary="Publish the draft", responses={200: (RESOURCE, None), 400: ("there is no draft", None),
                                                       404: (NOT_FOUND, None)}, tags=TAGS)  # fmt: skip
    @requires_role(Role.TEMPLATES)
    async def publish(self, request: web.Request) -> web.Response:
        return web.json_response(await self._catalogue.publish(request.match_info["id"]))
