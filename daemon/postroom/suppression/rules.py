"""What a bounce or a complaint does to the suppression list. Pure: plain values in, a decision out.

- Hard bounces (the address is gone: userunknown, hostunknown, hasmoved, a permanent notaccept)
  and complaints (an ARF report, RFC 5965) suppress at once, globally, until removed.
- mailboxfull, suspend and filtered are about the recipient but may clear: they suppress once
  `soft_failure_limit` of them arrived within `soft_failure_window`, for `soft_suppression_days`.
- Sender-side reasons (blocked, badreputation, authfailure, requireptr, spamdetected,
  policyviolation, ...) say the receiver refused *us*, not that the address is bad: never
  suppress; they are counted for an operator alert instead.
- Everything else (a one-off soft failure, expired, systemerror, an auto-reply) does nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from postroom.bounces.model import HARD_REASONS, BounceClass

RECIPIENT_SOFT_REASONS = frozenset({"mailboxfull", "suspend", "filtered"})
SENDER_REASONS = frozenset({
    "blocked", "badreputation", "authfailure", "requireptr", "spamdetected", "policyviolation",
    "rejected", "securityerror", "ratelimited", "toomanyconn", "speeding", "virusdetected",
    "contenterror", "norelaying", "syntaxerror", "mesgtoobig", "exceedlimit",
})  # fmt: skip
COMPLAINT_REASONS = frozenset({"feedback", "complaint", "abuse"})
GLOBAL = "global"


def stream_scope(stream: str) -> str:
    return f"stream:{stream}"


class Action(enum.StrEnum):
    SUPPRESS = "suppress"  # add an entry now
    COUNT_SOFT = "count_soft"  # record a soft failure; suppress when enough are recent
    SENDER_ALERT = "sender_alert"  # count postroom_sender_reputation_bounces_total{reason}
    NOTHING = "nothing"


@dataclass(frozen=True)
class Decision:
    action: Action
    source: str = ""  # bounce, complaint
    reason: str = ""
    scope: str = GLOBAL
    expires_after: float | None = None  # seconds; None: until removed


@dataclass(frozen=True)
class SoftPolicy:
    limit: int  # failures...
    window: float  # ...within this many seconds
    lasts: float  # seconds the entry stays


def decide(event_type: str, reason: str | None, bounce_class: str | None, policy: SoftPolicy) -> Decision:
    """The first step, from one `bounced` or `complained` event."""
    if event_type == "complained":
        return Decision(Action.SUPPRESS, "complaint", reason or "feedback")
    if event_type != "bounced" or not reason:
        return Decision(Action.NOTHING)
    if reason in COMPLAINT_REASONS:
        return Decision(Action.SUPPRESS, "complaint", reason)
    if reason in SENDER_REASONS:
        return Decision(Action.SENDER_ALERT, "bounce", reason)
    if reason in HARD_REASONS or bounce_class == BounceClass.HARD.value:
        return Decision(Action.SUPPRESS, "bounce", reason)
    if reason in RECIPIENT_SOFT_REASONS:
        return Decision(Action.COUNT_SOFT, "bounce", reason, expires_after=policy.lasts)
    return Decision(Action.NOTHING)


def soft_limit_reached(recent_failures: int, policy: SoftPolicy) -> bool:
    """After COUNT_SOFT: whether the failures within the window (this one included) suppress."""
    return recent_failures >= policy.limit
