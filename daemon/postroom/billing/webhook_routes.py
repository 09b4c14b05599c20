"""`POST /webhooks/stripe`: Stripe's webhooks in. Public (no API key): the Stripe-Signature over the
raw body is the credential, checked with the stripe SDK against every `[stripe] webhook_secrets`
within `webhook_tolerance`.

400 for a missing, wrong or stale signature (Stripe's own libraries' answer) and for a body that
is not an event, both with nothing stored; 503 while no secret is configured. A verified event is
stored once by its id and answered 200 at once; it is applied just after (postroom.billing.applier).
A replay answers 200 with `duplicate: true` and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from aiohttp import web
from pydantic import BaseModel

from postroom.billing.events import InvalidSignature, MalformedEvent, StripeEvent, parse, verify
from postroom.http.errors import ApiError
from postroom.http.openapi import operation
from postroom.metrics import Metrics

logger = logging.getLogger(__name__)


class StripeIntake(Protocol):
    async def take(self, event: StripeEvent) -> bool: ...


class StripeWebhookReceived(BaseModel):
    received: bool
    duplicate: bool


class StripeWebhookRoutes:
    def __init__(self, intake: StripeIntake, secrets: Sequence[str], tolerance: int, metrics: Metrics):
        self._intake = intake
        self._secrets = tuple(secrets)
        self._tolerance = tolerance
        self._metrics = metrics

    def register(self, app: web.Application) -> None:
        app.router.add_post("/webhooks/stripe", self.receive)

    @operation(
        summary="Stripe's webhooks in (Stripe-Signature): subscription, invoice, customer and discount events, "
                "stored once per event id and applied to the MRR ledger",
        responses={200: ("stored (or a replay, stored before)", StripeWebhookReceived),
                   400: ("missing, wrong or stale signature (invalid_signature), or not an event (malformed)", None),
                   503: ("no [stripe] webhook_secrets: the endpoint is off (not_configured)", None)},
        tags=("webhooks in",),
    )  # fmt: skip
    async def receive(self, request: web.Request) -> web.Response:
        if not self._secrets:
            raise ApiError(503, "not_configured", "Stripe webhooks are off: no [stripe] webhook_secrets is configured")
        body = await request.read()
        try:
            verify(body, request.headers.get("Stripe-Signature"), self._secrets, self._tolerance)
        except InvalidSignature as exc:
            logger.warning("Stripe webhook refused from %s: %s", request.remote, exc)
            self._metrics.stripe_events.labels("invalid_signature").inc()
            raise ApiError(400, "invalid_signature", f"the Stripe-Signature does not verify: {exc}") from None
        try:
            event = parse(body)
        except MalformedEvent as exc:
            self._metrics.stripe_events.labels("malformed").inc()
            raise ApiError(400, "malformed", f"not a Stripe event: {exc}") from None
        fresh = await self._intake.take(event)
        if not fresh:
            self._metrics.stripe_events.labels("duplicate").inc()
        return web.json_response({"received": True, "duplicate": not fresh})
