"""`POST /webhooks/posthog`: PostHog's alert webhooks in, each turned into what `[posthog.alerts.<name>]`
says: a report run now, or an alert email. This module reads the request and picks the rule; the
injected `AlertHandler` does the work (and should only queue it: PostHog waits for the answer).

PostHog signs nothing it sends through a webhook destination, so the credential is a shared
secret, `[posthog] webhook_secret`, given either as the header `X-Postroom-Secret` (set it in the
destination's headers) or as `?secret=` in the URL (when only the URL can be set); it is compared
in constant time. 401 for a missing or wrong secret, 503 while none is configured (the endpoint is
off), 400 for a body that is not a JSON object.

The body is read defensively, because its shape is whatever the destination's template makes of
PostHog's event (`{"event": {"event": "$insight_alert_firing", "properties": {"alert_name": ...,
"insight_name": ...}}, "person": ...}` by default) or a hand-written one: the alert's name is the
first of `alert_name`/`alert`, `insight_name`/`insight`, the event's name, looked for at the top
level and in the event's properties, that has a rule. An alert with no rule is answered 200
`{"action": "ignored"}` so PostHog does not retry it.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from pydantic import BaseModel

from postroom.core.errors import PostroomError
from postroom.http.errors import ApiError
from postroom.http.openapi import operation
from postroom.metrics import Metrics
from postroom.sources.posthog.query_settings import AlertRule

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Postroom-Secret"
SECRET_PARAMETER = "secret"


class MalformedAlert(PostroomError):
    """The body is not a JSON object."""


@dataclass(frozen=True)
class PostHogAlert:
    """An alert PostHog sent: the name it matched (`rule` is that name's `[posthog.alerts]` entry,
    None when it matched none), the names found in it, and the body as it came."""

    name: str
    rule: AlertRule | None
    alert_name: str = ""
    insight_name: str = ""
    event: str = ""  # the event the destination fired on, e.g. $insight_alert_firing
    properties: Mapping[str, Any] = field(default_factory=dict)  # the event's properties, if any
    body: Mapping[str, Any] = field(default_factory=dict)
    raw: bytes = b""


class AlertHandler(Protocol):
    async def handle(self, alert: PostHogAlert) -> str:
        """Acts on an alert that has a rule; says what was done: "report:<name>", "alert_email", or
        "ignored"."""
        ...


class PostHogAlertQuery(BaseModel):
    secret: str | None = None  # the webhook secret, when it cannot be sent as X-Postroom-Secret


class PostHogAlertReceived(BaseModel):
    """What became of an alert: `action` ("report:<name>", "alert_email", "ignored") and the name it
    was known by ("" when nothing in it had a name)."""

    action: str
    alert: str


def _name_of(value: Any) -> str:
    """A name given as text or as an object with `name`."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        return str(value["name"]).strip()
    return ""


def parse_alert(raw: bytes, rules: Mapping[str, AlertRule]) -> PostHogAlert:
    """The alert in a webhook body, matched to its rule (pure). MalformedAlert for a body that is not
    a JSON object."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise MalformedAlert("the body is not JSON") from None
    if not isinstance(body, dict):
        raise MalformedAlert("the body is not a JSON object")
    event = body.get("event")
    event_name = _name_of(event) if isinstance(event, str) else ""
    properties: Mapping[str, Any] = {}
    if isinstance(event, Mapping):
        event_name = _name_of(event.get("event")) or _name_of(event.get("name"))
        found = event.get("properties")
        properties = found if isinstance(found, Mapping) else {}
    elif isinstance(body.get("properties"), Mapping):
        properties = body["properties"]
    alert_name = next(filter(None, (_name_of(body.get("alert_name")), _name_of(body.get("alert")),
                                    _name_of(properties.get("alert_name")), _name_of(properties.get("alert")))), "")  # fmt: skip
    insight_name = next(filter(None, (_name_of(body.get("insight_name")), _name_of(body.get("insight")),
                                      _name_of(properties.get("insight_name")), _name_of(properties.get("insight")))),
                        "")  # fmt: skip
    candidates = [name for name in (alert_name, insight_name, event_name) if name]
    matched = next((name for name in candidates if name in rules), None)
    name = matched if matched is not None else (candidates[0] if candidates else "")
    return PostHogAlert(name=name, rule=rules.get(matched) if matched is not None else None,
                        alert_name=alert_name, insight_name=insight_name, event=event_name,
                        properties=properties, body=body, raw=raw)  # fmt: skip


def secret_matches(expected: str, given: str | None) -> bool:
    """Constant-time: how much of a guess is right does not show in the time taken."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


class PostHogAlertRoutes:
    def __init__(self, handler: AlertHandler, secret: str, rules: Mapping[str, AlertRule], metrics: Metrics):
        self._handler = handler
        self._secret = secret
        self._rules = dict(rules)
        self._metrics = metrics

    def register(self, app: web.Application) -> None:
        app.router.add_post("/webhooks/posthog", self.receive)

    @operation(
        summary="PostHog's alert webhooks in (shared secret in X-Postroom-Secret or ?secret=): an alert with a "
                "[posthog.alerts.<name>] rule runs a report or sends an alert email",
        query=PostHogAlertQuery,
        headers={SECRET_HEADER: "the [posthog] webhook_secret (or give it as ?secret= in the URL)"},
        responses={200: ("acted on, or ignored (no rule for the alert)", PostHogAlertReceived),
                   400: ("the body is not a JSON object (malformed)", None),
                   401: ("missing or wrong secret (invalid_secret)", None),
                   503: ("no [posthog] webhook_secret is configured: the endpoint is off (not_configured)", None)},
        tags=("webhooks in",),
    )  # fmt: skip
    async def receive(self, request: web.Request) -> web.Response:
        if not self._secret:
            raise ApiError(503, "not_configured", "PostHog webhooks are off: no [posthog] webhook_secret is configured")
        given = request.headers.get(SECRET_HEADER)
        if given is None:
            given = request.query.get(SECRET_PARAMETER)
        if not secret_matches(self._secret, given):
            logger.warning("PostHog webhook refused from %s: %s secret", request.remote,
                           "no" if given is None else "a wrong")  # fmt: skip
            self._metrics.posthog_alerts.labels("invalid_secret").inc()
            raise ApiError(401, "invalid_secret", f"missing or wrong secret ({SECRET_HEADER} or ?secret=)")
        raw = await request.read()
        try:
            alert = parse_alert(raw, self._rules)
        except MalformedAlert as exc:
            self._metrics.posthog_alerts.labels("malformed").inc()
            raise ApiError(400, "malformed", str(exc)) from None
        if alert.rule is None:
            logger.info("PostHog alert %r ignored: no [posthog.alerts] rule", alert.name)
            action = "ignored"
        else:
            action = await self._handler.handle(alert)
            logger.info("PostHog alert %r: %s", alert.name, action)
        self._metrics.posthog_alerts.labels(action.partition(":")[0] or "ignored").inc()
        return web.json_response(PostHogAlertReceived(action=action, alert=alert.name).model_dump())
