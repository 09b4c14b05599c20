"""Contacts through the Loops API: `contacts/create|update|find|delete`, `contacts/suppression`,
`contacts/properties` and `lists`, with Loops' answers (`{"success": true, "id"}`, a list of contacts
for find, 409 for an address or user id already taken, 404 for an unknown contact)."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from postroom.contacts.model import Contact, ContactError, contact_json
from postroom.contacts.service import ContactService
from postroom.http.openapi import operation
from postroom.loops.bodies import (
    ContactCreateIn,
    ContactPropertyIn,
    ContactRef,
    ContactSaved,
    ContactUpdateIn,
    LoopsSuccess,
    PropertyList,
    fields_of,
    loops_body,
    loops_query,
)
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


def _one_of(ref: ContactRef) -> tuple[str | None, str | None]:
    if (ref.email is None) == (ref.userId is None):
        raise LoopsError(400, "Provide exactly one of email or userId.")
    return ref.email, ref.userId


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

    @operation(summary="Create a contact", body=ContactCreateIn,
               responses={200: ("created", ContactSaved), 409: ("the address or userId is taken", None)},
               tags=("loops: contacts",))  # fmt: skip
    @requires_role(Role.SENDER)
    async def create(self, request: web.Request) -> web.Response:
        contact = await self._contacts.create(fields_of(await loops_body(request, ContactCreateIn)))
        return web.json_response(ContactSaved(success=True, id=contact.id).model_dump())

    @operation(summary="Update a contact, or create it when there is none", body=ContactUpdateIn,
               responses={200: ("updated or created", ContactSaved), 409: ("the new address is taken", None)},
               tags=("loops: contacts",))  # fmt: skip
    @requires_role(Role.SENDER)
    async def update(self, request: web.Request) -> web.Response:
        contact, _ = await self._contacts.update(fields_of(await loops_body(request, ContactUpdateIn)))
        return web.json_response(ContactSaved(success=True, id=contact.id).model_dump())

    @operation(summary="Find a contact by email or userId", query=ContactRef,
               responses={200: ("a list of the contact found, or an empty list", None)}, tags=("loops: contacts",))  # fmt: skip
    @requires_role(Role.VIEWER)
    async def find(self, request: web.Request) -> web.Response:
        email, user_id = _one_of(loops_query(request, ContactRef))
        found = await self._contacts.find(email=email, user_id=user_id)
        return web.json_response([contact_json(found)] if found else [])

    @operation(summary="Delete a contact by email or userId", body=ContactRef,
               responses={200: ('`{"success": true, "message": "Contact deleted."}`', None), 404: ("Contact not found.", None)},
               tags=("loops: contacts",))  # fmt: skip
    @requires_role(Role.SENDER)
    async def delete(self, request: web.Request) -> web.Response:
        email, user_id = _one_of(await loops_body(request, ContactRef))
        await self._contacts.delete(email=email, user_id=user_id)
        return web.json_response({"success": True, "message": "Contact deleted."})

    @operation(summary="Whether a contact's address is suppressed", query=ContactRef,
               responses={200: ("`contact`, `isSuppressed`, `removalQuota`", None), 404: ("Contact not found.", None)}, tags=("loops: contacts",))  # fmt: skip
    @requires_role(Role.VIEWER)
    async def check_suppression(self, request: web.Request) -> web.Response:
        contact = await self._located(request)
        suppressed = bool(self._suppressions and await self._suppressions.is_suppressed(contact.email))
        return web.json_response({
            "contact": {"id": contact.id, "email": contact.email, "userId": contact.user_id},
            "isSuppressed": suppressed,
            "removalQuota": REMOVAL_QUOTA,
        })  # fmt: skip

    @operation(summary="Lift every suppression of a contact's address", query=ContactRef,
               responses={200: ("lifted", None), 400: ("the contact is not suppressed", None), 404: ("Contact not found.", None)},
               tags=("loops: contacts",))  # fmt: skip
    @requires_role(Role.ADMIN)
    async def remove_suppression(self, request: web.Request) -> web.Response:
        contact = await self._located(request)
        lifted = bool(self._suppressions and await self._suppressions.lift(contact.email, by="loops-api"))
        if not lifted:
            raise LoopsError(400, "This contact is not suppressed.")
        return web.json_response({"success": True, "message": "Email removed from suppression list.",
                                  "removalQuota": REMOVAL_QUOTA})  # fmt: skip

    @operation(summary="Contact properties: built-in and custom, or custom only", query=PropertyList,
               responses={200: ("a list of `key`, `label`, `type`", None)}, tags=("loops: contacts",))  # fmt: skip
    @requires_role(Role.VIEWER)
    async def properties(self, request: web.Request) -> web.Response:
        found = await self._contacts.properties(loops_query(request, PropertyList).which)
        return web.json_response([{"key": p.key, "label": p.label, "type": p.type.value} for p in found])

    @operation(summary="Create a custom contact property", body=ContactPropertyIn,
               responses={200: ("created", LoopsSuccess), 409: ("a property has this name", None)},
               tags=("loops: contacts",))  # fmt: skip
    @requires_role(Role.SENDER)
    async def create_property(self, request: web.Request) -> web.Response:
        body = await loops_body(request, ContactPropertyIn)
        await self._contacts.create_property(body.name, body.type)
        return web.json_response(LoopsSuccess(success=True).model_dump())

    @operation(summary="The mailing lists ([[contacts.lists]] of the configuration)",
               responses={200: ("a list of `id`, `name`, `description`, `isPublic`", None)}, tags=("loops: contacts",))  # fmt: skip
    @requires_role(Role.VIEWER)
    async def lists(self, request: web.Request) -> web.Response:
        return web.json_response([
            {"id": item.id, "name": item.name, "description": item.description, "isPublic": item.public}
            for item in self._contacts.mailing_lists
        ])  # fmt: skip

    async def _located(self, request: web.Request) -> Contact:
        email, user_id = _one_of(loops_query(request, ContactRef))
        found = await self._contacts.find(email=email, user_id=user_id)
        if found is None:
            raise ContactError("not_found", "Contact not found.")
        return found
