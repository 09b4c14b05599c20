"""The Loops-compatible API's refusals, one test each, on a running daemon: each answers Loops'
status and shape, and stores nothing; and the contact store on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.contacts.model import ContactChanges, ContactError, MailingList
from postroom.contacts.service import ContactService
from postroom.contacts.sql_store import SqlContactStore
from postroom.core.clock import SystemClock
from postroom.core.errors import ConflictError
from postroom.store import schema
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import create_engine
from postroom.templates.model import TemplateSource
from postroom.templates.service import TemplateService
from postroom.templates.sql_store import SqlTemplateStore
from tests.conftest import running
from tests.support import make_settings

RECEIPT = TemplateSource(subject="Receipt {{ order }}", html="<p>{{ name }}: {{ order }}</p>",
                         sender="shop@postroom.test",
                         schema={"type": "object", "required": ["name", "order"]})  # fmt: skip
GOOD = {"transactionalId": "receipt", "email": "a@example.com", "dataVariables": {"name": "A", "order": "1"}}


class Api:
    def __init__(self, session: aiohttp.ClientSession, tokens: dict[str, str], outbox: Path):
        self.session, self.tokens, self.outbox = session, tokens, outbox

    async def call(self, method: str, path: str, body: Any = None, key: str = "admin",
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
        sent = {"Authorization": f"Bearer {self.tokens[key]}", **(headers or {})}
        async with self.session.request(method, f"/api/v1/{path}", json=body, headers=sent) as response:
            return response.status, await response.json()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = make_settings(tmp_path, loops={"max_attachment_size": 2048, "max_attachments_size": 4096})
    engine = create_engine(settings.database)
    await schema.upgrade(engine)
    tokens = {"admin": (await SqlApiKeys(engine).create("admin", Role.ADMIN, time.time()))[1],
              "viewer": (await SqlApiKeys(engine).create("viewer", Role.VIEWER, time.time()))[1]}  # fmt: skip
    templates = TemplateService(SqlTemplateStore(engine), SystemClock())
    made = await templates.create("receipt", RECEIPT, "test")
    await templates.publish("receipt", made.version)
    await templates.create("draft-only", RECEIPT, "test")
    await engine.dispose()
    async with running(settings) as daemon, aiohttp.ClientSession(daemon.http) as session:
        yield Api(session, tokens, Path(settings.delivery.capture_dir))


async def test_unknown_transactional_id_is_404(api: Api) -> None:
    status, body = await api.call("POST", "transactional", {**GOOD, "transactionalId": "nope"})
    assert status == 404
    assert body == {"success": False, "type": "error", "path": "transactionalId",
                    "message": "Transactional email not found."}  # fmt: skip


async def test_unpublished_transactional_email_is_400(api: Api) -> None:
    status, body = await api.call("POST", "transactional", {**GOOD, "transactionalId": "draft-only"})
    assert (status, body["message"]) == (400, "Transactional email is not published.")


async def test_a_missing_data_variable_is_400_naming_it(api: Api) -> None:
    status, body = await api.call("POST", "transactional", {**GOOD, "dataVariables": {"name": "A"}})
    assert status == 400 and body["path"] == "dataVariables" and "'order'" in body["message"]


async def test_a_reused_idempotency_key_is_409_whatever_the_body(api: Api) -> None:
    key = {"Idempotency-Key": "order-1-receipt"}
    assert await api.call("POST", "transactional", GOOD, headers=key) == (200, {"success": True})
    assert (await api.call("POST", "transactional", GOOD, headers=key))[0] == 409
    other = {**GOOD, "email": "b@example.com"}
    status, body = await api.call("POST", "transactional", other, headers=key)
    assert status == 409 and body["success"] is False
    status, body = await api.call("POST", "transactional", GOOD, headers={"Idempotency-Key": "k" * 101})
    assert status == 400 and "100" in body["message"]


async def test_an_attachment_over_the_limit_is_413(api: Api) -> None:
    big = {"filename": "big.bin", "contentType": "application/octet-stream",
           "data": base64.b64encode(b"x" * 2049).decode()}  # fmt: skip
    status, body = await api.call("POST", "transactional", {**GOOD, "attachments": [big]})
    assert status == 413 and "2048" in body["message"]
    fits = {**big, "data": base64.b64encode(b"x" * 1500).decode()}
    status, body = await api.call("POST", "transactional", {**GOOD, "attachments": [fits] * 3})
    assert status == 413 and "4096" in body["message"]
    assert not list(api.outbox.glob("*.eml"))


async def test_a_bad_email_is_400(api: Api) -> None:
    assert (await api.call("POST", "transactional", {**GOOD, "email": "not-an-address"}))[0] == 400
    status, body = await api.call("POST", "contacts/create", {"email": "nope@"})
    assert (status, body) == (400, {"success": False, "type": "error", "path": "email", "message": "Invalid email address."})


async def test_a_contact_property_of_the_wrong_type_is_400(api: Api) -> None:
    assert (await api.call("POST", "contacts/properties", {"name": "seats", "type": "number"}))[0] == 200
    status, body = await api.call("POST", "contacts/create", {"email": "c@example.com", "seats": "three"})
    assert status == 400 and body["path"] == "seats" and "number" in body["message"]
    assert (await api.call("GET", "contacts/find?email=c@example.com"))[1] == []
    status, _ = await api.call("POST", "contacts/create", {"email": "c@example.com", "subscribed": "yes"})
    assert status == 400


async def test_a_key_without_the_needed_role_is_403(api: Api) -> None:
    status, body = await api.call("POST", "transactional", GOOD, key="viewer")
    assert status == 403 and body["success"] is False
    assert (await api.call("GET", "api-key", key="viewer"))[0] == 200


async def test_unsupported_and_unknown_calls_answer_in_loops_shape(api: Api) -> None:
    status, body = await api.call("GET", "themes")
    assert status == 501 and body["success"] is False and "themes" in body["message"]
    status, body = await api.call("GET", "no-such-thing")
    assert status == 404 and body["success"] is False


async def test_a_body_or_query_of_the_wrong_shape_is_400_naming_the_field(api: Api) -> None:
    status, body = await api.call("POST", "events/send", {"email": "e@example.com"})
    assert (status, body["path"]) == (400, "eventName") and body["success"] is False
    status, body = await api.call("POST", "contacts/create", {"email": "e@example.com", "mailingLists": {"news": 1}})
    assert (status, body["path"]) == (400, "mailingLists.news")
    status, body = await api.call("GET", "transactional-emails?perPage=5")
    assert (status, body["path"]) == (400, "perPage")
    status, body = await api.call("GET", "contacts/properties?list=some")
    assert (status, body["path"]) == (400, "list")
    assert (await api.call("GET", "contacts/find?email=e@example.com"))[1] == []  # nothing was stored


# -- the store on both databases --------------------------------------------------------------------


async def test_contact_store_keeps_addresses_and_user_ids_unique(engine: AsyncEngine) -> None:
    await schema.upgrade(engine)
    store = SqlContactStore(engine)
    service = ContactService(store, [MailingList("news", "News")], SystemClock())
    first = await service.create({"email": "Ada@Example.com", "userId": "u1", "planName": "pro",
                                  "mailingLists": {"news": True}})  # fmt: skip
    with pytest.raises(ContactError) as exc:
        await service.create({"email": "ada@example.com"})
    assert exc.value.kind == "conflict"
    other = await service.create({"email": "bob@example.com"})
    with pytest.raises(ConflictError):
        await store.update(other, ContactChanges(fields={"user_id": "u1"}), 1.0)
    updated, created = await service.update({"userId": "u1", "email": "ada@new.example", "planName": None})
    assert not created and updated.id == first.id and updated.email == "ada@new.example"
    assert updated.properties == {} and updated.mailing_lists == frozenset({"news"})
    event = await service.record_event({"email": "new@example.com", "eventName": "signup"}, "k:1")
    assert event.created and event.contact.email == "new@example.com"
    with pytest.raises(ContactError):
        await service.record_event({"email": "new@example.com", "eventName": "signup"}, "k:1")
    exported = [c.email async for c in service.all()]
    assert sorted(exported) == ["ada@new.example", "bob@example.com", "new@example.com"]
    found, erased = await service.erase("NEW@example.com")
    assert found and erased == 0 and await service.find(email="new@example.com") is None
