"""Composing the delivery status notification (RFC 3464) postroom sends back to the envelope
sender of a message submitted over SMTP that bounced or expired, and deciding whether a message
may get one at all. Pure: plain values in, bytes out (the caller supplies ids, times, the
boundary).

The report is `multipart/report; report-type=delivery-status` (RFC 6522): a human-readable part,
the `message/delivery-status` part, and the original's header block as `text/rfc822-headers`
(never its body: the sender has it). It comes from `MAILER-DAEMON@<hostname>` with
`Auto-Submitted: auto-replied` (RFC 3834 §5) and is sent with a null envelope sender
(RFC 5321 §4.5.5), so nothing ever answers it with another report.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass

# RFC 3463 §3.5 "Delivery time expired" (X.4.7): the status of a recipient given up on.
EXPIRED_STATUS = "4.4.7"
_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_REPLY_CODE = re.compile(r"^([245])\d\d\b")
MAX_DIAGNOSTIC = 900  # a field line stays well inside RFC 5322's 998


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient the report is about, as the delivery that failed recorded it."""

    recipient: str
    reply: str  # the last reply, or a local description ("connection refused")
    reason: str  # the classifier's reason (userunknown, expired, ...)
    last_attempt_at: float
    status: str | None = None  # RFC 3463 status the server gave, when it gave one
    code: int | None = None  # its SMTP reply code
    remote_mta: str | None = None  # the host that answered
    expired: bool = False  # given up after retrying (not refused outright)


@dataclass(frozen=True)
class OriginalMessage:
    """What the report says about the message that failed."""

    queue_id: str
    envelope_sender: str
    arrived_at: float
    headers: bytes  # its header block, up to the empty line


def header_block(content: bytes) -> bytes:
    """The header block of a message (without the empty line that ends it)."""
    for end in (b"\r\n\r\n", b"\n\n"):
        at = content.find(end)
        if at != -1:
            return content[:at]
    return content


def is_automatic(headers: bytes) -> bool:
    """Whether a message is itself a delivery report or an automatic message (RFC 3834 §2: an
    Auto-Submitted field other than "no"), which never gets a report back (RFC 3464 §2 and
    RFC 5321 §4.5.5: no notification about a notification)."""
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(headers + b"\r\n\r\n")
    auto = str(parsed.get("Auto-Submitted", "no")).split(";")[0].strip().lower()
    if auto and auto != "no":
        return True
    if parsed.get_content_type() == "multipart/report":
        return str(parsed.get_param("report-type", "", header="Content-Type")).lower() == "delivery-status"
    return False


def wants_report(envelope_sender: str, headers: bytes) -> bool:
    """Whether a failed message may get a report: never for a null envelope sender, never about a
    report or another automatic message."""
    return bool(envelope_sender.strip()) and not is_automatic(headers)


def status_of(failure: FailedRecipient) -> str:
    """The RFC 3463 status of a failed recipient: the server's, else one from its reply code
    (X.0.0), else 5.0.0 for a refusal and 4.4.7 for an expiry."""
    if failure.expired:
        return EXPIRED_STATUS
    if failure.status and _STATUS.match(failure.status):
        return failure.status
    if failure.code is not None and 400 <= failure.code < 600:
        return f"{failure.code // 100}.0.0"
    found = _REPLY_CODE.match(failure.reply.strip())
    return f"{found.group(1)}.0.0" if found and found.group(1) != "2" else "5.0.0"


def report_subject(failures: Sequence[FailedRecipient]) -> str:
    if failures and all(f.expired for f in failures):
        return "Undelivered Mail: delivery time expired"
    return "Undelivered Mail Returned to Sender"


def _one_line(text: str, limit: int = MAX_DIAGNOSTIC) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _diagnostic(failure: FailedRecipient) -> str | None:
    """The Diagnostic-Code value (RFC 3464 §2.3.6): the SMTP reply as "smtp; ...", a local
    description as "x-postroom; ..." (an x-token diagnostic type), ASCII only."""
    reply = _one_line(failure.reply).encode("ascii", "replace").decode("ascii")
    if not reply:
        return None
    # An expiry is our own verdict ("expired after N attempts; last reply: ..."), not a reply.
    if not failure.expired and (failure.code is not None or _REPLY_CODE.match(reply)):
        return f"smtp; {reply}"
    return f"x-postroom; {reply}"


