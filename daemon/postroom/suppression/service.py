"""`SuppressionService`: the suppression list as the rest of postroom uses it.

- `SuppressionScreen` is the queue's recipient screen: suppressed recipients are taken out of the
  recipients to send to and recorded on the submission (`Submission.suppressed`) in the
  transaction that queues it, so the queue writes them as `suppressed` deliveries with a
  `suppressed` event; never silently dropped.
- `SuppressionConsumer` reads `bounced` and `complained` events from the event outbox and applies
  `rules.decide`; its writes commit with the outbox cursor (exactly once).
- The service itself serves the HTTP API, the CLI, the Loops-compatible contacts API
  (`SuppressionList`: `is_suppressed`, `lift`) and one-click unsubscribes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from postroom.core.clock import Clock
from postroom.core.types import Submission
from postroom.events.models import Event
from postroom.metrics import Metrics
from postroom.suppression.model import Entry, NewEntry, first_matches, lookup_keys
from postroom.suppression.rules import GLOBAL, Action, SoftPolicy, decide, soft_limit_reached, stream_scope
from postroom.suppression.sql_store import SqlSuppressionStore, entries_of_rows, live_entry_queries

logger = logging.getLogger(__name__)

# Reads a reason out of a delivery's SMTP reply when its event carries none (events written before
# attempts carried the classifier's reason): `bounces.classify.reason_of_reply`.
ReasonOfReply = Callable[[str], str | None]


class SuppressionService:
    def __init__(self, store: SqlSuppressionStore, clock: Clock, metrics: Metrics):
        self.store = store
        self._clock = clock
        self._metrics = metrics

    async def check(self, recipients: Sequence[str], stream: str) -> dict[str, Entry]:
        """The entry suppressing each of `recipients` for `stream`, if any."""
        return await self.store.matching(recipients, (GLOBAL, stream_scope(stream)), self._clock.now())

    async def add(self, entries: Sequence[NewEntry]) -> int:
        written = await self.store.add(entries, self._clock.now())
        for item in entries:
            self._metrics.suppressions_added.labels(item.source).inc()
        return written

    async def remove(self, address: str, scope: str | None = None, by: str = "") -> int:
        removed = await self.store.remove(address, scope)
        if removed:
            self._metrics.suppressions_removed.labels("manual").inc(removed)
            logger.info("suppression of %s lifted (%d entries) by %s", address, removed, by or "unknown")
        return removed

    async def erase(self, address: str) -> int:
        return await self.store.erase(address)

    async def search(self, **filters: Any) -> list[Entry]:
        return await self.store.search(now=self._clock.now(), **filters)

    async def unsubscribe(self, entry: NewEntry, message_id: str) -> None:
        await self.store.unsubscribe(entry, message_id, self._clock.now())
        self._metrics.suppressions_added.labels("unsubscribe").inc()

    # `loops.contact_routes.SuppressionList`

    async def is_suppressed(self, address: str) -> bool:
        found = await self.store.search(now=self._clock.now(), address=address, limit=1)
        return bool(found)

    async def lift(self, address: str, by: str) -> bool:
        return await self.remove(address, None, by) > 0


class SuppressionScreen:
    """The queue's recipient screen (`queue.protocols.RecipientScreen`): recipients suppressed
    globally or for the message's stream are not sent to, and are reported. It runs inside the
    transaction that queues the batch, so an entry committed before a message is queued is
    always honoured, and the check costs one indexed read per batch."""

    def reads(self, batch: Sequence[Submission], now: float) -> list[sa.Select[Any]]:
        keys = lookup_keys(recipient for item in batch for recipient in item.recipients)
        if not keys:
            return []
        return live_entry_queries(keys, {GLOBAL} | {stream_scope(item.stream) for item in batch}, now)

    def apply(self, batch: Sequence[Submission], rows: Sequence[Sequence[Any]]) -> list[Submission]:
        entries = entries_of_rows(rows)
        return [self._screened(item, entries) for item in batch]

    @staticmethod
    def _screened(submission: Submission, entries: list[tuple[str, Entry]]) -> Submission:
        found = first_matches(submission.recipients, (GLOBAL, stream_scope(submission.stream)), entries)
        if not found:
            return submission
        skipped = {recipient: {"scope": entry.scope, "reason": entry.reason, "source": entry.source}
                   for recipient, entry in found.items()}  # fmt: skip
        return dataclasses.replace(
            submission,
            recipients=tuple(r for r in submission.recipients if r not in skipped),
            suppressed={**submission.suppressed, **skipped},
        )


class SuppressionConsumer:
    """The event outbox consumer that turns bounces and complaints into entries."""

    name = "suppression"

    def __init__(self, policy: SoftPolicy, metrics: Metrics, reason_of_reply: ReasonOfReply):
        self._policy = policy
        self._metrics = metrics
        self._reason_of_reply = reason_of_reply

    async def handle(self, events: Sequence[Event], tx: AsyncConnection) -> None:
        for event in events:
            if event.type not in ("bounced", "complained") or not event.recipient:
                continue
            detail = event.detail
            reason = detail.get("reason")
            if not reason and event.type == "bounced":
                reason = self._reason_of_reply(str(detail.get("reply", "")))
            decision = decide(event.type, reason, detail.get("bounce_class"), self._policy)
            record = detail.get("bounce_record_id")
            entry = NewEntry(event.recipient, decision.scope, decision.source, decision.reason,
                             record if isinstance(record, int) else None, "events")  # fmt: skip
            if decision.action is Action.SUPPRESS:
                await SqlSuppressionStore.add_in(tx, [entry], event.at)
                self._metrics.suppressions_added.labels(decision.source).inc()
            elif decision.action is Action.COUNT_SOFT:
                recent = await SqlSuppressionStore.count_soft_failure_in(
                    tx, event.recipient, decision.reason, event.at, self._policy.window)
                if soft_limit_reached(recent, self._policy):
                    lasts = decision.expires_after or self._policy.lasts
                    entry = dataclasses.replace(entry, expires_at=event.at + lasts,
                                                reason=f"{decision.reason} x{recent}")  # fmt: skip
                    await SqlSuppressionStore.add_in(tx, [entry], event.at)
                    self._metrics.suppressions_added.labels(decision.source).inc()
            elif decision.action is Action.SENDER_ALERT:
                self._metrics.sender_reputation_bounces.labels(decision.reason).inc()
