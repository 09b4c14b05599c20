"""Loops' webhooks in, as values: the Standard Webhooks signature (made here by the real
`standardwebhooks` package, as Loops' own sender would), the time tolerance, rolled secrets, and
the reading of event bodies into `LoopsEvent`s; plus the `[loops]` webhook secret settings."""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook

from postroom.config import load_settings
from postroom.core.errors import ConfigError
from postroom.loops.settings import LoopsSettings
from postroom.shadow.loops_webhooks import (
    InvalidSignature,
    LoopsEventKind,
    MalformedEvent,
    parse_event,
    verify_signature,
)

SECRET = "whsec_" + base64.b64encode(b"loops-signing-secret-0123456789ab").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"the-secret-being-rolled-out-0000").decode()
NOW = 1_750_000_000.0


def signed(body: bytes, secret: str = SECRET, at: float = NOW, webhook_id: str = "msg_2abc") -> dict[str, str]:
    stamp = datetime.datetime.fromtimestamp(int(at), datetime.UTC)
    return {"webhook-id": webhook_id, "webhook-timestamp": str(int(at)),
            "webhook-signature": Webhook(secret).sign(webhook_id, stamp, body)}  # fmt: skip


def loops_body(name: str = "email.hardBounced", **fields: Any) -> bytes:
    payload: dict[str, Any] = {
        "eventName": name, "eventTime": 1_749_999_990, "webhookSchemaVersion": "1.0.0",
        "sourceType": "transactional", "transactionalId": "clfq6dinn000yl70fgwwyp82l",
        "contactIdentity": {"id": "cll6b3i8901a9jx0oyktl2m4u", "email": "Ada@Example.com", "userId": None},
        "email": {"id": "cm0x1", "emailMessageId": "<x@loops>", "subject": "Welcome"},
    }  # fmt: skip
    payload.update(fields)
    return json.dumps(payload).encode()


def test_a_body_signed_by_the_standardwebhooks_package_verifies() -> None:
    body = loops_body()
    assert verify_signature([SECRET], signed(body), body, NOW) == "msg_2abc"
    # Header names are case-insensitive (Loops' examples read Webhook-Id).
    headers = {key.title(): value for key, value in signed(body).items()}
    assert verify_signature([SECRET], headers, body, NOW + 299) == "msg_2abc"


def test_any_configured_secret_verifies_while_one_is_rolled() -> None:
    body = loops_body()
    assert verify_signature([OLD_SECRET, SECRET], signed(body), body, NOW) == "msg_2abc"
    assert verify_signature([OLD_SECRET, SECRET], signed(body, OLD_SECRET), body, NOW) == "msg_2abc"
    # Several signatures in the header (Loops signing with both): one match is enough.
    both = signed(body)
    both["webhook-signature"] = "v1,bm90IGl0 " + both["webhook-signature"]
    assert verify_signature([SECRET], both, body, NOW) == "msg_2abc"


@pytest.mark.parametrize("case", ["other secret", "body changed", "id changed", "stale", "future", "no signature",
                                  "no id", "no timestamp", "bad timestamp", "unsigned v1", "odd id", "odd signature"])  # fmt: skip
def test_what_does_not_verify(case: str) -> None:
    body = loops_body()
    headers = signed(body)
    now = NOW
    if case == "other secret":
        headers = signed(body, OLD_SECRET)
    elif case == "body changed":
        body = body.replace(b"hardBounced", b"softBounced")
    elif case == "id changed":
        headers["webhook-id"] = "msg_other"
    elif case == "stale":
        now = NOW + 301
    elif case == "future":
        now = NOW - 301
    elif case == "no signature":
        del headers["webhook-signature"]
    elif case == "no id":
        del headers["webhook-id"]
    elif case == "no timestamp":
        del headers["webhook-timestamp"]
    elif case == "bad timestamp":
        headers["webhook-timestamp"] = "yesterday"
    elif case == "odd id":
        headers["webhook-id"] = "msg\udcff\x00"  # what undecodable header bytes read as
    elif case == "odd signature":
        headers["webhook-signature"] = "v1,\udcff\ud800"
    elif case == "unsigned v1":
        headers["webhook-signature"] = "v1,"
    with pytest.raises(InvalidSignature):
        verify_signature([SECRET], headers, body, now)