def _date(at: float) -> str:
    return email.utils.formatdate(at, localtime=False)


def compose_dsn(
    original: OriginalMessage,
    failures: Sequence[FailedRecipient],
    *,
    hostname: str,
    message_id: str,
    now: float,
    boundary: str,
) -> bytes:
    """The report about `failures` (recipients of one message), to the original's envelope sender.
    `message_id` becomes `<message_id@hostname>`; `boundary` must not occur in the original's
    headers (the caller draws a random one)."""
    if not failures:
        raise ValueError("a delivery status notification needs at least one failed recipient")
    if not wants_report(original.envelope_sender, original.headers):
        raise ValueError("no delivery status notification for a null sender or about an automatic message")
    sender = original.envelope_sender
    subject = report_subject(failures)
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {_date(now)}",
        f"Message-ID: <{message_id}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    original_id = _original_message_id(original.headers)
    if original_id:
        head += [f"In-Reply-To: {original_id}", f"References: {original_id}"]

    notice = [
        f"This is the mail system at host {hostname}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "It is attached below (its header only).",
        "",
    ]
    for failure in failures:
        why = "delivery time expired" if failure.expired else "refused"
        notice.append(f"<{failure.recipient}>: {why}: {_one_line(failure.reply)}")

    per_message = [
        f"Reporting-MTA: dns; {hostname}",
        f"X-Postroom-Queue-ID: {original.queue_id}",
        f"Arrival-Date: {_date(original.arrived_at)}",
    ]
    per_recipient: list[str] = []
    for failure in failures:
        per_recipient += [
            "",
            # rfc822 even for an internationalized address, written as it is (8bit part), as
            # Postfix does: the readers of reports know that type (RFC 6533's utf-8 type is rare).
            f"Final-Recipient: rfc822; {failure.recipient}",
            "Action: failed",
            f"Status: {status_of(failure)}",
        ]
        if failure.remote_mta:
            per_recipient.append(f"Remote-MTA: dns; {_one_line(failure.remote_mta, 255)}")
        diagnostic = _diagnostic(failure)
        if diagnostic:
            per_recipient.append(f"Diagnostic-Code: {diagnostic}")
        per_recipient.append(f"Last-Attempt-Date: {_date(failure.last_attempt_at)}")
    status_text = "\r\n".join(per_message + per_recipient) + "\r\n"

    # 8bit only when something in it is not ASCII (an internationalized address or header).
    notice_text = "\r\n".join(notice) + "\r\n"
    headers = original.headers.rstrip(b"\r\n").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"
    parts = [
        "\r\n".join(head).encode("utf-8") + b"\r\n\r\n",
        b"This is a MIME-encapsulated message.\r\n\r\n",
        _part(boundary, 'text/plain; charset="utf-8"', notice_text.encode("utf-8"),
              "Content-Description: Notification"),
        _part(boundary, "message/delivery-status", status_text.encode("utf-8"),
              "Content-Description: Delivery report"),
        _part(boundary, "text/rfc822-headers", headers, "Content-Description: Undelivered Message Headers"),
        f"--{boundary}--\r\n".encode(),
    ]  # fmt: skip
    return b"".join(parts)


def _part(boundary: str, content_type: str, body: bytes, *extra: str) -> bytes:
    encoding = "7bit" if body.isascii() else "8bit"
    lines = [f"--{boundary}", f"Content-Type: {content_type}", *extra, f"Content-Transfer-Encoding: {encoding}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body + b"\r\n"


def _original_message_id(headers: bytes) -> str | None:
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(headers + b"\r\n\r\n")
    value = " ".join(str(parsed.get("Message-ID", "")).split())
    return value if re.fullmatch(r"<[^<>\s]+>", value) else None
