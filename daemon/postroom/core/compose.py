"""Building a MIME message from the fields of an API request. Pure: values in, bytes out.

Header values are checked for CR and LF before anything is built (header injection), and the
caller-supplied extra headers may not replace the ones this module owns.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8

from postroom.core.errors import InvalidMessageError

RESERVED_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "subject", "date", "message-id", "reply-to", "mime-version",
     "content-type", "content-transfer-encoding", "received", "return-path", "dkim-signature"}
)  # fmt: skip


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str = "application/octet-stream"
    content_id: str | None = None  # set for inline images referenced as cid:


@dataclass(frozen=True)
class Draft:
    sender: str
    to: tuple[str, ...]
    subject: str
    cc: tuple[str, ...] = ()
    reply_to: str | None = None
    text: str | None = None
    html: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    attachments: tuple[Attachment, ...] = field(default_factory=tuple)


# What may never be in a header value: CR and LF (header injection), NUL, and the other characters
# Python's str.splitlines (and so the email package) treats as line breaks: the email library would
# refuse them with a ValueError deep inside composition, or fold a header at them.
_FORBIDDEN_IN_HEADERS = frozenset("\r\n\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def check_header_value(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise InvalidMessageError(f"header {name} must not contain CR or LF")
    bad = next((c for c in value if c in _FORBIDDEN_IN_HEADERS), None)
    if bad is not None:
        raise InvalidMessageError(f"header {name} must not contain the character U+{ord(bad):04X}")


def check_header_name(name: str) -> None:
    # RFC 5322 §3.6.8: printable US-ASCII except colon.
    if not name or any(ord(c) < 33 or ord(c) > 126 or c == ":" for c in name):
        raise InvalidMessageError(f"invalid header name {name!r}")
    if name.lower() in RESERVED_HEADERS:
        raise InvalidMessageError(f"header {name} is set by its own field, not in headers")


def compose(draft: Draft, *, message_id: str, hostname: str, now: float) -> bytes:
    for name, value in (("from", draft.sender), ("subject", draft.subject)):
        check_header_value(name, value)
    for address in (*draft.to, *draft.cc, *([draft.reply_to] if draft.reply_to else [])):
        check_header_value("address", address)
    for name, value in draft.headers:
        check_header_name(name)
        check_header_value(name, value)
    for item in draft.attachments:  # they become MIME part headers (filename=, Content-ID:)
        check_header_value("attachment filename", item.filename)
        check_header_value("attachment content_id", item.content_id or "")
    if not draft.text and not draft.html:
        raise InvalidMessageError("a message needs text or html")

    message = EmailMessage()
    message["From"] = draft.sender
    message["To"] = ", ".join(draft.to)
    if draft.cc:
        message["Cc"] = ", ".join(draft.cc)
    if draft.reply_to:
        message["Reply-To"] = draft.reply_to
    message["Subject"] = draft.subject
    message["Date"] = email.utils.formatdate(now, localtime=False)
    message["Message-ID"] = f"<{message_id}@{hostname}>"
    for name, value in draft.headers:
        message[name] = value

    if draft.text:
        message.set_content(draft.text, subtype="plain", cte=_cte(draft.text))
        if draft.html:
            message.add_alternative(draft.html, subtype="html", cte=_cte(draft.html))
    else:
        assert draft.html is not None
        message.set_content(draft.html, subtype="html", cte=_cte(draft.html))

    inline = [a for a in draft.attachments if a.content_id]
    if inline and draft.html:
        html_part = message
        if message.is_multipart():
            parts = message.get_payload()
            assert isinstance(parts, list)
            last = parts[-1]  # the HTML alternative, after the text part
            assert isinstance(last, EmailMessage)
            html_part = last
        for item in inline:
            maintype, subtype = _split_type(item.content_type)
            html_part.add_related(
                item.content, maintype=maintype, subtype=subtype,
                cid=f"<{item.content_id}>", filename=item.filename, disposition="inline",
            )  # fmt: skip
    for item in draft.attachments:
        if item.content_id and draft.html:
            continue
        maintype, subtype = _split_type(item.content_type)
        message.add_attachment(item.content, maintype=maintype, subtype=subtype, filename=item.filename)

    needs_utf8 = not all(
        _ascii(v) for v in (draft.sender, *draft.to, *draft.cc, draft.reply_to or "")
    )
    return message.as_bytes(policy=SMTPUTF8 if needs_utf8 else SMTP)


def _cte(text: str) -> str:
    # quoted-printable keeps long lines under the RFC 5322 §2.1.1 998-octet limit
    return "7bit" if _ascii(text) and max(map(len, text.splitlines() or [""])) <= 900 else "quoted-printable"


def _ascii(text: str) -> bool:
    return text.isascii()


def _split_type(content_type: str) -> tuple[str, str]:
    maintype, _, subtype = content_type.partition("/")
    if not maintype or not subtype or "\r" in content_type or "\n" in content_type:
        raise InvalidMessageError(f"invalid content_type {content_type!r}")
    return maintype.strip(), subtype.split(";")[0].strip()


def address_of(value: str) -> str:
    """The bare address in a From/To value such as "Ada <ada@example.com>"."""
    name, address = email.utils.parseaddr(value)
    if not address or "@" not in address:
        raise InvalidMessageError(f"{value!r} is not an email address")
    return address


def format_address(address: str, name: str | None) -> str:
    check_header_value("address", address)
    check_header_value("address", name or "")
    if not name:
        return address
    local, _, domain = address.rpartition("@")
    return str(Address(display_name=name, username=local, domain=domain))
