"""What the SMTP listeners do with each command; the protocol engine is aiosmtpd.

Submission: relay only for authenticated users or clients in `trusted_networks`; at most
`max_recipients`; at DATA the message goes through the submission door, whose answer becomes the
reply: `250` only once the message is committed, a refusal's 5xx/4xx otherwise. The MX
refuses every recipient with `550 5.7.1` until the bounce processor gives it addresses to accept.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from postroom.core.addresses import address_allowed, valid_mailbox
from postroom.core.clock import Clock
from postroom.core.errors import PostroomError
from postroom.core.ids import new_message_id
from postroom.core.types import Submission
from postroom.metrics import Metrics
from postroom.smtp.protocol import FixedReflection
from postroom.smtp.throttle import LoginThrottle
from postroom.store.credentials import SmtpUser, SqlSmtpUsers
from postroom.submission.outcome import Caller, Outcome, Refusal
from postroom.submission.raw import Trace, raw_submission

logger = logging.getLogger(__name__)

Submit = Callable[[Submission, Caller], Awaitable[Outcome]]

TEMPORARY_FAILURE = "451 4.3.0 Temporary failure, please try again later"

# The reply to a refusal, by its code (RFC 3463 enhanced status codes); the rest get 550 5.7.1
# (permanent: "delivery not authorized") or 451 4.7.1 (temporary).
_REFUSAL_STATUS = {
    "too_large": "552 5.3.4",
    "dkim_unavailable": "451 4.7.5",
    "invalid_from": "550 5.6.0",  # RFC 3463 §3.7: "other or undefined media error" (bad header)
}


def refusal_reply(refusal: Refusal) -> str:
    """The SMTP reply that says why the submission door refused a message."""
    if refusal.code == "store_unavailable":
        return TEMPORARY_FAILURE
    status = _REFUSAL_STATUS.get(refusal.code) or ("550 5.7.1" if refusal.permanent else "451 4.7.1")
    reason = " ".join(refusal.reason.split())  # one line, whatever the reason held
    return f"{status} {reason}"


def _peer_ip(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


class SubmissionHandler(FixedReflection):
    def __init__(
        self,
        *,
        submit: Submit,
        clock: Clock,
        metrics: Metrics,
        hostname: str,
        max_recipients: int,
        trusted_networks: Sequence[str],
    ):
        self._submit = submit
        self._clock = clock
        self._metrics = metrics
        self._hostname = hostname
        self._max_recipients = max_recipients
        self._trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_networks]

    def trusted(self, session: Session) -> bool:
        try:
            address = ipaddress.ip_address(_peer_ip(session))
        except ValueError:
            return False
        return any(address in network for network in self._trusted)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not (session.authenticated or self.trusted(session)):
            self._metrics.rejected.labels("smtp", "auth_required").inc()
            return "530 5.7.0 Authentication required"
        if address and not valid_mailbox(address):
            return "553 5.1.7 Sender address is not a valid mailbox"
        user = session.auth_data if session.authenticated else None
        if isinstance(user, SmtpUser) and not address_allowed(address, user.allowed_senders):
            self._metrics.rejected.labels("smtp", "sender_not_allowed").inc()
            return f"550 5.7.1 <{address}>: this login may not send as this sender"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self._max_recipients:
            self._metrics.rejected.labels("smtp", "too_many_recipients").inc()
            return "452 4.5.3 Too many recipients"
        if not valid_mailbox(address):
            return "553 5.1.3 Recipient address is not a valid mailbox"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        if not isinstance(content, bytes):  # decode_data is off; this guards a misconfiguration
            content = str(content).encode("utf-8", "surrogateescape")
        now = self._clock.now()
        user = session.auth_data if session.authenticated else None
        protocol = "ESMTP" + ("S" if session.ssl else "") + ("A" if session.authenticated else "")
        try:
            submission = raw_submission(
                content, mail_from=envelope.mail_from or "", recipients=tuple(envelope.rcpt_tos),
                trace=Trace(session.host_name, _peer_ip(session), protocol), source="smtp",
                submitted_by=str(user) if session.authenticated else _peer_ip(session),
                hostname=self._hostname, queue_id=new_message_id(now), now=now,
            )  # fmt: skip
        except Exception:  # a header block the parser chokes on: refuse, never crash
            return "554 5.6.0 Message header could not be parsed"
        caller = Caller(
            "smtp",
            identity=str(user) if session.authenticated else _peer_ip(session),
            allowed_senders=user.allowed_senders if isinstance(user, SmtpUser) else (),
        )
        outcome = await self._submit(submission, caller)
        if isinstance(outcome, Refusal):
            return refusal_reply(outcome)
        return f"250 2.0.0 Ok: queued as {outcome.message_id}"

    async def handle_exception(self, error: Exception) -> str:
        # Never show exception text to a peer (STYLE.md rule 5).
        logger.error("SMTP session error", exc_info=error)
        return TEMPORARY_FAILURE


class MxHandler(FixedReflection):
    """The inbound MX (port 25). Accepts nothing yet: no bounce addresses are configured."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self._metrics.rejected.labels("mx", "unknown_recipient").inc()
        return "550 5.7.1 Recipient address rejected: not a bounce or feedback address"

    async def handle_exception(self, error: Exception) -> str:
        logger.error("MX session error", exc_info=error)
        return TEMPORARY_FAILURE


class Authenticator:
    """Checks SMTP logins against `smtp-users`, with failed logins throttled per client address."""

    def __init__(self, users: SqlSmtpUsers, throttle: LoginThrottle, metrics: Metrics):
        self._users = users
        self._throttle = throttle
        self._metrics = metrics

    async def __call__(self, peer_ip: str, username: str, password: str) -> AuthResult:
        if self._throttle.blocked(peer_ip):
            self._metrics.smtp_auth.labels("throttled").inc()
            return AuthResult(
                success=False,
                handled=False,
                message="454 4.7.0 Too many failed logins, try again later",
            )
        try:
            user = await self._users.login(username, password)
        except PostroomError:
            self._metrics.smtp_auth.labels("error").inc()
            raise
        if user is None:
            self._throttle.record_failure(peer_ip)
            self._metrics.smtp_auth.labels("failed").inc()
            return AuthResult(success=False, handled=False)
        self._throttle.record_success(peer_ip)
        self._metrics.smtp_auth.labels("ok").inc()
        return AuthResult(success=True, auth_data=user)


