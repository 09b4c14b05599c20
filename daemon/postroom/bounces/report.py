"""The report inside a returned message: its human-readable text, the headers of the original it
quotes, who certainly is not a failed recipient, and whether the message looks like a bounce at all.

These are the questions every layer above asks before reading any recipient. They are answered
from the message's headers and parts only, with phrase families shared by many MTAs (a daemon's
sender name, a failure subject), never from one MTA's exact wording.
"""

from __future__ import annotations

import re

from postroom.bounces.arf import looks_like_feedback_text
from postroom.bounces.mime import (
    ReadMessage,
    html_to_text,
    original_headers,
    parse_header_block,
)
from postroom.bounces.text_scan import ADDRESS, cut_at_original, is_daemon_address

MAX_REPORT_CHARS = 128 * 1024  # the human-readable report; what is beyond is quoted mail
DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})

_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status|fail|failure|problem|report|notification)|"
    r"failure notice|failed delivery|returned mail|return(?:ed)? to sender|mail delivery|"
    r"could not be delivered|non[- ]?deliver|not delivered|delivery has failed|"
    r"rejected|bounce|warning: (?:could not|message)|mail system error|error sending|"
    r"nicht zustellbar|unzustellbar|message blocked|mail failure|permanent failure|"
    r"not (?:be )?sent|returned|problem delivering|deliverability|loop alert|mail loop|loop detected",
    re.IGNORECASE,
)
_DAEMON_NAME = re.compile(r"mailer.?daemon|postmaster|mail delivery|delivery subsystem|mail administrator", re.I)
_FAILURE_WORDS = re.compile(r"could not be delivered|undeliverable|delivery (?:has )?failed|permanent error", re.I)


def report_text(message: ReadMessage) -> str:
    """The human-readable text of the report: its text parts outside the returned original (HTML
    only when there is no plain text), cut where a copy of the original starts."""
    own = [p for p in message.parts if not p.in_original]
    # A multipart whose boundary is missing arrives as one leaf of type multipart/*: its text is
    # the report as it stands.
    plain = [p.text for p in own if p.content_type == "text/plain" or p.content_type.startswith("multipart/")]
    if not "".join(plain).strip():
        plain += [html_to_text(p.text) for p in own if p.content_type == "text/html"]
    return cut_at_original(_unquoted("\n".join(plain)[:MAX_REPORT_CHARS]))


def _unquoted(text: str) -> str:
    """A bounce a person forwarded with "> " quoting, as the bounce it quotes (so its markers and
    fields are found); other text unchanged."""
    lines = [line for line in text.splitlines() if line.strip()]
    quoted = sum(1 for line in lines if line.lstrip().startswith(">") and not line.lstrip().startswith((">>>", ">>")))
    if not lines or quoted < 0.6 * len(lines):
        return text
    return "\n".join(re.sub(r"^\s*> ?", "", line) for line in text.splitlines())


def collapsed(text: str, limit: int = 2000) -> str:
    """`text` with its whitespace collapsed, at most `limit` characters."""
    return " ".join(text[: limit * 4].split())[:limit]


def returned_headers(message: ReadMessage) -> dict[str, str]:
    """The headers of the original message the bounce returns: an attached copy (RFC 3462), or a
    copy quoted inline after the report."""
    attached = original_headers(message.parts)
    if attached:
        return attached
    text = "\n".join(p.text for p in message.parts if p.content_type == "text/plain" and not p.in_original)
    rest = text[len(cut_at_original(text)) :]
    start = re.search(r"^[A-Za-z][A-Za-z0-9-]{1,40}:[ \t]", rest, re.M)
    return parse_header_block(rest[start.start() :]) if start else {}


def addresses_of(*values: str) -> set[str]:
    return {m.group(1).lower() for value in values for m in ADDRESS.finditer(value)}


def original_recipients(original: dict[str, str]) -> set[str]:
    """Whom the returned original was addressed to (its To and Cc)."""
    return addresses_of(original.get("to", ""), original.get("cc", ""))


def not_recipients(message: ReadMessage, original: dict[str, str]) -> set[str]:
    """Addresses that are certainly not a failed recipient: who sent the original, and the
    bounce's own sender."""
    return addresses_of(message.header("from"), message.header("return-path"), message.header("reply-to"),
                        original.get("from", ""), original.get("return-path", ""), original.get("sender", ""),
                        original.get("reply-to", ""))  # fmt: skip


def from_daemon(message: ReadMessage) -> bool:
    """Whether the message comes from a mail system rather than a person."""
    sender = message.header("from")
    if any(is_daemon_address(m.group(1)) for m in ADDRESS.finditer(sender)):
        return True
    return bool(_DAEMON_NAME.search(sender))


def is_bounce_shaped(message: ReadMessage, report: str) -> bool:
    """Whether the message presents itself as a delivery failure: a failed-recipients header, a
    delivery-status part, a daemon's sender, a failure subject, or a null sender with failure
    words in its text."""
    if message.header("x-failed-recipients"):
        return True
    if any(part.content_type in DSN_TYPES for part in message.parts):
        return True  # a multipart/report of delivery status, even with its fields missing
    if looks_like_feedback_text(report):
        return False
    if from_daemon(message) or _BOUNCE_SUBJECT.search(message.header("subject")):
        return True
    null_sender = message.header("return-path").strip() in ("<>", "")
    return null_sender and bool(_FAILURE_WORDS.search(report))
