"""`transactional-emails`: list, get, create, update, draft and publish, as Loops' API has them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from postroom.http.auth import caller
from postroom.http.bodies import json_payload
from postroom.loops.catalogue import TransactionalCatalogue
from postroom.loops.errors import LoopsError, requires_role
from postroom.store.credentials import Role


async def _object(request: web.Request) -> dict[str, Any]:
    if not request.body_exists:
        return {}
    payload = await json_payload(request)
    if not isinstance(payload, dict):
        raise LoopsError(400, "The body must be a JSON object.")
    return payload


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

    @requires_role(Role.VIEWER)
    async def list(self, request: web.Request) -> web.Response:
        try:
            per_page = int(request.query.get("perPage", "20"))
        except ValueError:
            raise LoopsError(400, "perPage must be a number.", "perPage") from None
        page = await self._catalogue.page(per_page, request.query.get("cursor") or None)
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

    @requires_role(Role.VIEWER)
    async def get(self, request: web.Request) -> web.Response:
        return web.json_response(await self._catalogue.get(request.match_info["id"]))

    @requires_role(Role.TEMPLATES)
    async def create(self, request: web.Request) -> web.Response:
        payload = await _object(request)
        made = await self._catalogue.create(payload.get("name"), payload.get("transactionalGroupId"),
                                            f"apikey:{caller(request).id}")  # fmt: skip
        return web.json_response(made)

    @requires_role(Role.TEMPLATES)
    async def update(self, request: web.Request) -> web.Response:
        payload = await _object(request)
        return web.json_response(await self._catalogue.update(
            request.match_info["id"], payload.get("name"), payload.get("transactionalGroupId")))  # fmt: skip

    @requires_role(Role.TEMPLATES)
    async def draft(self, request: web.Request) -> web.Response:
        return web.json_response(await self._catalogue.draft(request.match_info["id"], f"apikey:{caller(request).id}"))

    @requires_role(Role.TEMPLATES)
    async def publish(self, request: web.Request) -> web.Response:
        return web.json_response(await self._catalogue.publish(request.match_info["id"]))
