"""From a recipient's result to the state recorded for its delivery, and the writer that records
outcomes in batches. `decide` and `postpone` are pure; `OutcomeWriter` groups the releases of many
concurrent transactions into few database transactions, the way the group committer does for
submissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence

from postroom.bounces.classify import classify_reply, find_reply_code
from postroom.bounces.model import BounceClass
from postroom.core.clock import Clock
from postroom.core.errors import StoreError
from postroom.core.types import DeliveryState, RecipientResult, Verdict
from postroom.metrics import Metrics
from postroom.queue.models import ClaimedDelivery, QueuedMessage, Release
from postroom.queue.retry import RetryPolicy, next_attempt_at
from postroom.queue.protocols import QueueStore

logger = logging.getLogger(__name__)

WRITE_RETRY_SECONDS = 1.0
# Outcomes wait up to LINGER_SECONDS for company, or until FULL_BATCH of them are pending, so a
# busy worker records them in a few transactions a second instead of one per transaction sent.
# (The mail has left already; only its bookkeeping waits.)
LINGER_SECONDS = 0.05
FULL_BATCH = 1000


def decide(
    claimed: ClaimedDelivery,
    result: RecipientResult,
    policy: RetryPolicy,
    now: float,
    draw: float,
) -> Release:
    """Turn one recipient's result into the state to record."""
    if result.verdict is Verdict.DELIVERED:
        state, when = DeliveryState.DELIVERED, None
    elif result.verdict is Verdict.BOUNCED:
        state, when = DeliveryState.BOUNCED, None
    else:
        when = next_attempt_at(policy, claimed.attempts + 1, claimed.accepted_at, now, draw)
        # A peer that said when to come back (an API's Retry-After) is not asked again before.
        not_before = result.details.get("not_before")
        if when is not None and isinstance(not_before, (int, float)) and not_before > when:
            when = not_before if not_before - claimed.accepted_at <= policy.max_age else None
        state = DeliveryState.DEFERRED if when is not None else DeliveryState.EXPIRED
    reply = result.reply
    details = dict(result.details)
    if state is not DeliveryState.DELIVERED:
        details.update(failure_reason(state, result))
    if state is DeliveryState.EXPIRED:
        reply = f"expired after {claimed.attempts + 1} attempts; last reply: {result.reply}"
    return Release(
        claimed.id, claimed.message_id, claimed.recipient, state, reply, when, details, route=claimed.route,
    )  # fmt: skip


def failure_reason(state: DeliveryState, result: RecipientResult) -> dict[str, str]:
    """The reason and class of a failed attempt, by the classifier that reads bounces that come back
    later (postroom.bounces.classify), so a recipient's reason is the same either way."""
    if state is DeliveryState.EXPIRED:
        return {"reason": "expired", "bounce_class": BounceClass.SOFT.value}
    given_reason, given_class = result.details.get("reason"), result.details.get("bounce_class")
    if isinstance(given_reason, str) and isinstance(given_class, str):
        # A transport whose peer is not an SMTP server (Loops' API) classifies its own answers.
        return {"reason": given_reason, "bounce_class": given_class}
    code = result.details.get("code")
    if code is None and not result.details.get("local") and find_reply_code(result.reply) is None:
        # No SMTP reply at all: the connection failed (refused, timed out, TLS), whatever the words.
        return {"reason": "networkerror", "bounce_class": BounceClass.SOFT.value}
    status = result.details.get("status")
    command = result.details.get("command")
    reason, bounce_class = classify_reply(code if isinstance(code, int) else None,
                                          status if isinstance(status, str) else None, result.reply,
                                          command if isinstance(command, str) else None)  # fmt: skip
    return {"reason": reason, "bounce_class": bounce_class.value}


def postpone(claimed: ClaimedDelivery, until: float, reason: str) -> Release:
    """Hand a delivery back untried, due at `until` (its attempt count is unchanged)."""
    state = DeliveryState.DEFERRED if claimed.attempts else DeliveryState.QUEUED
    return Release(
        claimed.id, claimed.message_id, claimed.recipient, state, reason, until,
        {"postponed": True}, tried=False, route=claimed.route,
    )  # fmt: skip


