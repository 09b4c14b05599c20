"""`SubmissionService`: the one door into the queue (see the package docstring).

Plain submissions go through group commit (one fsync for every message that arrived while the
previous one was being written); a submission with an idempotency key takes its own transaction,
because the key check and the insert must commit together. Without a committer (the command line)
each submission is written in its own transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from postroom.core.clock import Clock
from postroom.core.errors import ConflictError, StoreError
from postroom.core.types import IdempotencyKey, Submission
from postroom.metrics import Metrics
from postroom.queue.committer import GroupCommitter
from postroom.queue.protocols import Queued, QueueStore
from postroom.submission.outcome import Accepted, Caller, Outcome, Refusal
from postroom.submission.steps import Step

logger = logging.getLogger(__name__)

STORE_UNAVAILABLE = Refusal(False, "store_unavailable", "the queue is unavailable; try again later")


class SubmissionService:
    def __init__(
        self,
        steps: Sequence[Step],
        store: QueueStore,
        clock: Clock,
        metrics: Metrics,
        committer: GroupCommitter | None = None,
    ):
        self._steps = tuple(steps)
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._committer = committer

    async def submit(
        self, submission: Submission, caller: Caller, idempotency: IdempotencyKey | None = None
    ) -> Outcome:
        """Run the steps, then queue; the answer once the message is on disk, or why not."""
        for step in self._steps:
            result = await step(submission, caller)
            if isinstance(result, Refusal):
                return self._refused(result, caller)
            submission = result
        try:
            if idempotency is not None:
                queued = await self._store.insert_idempotent(submission, idempotency, self._clock.now())
            elif self._committer is not None:
                queued = await self._committer.submit(submission)
            else:
                inserted = await self._store.insert_leased([submission], self._clock.now(), None)
                queued = Queued(inserted.ids[0], True, inserted.submissions[0])
        except ConflictError as exc:
            return self._refused(Refusal(True, "idempotency_conflict", str(exc)), caller)
        except StoreError as exc:
            logger.error("could not queue a message from %s: %s", caller.identity or caller.source, exc)
            return self._refused(STORE_UNAVAILABLE, caller)
        queued_as = queued.submission
        if queued.created:
            self._metrics.accepted.labels(caller.source, submission.stream, submission.route).inc()
            for why in queued_as.suppressed.values():
                self._metrics.suppressed.labels(submission.stream, why.get("source", "")).inc()
        suppressed = {address: dict(why) for address, why in queued_as.suppressed.items()}
        return Accepted(queued.message_id, len(queued_as.recipients), queued.created, suppressed)

    def _refused(self, refusal: Refusal, caller: Caller) -> Refusal:
        self._metrics.rejected.labels(caller.source, refusal.code).inc()
        return refusal
