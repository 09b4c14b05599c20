"""`POST /webhooks/loops`: Loops' webhooks in. Public (no API key): the Standard Webhooks signature
over the raw body is the credential, checked against `[loops] webhook_secret(s)` with a time
tolerance before anything is read or written.

401 for a missing, wrong or stale signature and 400 for a body that is not a Loops event, both
with nothing recorded; 503 while no secret is configured (the endpoint is off). A verified event
is answered 200 once it is recorded and applied in one transaction (`shadow.loops_events_store`),
a replay of one already recorded 200 too, with nothing changed; an event postroom does not act on
is stored and answered 200, so Loops never retries what postroom will always ignore.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from aiohttp import web
from pydantic import BaseModel

from postroom.core.clock import Clock
from postroom.http.errors import ApiError
from postroom.http.openapi import operation
from postroom.metrics import Metrics
from postroom.shadow.loops_events_store import Taken
from postroom.shadow.loops_webhooks import (
    InvalidSignature,
    LoopsEvent,
    LoopsEventKind,
    MalformedEvent,
    parse_event,
    verify_signature,
)

logger = logging.getLogger(__name__)


class LoopsEventIntake(Protocol):
    async def take(self, event: LoopsEvent) -> Taken: ...


class LoopsWebhookReceived(BaseModel):
    """What became of a Loops event: `result` (applied, unmatched, duplicate, ignored) and `effect`
    (confirmed, bounced, complained, unsubscribed, suppressed, none)."""

    result: str
    effect: str


class LoopsWebhookRoutes:
    def __init__(self, intake: LoopsEventIntake, secrets: Sequence[str], clock: Clock, metrics: Metrics):
        self._intake = intake
        self._secrets = tuple(secrets)
        self._clock = clock
        self._metrics = metrics

    def register(self, app: web.Application) -> None:
        app.router.add_post("/webhooks/loops", self.receive)

    @operation(
        summary="Loops' webhooks in (Standard Webhooks signature): delivered, bounces, spam reports and "
                "unsubscribes of mail sent through Loops, recorded once per webhook-id",
        responses={200: ("recorded (or a replay, recorded before)", LoopsWebhookReceived),
                   400: ("not a Loops event: not JSON, or eventName, eventTime or contactIdentity.email missing "
                         "(malformed)", None),
                   401: ("missing, wrong or stale signature (invalid_signature)", None),
                   503: ("no [loops] webhook_secret is configured: the endpoint is off (not_configured)", None)},
        tags=("webhooks in",),
    )  # fmt: skip
    async def receive(self, request: web.Request) -> web.Response:
        if not self._secrets:
            raise ApiError(503, "not_configured", "Loops webhooks are off: no [loops] webhook_secret is configured")
        body = await request.read()
        try:
            webhook_id = verify_signature(self._secrets, request.headers, body, self._clock.now())
        except InvalidSignature as exc:
            logger.warning("Loops webhook refused from %s: %s", request.remote, exc)
            self._metrics.loops_webhook_events.labels("unknown", "invalid_signature").inc()
            raise ApiError(401, "invalid_signature", "the webhook signature does not verify") from None
        try:
            event = parse_event(webhook_id, body)
        except MalformedEvent as exc:
            logger.warning("Loops webhook %s refused: %s", webhook_id, exc)
            self._metrics.loops_webhook_events.labels("unknown", "malformed").inc()
            raise ApiError(400, "malformed", str(exc)) from None
        taken = await self._intake.take(event)
        label = event.name if event.kind is not LoopsEventKind.OTHER else "other"
        self._metrics.loops_webhook_events.labels(label, taken.result).inc()
        return web.json_response(LoopsWebhookReceived(result=taken.result, effect=taken.effect).model_dump())
