"""`LoopsTransport`: the delivery worker's transport for the "loops" route, sending each recipient's
copy through Loops' transactional API instead of SMTP.

Loops renders the email itself, so what it gets is what the message was rendered from: the Loops
transactionalId mapped to the message's postroom template (`[loops.templates]`), the data
variables stored with the message, and the files attached to it (`attachments_of`). A message
that was not rendered from a template, or whose template has no Loops id, cannot go this way: it
fails for good with that reason.

Every recipient is one request with an Idempotency-Key fixed for its delivery (the message id and
the recipient, `idempotency_key`), so any retry, by this process or another after a crash, reaches
Loops with the same key and is answered 409 if the first attempt was sent: one email, never two.

`recipient_result` (pure) maps Loops' answer onto what the worker records: sent and duplicate are
delivered; a retry is a deferral no earlier than Loops' Retry-After; a final refusal is a bounce
whose reply names Loops and its message, classed hard (suppressing the address) only when Loops
says the address is invalid, else with Sisimai's reason "undefined", which suppresses nothing.
"""

from __future__ import annotations

import asyncio
import email.errors
import hashlib
import re
from collections.abc import Mapping, Sequence

import aiohttp

from postroom.bounces.model import BounceClass
from postroom.config import DestinationSettings
from postroom.core.clock import Clock
from postroom.core.types import LOOPS_ROUTE, RecipientResult, Verdict
from postroom.delivery.transport import Attempt, Route
from postroom.loops.settings import LoopsSettings
from postroom.metrics import Metrics
from postroom.queue.models import QueuedMessage
from postroom.ratelimit.quota import parse_quota
from postroom.ratelimit.table import RateTable
from postroom.shadow.loops_attachments import attachments_of
from postroom.shadow.loops_client import (
    MAX_IDEMPOTENCY_KEY,
    LoopsAnswer,
    LoopsAttachment,
    LoopsClient,
    Outcome,
    TransactionalRequest,
)
from postroom.shadow.loops_rate import LoopsRateGate

LARGE_MESSAGE = 64 * 1024  # parsed for its attachments off the event loop from this size on
# Loops' refusals that are about the address itself ("Invalid email address", "email is not valid").
# Only these exact phrasings: "Invalid dataVariables for email ..." is about the data, not the address.
_INVALID_ADDRESS = re.compile(
    r"\b(invalid|malformed)\s+(e-?mail|recipient)(\s+address)?\b(?!\s+template)"
    r"|\b(e-?mail|recipient)(\s+address)?\s+(is\s+)?(invalid|not\s+(a\s+)?valid|malformed)\b",
    re.IGNORECASE,
)


def idempotency_key(message_id: str, recipient: str) -> str:
    """The key of one delivery: the same for every attempt, unique per (message, recipient), at
    most Loops' 100 characters (a long or non-ASCII address is replaced by its hash)."""
    key = f"postroom-{message_id}-{recipient}"
    if len(key) <= MAX_IDEMPOTENCY_KEY and key.isascii() and key.isprintable():
        return key
    return f"postroom-{message_id}-{hashlib.sha256(recipient.encode()).hexdigest()[:40]}"


def address_refused(message: str) -> bool:
    """Whether Loops' refusal says the recipient's address is invalid (a hard bounce)."""
    return bool(_INVALID_ADDRESS.search(message))


def _reply(answer: LoopsAnswer) -> str:
    return f"Loops {answer.status}: {answer.message}" if answer.status is not None else f"Loops: {answer.message}"


def recipient_result(recipient: str, answer: LoopsAnswer, transactional_id: str, key: str, now: float) -> RecipientResult:
    """What the worker records for `recipient` after Loops' `answer` (pure)."""
    if answer.outcome is Outcome.SENT:
        return RecipientResult(recipient, Verdict.DELIVERED, f"Loops {answer.status}: sent as {transactional_id}")
    if answer.outcome is Outcome.DUPLICATE:
        return RecipientResult(recipient, Verdict.DELIVERED,
                               f"Loops 409: sent before (Idempotency-Key {key} already used)")  # fmt: skip
    if answer.outcome is Outcome.RETRY:
        reason = ("speeding" if answer.status == 429 else "networkerror" if answer.status is None
                  else "systemerror")  # fmt: skip
        details: dict[str, object] = {"reason": reason, "bounce_class": BounceClass.SOFT.value}
        if answer.retry_after:
            details["not_before"] = now + answer.retry_after
        return RecipientResult(recipient, Verdict.DEFERRED, _reply(answer), details)
    if address_refused(answer.message):
        details = {"reason": "userunknown", "bounce_class": BounceClass.HARD.value}
    else:
        details = {"reason": "undefined", "bounce_class": BounceClass.SOFT.value}
    return RecipientResult(recipient, Verdict.BOUNCED, _reply(answer), details)


