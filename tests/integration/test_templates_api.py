"""Templates over the HTTP API and in message sending: versions, publish, preview, roles, the
errors (422 naming every path, 404), and a message sent from a template as it is delivered:
subject rendered, HTML escaped, CSS inlined, the text part with the loop's items, both DKIM
signatures valid."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from postroom.store import schema
from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import create_engine
from tests.conftest import RunningDaemon, running
from tests.integration.test_dkim_signing import DOMAIN, outbox_message, prepare, settings_for, verify_all

LAYOUT = {"id": "base", "kind": "layout",
          "html": "<html><head><style>.x { color: #123456 } @media (max-width: 600px) { .x { color: red } }"
                  "</style></head><body>{{ content }}</body></html>"}  # fmt: skip
RECEIPT = {
    "id": "receipt",
    "subject": "Receipt for {{ name }}",
    "from": f"Shop <shop@{DOMAIN}>",
    "layout": "base",
    "html": "<p class='x'>Hi {{ name }}</p><ul>{% for i in items %}<li>{{ i.title }}: {{ i.price }}</li>{% endfor %}</ul>",
    "schema": {"type": "object", "required": ["name", "items"], "properties": {
        "name": {"type": "string"},
        "items": {"type": "array", "items": {"type": "object", "required": ["title", "price"],
                  "properties": {"title": {"type": "string"}, "price": {"type": "number"}}}}}},
}  # fmt: skip
DATA = {"name": "Ada <script>", "items": [{"title": "Pen & ink", "price": 3.5}, {"title": "Paper", "price": 2}]}


class Client:
    def __init__(self, daemon: RunningDaemon, session: aiohttp.ClientSession, tokens: dict[Role, str]):
        self.daemon, self.session, self.tokens = daemon, session, tokens

    async def call(self, method: str, path: str, body: Any = None, role: Role = Role.TEMPLATES) -> tuple[int, Any]:
        async with self.session.request(method, path, json=body,
                                        headers={"Authorization": f"Bearer {self.tokens[role]}"}) as resp:  # fmt: skip
            return resp.status, await resp.json()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[Client, dict[str, str]]]:
    settings = settings_for(tmp_path)
    records, _ = await prepare(settings)
    engine = create_engine(settings.database)
    await schema.upgrade(engine)
    tokens = {role: (await SqlApiKeys(engine).create(str(role), role, time.time()))[1] for role in Role}
    await engine.dispose()
    async with running(settings) as d, aiohttp.ClientSession(d.http) as session:
        yield Client(d, session, tokens), records


async def test_create_publish_preview_and_send_a_message_from_a_template(client: tuple[Client, dict[str, str]]) -> None:
    api, records = client
    assert (await api.call("POST", "/v1/templates", LAYOUT))[0] == 201
    assert (await api.call("POST", "/v1/templates/base/publish", {"version": 1}))[0] == 200
    status, created = await api.call("POST", "/v1/templates", RECEIPT)
    assert (status, created["version"], created["published"]) == (201, 1, False)

    # A send key may not render the draft; the template role may.
    status, body = await api.call("POST", "/v1/messages", {"to": "u@example.com", "template": {"id": "receipt"},
                                                          "data": DATA}, role=Role.SENDER)  # fmt: skip
    assert (status, body["error"]["code"]) == (404, "not_found")  # nothing is published yet
    status, preview = await api.call("POST", "/v1/templates/receipt/preview", {"data": DATA, "version": 1})
    assert status == 200 and preview["subject"] == "Receipt for Ada <script>"
    assert preview["variables"] == ["items", "name"]
    assert (await api.call("POST", "/v1/templates/receipt/preview", {"data": DATA, "version": 1},
                           role=Role.SENDER))[1]["error"]["code"] == "not_published"  # fmt: skip

    assert (await api.call("POST", "/v1/templates/receipt/publish", {"version": 1}))[0] == 200
    status, body = await api.call("POST", "/v1/messages", {"to": "u@example.com", "template": {"id": "receipt"},
                                                          "data": DATA}, role=Role.SENDER)  # fmt: skip
    assert status == 202, body
    sent = await outbox_message(Path(api.daemon.settings.delivery.capture_dir))
    assert verify_all(sent, records) == [True, True]  # RSA and Ed25519, both valid
    message = email.message_from_bytes(sent, policy=email.policy.default)
    assert message["Subject"] == "Receipt for Ada <script>"
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Hi Ada &lt;script&gt;" in html and "<script>" not in html.replace("&lt;script&gt;", "")
    assert 'class="x" style="color: #123456;"' in html and "@media (max-width: 600px)" in html
    assert "Pen & ink: 3.5" in text and "Paper: 2" in text

    status, shown = await api.call("GET", f"/v1/messages/{body['id']}", role=Role.VIEWER)
    assert status == 200


async def test_template_errors_name_what_is_wrong(client: tuple[Client, dict[str, str]]) -> None:
    api, _ = client
    await api.call("POST", "/v1/templates", LAYOUT)
    await api.call("POST", "/v1/templates/base/publish", {"version": 1})
    await api.call("POST", "/v1/templates", RECEIPT)
    await api.call("POST", "/v1/templates/receipt/publish", {"version": 1})

    async def send(data: Any, **extra: Any) -> tuple[int, Any]:
        return await api.call("POST", "/v1/messages", {"to": "u@example.com", "template": {"id": "receipt", **extra},
                                                      "data": data}, role=Role.SENDER)  # fmt: skip

    status, body = await send({"items": [{"title": 7}]})
    assert status == 422 and body["error"]["code"] == "invalid_data"
    assert body["error"]["problems"] == ["data: 'name' is a required property",
                                         "items.0: 'price' is a required property",
                                         "items.0.title: 7 is not of type 'string'"]  # fmt: skip
    status, body = await send({**DATA, "name": "Ada\r\nBcc: victim@example.com"})
    assert status == 422 and body["error"]["problems"][0].startswith("subject: ")
    status, body = await send(DATA, version=9)
    assert status == 404 and "no version 9" in body["error"]["message"]
    status, body = await api.call("POST", "/v1/templates", {**RECEIPT, "html": "<p>{% for x in %}</p>"})
    assert status == 422 and body["error"]["problems"][0].startswith("html.j2:1: ")
    status, body = await api.call("POST", "/v1/templates", RECEIPT, role=Role.SENDER)
    assert status == 403
    assert (await api.call("GET", "/v1/templates/nope", role=Role.VIEWER))[0] == 404
    status, listing = await api.call("GET", "/v1/templates", role=Role.VIEWER)
    assert [(t["id"], t["published"], t["latest"]) for t in listing["data"]] == [("base", 1, 1), ("receipt", 1, 1)]
