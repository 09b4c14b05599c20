"""The values a parsed bounce is made of: one `BounceRecipient` per failed (or complaining, or
auto-replying) recipient, inside a `ParsedBounce` that says what kind of message it was.

Reason names are Sisimai's (shared/data/bounces/README.md): the class follows from the reason and,
for `notaccept`, the reply code. These are plain frozen values: the parser produces them, the
suppression rules and the delivery bookkeeping read them, and nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BounceClass(enum.StrEnum):
    HARD = "hard"  # the address will not work: stop mailing it
    SOFT = "soft"  # this attempt failed; the address may work later
    NONE = "none"  # not a failure: delivered, a complaint, an auto-reply


class BounceKind(enum.StrEnum):
    DSN = "dsn"  # a delivery status notification, standard (RFC 3464) or an MTA's own format
    FEEDBACK = "feedback"  # an abuse / feedback-loop report (RFC 5965 ARF)
    AUTOREPLY = "autoreply"  # vacation and other auto-replies (RFC 3834): never a bounce
    NOT_BOUNCE = "not_bounce"  # anything else that reached the return path


HARD_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved"})
NOT_FAILURES = frozenset({"delivered", "feedback", "vacation"})


def class_of(reason: str, reply_code: int | None = None, status: str | None = None) -> BounceClass:
    """The class of a reason: hard for the address-is-gone reasons (and `notaccept` unless a code
    says the refusal is temporary: a domain without mail service, RFC 7505, does not grow one on a
    retry), none for what is not a failure, soft for everything else."""
    if reason in NOT_FAILURES:
        return BounceClass.NONE
    if reason in HARD_REASONS:
        return BounceClass.HARD
    if reason == "notaccept":
        temporary = (reply_code is not None and 400 <= reply_code < 500) or (
            status is not None and status.startswith("4")
        )
        return BounceClass.SOFT if temporary else BounceClass.HARD
    return BounceClass.SOFT


@dataclass(frozen=True)
class BounceRecipient:
    """What one recipient's report says. `status` is an RFC 3463 code ("5.1.1") when the message
    carries one; `reply_code` the SMTP reply (550); `feedback_type` the ARF type ("abuse") of a
    complaint; `remote_host` the MTA that refused (RFC 3464 Remote-MTA, or named in the text)."""

    address: str  # lower-cased addr-spec of the original recipient
    reason: str  # a Sisimai reason name
    bounce_class: BounceClass
    status: str | None = None
    reply_code: int | None = None
    diagnostic: str = ""
    remote_host: str | None = None
    feedback_type: str | None = None
    action: str | None = None  # RFC 3464 Action: failed, delayed, delivered, relayed, expanded
    smtp_command: str | None = None  # the command the refusal answered (RCPT, DATA, ...)


@dataclass(frozen=True)
class ParsedBounce:
    """A message that arrived at the return path, read: its kind, its recipients (none for an
    auto-reply that names no one, or for what is not a bounce), and what identifies the original
    message when the bounce quotes it."""

    kind: BounceKind
    recipients: tuple[BounceRecipient, ...] = ()
    original_message_id: str | None = None  # Message-ID of the bounced message, without <>
    original_envelope_sender: str | None = None  # its Return-Path, e.g. the VERP address
    reporting_mta: str | None = None
