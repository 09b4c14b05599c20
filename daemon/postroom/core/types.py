"""Value types shared by ingress, queue and delivery: submissions, delivery states and outcomes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any


class DeliveryState(enum.StrEnum):
    """Where one recipient's copy of a message stands. Every non-final state has a deadline."""

    QUEUED = "queued"  # due for a first attempt
    DEFERRED = "deferred"  # tried, failed temporarily, due again at next_attempt_at
    SENDING = "sending"  # leased by a worker until lease_expires_at
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    EXPIRED = "expired"  # deferred past max_age; a bounce with reason "expired"
    DEAD = "dead"  # crashed the pipeline; parked for a human (`queue retry`)
    SUPPRESSED = "suppressed"  # never sent: the recipient is on the suppression list

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {DeliveryState.DELIVERED, DeliveryState.BOUNCED, DeliveryState.EXPIRED, DeliveryState.SUPPRESSED}
)
ACTIVE_STATES = (DeliveryState.QUEUED, DeliveryState.DEFERRED, DeliveryState.SENDING)


# The route of mail postroom delivers itself (MX, smarthost or capture, as configured).
INHOUSE_ROUTE = "inhouse"
# The route of mail Loops delivers for postroom (its transactional API), during the migration.
LOOPS_ROUTE = "loops"
# The in-house copy of shadow mode: rendered, signed and sent, but only to the shadow sink.
SHADOW_ROUTE = "shadow"


@dataclass(frozen=True)
class Submission:
    """A message ready to be queued: the exact bytes to send and the envelope."""

    mail_from: str
    recipients: tuple[str, ...]
    content: bytes
    source: str  # "smtp", "api", "cli", "mx" (postmaster forwards), "dsn" (reports to SMTP senders)
    submitted_by: str | None = None
    header_from: str | None = None
    subject: str | None = None
    stream: str = "transactional"
    route: str = INHOUSE_ROUTE
    tags: tuple[str, ...] = ()
    message_id: str | None = None  # set by the caller when it must know the id beforehand
    added_bytes: int = 0  # what ingress put on top of the submitter's message (trace fields)
    # Per recipient, where they differ from the message's: the route (a later routing step sets
    # it) and the envelope sender (VERP). The message is still signed once for all of them: the
    # envelope is not part of what DKIM signs.
    recipient_routes: Mapping[str, str] = field(default_factory=dict)
    return_paths: Mapping[str, str] = field(default_factory=dict)
    # Recipients whose mail also gets an in-house copy sent only to the shadow sink (shadow mode):
    # a second delivery on SHADOW_ROUTE, never to the recipient.
    shadow_copies: tuple[str, ...] = ()
    # Recipients skipped because they are suppressed, with why (the entry's scope and reason):
    # recorded as `suppressed` deliveries with a `suppressed` event, never sent.
    suppressed: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    template: tuple[str, int] | None = None  # (template id, version) it was rendered from
    # The data variables it was rendered with: what a route that renders elsewhere (Loops) sends.
    template_data: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class IdempotencyKey:
    """An idempotency key scoped to its caller, with the hash of the request it was first used for."""

    scope: str
    key: str
    request_hash: str


class Verdict(enum.StrEnum):
    """What one delivery attempt to one recipient came to."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


@dataclass(frozen=True)
class RecipientResult:
    """The server's answer for one recipient of one attempt."""

    recipient: str
    verdict: Verdict
    reply: str  # "250 2.0.0 Ok" or a local description such as "connection refused"
    details: dict[str, Any] = field(default_factory=dict)