def unsendable(recipients: Sequence[str], reason: str) -> Attempt:
    """Every recipient failed for good, without asking Loops, for a reason of our own."""
    details = {"reason": "undefined", "bounce_class": BounceClass.SOFT.value, "local": True}
    return Attempt([RecipientResult(r, Verdict.BOUNCED, reason, dict(details)) for r in recipients])


class LoopsTransport:
    """Delivers through Loops: one destination ("loops") for every recipient domain."""

    def __init__(self, client: LoopsClient, templates: Mapping[str, str], clock: Clock, concurrency: int = 10):
        self._client = client
        self._templates = dict(templates)
        self._clock = clock
        # Requests in flight at once; their rate is the client's shared limit, not the lane's.
        self._route = Route(LOOPS_ROUTE, DestinationSettings(match="*", max_connections=max(1, concurrency)))

    async def route(self, domain: str) -> Route:
        return self._route

    async def send(
        self, route: Route, message: QueuedMessage, content: bytes, recipients: Sequence[str],
        mail_from: str,
    ) -> Attempt:
        if message.template_id is None:
            return unsendable(recipients, "not sent through Loops: the message was not rendered from a "
                                          "template, so there is no Loops transactionalId for it")  # fmt: skip
        transactional_id = self._templates.get(message.template_id)
        if transactional_id is None:
            return unsendable(recipients, f"not sent through Loops: no Loops transactionalId for template "
                                          f"{message.template_id} ([loops.templates])")  # fmt: skip
        try:
            attachments = await self._attachments(content)
        except (ValueError, IndexError, LookupError, email.errors.MessageError) as exc:
            # The stored message's MIME structure is beyond the email package: the same on any retry.
            return unsendable(recipients, f"not sent through Loops: its attachments could not be read "
                                          f"({type(exc).__name__})")  # fmt: skip
        results: list[RecipientResult] = []
        unreachable: str | None = None
        for recipient in recipients:
            if unreachable is not None:  # Loops cannot be reached: the rest wait with the first
                results.append(RecipientResult(recipient, Verdict.DEFERRED, f"Loops: {unreachable}",
                                               {"reason": "networkerror", "bounce_class": "soft"}))  # fmt: skip
                continue
            key = idempotency_key(message.id, recipient)
            answer = await self._client.send(TransactionalRequest(
                transactional_id, recipient, key, message.template_data or {}, attachments,
            ))  # fmt: skip
            results.append(recipient_result(recipient, answer, transactional_id, key, self._clock.now()))
            if answer.unreachable:
                unreachable = answer.message
        return Attempt(results, unreachable=unreachable)

    @staticmethod
    async def _attachments(content: bytes) -> list[LoopsAttachment]:
        if len(content) >= LARGE_MESSAGE:
            return await asyncio.to_thread(attachments_of, content)
        return attachments_of(content)

    def sweep(self) -> None:
        return None

    async def close(self) -> None:
        return None  # the HTTP session is the composition root's, closed with it


def build_loops_transport(
    settings: LoopsSettings, session: aiohttp.ClientSession, table: RateTable, clock: Clock, metrics: Metrics
) -> LoopsTransport:
    """The transport `[loops]` describes, its rate limit kept in `table` (shared between processes
    or the process's own)."""
    quota = parse_quota(settings.rate_limit)
    gate = LoopsRateGate(table, quota, clock, metrics, max_wait=max(settings.timeout, 3 * quota.interval))
    client = LoopsClient(session, settings.base_url, settings.api_key, gate, clock, metrics, settings.timeout)
    return LoopsTransport(client, settings.templates, clock, concurrency=min(quota.count, 20))
