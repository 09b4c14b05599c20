"""A submission from the fields of an API request (`POST /v1/messages`, and the Loops-compatible
and template paths after it): the request model, validated by pydantic with errors that name the
field, and the MIME message composed from it (`core.compose`). Pure: values in, a `Submission` out.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from postroom.core.addresses import valid_mailbox
from postroom.core.compose import Attachment, Draft, address_of, check_header_value, compose, format_address
from postroom.core.errors import InvalidMessageError
from postroom.core.ids import new_message_id
from postroom.core.types import Submission
from postroom.templates.model import Rendered

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


class TemplateRef(_Body):
    id: Annotated[str, Field(min_length=1, max_length=64)]
    version: Annotated[int, Field(ge=1)] | None = None  # None: the published version


class MessageIn(_Body):
    sender: AddressField | None = Field(default=None, alias="from")  # or the template's From
    to: list[AddressField] = Field(default_factory=list)
    cc: list[AddressField] = Field(default_factory=list)
    bcc: list[AddressField] = Field(default_factory=list)
    reply_to: AddressField | None = None
    subject: Annotated[str, Field(max_length=998)] | None = None
    text: str | None = None
    html: str | None = None
    template: TemplateRef | None = None  # instead of subject, text and html
    data: dict[str, Any] = Field(default_factory=dict)  # the template's variables
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

    @model_validator(mode="after")
    def _content_or_template(self) -> MessageIn:
        if self.template is not None:
            given = [name for name in ("subject", "text", "html") if getattr(self, name) is not None]
            if given:
                raise ValueError(f"a message from a template takes data, not {', '.join(given)}")
        else:
            if self.subject is None:
                raise ValueError("subject is required (or a template)")
            if self.sender is None:
                raise ValueError("from is required (or a template that sets it)")
            if self.data:
                raise ValueError("data goes with a template")
        return self


def unencodable_field(value: Any, path: str = "") -> str | None:
    """The path of the first string in a decoded JSON value that cannot be encoded as UTF-8 (a
    lone surrogate such as `"\\ud800"`: valid JSON, but no valid text), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = unencodable_field(key, path) or unencodable_field(item, f"{path}.{key}" if path else key)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = unencodable_field(item, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None


def _address(value: AddressField) -> tuple[str, str]:
    """(bare address, header form)."""
    if isinstance(value, AddressIn):
        bare, header = value.email, format_address(value.email, value.name)
    else:
        bare, header = address_of(value), value
    check_header_value("address", header)
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
    body: MessageIn, *, submitted_by: str, hostname: str, now: float, source: str = "api",
    rendered: Rendered | None = None,
) -> Submission:
    """The submission for a request: its own subject, text and HTML, or `rendered` from its
    template (whose From, Reply-To and stream apply where the request gives none)."""
    sender_field = body.sender or (rendered.sender if rendered else None)
    if sender_field is None:
        raise InvalidMessageError("from is required: neither the request nor the template sets it")
    sender_bare, sender_header = _address(sender_field)
    to = [_address(a) for a in body.to]
    cc = [_address(a) for a in body.cc]
    bcc = [_address(a) for a in body.bcc]
    recipients = list(dict.fromkeys(bare for bare, _ in (*to, *cc, *bcc)))
    if not recipients:
        raise InvalidMessageError("a message needs at least one of to, cc, bcc")
    if len(recipients) > MAX_RECIPIENTS:
        raise InvalidMessageError(f"at most {MAX_RECIPIENTS} recipients per message")
    message_id = new_message_id(now)
    subject = rendered.subject if rendered else (body.subject or "")
    reply_to = body.reply_to or (rendered.reply_to if rendered else None)
    stream = rendered.stream if rendered and "stream" not in body.model_fields_set else body.stream
    draft = Draft(
        sender=sender_header,
        to=tuple(h for _, h in to) or ("undisclosed-recipients:;",),
        cc=tuple(h for _, h in cc),
        reply_to=_address(reply_to)[1] if reply_to else None,
        subject=subject,
        text=rendered.text if rendered else body.text,
        html=rendered.html if rendered else body.html,
        headers=tuple(body.headers.items()),
        attachments=tuple(_attachment(a) for a in body.attachments),
    )
    try:
        content = compose(draft, message_id=message_id, hostname=hostname, now=now)
    except (ValueError, UnicodeError, LookupError) as exc:
        # What the checks above did not foresee, refused by the email library: still the
        # submitter's input, so a 400 with its reason, never a 500.
        raise InvalidMessageError(f"the message could not be composed: {exc}") from None
    return Submission(
        mail_from=sender_bare,
        recipients=tuple(recipients),
        content=content,
        source=source,
        submitted_by=submitted_by,
        header_from=sender_header,
        subject=subject,
        stream=stream,
        tags=tuple(body.tags),
        message_id=message_id,
        template=(rendered.template_id, rendered.version) if rendered else None,
        template_data=dict(body.data) if rendered else None,
    )
