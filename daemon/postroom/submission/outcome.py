"""What goes into the submission door besides the message (`Caller`) and what comes out
(`Accepted` or `Refusal`). Plain values."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Caller:
    """Who submits: the ingress, the credential, and the senders that credential may use."""

    source: str  # "smtp", "api", "cli" (later "loops", "template", "report")
    identity: str | None = None  # "apikey:<id>", an SMTP login, "cli:<user>", or the client address
    allowed_senders: tuple[str, ...] = ()  # addresses or domains; empty: any sending domain


@dataclass(frozen=True)
class Accepted:
    message_id: str
    recipients: int
    created: bool = True  # False: an idempotent replay of an earlier request
    # Recipients not sent to because they are suppressed: address -> {scope, reason, source}.
    suppressed: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Refusal:
    """Why a submission was not queued. `permanent`: the same message will be refused again
    (SMTP 5xx); otherwise it may succeed later (4xx). `code` is stable (metrics, API errors);
    `reason` is for the submitter to read and never holds internal error text."""

    permanent: bool
    code: str
    reason: str


Outcome = Accepted | Refusal
