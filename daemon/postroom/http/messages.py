"""`/v1/messages`: send, search and inspect messages.

The request body is validated by a pydantic model (`submission.fields`), the search queries by the
models here; everything wrong with either is a 400 naming the field (the OpenAPI document shows the
same models). A valid request goes through the submission door, whose refusal
becomes a JSON error; nothing is stored unless the whole request is valid and accepted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from postroom.core.clock import Clock
from postroom.core.errors import InvalidMessageError
from postroom.core.types import DeliveryState, IdempotencyKey
from postroom.http.auth import caller, requires
from postroom.http.bodies import json_payload, validated, validated_query
from postroom.http.errors import ApiError, refusal_error
from postroom.http.ratelimit import limited_as
from postroom.http.openapi import operation
from postroom.metrics import Metrics
from postroom.queue.models import MessageDetail, MessageSummary
from postroom.queue.protocols import QueueViews
from postroom.store.credentials import Role
from postroom.submission.fields import MessageIn, build_submission
from postroom.submission.outcome import Caller, Refusal
from postroom.submission.service import SubmissionService
from postroom.templates.service import TemplateService


class MessageSearch(BaseModel):
    """The query of `GET /v1/messages`."""

    model_config = ConfigDict(extra="ignore")

    limit: Annotated[int, Field(ge=1, le=500)] = 50
    before: str | None = Field(default=None, description="a message id: the page after it")
    state: DeliveryState | None = Field(default=None, description="messages with a recipient in this state")
    recipient: str | None = None
    mail_from: str | None = Field(default=None, alias="from", description="the envelope sender")
    stream: str | None = None
    since: float | None = Field(default=None, description="created at or after (Unix seconds)")
    until: float | None = Field(default=None, description="created before (Unix seconds)")

    @field_validator("state", mode="before")
    @classmethod
    def _empty_is_any(cls, value: Any) -> Any:
        return value or None  # `state=` filters nothing


class DestinationQuery(BaseModel):
    """The query of `GET /v1/queue/destinations`."""

    model_config = ConfigDict(extra="ignore")

    all: bool = Field(default=False, description="also delivered, bounced and expired deliveries")
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class SuppressedRecipient(BaseModel):
    """A recipient not sent to: the suppression entry that stopped it."""

    recipient: str
    scope: str
    reason: str
    source: str


class MessageAccepted(BaseModel):
    """A message committed to the queue (`created: false`: an idempotent replay). `recipients`
    counts those that will be sent to; `suppressed` lists those skipped (each recorded as a
    `suppressed` delivery with a `suppressed` event)."""

    id: str
    recipients: int
    created: bool
    suppressed: list[SuppressedRecipient] = Field(default_factory=list)


def summary_json(summary: MessageSummary) -> dict[str, Any]:
    return {
        "id": summary.id,
        "created_at": summary.created_at,
        "source": summary.source,
        "mail_from": summary.mail_from,
        "from": summary.header_from,
        "subject": summary.subject,
        "stream": summary.stream,
        "size": summary.size,
        "recipients": summary.states,
    }


def detail_json(detail: MessageDetail) -> dict[str, Any]:
    events_by_delivery: dict[int | None, list[dict[str, Any]]] = {}
    for event in detail.events:
        events_by_delivery.setdefault(event["delivery_id"], []).append(
            {"at": event["at"], "type": event["type"], "detail": event["detail"]}
        )
    return {
        **summary_json(detail.summary),
        "tags": detail.tags,
        "submitted_by": detail.submitted_by,
        "error": detail.error,
        "events": events_by_delivery.get(None, []),
        "deliveries": [
            {
                "recipient": d.recipient,
                "state": d.state,
                "attempts": d.attempts,
                "next_attempt_at": None if d.finished_at else d.next_attempt_at,
                "last_reply": d.last_reply,
                "updated_at": d.updated_at,
                "finished_at": d.finished_at,
                "events": events_by_delivery.get(d.id, []),
            }
            for d in detail.deliveries
        ],
    }


def request_hash(payload: Any) -> str:
    """The hash an Idempotency-Key is bound to: of the request's JSON in a canonical form (keys
    sorted, no insignificant whitespace), so the same request sent with other spacing or key
    order is the same request."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


