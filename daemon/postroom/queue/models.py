"""Plain records the queue hands to workers and operators."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from postroom.core.addresses import domain_of
from postroom.core.types import INHOUSE_ROUTE, DeliveryState


@dataclass(frozen=True)
class ClaimedDelivery:
    """One recipient's copy, leased to a worker."""

    id: int
    message_id: str
    recipient: str
    attempts: int  # attempts made before this one
    accepted_at: float
    route: str = INHOUSE_ROUTE  # the transport that sends it
    mail_from: str | None = None  # its own envelope sender (VERP); None: the message's

    @property
    def domain(self) -> str:
        return domain_of(self.recipient)


@dataclass(frozen=True)
class QueuedMessage:
    """What a transport needs to send one message."""

    id: str
    mail_from: str
    content: bytes
    stream: str
    route: str
    created_at: float
    header_from: str | None = None  # the From header, whose domain signs the message
    signature: bytes | None = None  # DKIM-Signature fields kept from an earlier attempt
    # The template it was rendered from and the data variables it was rendered with (None when
    # its submitter composed it): what a route that renders elsewhere (Loops) sends instead.
    template_id: str | None = None
    template_data: dict[str, Any] | None = None


@dataclass(frozen=True)
class Release:
    """The outcome a worker records for one leased delivery."""

    delivery_id: int
    message_id: str
    recipient: str
    state: DeliveryState
    reply: str
    next_attempt_at: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    tried: bool = True  # False: handed back untried (destination suspended, shutting down)
    route: str = INHOUSE_ROUTE  # the delivery's route (a metrics label)


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    recipient: str
    state: str
    attempts: int
    next_attempt_at: float
    last_reply: str | None
    updated_at: float
    finished_at: float | None


@dataclass(frozen=True)
class MessageSummary:
    id: str
    created_at: float
    source: str
    mail_from: str
    header_from: str | None
    subject: str | None
    stream: str
    size: int
    states: dict[str, int]


@dataclass(frozen=True)
class MessageDetail:
    summary: MessageSummary
    tags: list[str]
    submitted_by: str | None
    error: str | None
    deliveries: list[DeliveryRow]
    events: list[dict[str, Any]]


@dataclass(frozen=True)
class DestinationGroup:
    """The deliveries to one recipient domain in one state."""

    domain: str
    state: str
    count: int
    oldest_created_at: float
    next_attempt_at: float
    last_reply: str | None
