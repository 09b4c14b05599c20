"""Loops' webhooks in, as plain values: the signature check and the reading of one event.

Loops signs its webhooks with the Standard Webhooks scheme (https://www.standardwebhooks.com):
`webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature` (space-separated
`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`) over the exact body bytes. The HMAC is made by
the `standardwebhooks` package (`Webhook.sign`); the timestamp is judged here against the injected
time rather than inside the package, which reads the wall clock itself. Several secrets are tried
in turn, so a secret can be rolled without refusing Loops' retries signed with the old one.

The body (https://loops.so/docs/webhooks, schema version 1.0.0) always carries `eventName` and
`eventTime` (Unix seconds); the email events (`email.delivered`, `email.softBounced`,
`email.hardBounced`, `email.spamReported`, `email.unsubscribed`, ...) add `contactIdentity`
(`id`, `email`, `userId`), `sourceType` (`transactional`, `campaign` or `loop`), the
`transactionalId` of a transactional email and an `email` object (`id`, `emailMessageId`,
`subject`). `parse_event` turns a body into a `LoopsEvent` with the `LoopsEventKind` postroom acts
on; names it does not act on (opens, clicks, contact events, `testing.testEvent`, names Loops adds
later) are `OTHER`: stored and ignored, never refused. Pure: no I/O, no clock, no settings.
"""

from __future__ import annotations

import datetime
import enum
import hmac
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from standardwebhooks.webhooks import Webhook

TOLERANCE = 300.0  # seconds a webhook-timestamp may be off our clock, either way (replays)
MAX_WEBHOOK_ID = 255


class InvalidSignature(ValueError):
    """The request is not signed by a secret we hold, or its timestamp is missing or stale."""


class MalformedEvent(ValueError):
    """The body is not a Loops event postroom can read (not JSON, or a required field is missing)."""


class LoopsEventKind(enum.StrEnum):
    DELIVERED = "delivered"
    SOFT_BOUNCE = "soft_bounce"
    HARD_BOUNCE = "hard_bounce"
    SPAM_REPORT = "spam_report"
    UNSUBSCRIBE = "unsubscribe"
    OTHER = "other"  # stored and ignored


KINDS = {
    "email.delivered": LoopsEventKind.DELIVERED,
    "email.softBounced": LoopsEventKind.SOFT_BOUNCE,
    "email.hardBounced": LoopsEventKind.HARD_BOUNCE,
    "email.spamReported": LoopsEventKind.SPAM_REPORT,
    "email.unsubscribed": LoopsEventKind.UNSUBSCRIBE,
}


@dataclass(frozen=True)
class LoopsEvent:
    webhook_id: str  # the `webhook-id` header: the same on Loops' retries of one event
    name: str  # eventName as sent
    kind: LoopsEventKind
    at: float  # eventTime: when it happened in Loops
    email: str | None  # contactIdentity.email
    source_type: str | None  # transactional, campaign, loop
    transactional_id: str | None
    email_id: str | None  # Loops' id of the email sent (email.id)
    payload: dict[str, Any]  # the body as read, kept with the event

    @property
    def is_transactional(self) -> bool:
        """Whether it may be about mail postroom handed to Loops: only transactional sends are.
        An event that does not say is given the benefit of the doubt."""
        return self.source_type in (None, "transactional")


def verify_signature(
    secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now: float, tolerance: float = TOLERANCE
) -> str:
    """The `webhook-id` of a request signed by any of `secrets` within `tolerance` of `now`;
    `InvalidSignature` otherwise (the message says which check failed, for the log only)."""
    lowered = {key.lower(): value for key, value in headers.items()}
    webhook_id = lowered.get("webhook-id", "").strip()
    stamp = lowered.get("webhook-timestamp", "").strip()
    offered = lowered.get("webhook-signature", "").split()
    if not (webhook_id and stamp and offered):
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    if len(webhook_id) > MAX_WEBHOOK_ID or not webhook_id.isprintable() or not webhook_id.isascii():
        raise InvalidSignature("webhook-id is too long or not printable ASCII")
    try:
        sent_at = float(stamp)
    except ValueError:
        raise InvalidSignature("webhook-timestamp is not a number") from None
    if not math.isfinite(sent_at) or abs(now - sent_at) > tolerance:
        raise InvalidSignature("webhook-timestamp is outside the tolerance")
    timestamp = datetime.datetime.fromtimestamp(sent_at, datetime.UTC)
    for secret in secrets:
        expected = Webhook(secret).sign(webhook_id, timestamp, body).encode()
        if any(hmac.compare_digest(expected, item.encode(errors="replace")) for item in offered):
            return webhook_id
    raise InvalidSignature("no signature matches a configured secret")


def _storable(value: Any) -> bool:
    if isinstance(value, str):
        if "\x00" in value:
            return False
        try:
            value.encode()
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_storable(key) and _storable(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_storable(item) for item in value)
    return True


def _text(value: Any, limit: int) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()[:limit]
    return None


def parse_event(webhook_id: str, body: bytes) -> LoopsEvent:
    """The event a verified body carries; `MalformedEvent` when it cannot be read."""
    try:
        payload = json.loads(body)
        storable = _storable(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise MalformedEvent("the body is not JSON (or nested beyond reading)") from None
    if not isinstance(payload, dict):
        raise MalformedEvent("the body is not a JSON object")
    if not storable:
        # JSON escapes can spell what no database column holds: NUL (PostgreSQL text refuses it)
        # and lone surrogates (not UTF-8). Refused here rather than failing the transaction.
        raise MalformedEvent("the body holds a NUL character or a lone surrogate")
    name = _text(payload.get("eventName"), 64)
    if name is None:
        raise MalformedEvent("eventName is missing")
    at = payload.get("eventTime")
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at) or at < 0:
        raise MalformedEvent("eventTime is missing or not a Unix time")
    kind = KINDS.get(name, LoopsEventKind.OTHER)
    identity = payload.get("contactIdentity")
    address = _text(identity.get("email"), 512) if isinstance(identity, dict) else None
    if kind is not LoopsEventKind.OTHER and (address is None or "@" not in address):
        raise MalformedEvent(f"{name} without contactIdentity.email")
    sent = payload.get("email")
    return LoopsEvent(
        webhook_id=webhook_id, name=name, kind=kind, at=float(at), email=address,
        source_type=_text(payload.get("sourceType"), 16), transactional_id=_text(payload.get("transactionalId"), 64),
        email_id=_text(sent.get("id"), 64) if isinstance(sent, dict) else None, payload=payload,
    )  # fmt: skip
