"""The pure parts of webhooks, analytics and capture: type mapping, subscriptions, secrets,
payloads, retry delays, signatures (checked by the `standardwebhooks` library), bounce counting."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from postroom.config import load_settings
from postroom.core.errors import ConfigError
from postroom.events.models import Event
from postroom.sources.posthog.capture import capture_of, event_uuid
from postroom.stats.model import StatsGroup, add_count
from postroom.webhooks.model import (
    EventFacts,
    WebhookType,
    new_secret,
    parse_subscription,
    payload,
    retry_delay,
    subscribed,
    valid_secret,
    webhook_type,
)
from postroom.webhooks.signing import body_bytes, signed_headers


def test_queue_events_map_to_webhook_types() -> None:
    assert webhook_type("accepted") is WebhookType.QUEUED
    assert webhook_type("expired") is webhook_type("dead") is WebhookType.FAILED
    assert webhook_type("held") is None and webhook_type("sending") is None


def test_subscriptions() -> None:
    assert parse_subscription(["delivered", "email.bounced", "delivered"]) == ("delivered", "bounced")
    assert parse_subscription(["bounced", "*"]) == ("*",)
    for bad in (["opened"], []):
        with pytest.raises(ValueError):
            parse_subscription(bad)
    assert subscribed(("*",), WebhookType.COMPLAINED)
    assert not subscribed(("delivered",), WebhookType.BOUNCED)


def test_secrets() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and valid_secret(secret) and secret != new_secret()
    assert not valid_secret("whsec_c2hvcnQ=")  # 5 bytes
    assert not valid_secret("secret")


def test_retry_delay_doubles_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    assert [retry_delay(n, 5, 60, 0, rng) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 40, 60]
    spread = [retry_delay(3, 5, 60, 0.2, rng) for _ in range(200)]
    assert 16 <= min(spread) < 18 and 22 < max(spread) <= 24


def test_signed_headers_verify_with_standardwebhooks() -> None:
    secret = new_secret()
    facts = EventFacts(7, "bounced", time.time(), "M1", 3, "a@example.com",
                       {"reason": "userunknown", "bounce_class": "hard", "internal": 1})
    body = body_bytes(payload(WebhookType.BOUNCED, facts))
    headers = signed_headers(secret, "msg_7", time.time(), body)
    parsed = Webhook(secret).verify(body, headers)
    assert parsed["type"] == "email.bounced" and parsed["data"]["reason"] == "userunknown"
    assert "internal" not in parsed["data"]
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"hard", b"soft"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_bounces_are_counted_by_class_and_reason() -> None:
    group = StatsGroup({})
    add_count(group, "bounced", "hard", "userunknown", 2)
    add_count(group, "expired", None, None, 1)
    add_count(group, "bounced", None, None, 1)
    add_count(group, "held", None, None, 5)
    assert group.bounced == 4
    assert group.bounced_by_class == {"hard": 2, "soft": 1, "unknown": 1}
    assert group.bounced_by_reason == {"userunknown": 2, "expired": 1, "unknown": 1}


def test_capture_arguments() -> None:
    event = Event(42, 0, 1_767_225_600.0, "bounced", "M1", 3, "Ann@Example.COM", {"reason": "userunknown"})
    args = capture_of(event, "news", None)
    assert args["distinct_id"] == "Ann@Example.COM" and args["uuid"] == event_uuid(42) != event_uuid(43)
    assert args["properties"]["recipient_domain"] == "example.com"
    assert args["properties"]["reason"] == "userunknown" and args["timestamp"].year == 2026
    anonymous = capture_of(Event(1, 0, 0.0, "accepted", "M2", None, None, {}), None, None)
    assert anonymous["distinct_id"] == "message:M2"
    assert anonymous["properties"]["$process_person_profile"] is False


def test_capture_settings(tmp_path: Path) -> None:
    key = tmp_path / "posthog-key"
    key.write_text("phc_from_a_file\n")
    settings = load_settings(None, {"POSTROOM_POSTHOG_CAPTURE__ENABLED": "true",
                                    "POSTROOM_POSTHOG_CAPTURE__API_KEY_FILE": str(key),
                                    "POSTROOM_POSTHOG_CAPTURE__EVENT_TYPES": "delivered, bounced"})  # fmt: skip
    assert settings.posthog_capture.api_key == "phc_from_a_file"
    assert settings.posthog_capture.event_types == ("delivered", "bounced")
    assert "phc_from_a_file" not in repr(settings)
    with pytest.raises(ConfigError) as refused:
        load_settings(None, {"POSTROOM_POSTHOG_CAPTURE__ENABLED": "true"})
    assert refused.value.problems == [("posthog_capture", "enabled capture needs api_key (or api_key_file)")]
    with pytest.raises(ConfigError) as refused:
        load_settings(None, {"POSTROOM_WEBHOOKS__RETRY_BASE": "10", "POSTROOM_WEBHOOKS__RETRY_MAX": "5"})
    assert refused.value.problems == [("webhooks", "retry_max must be >= retry_base")]
