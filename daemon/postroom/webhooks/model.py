"""The values of outbound webhooks: which webhook type an event of the outbox becomes, the
payload of one (Standard Webhooks' `{"type", "timestamp", "data"}` envelope), an endpoint as
operators see it, the retry delay, and new secrets. Pure functions of plain values: no I/O, no
clock (times are passed in), no settings object.
"""

from __future__ import annotations

import base64
import datetime
import enum
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # Standard Webhooks: 24 to 64 bytes
PAYLOAD_PREFIX = "email."  # a webhook's `type` is "email.<webhook type>"
TEST_TYPE = "webhook.test"
ALL_TYPES = "*"


class WebhookType(enum.StrEnum):
    """What an endpoint subscribes to."""

    QUEUED = "queued"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    SUPPRESSED = "suppressed"
    FAILED = "failed"
    UNSUBSCRIBED = "unsubscribed"
    ROUTE_CHANGED = "route_changed"  # shadow mode: the guard rolled a route back, or the ramp moved it


# The event types the queue and its neighbours write (postroom.queue.statements, bounces,
# suppression, unsubscribe) -> the webhook type they are sent as. `held` (a delivery put back
# without an attempt) is internal and never sent; `expired` (deferred past max_age) and `dead`
# (parked after crashing the pipeline) are both a final failure to the subscriber.
EVENT_TYPES: Mapping[str, WebhookType] = {
    "accepted": WebhookType.QUEUED,
    "queued": WebhookType.QUEUED,
    "delivered": WebhookType.DELIVERED,
    "deferred": WebhookType.DEFERRED,
    "bounced": WebhookType.BOUNCED,
    "complained": WebhookType.COMPLAINED,
    "suppressed": WebhookType.SUPPRESSED,
    "expired": WebhookType.FAILED,
    "dead": WebhookType.FAILED,
    "failed": WebhookType.FAILED,
    "unsubscribed": WebhookType.UNSUBSCRIBED,
    "route_changed": WebhookType.ROUTE_CHANGED,
}


class DeliveryState(enum.StrEnum):
    PENDING = "pending"  # due at next_attempt_at
    SENDING = "sending"  # claimed by a sender until lease_expires_at
    DELIVERED = "delivered"  # the endpoint answered 2xx
    FAILED = "failed"  # max_attempts spent; `webhooks replay` sends it again


def webhook_type(event_type: str) -> WebhookType | None:
    """The webhook type an outbox event is sent as, or None when it is not sent."""
    return EVENT_TYPES.get(event_type)


def parse_subscription(values: Iterable[str]) -> tuple[str, ...]:
    """Validated, de-duplicated subscription types ("*" for all); ValueError naming the bad one."""
    chosen: list[str] = []
    for value in values:
        name = value.strip().lower().removeprefix(PAYLOAD_PREFIX)
        if name != ALL_TYPES and name not in WebhookType.__members__.values():
            known = ", ".join(t.value for t in WebhookType)
            raise ValueError(f"unknown event type {value!r}; known: {known}, or * for all")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ValueError("subscribe to at least one event type (or * for all)")
    return (ALL_TYPES,) if ALL_TYPES in chosen else tuple(chosen)


def subscribed(types: Iterable[str], kind: WebhookType) -> bool:
    wanted = set(types)
    return ALL_TYPES in wanted or kind.value in wanted


def new_secret() -> str:
    """A fresh signing secret in Standard Webhooks form: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode("ascii")


def valid_secret(secret: str) -> bool:
    if not secret.startswith(SECRET_PREFIX):
        return False
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except ValueError:
        return False
    return 24 <= len(raw) <= 64


def webhook_id(event_id: int) -> str:
    """The `webhook-id` of an event's webhook: the same on every retry and replay, so a receiver
    that has seen it can drop the copy (Standard Webhooks: idempotency by id)."""
    return f"msg_{event_id}"


def iso_time(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class EventFacts:
    """An outbox event and what the payload says of its message (read beside it)."""

    event_id: int
    type: str
    at: float
    message_id: str
    delivery_id: int | None
    recipient: str | None
    detail: Mapping[str, Any]
    stream: str | None = None
    template_id: str | None = None
    tags: tuple[str, ...] = ()


def payload(kind: WebhookType, facts: EventFacts) -> dict[str, Any]:
    """The JSON body of a webhook: Standard Webhooks' envelope around the event."""
    detail = dict(facts.detail)
    if kind is WebhookType.ROUTE_CHANGED:  # about a route, not a message: `route.changed`
        return {"type": "route.changed", "timestamp": iso_time(facts.at),
                "data": {"event_id": facts.event_id, "at": iso_time(facts.at), **detail}}  # fmt: skip
    data: dict[str, Any] = {
        "event_id": facts.event_id,
        "event": facts.type,
        "message_id": facts.message_id,
        "recipient": facts.recipient,
        "delivery_id": facts.delivery_id,
        "stream": facts.stream,
        "template": facts.template_id,
        "tags": list(facts.tags),
        "at": iso_time(facts.at),
    }
    for key in ("reply", "reason", "bounce_class", "status", "code", "feedback_type", "source", "recipients"):
        if key in detail:
            data[key] = detail[key]
    return {"type": PAYLOAD_PREFIX + kind.value, "timestamp": iso_time(facts.at), "data": data}


def test_payload(endpoint_id: str, at: float) -> dict[str, Any]:
    return {"type": TEST_TYPE, "timestamp": iso_time(at),
            "data": {"endpoint_id": endpoint_id, "message": "a test webhook from postroom"}}  # fmt: skip


def retry_delay(attempts: int, base: float, cap: float, jitter: float, rng: random.Random) -> float:
    """The wait after the `attempts`-th failed attempt: base * 2^(attempts-1), capped, then spread
    by +-jitter of itself so endpoints that failed together are not retried together."""
    delay = float(min(cap, base * 2 ** min(attempts - 1, 32)))
    return max(0.0, delay * (1 + rng.uniform(-jitter, jitter)))


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    event_types: tuple[str, ...]
    description: str
    enabled: bool
    created_at: float
    updated_at: float
    failure_streak: int
    disabled_at: float | None
    disabled_reason: str | None
    last_success_at: float | None
    last_failure_at: float | None
    pending: int = 0  # deliveries waiting (pending or sending)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "url": self.url, "event_types": list(self.event_types),
                "description": self.description, "enabled": self.enabled, "created_at": self.created_at,
                "updated_at": self.updated_at, "failure_streak": self.failure_streak,
                "disabled_at": self.disabled_at, "disabled_reason": self.disabled_reason,
                "last_success_at": self.last_success_at, "last_failure_at": self.last_failure_at,
                "pending": self.pending}  # fmt: skip


@dataclass(frozen=True)
class DueDelivery:
    """A claimed delivery row, with what the sender needs of its endpoint."""

    id: int
    endpoint_id: str
    url: str
    secret: str
    webhook_id: str
    type: str
    payload: Mapping[str, Any]
    attempts: int


@dataclass(frozen=True)
class Attempt:
    """What one POST came to: `status` is the HTTP status (None: no answer), `error` a local
    description (timeout, connection refused) or the start of a non-2xx body."""

    delivery_id: int
    endpoint_id: str
    ok: bool
    status: int | None
    error: str