@pytest.mark.parametrize(("name", "kind"), [
    ("email.delivered", LoopsEventKind.DELIVERED), ("email.softBounced", LoopsEventKind.SOFT_BOUNCE),
    ("email.hardBounced", LoopsEventKind.HARD_BOUNCE), ("email.spamReported", LoopsEventKind.SPAM_REPORT),
    ("email.unsubscribed", LoopsEventKind.UNSUBSCRIBE), ("email.opened", LoopsEventKind.OTHER),
    ("contact.created", LoopsEventKind.OTHER), ("email.somethingNew", LoopsEventKind.OTHER),
])  # fmt: skip
def test_event_names_map_to_what_postroom_does(name: str, kind: LoopsEventKind) -> None:
    event = parse_event("msg_1", loops_body(name))
    assert (event.name, event.kind, event.at) == (name, kind, 1_749_999_990.0)
    assert (event.email, event.transactional_id, event.source_type, event.email_id) == (
        "Ada@Example.com", "clfq6dinn000yl70fgwwyp82l", "transactional", "cm0x1")
    assert event.is_transactional and event.payload["email"]["subject"] == "Welcome"


def test_campaign_mail_is_not_transactional_and_the_test_event_is_other() -> None:
    campaign = parse_event("m", loops_body("email.hardBounced", sourceType="campaign", transactionalId=None))
    assert not campaign.is_transactional and campaign.transactional_id is None
    test = parse_event("m", json.dumps({"eventName": "testing.testEvent", "eventTime": 1, "webhookSchemaVersion":
                                        "1.0.0", "message": "hello"}).encode())  # fmt: skip
    assert (test.kind, test.email) == (LoopsEventKind.OTHER, None)


@pytest.mark.parametrize("body", [
    b"not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"[" * 100_000 + b"]" * 100_000,
    json.dumps({"eventTime": 1}).encode(),
    json.dumps({"eventName": "", "eventTime": 1}).encode(),
    json.dumps({"eventName": "email.delivered"}).encode(),
    json.dumps({"eventName": "email.delivered", "eventTime": "yesterday"}).encode(),
    json.dumps({"eventName": "email.delivered", "eventTime": True}).encode(),
    json.dumps({"eventName": "email.delivered", "eventTime": -5}).encode(),
    json.dumps({"eventName": "email.delivered", "eventTime": 1}).encode(),  # an email event without its contact
    json.dumps({"eventName": "email.hardBounced", "eventTime": 1, "contactIdentity": {"email": "nobody"}}).encode(),
    json.dumps({"eventName": "email.hardBounced", "eventTime": 1, "contactIdentity": "ada@example.com"}).encode(),
    loops_body(contactIdentity={"email": "ada\\u0000@example.com"}).replace(b"\\\\", b"\\"),  # NUL
    loops_body(email={"subject": "\\ud800"}).replace(b"\\\\", b"\\"),  # a lone surrogate
])  # fmt: skip
def test_malformed_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(MalformedEvent):
        parse_event("m", body)


def test_odd_optional_fields_are_read_as_absent() -> None:
    event = parse_event("m", loops_body("email.unsubscribed", sourceType=7, transactionalId=["x"], email="cm0x1"))
    assert (event.source_type, event.transactional_id, event.email_id) == (None, None, None)
    assert event.is_transactional


def test_settings_take_one_secret_a_list_or_a_text_list_and_refuse_a_broken_one() -> None:
    assert LoopsSettings().webhook_signing_secrets == ()
    assert LoopsSettings(webhook_secret=SECRET).webhook_signing_secrets == (SECRET,)
    both = LoopsSettings.model_validate({"webhook_secret": SECRET, "webhook_secrets": f"{OLD_SECRET}, {SECRET}\n"})
    assert both.webhook_signing_secrets == (SECRET, OLD_SECRET)
    assert LoopsSettings(webhook_secrets=(OLD_SECRET,)).webhook_signing_secrets == (OLD_SECRET,)
    with pytest.raises(ValidationError, match="webhook_secret"):
        LoopsSettings(webhook_secret="whsec_a")
    assert SECRET not in repr(both)


def test_the_secrets_come_from_files_as_systemd_credentials_do(tmp_path: Path) -> None:
    (tmp_path / "one").write_text(SECRET + "\n")
    (tmp_path / "rolled").write_text(f"{OLD_SECRET}\n")
    config = tmp_path / "postroom.toml"
    config.write_text('[[domains]]\nname = "example.com"\n\n[loops]\nwebhook_secret_file = "%d/one"\n')
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path),
               "POSTROOM_LOOPS__WEBHOOK_SECRETS_FILE": str(tmp_path / "rolled")}  # fmt: skip
    settings = load_settings(config, environ)
    assert settings.loops.webhook_signing_secrets == (SECRET, OLD_SECRET)
    config.write_text('[[domains]]\nname = "example.com"\n\n[loops]\nwebhook_secret = "whsec_a"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config, {})
    assert "loops.webhook_secret" in dict(caught.value.problems)
