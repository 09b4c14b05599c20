"""Amazon SES event notifications (JSON, often wrapped in an SNS envelope) received by email.

SES reports bounces, complaints and deliveries as JSON objects (`notificationType` or `eventType`:
Bounce, Complaint, Delivery), per recipient, with the remote server's reply in `diagnosticCode` or
`smtpResponse`. SNS sends them inside a JSON envelope whose `Message` is the notification as a
string. Mail gateways that fold long lines insert "!" and a line break (Sendmail's 990-character
limit); those are taken out before decoding.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from postroom.bounces.classify import classify_reply, find_reply_code, find_status
from postroom.bounces.model import BounceClass, BounceKind, BounceRecipient, class_of

# SES's bounce sub-types that name the reason better than the reply text does.
_SUBTYPE_REASONS = {
    "suppressed": "suppressed",
    "onaccountsuppressionlist": "suppressed",
    "mailboxfull": "mailboxfull",
    "messagetoolarge": "mesgtoobig",
    "contentrejected": "contenterror",
    "attachmentrejected": "contenterror",
    "noemail": "userunknown",
}


@dataclass(frozen=True)
class SesNotification:
    kind: BounceKind
    recipients: tuple[BounceRecipient, ...]


def read_ses_notification(text: str) -> SesNotification | None:
    """The SES notification in `text` (a JSON object, or an SNS envelope around one), or None."""
    if "notificationType" not in text and "eventType" not in text:
        return None
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    body = re.sub(r"!\r?\n ", "", text[start : end + 1])
    document = _json_object(body)
    if document is None:
        return None
    if isinstance(document.get("Message"), str):
        inner = _json_object(document["Message"])
        document = inner if inner is not None else document
    kind = str(document.get("notificationType") or document.get("eventType") or "").lower()
    if kind == "bounce":
        return SesNotification(BounceKind.DSN, tuple(_bounces(_dict(document.get("bounce")))))
    if kind == "complaint":
        return SesNotification(BounceKind.FEEDBACK, tuple(_complaints(_dict(document.get("complaint")))))
    if kind == "delivery":
        return SesNotification(BounceKind.DSN, tuple(_deliveries(_dict(document.get("delivery")))))
    return None


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _entries(container: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = container.get(key)
    return [entry for entry in value if isinstance(entry, dict)] if isinstance(value, list) else []


def _bounces(bounce: dict[str, Any]) -> list[BounceRecipient]:
    subtype = str(bounce.get("bounceSubType", "")).lower()
    records = []
    for entry in _entries(bounce, "bouncedRecipients"):
        address = str(entry.get("emailAddress", "")).strip().lower()
        diagnostic = str(entry.get("diagnosticCode", ""))
        status = str(entry.get("status", "")) or find_status(diagnostic)
        reply_code = find_reply_code(diagnostic)
        reason, _ = classify_reply(reply_code, status or None, diagnostic)
        if subtype in _SUBTYPE_REASONS and reason in ("onhold", "undefined"):
            reason = _SUBTYPE_REASONS[subtype]
        records.append(BounceRecipient(address, reason, class_of(reason, reply_code, status),
                                       status or None, reply_code, diagnostic,
                                       action=str(entry.get("action", "")) or None))  # fmt: skip
    return [r for r in records if "@" in r.address]


def _complaints(complaint: dict[str, Any]) -> list[BounceRecipient]:
    feedback_type = str(complaint.get("complaintFeedbackType", "") or "abuse")
    return [
        BounceRecipient(address, "feedback", BounceClass.NONE, feedback_type=feedback_type)
        for entry in _entries(complaint, "complainedRecipients")
        if "@" in (address := str(entry.get("emailAddress", "")).strip().lower())
    ]


def _deliveries(delivery: dict[str, Any]) -> list[BounceRecipient]:
    response = str(delivery.get("smtpResponse", ""))
    recipients = delivery.get("recipients")
    addresses = [str(a).strip().lower() for a in recipients] if isinstance(recipients, list) else []
    return [
        BounceRecipient(a, "delivered", BounceClass.NONE, find_status(response),
                        find_reply_code(response), response, action="delivered")  # fmt: skip
        for a in addresses
        if "@" in a
    ]
