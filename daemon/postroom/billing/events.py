"""Stripe events in: the signature check (the stripe SDK's, on the raw body) and what postroom
reads of an event. Pure apart from the SDK call."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class InvalidSignature(ValueError):
    """The Stripe-Signature header is missing, does not verify under any secret, or is too old."""


class MalformedEvent(ValueError):
    """The body is not a Stripe event (not JSON, or no id, type or created)."""


class Family(enum.StrEnum):
    SUBSCRIPTION = "subscription"
    INVOICE = "invoice"
    CUSTOMER = "customer"
    DISCOUNT = "discount"
    COUPON = "coupon"
    IGNORED = "ignored"


FAMILIES: Mapping[str, Family] = {
    **{f"customer.subscription.{verb}": Family.SUBSCRIPTION
       for verb in ("created", "updated", "deleted", "paused", "resumed", "pending_update_applied",
                    "pending_update_expired", "trial_will_end")},
    **{f"invoice.{verb}": Family.INVOICE for verb in ("payment_succeeded", "paid", "payment_failed")},
    **{f"customer.{verb}": Family.CUSTOMER for verb in ("created", "updated", "deleted")},
    **{f"customer.discount.{verb}": Family.DISCOUNT for verb in ("created", "updated", "deleted")},
    **{f"coupon.{verb}": Family.COUPON for verb in ("created", "updated", "deleted")},
}  # fmt: skip


@dataclass(frozen=True)
class StripeEvent:
    id: str
    type: str
    created: float
    object: Mapping[str, Any]
    body: str

    @property
    def family(self) -> Family:
        return FAMILIES.get(self.type, Family.IGNORED)

    @property
    def object_id(self) -> str | None:
        value = self.object.get("id")
        return value if isinstance(value, str) else None


def verify(body: bytes, header: str | None, secrets: Sequence[str], tolerance: int) -> None:
    """Raise InvalidSignature unless `header` signs `body` under one of `secrets`, within
    `tolerance` seconds (the stripe SDK's check: HMAC-SHA256 over "<t>.<body>")."""
    if not header:
        raise InvalidSignature("no Stripe-Signature header")
    import stripe  # the SDK (~30 MB) is loaded by the first webhook, not by every process at start
    reasons = []
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(body, header, secret, tolerance)
            return
        except stripe.SignatureVerificationError as exc:
            reasons.append(str(exc.user_message or exc))
    raise InvalidSignature(reasons[0] if len(set(reasons)) == 1 else "; ".join(sorted(set(reasons))))


def parse(body: bytes) -> StripeEvent:
    """The event's envelope; the object inside is checked when it is applied."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedEvent(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedEvent("not a JSON object")
    event_id, kind, created = data.get("id"), data.get("type"), data.get("created")
    if not isinstance(event_id, str) or not event_id:
        raise MalformedEvent("no event id")
    if not isinstance(kind, str) or not kind:
        raise MalformedEvent("no event type")
    if not isinstance(created, int | float) or isinstance(created, bool):
        raise MalformedEvent("no created timestamp")
    payload = data.get("data")
    obj = payload.get("object") if isinstance(payload, dict) else None
    return StripeEvent(event_id, kind, float(created), obj if isinstance(obj, dict) else {}, body.decode("utf-8"))