def signature_to_keep(message: QueuedMessage, sent: bytes, releases: Sequence[Release]) -> dict[str, bytes]:
    """The DKIM-Signature fields an attempt sent (`sent` is the signed message), when a recipient
    will be tried again and none are kept yet: the retry then sends the same bytes rather than
    signing again."""
    retried = any(r.state is DeliveryState.DEFERRED for r in releases)
    if not retried or message.signature is not None or len(sent) <= len(message.content):
        return {}
    if not sent.endswith(message.content):
        return {}
    return {message.id: sent[: len(sent) - len(message.content)]}


def count_outcomes(
    metrics: Metrics, outcomes: Sequence[Release], messages: Mapping[str, QueuedMessage], now: float
) -> None:
    """Count recorded attempts by result, stream and route (untried hand-backs are not attempts)."""
    for outcome in outcomes:
        if not outcome.tried:
            continue
        message = messages.get(outcome.message_id)
        stream = message.stream if message else "unknown"
        route = outcome.route
        metrics.attempted.labels(outcome.state.value).inc()
        if outcome.state is DeliveryState.DELIVERED:
            metrics.delivered.labels(stream, route).inc()
            if message is not None:
                metrics.latency.labels(stream).observe(max(0.0, now - message.created_at))
        elif outcome.state is DeliveryState.DEFERRED:
            metrics.deferred.labels(stream, route).inc()
        elif outcome.state is DeliveryState.BOUNCED:
            metrics.bounced.labels(stream, route, "hard", "rejected").inc()
        elif outcome.state is DeliveryState.EXPIRED:
            metrics.bounced.labels(stream, route, "soft", "expired").inc()


class OutcomeWriter:
    """Collects releases and writes them in batches: whatever arrived while the previous write
    ran goes in the next one. A failed write is retried (the leases are still ours until they
    expire, and a release of a lease that was reaped records nothing)."""

    def __init__(
        self,
        store: QueueStore,
        owner: str,
        clock: Clock,
        on_written: Callable[[Sequence[Release]], None],
    ):
        self._store = store
        self._owner = owner
        self._clock = clock
        self._on_written = on_written
        self._pending: list[Release] = []
        self._signatures: dict[str, bytes] = {}
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()

    def add(self, releases: Sequence[Release], signatures: Mapping[str, bytes] | None = None) -> None:
        """Queue outcomes to record, and DKIM signatures to keep with their messages."""
        if signatures:
            self._signatures.update(signatures)
        if releases:
            self._pending.extend(releases)
            self._arrived.set()
            if len(self._pending) >= FULL_BATCH:
                self._full.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Write until `stop` is set and nothing is left."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                if not self._pending:
                    if stop.is_set():
                        return
                    arrived = asyncio.ensure_future(self._arrived.wait())
                    await asyncio.wait({arrived, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    arrived.cancel()
                    self._arrived.clear()
                    continue
                if not stop.is_set() and len(self._pending) < FULL_BATCH:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), LINGER_SECONDS)
                self._full.clear()
                if not await self.write_pending():
                    await asyncio.sleep(WRITE_RETRY_SECONDS)
        finally:
            stopping.cancel()

    async def write_pending(self) -> bool:
        """Write what is pending now; False when the database refused (it stays pending)."""
        batch, self._pending = self._pending, []
        signatures, self._signatures = self._signatures, {}
        if not batch:
            return True
        try:
            await self._store.release(self._owner, batch, self._clock.now(), signatures)
        except StoreError as exc:
            logger.warning("delivery outcomes not recorded yet (%d): %s", len(batch), exc)
            self._pending[:0] = batch
            self._signatures = {**signatures, **self._signatures}
            return False
        self._on_written(batch)
        return True

    async def flush(self) -> None:
        """Write everything pending (the drain path, without the background loop)."""
        while self._pending:
            if not await self.write_pending():
                await asyncio.sleep(WRITE_RETRY_SECONDS)
