"""RFC 5965 feedback reports (ARF): a complaint about a message, not a delivery failure.

The report's `message/feedback-report` part carries `Feedback-Type` (abuse, fraud, virus, other,
not-spam, auth-failure; RFC 5965 §3.5, RFC 6591) and, optionally, the recipient who complained as
`Original-Rcpt-To` or `Removal-Recipient`. When a provider redacts those, the complained-about
address is the `To` of the returned original. Feedback never fails a delivery: its class is none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from postroom.bounces.dsn import read_status_fields, strip_address
from postroom.bounces.mime import ReadMessage, original_headers
from postroom.bounces.text_scan import ADDRESS

FEEDBACK_TYPES = frozenset({"abuse", "fraud", "virus", "other", "not-spam", "auth-failure", "opt-out"})


@dataclass(frozen=True)
class FeedbackReport:
    feedback_type: str
    recipients: tuple[str, ...]
    source_ip: str | None
    summary: str  # the human-readable first part, as a diagnostic


def read_feedback_report(message: ReadMessage) -> FeedbackReport | None:
    """The feedback report in `message`, or None when it is not one."""
    report = next((p for p in message.parts if p.content_type == "message/feedback-report"), None)
    if report is None:
        return None
    fields = read_status_fields(report.text).per_message
    feedback_type = fields.get("feedback-type", "other").strip().lower() or "other"
    addresses = [
        strip_address(value)
        for name in ("original-rcpt-to", "removal-recipient")
        if (value := fields.get(name, "")) and ADDRESS.search(value)
    ]
    if not addresses:
        to = original_headers(message.parts).get("to", "")
        addresses = [m.group(1).lower() for m in ADDRESS.finditer(to)]
    summary = next((p.text for p in message.parts if p.content_type == "text/plain"
                    and not p.in_original), "")  # fmt: skip
    return FeedbackReport(
        feedback_type if feedback_type in FEEDBACK_TYPES else "other",
        tuple(dict.fromkeys(a for a in addresses if a)),
        fields.get("source-ip") or None,
        " ".join(summary.split())[:1000],
    )


def read_forwarded_complaint(message: ReadMessage) -> FeedbackReport | None:
    """A complaint that forwards the message with the complainant's address in a header of the
    copy (Microsoft's JMRP feedback loop: `X-HmXmrOriginalRecipient`), without an ARF part."""
    original = original_headers(message.parts)
    named = original.get("x-hmxmroriginalrecipient", "")
    addresses = [m.group(1).lower() for m in ADDRESS.finditer(named)]
    if not addresses:
        return None
    return FeedbackReport("abuse", tuple(dict.fromkeys(addresses)), None, message.header("subject"))


def looks_like_feedback_text(text: str) -> bool:
    """A feedback report written inline (some providers skip the MIME structure)."""
    return bool(re.search(r"^Feedback-Type:[ \t]*[a-z-]+[ \t]*$", text, re.I | re.M))
