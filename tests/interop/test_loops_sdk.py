"""The official Loops SDK (npm `loops` 7.3.0, pinned in tests/interop/node's lock file) against the
daemon's Loops-compatible API, with `apiRoot` set to the daemon: every method an application uses
for transactional mail, contacts and events is called through the real SDK and returns what the
SDK's types promise; errors arrive as its APIError with Loops' status codes; the transactional
message arrives rendered, with its attachment, in the capture directory.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from postroom.store.credentials import Role, SqlApiKeys
from postroom.store.engine import create_engine
from postroom.store import schema
from postroom.templates.model import TemplateSource
from postroom.templates.service import TemplateService
from postroom.templates.sql_store import SqlTemplateStore
from postroom.core.clock import SystemClock
from tests.conftest import running
from tests.support import make_settings, wait_until

pytestmark = pytest.mark.interop

NODE_DIR = Path(__file__).resolve().parent / "node"
SDK = NODE_DIR / "node_modules" / "loops" / "package.json"
DRIVER = NODE_DIR / "loops_calls.mjs"

RECEIPT = TemplateSource(
    subject="Receipt {{ order }}",
    html="<p>Hello {{ name }}, order {{ order }} is paid.</p>",
    sender="Shop <shop@postroom.test>",
    schema={"type": "object", "required": ["name", "order"],
            "properties": {"name": {"type": "string"}, "order": {"type": "string"}}},
)  # fmt: skip
WELCOME = TemplateSource(subject="Welcome to the {{ plan }} plan", html="<p>Welcome ({{ plan }})</p>",
                         sender="Team <team@postroom.test>")  # fmt: skip


def need_sdk() -> None:
    missing = "node is not installed" if shutil.which("node") is None else (
        "the loops SDK is not installed (npm ci --prefix tests/interop/node)" if not SDK.exists() else None)
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}, and CI must run this test (.ci/run installs it)")
        pytest.skip(missing)


async def sdk_calls(tmp_path: Path, api_root: str, keys: dict[str, str],
                    calls: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    """Run the calls with the SDK in node (the daemon runs in this event loop: never block it)."""
    plan = tmp_path / f"calls-{time.monotonic_ns()}.json"
    plan.write_text(json.dumps({"apiRoot": api_root, "keys": keys, "calls": list(calls)}))
    process = await asyncio.create_subprocess_exec("node", str(DRIVER), str(plan), cwd=NODE_DIR,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()
    results: list[dict[str, Any]] = json.loads(stdout)
    return results


def call(method: str, *args: Any, key: str = "main") -> dict[str, Any]:
    return {"method": method, "args": list(args), "key": key}


async def test_the_official_sdk_works_unchanged(tmp_path: Path) -> None:
    need_sdk()
    settings = make_settings(
        tmp_path,
        contacts={"lists": [{"id": "news", "name": "Newsletter", "description": "Monthly", "public": True}]},
        loops={"templates": {"receipt": "cm-receipt-0001"}},
        events={"signup": {"template": "welcome"}},
        # The SDK's calls run well under the default; the "burst" key has a quota a burst exceeds.
        http={"rate_limit": {"enabled": True, "default": "1000/s", "keys": {"burst": "4/min"}}},
    )  # fmt: skip
    engine = create_engine(settings.database)
    await schema.upgrade(engine)
    admin = (await SqlApiKeys(engine).create("admin", Role.ADMIN, time.time()))[1]
    viewer = (await SqlApiKeys(engine).create("viewer", Role.VIEWER, time.time()))[1]
    burst = (await SqlApiKeys(engine).create("burst", Role.ADMIN, time.time()))[1]
    templates = TemplateService(SqlTemplateStore(engine), SystemClock())
    for template_id, source in (("receipt", RECEIPT), ("welcome", WELCOME)):
        made = await templates.create(template_id, source, "test")
        await templates.publish(template_id, made.version)
    await engine.dispose()
    pdf = b"%PDF-1.4 postroom test attachment\n" * 40
    attachment = {"filename": "invoice.pdf", "contentType": "application/pdf", "data": base64.b64encode(pdf).decode()}
    alice = "alice@example.com"
    calls = [
        call("testApiKey"),  # 0
        call("testApiKey", key="bad"),
        call("createContactProperty", "planName", "string"),
        call("createContactProperty", "seats", "number"),
        call("listContactProperties"),
        call("listContactProperties", "custom"),  # 5
        call("listMailingLists"),
        call("createContact", {"email": alice, "properties": {"firstName": "Alice", "planName": "pro", "seats": 3},
                               "mailingLists": {"news": True}}),  # fmt: skip
        call("createContact", {"email": alice}),
        call("updateContact", {"email": alice, "userId": "user-1", "properties": {"lastName": "Liddell"}}),
        call("findContact", {"email": alice}),  # 10
        call("findContact", {"userId": "user-1"}),
        call("updateContact", {"email": alice, "properties": {"seats": "many"}}),
        call("checkContactSuppression", {"email": alice}),
        call("sendEvent", {"email": "bob@example.com", "eventName": "signup", "eventProperties": {"plan": "team"},
                           "contactProperties": {"firstName": "Bob"}}),  # fmt: skip
        call("listTransactionalEmails"),  # 15
        call("getTransactionalEmail", "cm-receipt-0001"),
        call("sendTransactionalEmail", {"transactionalId": "cm-receipt-0001", "email": alice, "addToAudience": True,
                                        "dataVariables": {"name": "Alice", "order": "A-17"},
                                        "attachments": [attachment]}),  # fmt: skip
        call("sendTransactionalEmail", {"transactionalId": "no-such-email", "email": alice}),
        call("createTransactionalEmail", {"name": "Password reset"}),
        call("ensureTransactionalEmailDraft", "password-reset"),  # 20
        call("publishTransactionalEmail", "password-reset"),
        call("deleteContact", {"email": alice}),
        call("findContact", {"email": alice}),
        call("listCampaigns"),
        call("createContact", {"email": "carol@example.com"}, key="viewer"),  # 25
        call("findContact", {"email": "bob@example.com"}),
        *[call("testApiKey", key="burst") for _ in range(6)],  # 27-32
    ]
    async with running(settings) as daemon:
        results = await sdk_calls(tmp_path, f"{daemon.http}/api/", {"main": admin, "viewer": viewer, "bad": "nope",
                                                                       "burst": burst}, calls)
        outbox = Path(settings.delivery.capture_dir)
        await wait_until(lambda: len(list(outbox.glob("*.eml"))) >= 2, 20, what="two captured messages")

    def ok(index: int) -> Any:
        assert results[index]["ok"], (calls[index], results[index])
        return results[index]["value"]

    def failed(index: int, status: int) -> dict[str, Any]:
        entry = results[index]
        assert not entry["ok"] and entry["error"] == "APIError" and entry["statusCode"] == status, (calls[index], entry)
        return entry

    assert ok(0) == {"success": True, "teamName": "postroom"}
    assert failed(1, 401)["json"] == {"error": "Invalid API key"}
    assert ok(2) == {"success": True} and ok(3) == {"success": True}
    keys = [p["key"] for p in ok(4)]
    assert keys[:3] == ["email", "firstName", "lastName"] and keys[-2:] == ["planName", "seats"]
    assert ok(5) == [{"key": "planName", "label": "Plan Name", "type": "string"},
                     {"key": "seats", "label": "Seats", "type": "number"}]  # fmt: skip
    assert ok(6) == [{"id": "news", "name": "Newsletter", "description": "Monthly", "isPublic": True}]
    created = ok(7)
    assert created["success"] is True and created["id"].startswith("c")
    assert failed(8, 409)["json"]["success"] is False
    assert ok(9) == {"success": True, "id": created["id"]}
    by_email, by_user = ok(10), ok(11)
    assert by_email == by_user and len(by_email) == 1
    contact = by_email[0]
    assert {k: contact[k] for k in ("id", "email", "firstName", "lastName", "userId", "subscribed", "planName", "seats",
                                    "mailingLists")} == {  # fmt: skip
        "id": created["id"], "email": alice, "firstName": "Alice", "lastName": "Liddell", "userId": "user-1",
        "subscribed": True, "planName": "pro", "seats": 3, "mailingLists": {"news": True}}  # fmt: skip
    assert "seats" in failed(12, 400)["json"]["message"]
    suppression = ok(13)
    assert suppression["isSuppressed"] is False and suppression["contact"]["id"] == created["id"]
    assert set(suppression["removalQuota"]) == {"limit", "remaining"}
    assert ok(14) == {"success": True}
    listing = ok(15)
    assert listing["pagination"]["totalResults"] == 2 and listing["pagination"]["nextCursor"] is None
    item = next(i for i in listing["data"] if i["id"] == "cm-receipt-0001")
    assert item["dataVariables"] == ["name", "order"] and item["publishedEmailMessageId"] == "receipt@1"
    assert ok(16)["id"] == "cm-receipt-0001"
    assert ok(17) == {"success": True}
    assert failed(18, 404)["json"]["message"] == "Transactional email not found."
    draft = ok(19)
    assert draft["name"] == "Password reset" and draft["draftEmailMessageId"] == "password-reset@1"
    assert ok(20)["draftEmailMessageId"] == "password-reset@1"
    published = ok(21)
    assert published["publishedEmailMessageId"] == "password-reset@1" and published["draftEmailMessageId"] is None
    assert ok(22) == {"success": True, "message": "Contact deleted."}
    assert ok(23) == []
    assert "campaigns" in failed(24, 501)["json"]["message"]
    assert failed(25, 403)["json"]["success"] is False
    bob = ok(26)[0]
    assert bob["firstName"] == "Bob"
    assert [results[i]["ok"] for i in range(27, 33)] == [True] * 4 + [False] * 2
    for index in (31, 32):
        assert results[index]["error"] == "RateLimitExceededError"
        assert (results[index]["limit"], results[index]["remaining"]) == (4, 0)

    messages = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in outbox.glob("*.eml")]
    by_subject = {str(m["Subject"]): m for m in messages}
    receipt = by_subject["Receipt A-17"]
    assert receipt["To"] == alice
    body = receipt.get_body(("html",))
    assert body is not None and "Hello Alice, order A-17 is paid." in body.get_content()
    attachments = list(receipt.iter_attachments())
    assert [(a.get_filename(), a.get_content_type(), a.get_content()) for a in attachments] == [
        ("invoice.pdf", "application/pdf", pdf)]  # fmt: skip
    welcome = by_subject["Welcome to the team plan"]
    assert welcome["To"] == "bob@example.com"
