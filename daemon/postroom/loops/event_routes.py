"""`POST /api/v1/events/send`: record an event of a contact and, when `[events.<name>]` maps its
name to a template, send that template to the contact with the event's properties as data (the
simple "loop" transactional senders use).

The template is rendered before anything is stored, so an event whose properties the template
cannot take is refused (400 naming the variable) and leaves no trace. A contact who unsubscribed
gets no mail from a rule whose stream is not transactional; the event is still recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from postroom.contacts.service import ContactService
from postroom.core.clock import Clock
from postroom.core.errors import NotFoundError, TemplateError
from postroom.http.auth import caller
from postroom.http.ratelimit import limited_as
from postroom.http.openapi import operation
from postroom.loops.bodies import EventIn, LoopsSuccess, fields_of, loops_body
from postroom.loops.errors import LoopsError, requires_role
from postroom.loops.settings import EventRule, LoopsSettings
from postroom.metrics import Metrics
from postroom.store.credentials import Role
from postroom.submission.fields import MessageIn, TemplateRef, build_submission
from postroom.submission.outcome import Caller, Refusal
from postroom.submission.service import SubmissionService
from postroom.templates.model import Rendered
from postroom.templates.service import TemplateService

MAX_IDEMPOTENCY_KEY = 100


class EventRoutes:
    def __init__(self, contacts: ContactService, rules: Mapping[str, EventRule], templates: TemplateService,
                 submissions: SubmissionService, settings: LoopsSettings, clock: Clock, metrics: Metrics,
                 hostname: str):  # fmt: skip
        self._contacts = contacts
        self._rules = dict(rules)
        self._templates = templates
        self._submissions = submissions
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._hostname = hostname

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/events/send", self.send)

    @limited_as("send")
    @operation(
        summary="Record an event of a contact; send the template its [events.<name>] rule names",
        body=EventIn,
        responses={200: ("recorded (and sent, when a rule maps the event)", LoopsSuccess),
                   409: ("the Idempotency-Key was used for an event before", None)},
        tags=("loops: events",),
        headers={"Idempotency-Key": f"1-{MAX_IDEMPOTENCY_KEY} printable characters: the event is recorded once"},
    )  # fmt: skip
    @requires_role(Role.SENDER)
    async def send(self, request: web.Request) -> web.Response:
        body = await loops_body(request, EventIn)
        header = request.headers.get("Idempotency-Key")
        key = caller(request)
        if header is not None and (not 1 <= len(header) <= MAX_IDEMPOTENCY_KEY or not header.isprintable()):
            raise LoopsError(400, f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters.")
        rule = self._rules.get(body.eventName)
        data: dict[str, Any] = dict(body.eventProperties or {})
        rendered = await self._render(rule, data) if rule is not None else None
        recorded = await self._contacts.record_event(fields_of(body), f"{key.id}:{header}" if header else None)
        result = "recorded"
        if rule is not None and rendered is not None:
            result = await self._send(rule, rendered, recorded.contact.email, recorded.contact.subscribed, data,
                                      f"apikey:{key.id}")  # fmt: skip
        self._metrics.loops_events.labels(result).inc()
        return web.json_response(LoopsSuccess(success=True).model_dump())

    async def _render(self, rule: EventRule, data: dict[str, Any]) -> Rendered:
        try:
            return await self._templates.render(rule.template, data)
        except NotFoundError:
            raise LoopsError(400, f"The template {rule.template!r} of this event is not published.", "eventName") from None
        except TemplateError as exc:
            problems = "; ".join(p.removeprefix("data: ") for p in exc.problems)
            raise LoopsError(400, f"Invalid or missing event property: {problems}", "eventProperties") from None

    async def _send(self, rule: EventRule, rendered: Rendered, email: str, subscribed: bool,
                    data: dict[str, Any], submitted_by: str) -> str:  # fmt: skip
        stream = rule.stream or rendered.stream
        if not subscribed and stream != "transactional":
            return "unsubscribed"
        fields: dict[str, Any] = {"to": [email], "template": TemplateRef(id=rule.template), "data": data}
        if rule.stream:
            fields["stream"] = rule.stream
        if not rendered.sender:
            if not self._settings.default_from:
                raise LoopsError(400, f"The template {rule.template!r} has no From and loops.default_from is not set.")
            fields["from"] = self._settings.default_from
        submission = build_submission(MessageIn.model_validate(fields), submitted_by=submitted_by,
                                      hostname=self._hostname, now=self._clock.now(), rendered=rendered)  # fmt: skip
        outcome = await self._submissions.submit(submission, Caller("api", submitted_by))
        if isinstance(outcome, Refusal):
            raise LoopsError(400 if outcome.permanent else 503, outcome.reason)
        return "sent"