class MessageRoutes:
    def __init__(
        self,
        submissions: SubmissionService,
        views: QueueViews,
        clock: Clock,
        metrics: Metrics,
        hostname: str,
        templates: TemplateService | None = None,
    ):
        self._templates = templates
        self._submissions = submissions
        self._views = views
        self._clock = clock
        self._metrics = metrics
        self._hostname = hostname

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self.send)
        app.router.add_get("/v1/messages", self.search)
        app.router.add_get("/v1/messages/{id}", self.inspect)
        app.router.add_get("/v1/queue/destinations", self.destinations)

    @limited_as("send")
    @operation(
        summary="Send a message: its own content, or a template's rendering",
        body=MessageIn,
        responses={202: ("committed to the queue (Idempotent-Replayed: true for a replay)", MessageAccepted),
                   409: ("the Idempotency-Key was used with another body within 24 hours", None),
                   422: ("refused by the submission door (the code says why)", None)},
        tags=("messages",),
        headers={"Idempotency-Key": "1-255 printable characters: the same key and body within 24 hours "
                                    "return the first answer and queue nothing"},
    )  # fmt: skip
    @requires(Role.SENDER)
    async def send(self, request: web.Request) -> web.Response:
        try:
            payload = await json_payload(request)
            body = validated(MessageIn, payload)
        except ApiError as exc:
            self._metrics.rejected.labels("api", "bad_json" if exc.code == "invalid_json" else "invalid").inc()
            raise
        key = caller(request)
        rendered = None
        if body.template is not None:
            if self._templates is None:
                raise ApiError(422, "templates_unavailable", "this server has no template store")
            # Send keys render only published versions; template editors any version.
            rendered = await self._templates.render(
                body.template.id, body.data, body.template.version,
                published_only=not key.role.allows(Role.TEMPLATES),
            )  # fmt: skip
        try:
            submission = build_submission(
                body, submitted_by=f"apikey:{key.id}", hostname=self._hostname,
                now=self._clock.now(), rendered=rendered,
            )  # fmt: skip
        except InvalidMessageError:
            self._metrics.rejected.labels("api", "invalid").inc()
            raise
        idempotency = None
        header = request.headers.get("Idempotency-Key")
        if header is not None:
            if not 1 <= len(header) <= 255 or not header.isprintable():
                raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 printable characters")
            idempotency = IdempotencyKey(key.id, header, request_hash(payload))
        outcome = await self._submissions.submit(submission, Caller("api", f"apikey:{key.id}"), idempotency)
        if isinstance(outcome, Refusal):
            raise refusal_error(outcome)
        headers = {} if outcome.created else {"Idempotent-Replayed": "true"}
        accepted = MessageAccepted(
            id=outcome.message_id, recipients=outcome.recipients, created=outcome.created,
            suppressed=[SuppressedRecipient(recipient=address, scope=why.get("scope", ""), reason=why.get("reason", ""),
                                            source=why.get("source", "")) for address, why in outcome.suppressed.items()],
        )  # fmt: skip
        return web.json_response(accepted.model_dump(), status=202, headers=headers)

    @operation(
        summary="Search messages, newest first",
        query=MessageSearch,
        responses={200: ("a page: `data` (message summaries) and `next` (the id for `before`, or null)", None)},
        tags=("messages",),
    )  # fmt: skip
    @requires(Role.VIEWER)
    async def search(self, request: web.Request) -> web.Response:
        query = validated_query(MessageSearch, request)
        found = await self._views.list_messages(
            limit=query.limit,
            before=query.before,
            state=query.state,
            recipient=query.recipient,
            mail_from=query.mail_from,
            stream=query.stream,
            since=query.since,
            until=query.until,
        )
        page = [summary_json(s) for s in found]
        return web.json_response(
            {"data": page, "next": found[-1].id if len(found) == query.limit else None}
        )

    @operation(
        summary="The queue grouped by recipient domain and state, the largest groups first",
        query=DestinationQuery,
        responses={200: ("`data`: one group per domain and state", None)},
        tags=("messages",),
    )  # fmt: skip
    @requires(Role.VIEWER)
    async def destinations(self, request: web.Request) -> web.Response:
        """The queue grouped by recipient domain and state (`postroom queue ls --by-destination`)."""
        query = validated_query(DestinationQuery, request)
        groups = await self._views.destinations(include_final=query.all, limit=query.limit)
        return web.json_response({"data": [dataclasses.asdict(g) for g in groups]})

    @operation(
        summary="A message with its recipients' deliveries and events",
        responses={200: ("the message", None), 404: ("no message has this id", None)},
        tags=("messages",),
    )  # fmt: skip
    @requires(Role.VIEWER)
    async def inspect(self, request: web.Request) -> web.Response:
        detail = await self._views.show(request.match_info["id"])
        return web.json_response(detail_json(detail))
