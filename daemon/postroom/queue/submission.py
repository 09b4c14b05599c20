"""`SubmissionService`: the one door into the queue for every ingress (SMTP, HTTP, CLI).

Plain submissions go through group commit; submissions with an idempotency key take their own
transaction, because the key check and the insert must commit together. Suppression checks and
shadow routing slot in here as those features land.
"""

from __future__ import annotations

from postroom.core.clock import Clock
from postroom.core.types import IdempotencyKey, Submission
from postroom.queue.committer import GroupCommitter
from postroom.queue.store import SqlQueueStore


class SubmissionService:
    def __init__(
        self, committer: GroupCommitter, store: SqlQueueStore, clock: Clock
    ):
        self._committer = committer
        self._store = store
        self._clock = clock

    async def submit(self, submission: Submission) -> str:
        """Queue the message; return its id once it is on disk."""
        return await self._committer.submit(submission)

    async def submit_once(
        self, submission: Submission, key: IdempotencyKey
    ) -> tuple[str, bool]:
        """Queue unless the key was seen in the last 24 h: (message id, newly created)."""
        return await self._store.insert_idempotent(submission, key, self._clock.now())
