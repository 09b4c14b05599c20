"""`parse_bounce`: whatever arrived at the return path, read into a `ParsedBounce`.

The layers, each a pure module: `mime` reads the message into decoded parts under size and shape
limits; `arf` recognises feedback reports (RFC 5965); `dsn` reads RFC 3464 delivery-status fields;
`autoreply` recognises RFC 3834 auto-replies; `text_scan` finds failed recipients in the text of
non-standard bounces; `providers` adds what a provider's systematic wording says; `classify` turns
codes and words into a reason. This module only decides which layer speaks for a message and
assembles the result. It never raises: anything unexpected is logged and the message is reported
as not a bounce, so one hostile message cannot stop the mailbox that receives bounces.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace

from postroom.bounces.arf import looks_like_feedback_text, read_feedback_report, read_forwarded_complaint
from postroom.bounces.autoreply import is_auto_reply
from postroom.bounces.classify import classify_reply, find_reply_code, find_status
from postroom.bounces.dsn import RecipientFields, read_status_fields, strip_address
from postroom.bounces.mime import (
    ReadMessage,
    html_to_text,
    original_headers,
    parse_header_block,
    read_message,
)
from postroom.bounces.model import BounceClass, BounceKind, BounceRecipient, ParsedBounce, class_of
from postroom.bounces.phrases import reason_from_text
from postroom.bounces.providers import adjust_for_provider
from postroom.bounces.ses import read_ses_notification
from postroom.bounces.text_scan import (
    ADDRESS,
    RecipientText,
    cut_at_original,
    is_daemon_address,
    scan_recipients,
)

logger = logging.getLogger(__name__)

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
_COMMAND = re.compile(
    r"\b(?:after|in reply to|while sending|during|at|on|with|response to)\s+(?:the\s+)?"
    r"(RCPT TO|MAIL FROM|RCPT|MAIL|DATA|end of data|final DATA|HELO|EHLO|STARTTLS|initial connection|connect)\b"
    r"|\bSMTP command:?\s*(RCPT|MAIL|DATA|HELO|EHLO)\b",
    re.IGNORECASE,
)
_RCPT_REFUSED = re.compile(r"does not like recipient|\[RCPT_TO\]|RCPT TO:?\s*<[^>]*>\s*(?:\.{3}|:)?\s*[45]\d\d", re.I)
_HELO_REFUSED = re.compile(r"my name was rejected|(?:helo|ehlo)\b.{0,40}(?:rejected|refused|denied)", re.I)
_COMMAND_NAMES = {"rcpt to": "RCPT", "mail from": "MAIL", "end of data": "DATA", "final data": "DATA",
                  "initial connection": "CONN", "connect": "CONN"}  # fmt: skip


def parse_bounce(raw: bytes) -> ParsedBounce:
    """Read a message from the return path. Never raises."""
    try:
        return _parse(raw)
    except Exception:  # a hostile or broken message must not stop the bounce mailbox
        logger.exception("bounce: could not parse a message of %d bytes; treated as not a bounce", len(raw))
        return ParsedBounce(BounceKind.NOT_BOUNCE)


def _parse(raw: bytes) -> ParsedBounce:
    message = read_message(raw)
    original = original_headers(message.parts) or _quoted_original_headers(message)
    common = {
        "original_message_id": _message_id(original.get("message-id", "")),
        "original_envelope_sender": strip_address(original.get("return-path", "")) or None,
    }
    feedback = read_feedback_report(message) or read_forwarded_complaint(message)
    if feedback is not None:
        recipients = tuple(
            BounceRecipient(address, "feedback", BounceClass.NONE, diagnostic=feedback.summary,
                            remote_host=feedback.source_ip, feedback_type=feedback.feedback_type)
            for address in feedback.recipients
        )  # fmt: skip
        return ParsedBounce(BounceKind.FEEDBACK, recipients, **common)
    report = _report_text(message)
    notification = read_ses_notification(report)
    if notification is not None and notification.recipients:
        return ParsedBounce(notification.kind, notification.recipients, **common)
    not_recipients = _not_recipients(message, original)
    status_groups = [
        group
        for part in message.parts
        if part.content_type in DSN_TYPES and not part.in_original
        for group in read_status_fields(part.text).recipients
    ]
    if not status_groups and not _is_bounce_shaped(message, report):
        if is_auto_reply(message):
            return _auto_reply(message, **common)
        return ParsedBounce(BounceKind.NOT_BOUNCE, **common)
    if not status_groups:
        # Some MTAs print the RFC 3464 fields in the text itself.
        status_groups = list(read_status_fields(report).recipients)
    # The bounce's To is nearly always the original sender; only when nothing else is named is it
    # the failed recipient too (a message to oneself).
    own_to = {m.group(1).lower() for m in ADDRESS.finditer(message.header("to"))}
    scanned = scan_recipients(report, not_recipients | own_to) or scan_recipients(report, not_recipients)
    recipients: list[BounceRecipient | None] = []
    if status_groups:
        recipients = _from_status_groups(status_groups, scanned, message)
    if not any(recipients):
        failed_header = message.header("x-failed-recipients")
        if failed_header:
            named = {m.group(1).lower() for m in ADDRESS.finditer(failed_header)}
            # The MTA's own list of failed recipients (Exim, Google) is authoritative; the text
            # only says why each failed.
            said = {r.address: r.text for r in scanned}
            addressed = _original_recipients(original)
            text_only = [r for r in scanned if r.address in addressed and r.address not in named]
            if not (named & said.keys()) and text_only and not any(a in report for a in named):
                # The text names who the sender addressed and the header someone else (the
                # address after routing): the sender's view is the one to report.
                scanned = text_only
            else:
                scanned = [RecipientText(a, said.get(a, _report_body(report))) for a in sorted(named)]
        if not scanned:
            # Nothing in the report names an address (some MMS gateways): the returned copy's
            # single recipient is the one that failed.
            addressed = _original_recipients(original)
            if len(addressed) == 1:
                scanned = [RecipientText(next(iter(addressed)), _report_body(report))]
        recipients = [_from_text(found, message, report) for found in scanned]
    recipients = [r for r in recipients if r is not None]
    if not recipients:
        if is_auto_reply(message) and not _from_daemon(message):
            return _auto_reply(message, **common)
        return ParsedBounce(BounceKind.NOT_BOUNCE, **common)
    reporting = read_status_fields(report).per_message.get("reporting-mta")
    return ParsedBounce(BounceKind.DSN, tuple(_unique(recipients)), reporting_mta=reporting, **common)


def _report_text(message: ReadMessage) -> str:
    """The human-readable text of the report: its text parts outside the returned original (HTML
    only when there is no plain text), cut where a copy of the original starts."""
    own = [p for p in message.parts if not p.in_original]
    # A multipart whose boundary is missing arrives as one leaf of type multipart/*: its text is
    # the report as it stands.
    plain = [p.text for p in own if p.content_type == "text/plain" or p.content_type.startswith("multipart/")]
    if not "".join(plain).strip():
        plain += [html_to_text(p.text) for p in own if p.content_type == "text/html"]
    text = "\n".join(plain)[:MAX_REPORT_CHARS]
    return cut_at_original(text)


def _quoted_original_headers(message: ReadMessage) -> dict[str, str]:
    """The headers of an original quoted inline after the report (no message/rfc822 part)."""
    text = "\n".join(p.text for p in message.parts if p.content_type == "text/plain" and not p.in_original)
    cut = len(cut_at_original(text))
    rest = text[cut:]
    start = re.search(r"^(?:[A-Za-z][A-Za-z0-9-]{1,40}):[ \t]", rest, re.M)
    return parse_header_block(rest[start.start() :]) if start else {}


def _original_recipients(original: dict[str, str]) -> set[str]:
    values = [original.get("to", ""), original.get("cc", "")]
    return {m.group(1).lower() for value in values for m in ADDRESS.finditer(value)}


def _report_body(report: str) -> str:
    return " ".join(report.split())[:2000]


def _not_recipients(message: ReadMessage, original: dict[str, str]) -> set[str]:
    """Addresses that are certainly not the failed recipient: who sent the original, and the
    bounce's own sender."""
    values = [message.header("from"), message.header("return-path"), message.header("reply-to"),
              original.get("from", ""), original.get("return-path", ""), original.get("sender", ""),
              original.get("reply-to", "")]  # fmt: skip
    return {m.group(1).lower() for value in values for m in ADDRESS.finditer(value)}


