"""A deliberately small reader of standard bounces: RFC 3464 delivery status notifications and
RFC 5965 feedback reports, nothing else. It is the default parser of the bounce intake until the
full parser (`bounces.parse`, issue 13: the MTAs' own formats, Sisimai's classifier) lands; a
message in any other shape is read as `not_bounce`.

Reasons come from the RFC 3463 status code (and the reply code) only: enough for the common
userunknown / hostunknown / mailboxfull / blocked cases, no diagnostic-text rules. Pure.
"""

from __future__ import annotations

import email
import email.message
import re
from email.policy import compat32

from postroom.bounces.model import BounceKind, BounceRecipient, ParsedBounce, class_of

# RFC 3463 §3 subject.detail -> Sisimai reason.
_BY_STATUS = {
    "1.1": "userunknown", "1.2": "hostunknown", "1.3": "userunknown", "1.6": "hasmoved",
    "1.10": "notaccept", "2.1": "suspend", "2.2": "mailboxfull", "2.3": "mesgtoobig",
    "2.4": "filtered", "3.4": "mesgtoobig", "4.1": "networkerror", "4.4": "hostunknown",
    "4.6": "networkerror", "4.7": "expired", "7.1": "rejected", "7.23": "authfailure",
    "7.25": "requireptr", "7.26": "authfailure", "7.27": "notaccept",
}  # fmt: skip
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY = re.compile(r"^\s*([245]\d\d)\b")


def reason_of_status(status: str | None) -> str | None:
    if not status:
        return None
    match = _STATUS.search(status)
    if match is None:
        return None
    return _BY_STATUS.get(f"{match.group(2)}.{match.group(3)}") or (
        "undefined" if match.group(1) == "5" else "systemerror")


def reason_of_reply(reply: str) -> str | None:
    """A reason from an SMTP reply ("550 5.1.1 <x>: user unknown"), by its enhanced status."""
    return reason_of_status(reply)


def _address(value: str | None) -> str | None:
    """`rfc822; Ada@Example.com` -> `ada@example.com` (RFC 3464 §2.3.2: address-type; address)."""
    if not value:
        return None
    text = value.partition(";")[2] if ";" in value else value
    text = text.strip().strip("<>").strip()
    return text.lower() if "@" in text else None


def _field_blocks(payload: str) -> list[email.message.Message]:
    """The header blocks of a message/delivery-status body (RFC 3464 §2.1): per-message fields,
    then one block per recipient, separated by blank lines."""
    blocks = re.split(r"\r?\n\s*\r?\n", payload.strip())
    return [email.message_from_string(block + "\n", policy=compat32) for block in blocks if block.strip()]


def _text_of(part: email.message.Message) -> str:
    payload = part.get_payload()
    if isinstance(payload, list):  # some MTAs send message/delivery-status as parsed blocks
        return "\n\n".join(p.as_string() for p in payload if isinstance(p, email.message.Message))
    raw = part.get_payload(decode=True)
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload)


def parse_dsn_minimal(raw: bytes) -> ParsedBounce:
    """Read a bounce; never raises on junk (it is then `not_bounce`)."""
    try:
        message = email.message_from_bytes(raw, policy=compat32)
        return _read(message)
    except Exception:  # a parser of untrusted mail must not let any input crash the intake
        return ParsedBounce(BounceKind.NOT_BOUNCE)


def _original_ids(message: email.message.Message) -> tuple[str | None, str | None]:
    for part in message.walk():
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers"):
            inner = part.get_payload()
            head = inner[0] if isinstance(inner, list) and inner else None
            if not isinstance(head, email.message.Message):
                head = email.message_from_string(_text_of(part), policy=compat32)
            message_id = (head.get("Message-ID") or "").strip().strip("<>") or None
            return message_id, (head.get("Return-Path") or "").strip().strip("<>") or None
    return None, None


def _read(message: email.message.Message) -> ParsedBounce:
    if message.get_content_type() != "multipart/report":
        return ParsedBounce(BounceKind.NOT_BOUNCE)
    report_type = (message.get_param("report-type") or "")
    message_id, envelope_sender = _original_ids(message)
    if str(report_type).lower() == "feedback-report":
        for part in message.walk():
            if part.get_content_type() == "message/feedback-report":
                fields = _field_blocks(_text_of(part))[0]
                address = _address(fields.get("Original-Rcpt-To"))
                recipients: tuple[BounceRecipient, ...] = ()
                if address:
                    feedback = (fields.get("Feedback-Type") or "abuse").strip().lower()
                    recipients = (BounceRecipient(address, "feedback", class_of("feedback"), feedback_type=feedback),)
                return ParsedBounce(BounceKind.FEEDBACK, recipients, message_id, envelope_sender)
        return ParsedBounce(BounceKind.NOT_BOUNCE)
    for part in message.walk():
        if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
            blocks = _field_blocks(_text_of(part))
            reporting = blocks[0].get("Reporting-MTA") if blocks else None
            reported = tuple(r for r in (_recipient(b) for b in blocks[1:]) if r is not None)
            return ParsedBounce(BounceKind.DSN, reported, message_id, envelope_sender,
                                _address(reporting) or (reporting or "").partition(";")[2].strip() or None)  # fmt: skip
    return ParsedBounce(BounceKind.NOT_BOUNCE)


def _recipient(fields: email.message.Message) -> BounceRecipient | None:
    address = _address(fields.get("Original-Recipient")) or _address(fields.get("Final-Recipient"))
    if address is None:
        return None
    action = (fields.get("Action") or "").strip().lower() or None
    status = (fields.get("Status") or "").strip().split()[0] if fields.get("Status") else None
    diagnostic = " ".join((fields.get("Diagnostic-Code") or "").split())
    text = diagnostic.partition(";")[2].strip() if ";" in diagnostic else diagnostic
    reply = _REPLY.match(text)
    reply_code = int(reply.group(1)) if reply else None
    if action in ("delivered", "relayed", "expanded"):
        reason = "delivered"
    else:
        reason = reason_of_status(status) or reason_of_status(text) or "undefined"
    remote = (fields.get("Remote-MTA") or "").partition(";")[2].strip() or None
    return BounceRecipient(address, reason, class_of(reason, reply_code, status), status, reply_code, text,
                           remote, action=action)  # fmt: skip
