"""`POST /api/v1/transactional`: send a transactional email the way Loops' API takes it.

The transactionalId names a published template (see `catalogue`); `dataVariables` are its data;
attachments arrive base64-encoded and are limited per file and per message (413 beyond). The
message then goes through the submission door like any other. An `Idempotency-Key` (up to 100
characters) makes a retry safe: Loops answers any reuse within 24 hours with 409, whatever the
body, and so does this.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from postroom.contacts.service import ContactService, checked_email
from postroom.core.clock import Clock
from postroom.core.errors import InvalidMessageError, NotFoundError, TemplateError
from postroom.core.types import IdempotencyKey
from postroom.http.auth import caller
from postroom.http.bodies import json_payload, validated
from postroom.http.errors import ApiError
from postroom.http.messages import request_hash
from postroom.http.ratelimit import limited_as
from postroom.http.openapi import operation
from postroom.loops.bodies import LoopsSuccess
from postroom.loops.catalogue import TransactionalCatalogue
from postroom.loops.errors import LoopsError, requires_role
from postroom.loops.settings import LoopsSettings
from postroom.metrics import Metrics
from postroom.store.credentials import Role
from postroom.submission.fields import AttachmentIn, MessageIn, TemplateRef, build_submission
from postroom.submission.outcome import Caller, Refusal
from postroom.submission.service import SubmissionService
from postroom.templates.model import Rendered
from postroom.templates.service import TemplateService

MAX_IDEMPOTENCY_KEY = 100


class TransactionalAttachmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: Annotated[str, Field(min_length=1, max_length=255)]
    contentType: Annotated[str, Field(min_length=3, max_length=255)]
    data: str  # base64


class TransactionalIn(BaseModel):
    """The body of a transactional send (Loops' field names)."""

    model_config = ConfigDict(extra="ignore")

    transactionalId: Annotated[str, Field(min_length=1, max_length=64)]
    email: str
    addToAudience: bool | None = None
    dataVariables: dict[str, Any] = Field(default_factory=dict)
    attachments: list[TransactionalAttachmentIn] = Field(default_factory=list)


class TransactionalRoutes:
    def __init__(self, submissions: SubmissionService, templates: TemplateService, catalogue: TransactionalCatalogue,
                 contacts: ContactService, settings: LoopsSettings, clock: Clock, metrics: Metrics,
                 hostname: str):  # fmt: skip
        self._submissions = submissions
        self._templates = templates
        self._catalogue = catalogue
        self._contacts = contacts
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._hostname = hostname

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/transactional", self.send)

    @limited_as("send")
    @operation(
        summary="Send a transactional email: a published template rendered with dataVariables",
        body=TransactionalIn,
        responses={200: ("queued", LoopsSuccess),
                   404: ("Transactional email not found.", None),
                   409: ("the Idempotency-Key was used in the last 24 hours", None),
                   413: ("an attachment, or all of them, over loops.max_attachment(s)_size", None)},
        tags=("loops: transactional",),
        headers={"Idempotency-Key": f"1-{MAX_IDEMPOTENCY_KEY} printable characters: any reuse within 24 hours is 409"},
    )  # fmt: skip
    @requires_role(Role.SENDER)
    async def send(self, request: web.Request) -> web.Response:
        payload = await json_payload(request)
        try:
            body = validated(TransactionalIn, payload)
        except ApiError as exc:
            raise LoopsError(400, exc.message, _first_path(exc.message)) from None
        email = checked_email(body.email)
        idempotency = None
        header = request.headers.get("Idempotency-Key")
        key = caller(request)
        if header is not None:
            if not 1 <= len(header) <= MAX_IDEMPOTENCY_KEY or not header.isprintable():
                raise LoopsError(400, f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters.",
                                 "Idempotency-Key")  # fmt: skip
            idempotency = IdempotencyKey(f"loops:{key.id}"[:64], header, request_hash(payload))
        attachments = self._attachments(body.attachments)
        template_id = await self._catalogue.template_of(body.transactionalId)
        rendered = await self._render(template_id, body)
        message = MessageIn.model_validate({
            "to": [email],
            "template": TemplateRef(id=template_id),
            "data": body.dataVariables,
            "attachments": attachments,
            **({} if rendered.sender else {"from": self._default_from()}),
        })  # fmt: skip
        try:
            submission = build_submission(message, submitted_by=f"apikey:{key.id}", hostname=self._hostname,
                                          now=self._clock.now(), rendered=rendered)  # fmt: skip
        except InvalidMessageError as exc:
            self._metrics.rejected.labels("api", "invalid").inc()
            raise LoopsError(400, str(exc)) from None
        outcome = await self._submissions.submit(submission, Caller("api", f"apikey:{key.id}"), idempotency)
        if isinstance(outcome, Refusal):
            if outcome.code == "idempotency_conflict":
                raise LoopsError(409, "This Idempotency-Key has already been used in the last 24 hours.",
                                 "Idempotency-Key")  # fmt: skip
            status = 413 if outcome.code == "too_large" else 503 if not outcome.permanent else 400
            raise LoopsError(status, outcome.reason, headers={"Retry-After": "5"} if status == 503 else None)
        if not outcome.created:  # the same request again with the same key: Loops says 409
            raise LoopsError(409, "This Idempotency-Key has already been used in the last 24 hours.", "Idempotency-Key")
        if body.addToAudience:
            await self._contacts.ensure(email, source="transactional")
        return web.json_response(LoopsSuccess(success=True).model_dump())

    async def _render(self, template_id: str, body: TransactionalIn) -> Rendered:
        try:
            return await self._templates.render(template_id, body.dataVariables)
        except NotFoundError:
            try:
                await self._templates.versions(template_id)
            except NotFoundError:
                raise LoopsError(404, "Transactional email not found.", "transactionalId") from None
            raise LoopsError(400, "Transactional email is not published.", "transactionalId") from None
        except TemplateError as exc:
            problems = "; ".join(p.removeprefix("data: ") for p in exc.problems)
            if exc.code == "invalid_data":
                raise LoopsError(400, f"Invalid or missing data variable: {problems}", "dataVariables") from None
            raise LoopsError(400, f"The transactional email could not be rendered: {problems}") from None

    def _attachments(self, items: list[TransactionalAttachmentIn]) -> list[AttachmentIn]:
        total = 0
        converted = []
        for index, item in enumerate(items):
            try:
                size = len(base64.b64decode(item.data, validate=True))
            except (binascii.Error, ValueError):
                raise LoopsError(400, f"Attachment {item.filename!r}: data is not base64.",
                                 f"attachments.{index}.data") from None  # fmt: skip
            if size > self._settings.max_attachment_size:
                raise LoopsError(413, f"Attachment {item.filename!r} is {size} bytes; the limit is "
                                 f"{self._settings.max_attachment_size}.", f"attachments.{index}")  # fmt: skip
            total += size
            if total > self._settings.max_attachments_size:
                raise LoopsError(413, f"Attachments total more than {self._settings.max_attachments_size} bytes.",
                                 "attachments")  # fmt: skip
            converted.append(AttachmentIn(filename=item.filename, content=item.data, content_type=item.contentType))
        return converted

    def _default_from(self) -> str:
        if not self._settings.default_from:
            raise LoopsError(400, "This transactional email has no From address, and loops.default_from is not set.",
                             "transactionalId")  # fmt: skip
        return self._settings.default_from


def _first_path(message: str) -> str:
    return message.split(":", 1)[0] if ":" in message else "body"
