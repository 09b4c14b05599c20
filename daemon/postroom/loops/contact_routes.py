"""Contacts through the Loops API: `contacts/create|update|find|delete`, `contacts/suppression`,
`contacts/properties` and `lists`, with Loops' answers (`{"success": true, "id"}`, a list of contacts
for find, 409 for an address or user id already taken, 404 for an unknown contact)."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from postroom.contacts.model import Contact, ContactError, contact_json
from postroom.contacts.service import ContactService
from postroom.http.bodies import json_payload
from postroom.loops.errors import LoopsError, requires_role
from postroom.store.credentials import Role

# Loops limits how many suppressions a team may lift; postroom has no such quota, and says so
# with numbers the SDK's type expects.
REMOVAL_QUOTA = {"limit": 0, "remaining": 0}


class SuppressionList(Protocol):
    """What the Loops API asks of the suppression list (postroom.suppression)."""

    async def is_suppressed(self, address: str) -> bool: ...

    async def lift(self, address: str, by: str) -> bool:
        """Remove every suppression of `address`; whether there was one."""
        ...


async def _object(request: web.Request) -> dict[str, Any]:
    payload = await json_payload(request)
    if not isinstance(payload, dict):
        raise LoopsError(400, "The body must be a JSON object.")
    return payload


def _one_of(request: web.Request) -> tuple[str | None, str | None]:
    email, user_id = request.query.get("email"), request.query.get("userId")
    if (email is None) == (user_id is None):
        raise LoopsError(400, "Provide exactly one of email or userId.")
    return email, user_id


class ContactRoutes:
    def __init__(self, contacts: ContactService, suppressions: SuppressionList | None = None):
        self._contacts = contacts
        self._suppressions = suppressions

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/contacts/create", self.create)
        app.router.add_put("/v1/contacts/update", self.update)
        app.router.add_get("/v1/contacts/find", self.find)
        app.router.add_post("/v1/contacts/delete", self.delete)
        app.router.add_get("/v1/contacts/suppression", self.check_suppression)
        app.router.add_delete("/v1/contacts/suppression", self.remove_suppression)
        app.router.add_get("/v1/contacts/properties", self.properties)
        app.router.add_post("/v1/contacts/properties", self.create_property)
        app.router.add_get("/v1/lists", self.lists)

    @requires_role(Role.SENDER)
    async def create(self, request: web.Request) -> web.Response:
        contact = await self._contacts.create(await _object(request))
        return web.json_response({"success": True, "id": contact.id})

    @requires_role(Role.SENDER)
    async def update(self, request: web.Request) -> web.Response:
        contact, _ = await self._contacts.update(await _object(request))
        return web.json_response({"success": True, "id": contact.id})

    @requires_role(Role.VIEWER)
    async def find(self, request: web.Request) -> web.Response:
        email, user_id = _one_of(request)
        found = await self._contacts.find(email=email, user_id=user_id)
        return web.json_response([contact_json(found)] if found else [])

    @requires_role(Role.SENDER)
    async def delete(self, request: web.Request) -> web.Response:
        payload = await _object(request)
        email, user_id = payload.get("email"), payload.get("userId")
        if (email is None) == (user_id is None):
            raise LoopsError(400, "Provide exactly one of email or userId.")
        await self._contacts.delete(email=email, user_id=user_id)
        return web.json_response({"success": True, "message": "Contact deleted."})

    @requires_role(Role.VIEWER)
    async def check_suppression(self, request: web.Request) -> web.Response:
        contact = await self._located(request)
        suppressed = bool(self._suppressions and await self._suppressions.is_suppressed(contact.email))
        return web.json_response({
            "contact": {"id": contact.id, "email": contact.email, "userId": contact.user_id},
            "isSuppressed": suppressed,
            "removalQuota": REMOVAL_QUOTA,
        })  # fmt: skip

    @requires_role(Role.ADMIN)
    async def remove_suppression(self, request: web.Request) -> web.Response:
        contact = await self._located(request)
        lifted = bool(self._suppressions and await self._suppressions.lift(contact.email, by="loops-api"))
        if not lifted:
            raise LoopsError(400, "This contact is not suppressed.")
        return web.json_response({"success": True, "message": "Email removed from suppression list.",
                                  "removalQuota": REMOVAL_QUOTA})  # fmt: skip

    @requires_role(Role.VIEWER)
    async def properties(self, request: web.Request) -> web.Response:
        found = await self._contacts.properties(request.query.get("list", "all"))
        return web.json_response([{"key": p.key, "label": p.label, "type": p.type.value} for p in found])

    @requires_role(Role.SENDER)
    async def create_property(self, request: web.Request) -> web.Response:
        payload = await _object(request)
        await self._contacts.create_property(payload.get("name"), payload.get("type"))
        return web.json_response({"success": True})

    @requires_role(Role.VIEWER)
    async def lists(self, request: web.Request) -> web.Response:
        return web.json_response([
            {"id": item.id, "name": item.name, "description": item.description, "isPublic": item.public}
            for item in self._contacts.mailing_lists
        ])  # fmt: skip

    async def _located(self, request: web.Request) -> Contact:
        email, user_id = _one_of(request)
        found = await self._contacts.find(email=email, user_id=user_id)
        if found is None:
            raise ContactError("not_found", "Contact not found.")
        return found