def _is_bounce_shaped(message: ReadMessage, report: str) -> bool:
    if message.header("x-failed-recipients"):
        return True
    if any(part.content_type in DSN_TYPES for part in message.parts):
        return True  # a multipart/report of delivery status, even with its fields missing
    if looks_like_feedback_text(report):
        return False
    from_daemon = _from_daemon(message)
    subject_says = bool(_BOUNCE_SUBJECT.search(message.header("subject")))
    null_sender = message.header("return-path").strip() in ("<>", "")
    return from_daemon or subject_says or (null_sender and bool(re.search(
        r"could not be delivered|undeliverable|delivery (?:has )?failed|permanent error", report, re.I)))


def _from_daemon(message: ReadMessage) -> bool:
    sender = message.header("from")
    if any(is_daemon_address(m.group(1)) for m in ADDRESS.finditer(sender)):
        return True
    return bool(re.search(r"mailer.?daemon|postmaster|mail delivery|delivery subsystem|"
                          r"mail administrator", sender, re.I))  # fmt: skip


def _from_status_groups(
    groups: list[RecipientFields], scanned: list[RecipientText], message: ReadMessage
) -> list[BounceRecipient | None]:
    text_about = {found.address: found.text for found in scanned}
    records: list[BounceRecipient | None] = []
    for group in groups:
        address = strip_address(group.address)
        if not ADDRESS.fullmatch(address):
            continue
        diagnostic = " ".join(group.get("diagnostic-code").split())
        said = text_about.get(address, "")
        status_field = group.get("status")
        # Old Sendmail and others comment the status: "4.0.0 (host name lookup failure)".
        comment = status_field.split(None, 1)[1].strip(" ()") if len(status_field.split(None, 1)) > 1 else ""
        if not diagnostic:
            diagnostic = comment or said
        status = status_field.split()[0] if status_field else None
        if status is not None and not re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", status):
            status = None
        in_text = find_status(diagnostic)
        if in_text and (status is None or (status.endswith(".0.0") and in_text[0] == status[0])):
            status = in_text
        action = group.get("action").lower() or None
        command = _command(diagnostic + "\n" + said)
        record = _record(address, status, diagnostic, action, command, group.get("remote-mta") or None, message)
        if group.get("diagnostic-type") == "x-unix" and reason_from_text(diagnostic) is None:
            # RFC 3464 §2.3.6: an X-Unix diagnostic is the exit status of a local delivery program.
            record = replace(record, reason="mailererror", bounce_class=class_of("mailererror"))
        records.append(record)
    return records


