"""What the SMTP listeners do with each command; the protocol engine is aiosmtpd.

Submission: relay only for authenticated users or clients in `trusted_networks`; at most
`max_recipients`; at DATA the message goes through the submission door, whose answer becomes the
reply: `250` only once the message is committed, a refusal's 5xx/4xx otherwise. The MX accepts
mail to postmaster (`smtp.postmaster`), to our VERP return paths whose token verifies, and to the
configured feedback-loop addresses; the bounces go to the `BounceIntake`. Every other recipient
is refused with `550 5.7.1`, a forged or expired return path with `550 5.1.1`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from postroom.bounces.verp import ReturnPath, TokenProblem
from postroom.core.addresses import address_allowed, valid_mailbox
from postroom.core.clock import Clock
from postroom.core.errors import PostroomError
from postroom.core.ids import new_message_id
from postroom.core.types import Submission
from postroom.metrics import Metrics
from postroom.smtp.postmaster import PostmasterMail, PostmasterMessage, is_postmaster
from postroom.smtp.protocol import FixedReflection
from postroom.smtp.throttle import LoginLimits
from postroom.store.credentials import SmtpUser, SqlSmtpUsers
from postroom.store.login_throttle import Reservation, SqlLoginThrottle, Throttled, ThrottleKey
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


def take_content(envelope: Envelope) -> bytes | bytearray:
    """The message out of the envelope, which lets go of it: while the message is being
    committed, only what is made of it should hold memory. `PostroomSMTP` hands over the bytearray
    it read DATA into (see `smtp.protocol`)."""
    content: object = envelope.original_content or b""
    envelope.content = envelope.original_content = None
    if isinstance(content, bytes | bytearray):
        return content
    return str(content).encode("utf-8", "surrogateescape")  # decode_data is off; a guard


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
        content = take_content(envelope)
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
        finally:
            del content  # the submission's stamped copy is the one kept while it is committed
        caller = Caller(
            "smtp",
            identity=str(user) if session.authenticated else _peer_ip(session),
            allowed_senders=user.allowed_senders if isinstance(user, SmtpUser) else (),
        )
        outcome = await self._submit(submission, caller)
        if isinstance(outcome, Refusal):
            return refusal_reply(outcome)
        if outcome.suppressed:
            # Accepted and recorded, not refused at RCPT: a multi-recipient message must not fail
            # for one suppressed address, and a per-recipient 550 cannot be given after DATA
            # (RFC 5321 §4.2.5). Each is a `suppressed` delivery; the reply says how many.
            return (f"250 2.0.0 Ok: queued as {outcome.message_id}; "
                    f"{len(outcome.suppressed)} suppressed recipient(s) not sent to")  # fmt: skip
        return f"250 2.0.0 Ok: queued as {outcome.message_id}"

    async def handle_exception(self, error: Exception) -> str:
        # Never show exception text to a peer (STYLE.md rule 5).
        logger.error("SMTP session error", exc_info=error)
        return TEMPORARY_FAILURE


class BounceIntake(Protocol):
    """Where mail to the return path goes: a bounce for `delivery_id` (None: to a feedback-loop
    address, which names no delivery). Raises `PostroomError` when it cannot be kept (451)."""

    async def take(self, delivery_id: int | None, raw: bytes) -> None: ...


class ReturnPathCheck(Protocol):
    """Verifies a VERP address (`bounces.return_path.VerpReturnPaths.verify`)."""

    def verify(self, address: str) -> ReturnPath | TokenProblem | None: ...


class MxHandler(FixedReflection):
    """The inbound MX (port 25). Accepts mail to postmaster (RFC 5321 §4.5.1: bare, or at a
    sending domain, bounce domain or the server's name) and hands it to `postmaster`; mail to a
    VERP return path whose token verifies, and to a feedback-loop address, goes to `bounces`.
    Every other recipient is refused with 550 5.7.1; a return path whose token is forged or
    expired with 550 5.1.1 (RFC 3463 §3.2: "bad destination mailbox address")."""

    def __init__(
        self,
        metrics: Metrics,
        clock: Clock,
        *,
        postmaster: PostmasterMail | None = None,
        postmaster_domains: frozenset[str] = frozenset(),
        max_recipients: int = 50,
        bounces: BounceIntake | None = None,
        return_paths: ReturnPathCheck | None = None,
        feedback_addresses: frozenset[str] = frozenset(),
    ):
        self._metrics = metrics
        self._clock = clock
        self._postmaster = postmaster
        self._postmaster_domains = postmaster_domains
        self._max_recipients = max_recipients
        self._bounces = bounces
        self._return_paths = return_paths
        self._feedback = frozenset(a.lower() for a in feedback_addresses)

    def _bounce_target(self, address: str) -> ReturnPath | TokenProblem | str | None:
        """What a recipient is to the bounce side: a verified return path, a refused token, the
        feedback address itself, or None (not a bounce address)."""
        if self._bounces is None:
            return None
        if address.strip("<>").lower() in self._feedback:
            return address
        if self._return_paths is None:
            return None
        return self._return_paths.verify(address)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        # The MX has no AUTH; aiosmtpd would still list an empty "AUTH" after STARTTLS.
        session.host_name = hostname
        return [line for line in responses if not line[4:].upper().startswith("AUTH")]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        accepted = self._postmaster is not None and is_postmaster(address, self._postmaster_domains)
        if not accepted:
            target = self._bounce_target(address)
            if isinstance(target, TokenProblem):
                self._metrics.rejected.labels("mx", f"verp_{target.value}").inc()
                why = "has expired" if target is TokenProblem.EXPIRED else "is not valid"
                return f"550 5.1.1 <{address}>: this return path {why}"
            accepted = target is not None
        if accepted:
            if len(envelope.rcpt_tos) >= self._max_recipients:
                return "452 4.5.3 Too many recipients"
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
            return "250 2.1.5 Ok"
        self._metrics.rejected.labels("mx", "unknown_recipient").inc()
        return "550 5.7.1 Recipient address rejected: not a bounce or feedback address"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not envelope.rcpt_tos:  # nothing else is accepted at RCPT
            return "554 5.5.1 No valid recipients"
        postmaster = tuple(r for r in envelope.rcpt_tos if self._postmaster is not None
                           and is_postmaster(r, self._postmaster_domains))  # fmt: skip
        # Each return path names one delivery; a copy to several of them is a bounce for each.
        targets = [self._bounce_target(r) for r in envelope.rcpt_tos if r not in postmaster]
        content = take_content(envelope)
        reply = "250 2.0.0 Ok"
        if targets and self._bounces is not None:
            raw = bytes(content)
            try:
                for target in targets:
                    if isinstance(target, ReturnPath):
                        await self._bounces.take(target.delivery_id, raw)
                    elif isinstance(target, str):
                        await self._bounces.take(None, raw)
            except PostroomError as exc:
                logger.warning("a bounce could not be kept: %s", exc)
                return TEMPORARY_FAILURE
        if postmaster and self._postmaster is not None:
            now = self._clock.now()
            protocol = "ESMTP" + ("S" if session.ssl else "")
            message = PostmasterMessage(
                content=content, mail_from=envelope.mail_from or "",
                recipients=postmaster, trace=Trace(session.host_name, _peer_ip(session), protocol),
                queue_id=new_message_id(now), now=now,
            )  # fmt: skip
            outcome = await self._postmaster.receive(message)
            del message
            if isinstance(outcome, Refusal):
                return refusal_reply(outcome)
            reply = f"250 2.0.0 Ok: queued as {outcome.message_id}"
        return reply

    async def handle_exception(self, error: Exception) -> str:
        logger.error("MX session error", exc_info=error)
        return TEMPORARY_FAILURE


class Authenticator:
    """Checks SMTP logins against `smtp-users`, with failed logins throttled on counters every
    process and every daemon on the database shares (rules: `smtp.throttle`; counters:
    `store.login_throttle`).

    An attempt reserves a slot on its keys before its password is checked, so parallel connections
    get no more checks than the limit; while a key is over its limit the attempt is refused
    (454 4.7.0) with no hashing at all. A key whose slots are all taken by attempts in flight is
    not over its limit: the attempt waits for one of them to finish (a burst of an application's
    connections logs in a few at a time), up to `wait` seconds. Checks run in the users'
    repository's own small pool; when `max_checks` of this process are in progress, the next
    attempt is refused too, so a flood from many sources is shed instead of queueing every login
    behind it.
    """

    THROTTLED = "454 4.7.0 Too many failed logins, try again later"
    BUSY = "454 4.7.0 Too many logins at once, try again later"
    FIRST_POLL, LAST_POLL = 0.02, 0.5  # seconds between looks for a free slot (other processes')

    def __init__(
        self,
        users: SqlSmtpUsers,
        throttle: SqlLoginThrottle,
        limits: LoginLimits,
        clock: Clock,
        metrics: Metrics,
        *,
        max_checks: int = 32,
        wait: float = 10.0,
        prune_interval: float = 60.0,
    ):
        self._users = users
        self._throttle = throttle
        self._limits = limits
        self._clock = clock
        self._metrics = metrics
        self._max_checks = max_checks
        self._wait = wait
        self._prune_interval = prune_interval
        self._next_prune = 0.0
        self._checks = 0  # passwords this process is checking, or has queued for its pool
        self._changed = asyncio.Event()  # set, and replaced, when an attempt here ends (`_wake`)
        self._running: set[asyncio.Task[AuthResult | None]] = set()

    async def __call__(self, peer_ip: str, username: str, password: str) -> AuthResult:
        keys = self._limits.keys(peer_ip, username)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        poll = self.FIRST_POLL
        while True:
            changed = self._changed
            result = await self._detached(self._try(keys, username, password))
            if result is not None:
                return result
            if loop.time() >= deadline:
                self._metrics.smtp_auth.labels("busy").inc()
                return AuthResult(success=False, handled=False, message=self.BUSY)
            # Woken at once when an attempt of this process ends; polling sees other processes'.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(poll, max(0.0, deadline - loop.time()))):
                    await changed.wait()
            poll = min(poll * 2, self.LAST_POLL)

    def _detached(self, attempt: Coroutine[Any, Any, AuthResult | None]) -> Awaitable[AuthResult | None]:
        """Runs to its end even when the session is cancelled (its client left) meanwhile: a slot
        reserved is always settled and a check begun is always counted."""
        task = asyncio.ensure_future(attempt)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return asyncio.shield(task)

    async def _try(self, keys: tuple[ThrottleKey, ...], username: str, password: str) -> AuthResult | None:
        """The verdict, or None when every slot of a key is taken by attempts in flight."""
        try:
            taken = await self._throttle.reserve(keys, self._clock.now())
        except PostroomError:
            self._metrics.smtp_auth.labels("error").inc()
            raise
        if taken is Throttled.FULL:
            return None
        if taken is Throttled.OVER_LIMIT:
            self._wake()  # the attempts waiting for a slot of this key are refused as well
            self._metrics.smtp_auth.labels("throttled").inc()
            return AuthResult(success=False, handled=False, message=self.THROTTLED)
        if self._checks >= self._max_checks:
            await self._settle(taken, None)
            self._metrics.smtp_auth.labels("busy").inc()
            return AuthResult(success=False, handled=False, message=self.BUSY)
        self._checks += 1
        verdict: bool | None = None  # None: the password could not be checked
        try:
            user = await self._users.login(username, password)
            verdict = user is not None
        except PostroomError:
            self._metrics.smtp_auth.labels("error").inc()
            raise
        finally:
            self._checks -= 1
            await self._settle(taken, verdict)
        if user is None:
            self._metrics.smtp_auth.labels("failed").inc()
            return AuthResult(success=False, handled=False)
        self._metrics.smtp_auth.labels("ok").inc()
        return AuthResult(success=True, auth_data=user)

    async def _settle(self, reservation: Reservation, succeeded: bool | None) -> None:
        now = self._clock.now()
        try:
            await self._throttle.settle(reservation, succeeded, now)
            if now >= self._next_prune:
                self._next_prune = now + self._prune_interval
                await self._throttle.prune(now)
        except PostroomError:
            # Its slots expire by themselves (store.login_throttle); the verdict stands.
            logger.warning("could not record an SMTP login attempt", exc_info=True)
        finally:
            self._wake()

    def _wake(self) -> None:
        """Let the attempts waiting for a slot look again."""
        self._changed.set()
        self._changed = asyncio.Event()
