"""`parse_bounce`: whatever arrived at the return path, read into a `ParsedBounce`.

The layers, each a pure module: `mime` reads the message into decoded parts under size and shape
limits; `report` finds the human-readable report and the quoted original; `arf` recognises
feedback reports (RFC 5965); `ses` Amazon SES notifications; `dsn` reads RFC 3464 fields;
`autoreply` recognises RFC 3834 auto-replies; `text_scan` finds failed recipients in the text of
non-standard bounces; `failures` builds each recipient's record with `classify` (and `phrases`,
`providers`). This module only decides which layer speaks for a message. It never raises:
anything unexpected is logged and the message is reported as not a bounce, so one hostile
message cannot stop the mailbox that receives bounces.
"""

from __future__ import annotations

import logging
import re

from postroom.bounces.arf import FeedbackReport, read_feedback_report, read_forwarded_complaint
from postroom.bounces.autoreply import is_auto_reply
from postroom.bounces.dsn import RecipientFields, read_status_fields, strip_address
from postroom.bounces.failures import from_status_fields, from_text
from postroom.bounces.mime import ReadMessage, read_message
from postroom.bounces.model import BounceClass, BounceKind, BounceRecipient, ParsedBounce, class_of
from postroom.bounces.phrases import reason_from_text
from postroom.bounces.report import (
    DSN_TYPES,
    addresses_of,
    collapsed,
    from_daemon,
    is_bounce_shaped,
    not_recipients,
    original_recipients,
    report_text,
    returned_headers,
)
from postroom.bounces.ses import read_ses_notification
from postroom.bounces.text_scan import RecipientText, scan_recipients

logger = logging.getLogger(__name__)

# What an auto-reply may say that makes it a report on the mailbox rather than an absence.
_MAILBOX_REASONS = frozenset({"suspend", "userunknown", "hasmoved", "mailboxfull"})


def parse_bounce(raw: bytes) -> ParsedBounce:
    """Read a message from the return path. Never raises."""
    try:
        return _parse(raw)
    except Exception:  # a hostile or broken message must not stop the bounce mailbox
        logger.exception("bounce: could not parse a message of %d bytes; treated as not a bounce", len(raw))
        return ParsedBounce(BounceKind.NOT_BOUNCE)


def _parse(raw: bytes) -> ParsedBounce:
    message = read_message(raw)
    original = returned_headers(message)

    def result(kind: BounceKind, recipients: tuple[BounceRecipient, ...] = (), reporting: str | None = None) -> ParsedBounce:
        message_id = re.search(r"<([^<>\s]+)>", original.get("message-id", ""))
        return ParsedBounce(
            kind, recipients,
            original_message_id=message_id.group(1) if message_id else (original.get("message-id") or None),
            original_envelope_sender=strip_address(original.get("return-path", "")) or None,
            reporting_mta=reporting,
        )  # fmt: skip

    feedback = read_feedback_report(message) or read_forwarded_complaint(message)
    if feedback is not None:
        return result(BounceKind.FEEDBACK, _complaints(feedback))
    report = report_text(message)
    notification = read_ses_notification(report)
    if notification is not None and notification.recipients:
        return result(notification.kind, notification.recipients)
    fields = [read_status_fields(part.text) for part in message.parts
              if part.content_type in DSN_TYPES and not part.in_original]  # fmt: skip
    groups = [group for status in fields for group in status.recipients]
    if not groups and not is_bounce_shaped(message, report):
        return result(*_auto_reply(message)) if is_auto_reply(message) else result(BounceKind.NOT_BOUNCE)
    records = _failures(message, report, original, groups or list(read_status_fields(report).recipients))
    if not records:
        if is_auto_reply(message) and not from_daemon(message):
            return result(*_auto_reply(message))
        return result(BounceKind.NOT_BOUNCE)
    per_message = [status.per_message for status in fields] + [read_status_fields(report).per_message]
    reporting = next((values["reporting-mta"] for values in per_message if values.get("reporting-mta")), None)
    first_per_address: dict[str, BounceRecipient] = {}
    for record in records:
        first_per_address.setdefault(record.address, record)
    return result(BounceKind.DSN, tuple(first_per_address.values()), reporting)


def _failures(
    message: ReadMessage, report: str, original: dict[str, str], groups: list[RecipientFields]
) -> list[BounceRecipient]:
    bounce_from = message.header("from")
    excluded = not_recipients(message, original)
    # The bounce's To is nearly always the original sender; only when nothing else is named is it
    # the failed recipient too (a message to oneself).
    scanned = scan_recipients(report, excluded | addresses_of(message.header("to"))) or scan_recipients(
        report, excluded
    )
    if groups:
        records = from_status_fields(groups, scanned, bounce_from)
        if records:
            return records
    failed_header = message.header("x-failed-recipients")
    if failed_header:
        scanned = _confirmed_by_header(addresses_of(failed_header), scanned, report, original)
    if not scanned:
        # Nothing in the report names an address (some MMS gateways): the returned copy's single
        # recipient is the one that failed.
        addressed = original_recipients(original)
        if len(addressed) == 1:
            scanned = [RecipientText(next(iter(addressed)), collapsed(report))]
    return [from_text(found, collapsed(report), bounce_from) for found in scanned]


def _confirmed_by_header(
    named: set[str], scanned: list[RecipientText], report: str, original: dict[str, str]
) -> list[RecipientText]:
    """The MTA's own list of failed recipients (Exim's, Google's X-Failed-Recipients) is
    authoritative and the text says why each failed, unless the header names an address the text
    never mentions while the text names one the original was addressed to: the header then holds
    the address after routing, the text the one the sender used."""
    said = {found.address: found.text for found in scanned}
    addressed = original_recipients(original)
    text_only = [found for found in scanned if found.address in addressed and found.address not in named]
    if not (named & said.keys()) and text_only and not any(address in report for address in named):
        return text_only
    return [RecipientText(address, said.get(address, collapsed(report))) for address in sorted(named)]


def _complaints(feedback: FeedbackReport) -> tuple[BounceRecipient, ...]:
    return tuple(
        BounceRecipient(address, "feedback", BounceClass.NONE, diagnostic=feedback.summary,
                        remote_host=feedback.source_ip, feedback_type=feedback.feedback_type)
        for address in feedback.recipients
    )  # fmt: skip


def _auto_reply(message: ReadMessage) -> tuple[BounceKind, tuple[BounceRecipient, ...]]:
    """An auto-reply names its sender. Most are absences (vacation); one that says the mailbox is
    no longer in use or has moved is a report on the address, and says so in its reason."""
    text = collapsed(report_text(message), 4000)
    said = reason_from_text(text)
    reason = said if said in _MAILBOX_REASONS else "vacation"
    sender = sorted(addresses_of(message.header("from")))
    recipients = tuple(BounceRecipient(address, reason, class_of(reason), diagnostic=text[:1000] if said else "")
                       for address in sender[:1])  # fmt: skip
    return BounceKind.AUTOREPLY, recipients