def _from_text(found: RecipientText, message: ReadMessage, report: str) -> BounceRecipient | None:
    text = found.text
    if find_status(text) is None and find_reply_code(text) is None and reason_from_text(text) is None:
        # Some reports give the reason before the list of addresses (MailMarshal, Lotus Notes).
        text = f"{text} {_report_body(report)}"
    return _record(found.address, find_status(text), text, None, _command(text), None, message)


def _record(
    address: str,
    status: str | None,
    diagnostic: str,
    action: str | None,
    command: str | None,
    remote_host: str | None,
    message: ReadMessage,
) -> BounceRecipient:
    reply_code = find_reply_code(diagnostic)
    reason, _ = classify_reply(reply_code, status, diagnostic, command)
    temporary = (status or "").startswith("4") or 400 <= (reply_code or 0) < 500
    worded_as_network = reason == "networkerror" and reason_from_text(diagnostic) == "networkerror"
    if action == "failed" and temporary and (reason in ("onhold", "undefined") or worded_as_network):
        # A temporary error in a final report: the MTA retried until the message's lifetime ran out.
        reason = "expired"
    if action == "delivered" or (action in ("relayed", "expanded") and not (status or "").startswith(("4", "5"))):
        reason = "delivered"
    reason = adjust_for_provider(reason, address, message.header("from"), remote_host, diagnostic, status)
    return BounceRecipient(
        address=address,
        reason=reason,
        bounce_class=class_of(reason, reply_code, status),
        status=status,
        reply_code=reply_code,
        diagnostic=diagnostic[:2000],
        remote_host=remote_host,
        action=action,
        smtp_command=command,
    )


def _transcript_command(text: str) -> str | None:
    """The command a session transcript (Sendmail, Courier: ">>> CMD" / "<<< reply") shows
    refused: the last one sent before the first failure reply. (With pipelining, RFC 2920, that
    may be DATA for a refused RCPT; the classifier trusts an X.1.x status over the command.)"""
    sent: str | None = None
    lines = re.split(r"\n|(?=>>> |<<< )", text)
    for line in lines:
        line = line.strip()
        if line.startswith(">>> "):
            sent = (line[4:].split() or [""])[0].upper()
        elif re.match(r"<<< [45]\d\d", line) and sent:
            return sent
    return None


def _command(text: str) -> str | None:
    transcript = _transcript_command(text)
    if transcript is not None:
        return transcript
    if _HELO_REFUSED.search(text):
        return "HELO"
    if _RCPT_REFUSED.search(text):
        return "RCPT"
    match = _COMMAND.search(text)
    if not match:
        return None
    verb = (match.group(1) or match.group(2)).lower()
    return _COMMAND_NAMES.get(verb, verb.split()[0].upper())


# What an auto-reply may say that makes it a report on the mailbox rather than an absence.
_MAILBOX_REASONS = frozenset({"suspend", "userunknown", "hasmoved", "mailboxfull"})


def _auto_reply(message: ReadMessage, **common: str | None) -> ParsedBounce:
    """An auto-reply names its sender. Most are absences (vacation); one that says the mailbox is
    no longer in use or has moved is a report on the address, and says so in its reason."""
    sender = [m.group(1).lower() for m in ADDRESS.finditer(message.header("from"))]
    text = " ".join(_report_text(message).split())[:4000]
    said = reason_from_text(text)
    reason = said if said in _MAILBOX_REASONS else "vacation"
    recipients = tuple(BounceRecipient(a, reason, class_of(reason), diagnostic=text[:1000] if said else "")
                       for a in sender[:1])  # fmt: skip
    return ParsedBounce(BounceKind.AUTOREPLY, recipients, **common)  # type: ignore[arg-type]


def _unique(records: list[BounceRecipient]) -> list[BounceRecipient]:
    seen: dict[str, BounceRecipient] = {}
    for record in records:
        seen.setdefault(record.address, record)
    return list(seen.values())


def _message_id(value: str) -> str | None:
    match = re.search(r"<([^<>\s]+)>", value)
    return match.group(1) if match else (value.strip() or None)
