"""Group commit: many submissions, one transaction, one fsync.

Each ingress call waits on a future; a single task writes whatever has gathered while the previous
transaction was being committed. With a `Handoff` (the process's delivery worker, when it has room)
the deliveries are written already leased to that worker and handed to it in memory: no claim
transaction and no reading the content back for mail this process just accepted. Under load batches grow by themselves; at low load a batch is one
message and adds no delay. Every caller learns its own result: a failed commit fails the whole batch,
so no caller is told 250 for a message that is not on disk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from postroom.core.clock import Clock
from postroom.core.errors import StoreError
from postroom.core.types import Submission
from postroom.queue.models import ClaimedDelivery, QueuedMessage
from postroom.queue.protocols import Queued, QueueStore
from postroom.queue.statements import Lease

logger = logging.getLogger(__name__)


class Handoff(Protocol):
    """A local delivery worker that takes freshly committed mail straight from the committer."""

    def lease_for(self, deliveries: int) -> Lease | None:
        """A lease to write these deliveries under, or None to queue them for any worker."""
        ...

    def take(self, messages: list[QueuedMessage], claimed: list[ClaimedDelivery]) -> None:
        """The committed messages and their deliveries, leased as `lease_for` said."""
        ...


@dataclass
class _Pending:
    submission: Submission
    done: asyncio.Future[Queued]


class GroupCommitter:
    def __init__(
        self,
        store: QueueStore,
        clock: Clock,
        *,
        max_batch: int = 256,
        on_commit: Callable[[list[Submission], float], None] = lambda batch, seconds: None,
        handoff: Handoff | None = None,
    ):
        self._store = store
        self._handoff = handoff
        self._clock = clock
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._pending: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._running = False

    async def submit(self, submission: Submission) -> Queued:
        """The message as queued (its id, and its recipients as the queue's screen left them) once
        it is committed; raise StoreError if it cannot be."""
        if not self._running:
            raise StoreError("the queue is not accepting messages (shutting down)")
        future: asyncio.Future[Queued] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(submission, future))
        self._wakeup.set()
        return await future

    async def run(self, stop: asyncio.Event) -> None:
        """Commit batches until `stop` is set and everything already submitted is written."""
        self._running = True
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                if not self._pending:
                    if stop.is_set():
                        break
                    self._wakeup.clear()
                    waiter = asyncio.ensure_future(self._wakeup.wait())
                    await asyncio.wait({waiter, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    continue
                if stop.is_set():
                    self._running = False
                batch, self._pending = (
                    self._pending[: self._max_batch],
                    self._pending[self._max_batch :],
                )
                await self._commit(batch)
                # Let go of the messages now, not when the next batch arrives: a burst of large
                # ones would otherwise stay in memory while the process is idle.
                del batch
        finally:
            self._running = False
            stopping.cancel()
            for item in self._pending:
                if not item.done.done():
                    item.done.set_exception(StoreError("the queue stopped before this commit"))
            self._pending = []

    async def _commit(self, batch: list[_Pending]) -> None:
        live = [item for item in batch if not item.done.done()]
        if not live:
            return
        submissions = [item.submission for item in live]
        started = time.perf_counter()
        now = self._clock.now()
        lease = None
        if self._handoff is not None:
            lease = self._handoff.lease_for(sum(len(s.recipients) for s in submissions))
        try:
            ids, claimed, submissions = await self._store.insert_leased(submissions, now, lease)
        except StoreError as exc:
            logger.error("group commit of %d messages failed: %s", len(live), exc)
            for item in live:
                if not item.done.done():
                    item.done.set_exception(exc)
            return
        except Exception as exc:  # a bug must not strand callers waiting on their futures
            logger.exception("group commit crashed")
            failure = StoreError(f"commit failed: {type(exc).__name__}")
            for item in live:
                if not item.done.done():
                    item.done.set_exception(failure)
            return
        for item, message_id, queued in zip(live, ids, submissions):
            if not item.done.done():
                item.done.set_result(Queued(message_id, True, queued))
        self._on_commit(submissions, time.perf_counter() - started)
        if self._handoff is not None and claimed:
            messages = [
                QueuedMessage(message_id, s.mail_from, s.content, s.stream, s.route, now, s.header_from,
                              template_id=s.template[0] if s.template else None,
                              template_data=dict(s.template_data) if s.template_data is not None else None)
                for message_id, s in zip(ids, submissions)
            ]
            try:
                self._handoff.take(messages, claimed)
            except Exception:  # committed and acknowledged: the leases run out, the reaper retries
                logger.exception("handing %d committed messages to the worker failed", len(messages))
