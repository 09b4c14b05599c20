"""`/v1/messages`: send, search and inspect messages.

The request body is validated by a pydantic model; everything wrong with it is a 400 naming the
field. Nothing is stored unless the whole request is valid.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from postroom.core.addresses import valid_mailbox
from postroom.core.clock import Clock
from postroom.core.compose import Attachment, Draft, address_of, compose, format_address
from postroom.core.errors import InvalidMessageError
from postroom.core.ids import new_message_id
from postroom.core.types import DeliveryState, IdempotencyKey, Submission
from postroom.dkim.keyring import SendingPolicy
from postroom.http.auth import caller, requires
from postroom.http.errors import ApiError
from postroom.metrics import Metrics
from postroom.queue.models import MessageDetail, MessageSummary
from postroom.queue.store import SqlQueueStore, request_hash
from postroom.queue.submission import SubmissionService
from postroom.store.credentials import Role

MAX_RECIPIENTS = 1000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class AddressIn(_Body):
    email: str
    name: str | None = None


AddressField = str | AddressIn


class AttachmentIn(_Body):
    filename: Annotated[str, Field(min_length=1, max_length=255)]
    content: str  # base64
    content_type: str = "application/octet-stream"
    content_id: str | None = None


class MessageIn(_Body):
    sender: AddressField = Field(alias="from")
    to: list[AddressField] = Field(default_factory=list)
    cc: list[AddressField] = Field(default_factory=list)
    bcc: list[AddressField] = Field(default_factory=list)
    reply_to: AddressField | None = None
    subject: Annotated[str, Field(max_length=998)]
    text: str | None = None
    html: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    attachments: list[AttachmentIn] = Field(default_factory=list)
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list)
    stream: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")] = (
        "transactional"
    )

    @field_validator("to", "cc", "bcc", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, dict)) else value


def _address(value: AddressField) -> tuple[str, str]:
    """(bare address, header form)."""
    if isinstance(value, AddressIn):
        bare, header = value.email, format_address(value.email, value.name)
    else:
        bare, header = address_of(value), value
    if "\r" in header or "\n" in header:
        raise InvalidMessageError("addresses must not contain CR or LF")
    if not valid_mailbox(bare):
        raise InvalidMessageError(f"{bare!r} is not a valid email address")
    return bare, header


def _attachment(item: AttachmentIn) -> Attachment:
    try:
        content = base64.b64decode(item.content, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidMessageError(f"attachment {item.filename!r}: content is not base64") from None
    return Attachment(item.filename, content, item.content_type, item.content_id)


def build_submission(
    body: MessageIn, *, submitted_by: str, hostname: str, now: float
) -> Submission:
    sender_bare, sender_header = _address(body.sender)
    to = [_address(a) for a in body.to]
    cc = [_address(a) for a in body.cc]
    bcc = [_address(a) for a in body.bcc]
    recipients = list(dict.fromkeys(bare for bare, _ in (*to, *cc, *bcc)))
    if not recipients:
        raise InvalidMessageError("a message needs at least one of to, cc, bcc")
    if len(recipients) > MAX_RECIPIENTS:
        raise InvalidMessageError(f"at most {MAX_RECIPIENTS} recipients per message")
    message_id = new_message_id(now)
    draft = Draft(
        sender=sender_header,
        to=tuple(h for _, h in to) or ("undisclosed-recipients:;",),
        cc=tuple(h for _, h in cc),
        reply_to=_address(body.reply_to)[1] if body.reply_to else None,
        subject=body.subject,
        text=body.text,
        html=body.html,
        headers=tuple(body.headers.items()),
        attachments=tuple(_attachment(a) for a in body.attachments),
    )
    content = compose(draft, message_id=message_id, hostname=hostname, now=now)
    return Submission(
        mail_from=sender_bare,
        recipients=tuple(recipients),
        content=content,
        source="api",
        submitted_by=submitted_by,
        header_from=sender_header,
        subject=body.subject,
        stream=body.stream,
        tags=tuple(body.tags),
        message_id=message_id,
    )


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:10]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


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


class MessageRoutes:
    def __init__(
        self,
        submissions: SubmissionService,
        store: SqlQueueStore,
        clock: Clock,
        metrics: Metrics,
        hostname: str,
        max_message_size: int,
        policy: SendingPolicy,
    ):
        self._submissions = submissions
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._hostname = hostname
        self._max_message_size = max_message_size
        self._policy = policy

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self.send)
        app.router.add_get("/v1/messages", self.search)
        app.router.add_get("/v1/messages/{id}", self.inspect)
        app.router.add_get("/v1/queue/destinations", self.destinations)

    @requires(Role.SENDER)
    async def send(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            raise ApiError(415, "unsupported_media_type", "send a JSON body (application/json)")
        raw = await request.read()
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self._metrics.rejected.labels("api", "bad_json").inc()
            raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
        try:
            body = MessageIn.model_validate(payload)
        except ValidationError as exc:
            self._metrics.rejected.labels("api", "invalid").inc()
            raise ApiError(400, "invalid_request", _validation_message(exc)) from None
        key = caller(request)
        try:
            submission = build_submission(
                body, submitted_by=f"apikey:{key.id}", hostname=self._hostname,
                now=self._clock.now(),
            )  # fmt: skip
        except InvalidMessageError:
            self._metrics.rejected.labels("api", "invalid").inc()
            raise
        refusal = self._policy.check(submission.header_from)
        if refusal is not None:
            self._metrics.rejected.labels("api", refusal.code).inc()
            raise ApiError(422, refusal.code, refusal.reason)
        if len(submission.content) > self._max_message_size:
            self._metrics.rejected.labels("api", "too_large").inc()
            raise ApiError(413, "payload_too_large", f"the message is {len(submission.content)} bytes; "
                           f"the limit is {self._max_message_size} (smtp.max_message_size)")  # fmt: skip
        idempotency = request.headers.get("Idempotency-Key")
        if idempotency is not None:
            if not 1 <= len(idempotency) <= 255 or not idempotency.isprintable():
                raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 printable characters")
            message_id, created = await self._submissions.submit_once(
                submission, IdempotencyKey(key.id, idempotency, request_hash(raw))
            )
        else:
            message_id, created = await self._submissions.submit(submission), True
        if created:
            self._metrics.accepted.labels("api", submission.stream, submission.route).inc()
        headers = {} if created else {"Idempotent-Replayed": "true"}
        return web.json_response(
            {"id": message_id, "recipients": len(submission.recipients), "created": created},
            status=202,
            headers=headers,
        )

    @requires(Role.VIEWER)
    async def search(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            limit = int(query.get("limit", "50"))
            since = float(query["since"]) if "since" in query else None
            until = float(query["until"]) if "until" in query else None
        except ValueError:
            raise ApiError(400, "invalid_query", "limit, since and until must be numbers") from None
        if not 1 <= limit <= 500:
            raise ApiError(400, "invalid_query", "limit must be between 1 and 500")
        state = query.get("state")
        if state and state not in {s.value for s in DeliveryState}:
            raise ApiError(400, "invalid_query", f"unknown state {state!r}")
        found = await self._store.list_messages(
            limit=limit,
            before=query.get("before"),
            state=state,
            recipient=query.get("recipient"),
            mail_from=query.get("from"),
            stream=query.get("stream"),
            since=since,
            until=until,
        )
        page = [summary_json(s) for s in found]
        return web.json_response(
            {"data": page, "next": found[-1].id if len(found) == limit else None}
        )

    @requires(Role.VIEWER)
    async def destinations(self, request: web.Request) -> web.Response:
        """The queue grouped by recipient domain and state (`postroom queue ls --by-destination`)."""
        include_final = request.query.get("all", "false").lower()
        if include_final not in ("true", "false", "1", "0"):
            raise ApiError(400, "invalid_query", "all must be true or false")
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            raise ApiError(400, "invalid_query", "limit must be a number") from None
        if not 1 <= limit <= 1000:
            raise ApiError(400, "invalid_query", "limit must be between 1 and 1000")
        groups = await self._store.destinations(
            include_final=include_final in ("true", "1"), limit=limit
        )
        return web.json_response({"data": [dataclasses.asdict(g) for g in groups]})

    @requires(Role.VIEWER)
    async def inspect(self, request: web.Request) -> web.Response:
        detail = await self._store.show(request.match_info["id"])
        return web.json_response(detail_json(detail))
