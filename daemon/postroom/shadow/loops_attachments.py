"""The attachments of a stored message, as Loops' transactional API takes them.

Loops renders the email itself from the template and data variables, so of the stored MIME message
only the files travel: every part that is an attachment and not inline (an inline image belongs to
the HTML that Loops renders its own way). Pure: bytes in, values out; parsed with the stdlib
`email` package and its default policy, which decodes the transfer encoding.
"""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

from postroom.shadow.loops_client import LoopsAttachment


def attachments_of(content: bytes) -> list[LoopsAttachment]:
    """Each non-inline attachment of the message: its filename, content type and decoded bytes."""
    message = message_from_bytes(content, policy=policy.default)
    if not isinstance(message, EmailMessage):  # the default policy always makes one
        return []
    found: list[LoopsAttachment] = []
    for part in message.iter_attachments() if message.is_multipart() else ():
        found.extend(_files_in(part))
    return found


def _files_in(part: EmailMessage) -> list[LoopsAttachment]:
    """The files of one part of the top level: itself, or those of a multipart/mixed inside it."""
    if part.get_content_disposition() == "inline":
        return []
    if part.get_content_type() == "message/rfc822":  # a forwarded email: the file is the email
        inner = part.get_payload(0)
        data = inner.as_bytes(policy=policy.SMTP) if isinstance(inner, EmailMessage) else b""
        return [LoopsAttachment(part.get_filename() or "message.eml", "message/rfc822", data)]
    if part.is_multipart():
        if part.get_content_subtype() in ("alternative", "related"):
            return []  # a body (with its inline parts), not files
        return [f for inner in part.iter_attachments() for f in _files_in(inner)]
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    filename = part.get_filename() or "attachment"
    return [LoopsAttachment(filename, part.get_content_type(), data)]
