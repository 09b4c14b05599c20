"""`EventOutbox`: hands committed events to registered consumers in commit order, each through
its own durable cursor, so features (webhooks, PostHog capture, suppression, reports) read the
event stream instead of being called from the delivery path.

One round gives every consumer at most one batch. A batch is one write transaction: lock the
consumer's cursor row (`FOR UPDATE SKIP LOCKED`: on PostgreSQL a daemon that finds it locked
leaves this round to the daemon holding it; on SQLite the write gate and BEGIN IMMEDIATE
serialise writers anyway), read the events after it, call `handle(events, tx)`, move the cursor,
commit. A crash anywhere (kill -9 included) leaves either the whole batch committed, consumer
writes and cursor together, or none of it, and then the batch is handed over again.

A consumer that raises has its batch rolled back and retried after a delay that doubles up to
`retry_max`; after `stuck_after` failures in a row it is reported stuck (metric, error log) and
keeps being retried at the capped delay. It never holds up the other consumers nor stops the
daemon. Database errors outside consumer code pause the whole outbox with the same backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postroom.core.clock import Clock
from postroom.core.errors import StoreError
from postroom.events import cursors
from postroom.events.models import (
    MAX_CONSUMER_NAME,
    CursorStatus,
    Event,
    EventConsumer,
    Position,
    Subscription,
)
from postroom.metrics import Metrics
from postroom.store.engine import WriteGate, read_only, translate_errors

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutboxOptions:
    batch_size: int = 500  # events per consumer per transaction
    poll_interval: float = 1.0  # seconds between looks for new events when idle (`wake` is sooner)
    # Seconds between rounds while events keep coming (a round that found fewer than a batch):
    # events gather into batches instead of every commit costing each consumer a write
    # transaction, which under ingest load took the write lock from the queue's group commits.
    linger: float = 0.5
    retry_base: float = 1.0  # delay after a first failure (of a consumer, or of the database)
    retry_max: float = 300.0  # cap of the doubling delay
    stuck_after: int = 5  # failures of one batch in a row before the consumer is reported stuck
    lag_interval: float = 15.0  # seconds between refreshes of the lag gauges in `run`

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.poll_interval <= 0 or self.lag_interval <= 0:
            raise ValueError("poll_interval and lag_interval must be positive")
        if self.linger < 0:
            raise ValueError("linger must be >= 0")
        if self.retry_base < 0 or self.retry_max < self.retry_base:
            raise ValueError("retry_base must be >= 0 and retry_max >= retry_base")
        if self.stuck_after < 1:
            raise ValueError("stuck_after must be at least 1")


@dataclass
class _ConsumerState:
    failures: int = 0  # failures in a row in this process
    retry_at: float = 0.0  # clock time before which the consumer is not tried again


class _BatchFailed(Exception):
    """The consumer raised (or left its transaction unusable): roll the batch back."""

    def __init__(self, position: Position, batch: list[Event]):
        super().__init__(f"batch of {len(batch)} events after {position}")
        self.position = position
        self.batch = batch


class EventOutbox:
    def __init__(
        self,
        engine: AsyncEngine,
        gate: WriteGate,
        clock: Clock,
        metrics: Metrics,
        consumers: Iterable[EventConsumer | Subscription],
        options: OutboxOptions | None = None,
    ):
        self._engine = engine
        self._reads = read_only(engine)
        self._gate = gate
        self._clock = clock
        self._metrics = metrics
        self._options = options or OutboxOptions()
        self._subscriptions = [c if isinstance(c, Subscription) else Subscription(c) for c in consumers]
        self._states: dict[str, _ConsumerState] = {}
        for subscription in self._subscriptions:
            name = subscription.consumer.name
            if not name or len(name) > MAX_CONSUMER_NAME:
                raise ValueError(f"event consumer name {name!r}: 1 to {MAX_CONSUMER_NAME} characters")
            if name in self._states:
                raise ValueError(f"two event consumers are named {name!r}")
            self._states[name] = _ConsumerState()
            # Export every series from the start, at 0.
            metrics.events_consumed.labels(name)
            metrics.event_consumer_failures.labels(name)
            metrics.event_consumer_stuck.labels(name).set(0)
        self._wakeup = asyncio.Event()
        self._backlog = False  # a consumer got a full batch in the last round: more is waiting

    @property
    def consumers(self) -> list[str]:
        return list(self._states)

    # -- the loop -------------------------------------------------------------------------

    def wake(self) -> None:
        """Look for events now instead of at the next poll (in-process nudge after a commit)."""
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop`. A batch in flight is finished (consumers are quick by contract);
        stopping between batches loses nothing, since the cursors are in the database."""
        store_failures = 0
        next_lag_refresh = self._clock.now()
        while not stop.is_set():
            self._wakeup.clear()
            try:
                consumed = await self.run_once()
            except StoreError as exc:
                store_failures += 1
                delay = self._backoff(store_failures)
                logger.warning("event outbox paused for %.1f s: %s", delay, exc)
                await self._wait(stop, delay, wakeable=False)
                continue
            store_failures = 0
            if self._clock.now() >= next_lag_refresh:
                try:
                    await self.refresh_lag()
                except StoreError as exc:  # the gauges wait for the next refresh
                    logger.warning("event consumer lag not refreshed: %s", exc)
                next_lag_refresh = self._clock.now() + self._options.lag_interval
            if consumed == 0:
                await self._wait(stop, self._idle_seconds(), wakeable=True)
            elif not self._backlog:
                await self._wait(stop, min(self._options.linger, self._idle_seconds()), wakeable=False)

    async def run_once(self) -> int:
        """Give each consumer that is not waiting out a failure at most one batch; return the
        number of events consumed. A database error is raised after every consumer had its turn."""
        total = 0
        failed: StoreError | None = None
        self._backlog = False
        for subscription in self._subscriptions:
            try:
                consumed = await self._consume(subscription)
            except StoreError as exc:
                failed = failed or exc
                continue
            total += consumed
            self._backlog = self._backlog or consumed >= self._options.batch_size
        if failed is not None:
            raise failed
        return total

    async def drain(self) -> int:
        """Consume until no consumer gets anything more; return the number of events consumed.
        The test mode: no background loop, no sleeps (a failed consumer waits for the clock)."""
        total = 0
        while consumed := await self.run_once():
            total += consumed
        return total

    async def refresh_lag(self) -> list[CursorStatus]:
        """Set the lag gauges of this outbox's consumers from the database; return all cursors."""
        statuses = await cursors.cursor_statuses(self._engine, self._clock.now())
        for status in statuses:
            if status.consumer in self._states:
                self._metrics.event_consumer_lag.labels(status.consumer).set(status.pending)
                self._metrics.event_consumer_lag_seconds.labels(status.consumer).set(
                    status.lag_seconds
                )
        return statuses

    # -- one consumer ---------------------------------------------------------------------

    async def _consume(self, subscription: Subscription) -> int:
        name = subscription.consumer.name
        state = self._states[name]
        if state.retry_at > self._clock.now():
            return 0
        # A look without locking first: an idle outbox then takes no write lock (SQLite) and
        # no transaction id (PostgreSQL) per consumer per poll.
        with translate_errors(f"looking for events for consumer {name}"):
            async with self._reads.connect() as conn:
                position = await cursors.read_cursor(conn, name)
                if position is not None and not await cursors.has_events_after(conn, position):
                    return 0
        if position is None:
            with translate_errors(f"creating the event cursor of consumer {name}"):
                async with self._write() as tx:
                    await cursors.create_cursor(tx, name, subscription.start, self._clock.now())
        try:
            batch = await self._consume_batch(subscription)
        except _BatchFailed as failed:
            await self._failed(name, state, failed)
            return 0
        if batch:
            self._metrics.events_consumed.labels(name).inc(len(batch))
            if state.failures:
                logger.info("event consumer %s recovered after %d failures", name, state.failures)
                self._metrics.event_consumer_stuck.labels(name).set(0)
            state.failures = 0
            state.retry_at = 0.0
        return len(batch)

    async def _consume_batch(self, subscription: Subscription) -> list[Event]:
        consumer = subscription.consumer
        with translate_errors(f"consuming events for consumer {consumer.name}"):
            async with self._write() as tx:
                position = await cursors.lock_cursor(tx, consumer.name)
                if position is None:
                    return []  # another daemon is consuming for it right now
                batch = await cursors.read_batch(tx, position, self._options.batch_size)
                if not batch:
                    return []
                try:
                    await consumer.handle(batch, tx)
                    # In the consumer's part too: it fails when the consumer left `tx` unusable.
                    await cursors.advance(tx, consumer.name, batch[-1].position, len(batch),
                                          self._clock.now())  # fmt: skip
                except Exception as exc:
                    raise _BatchFailed(position, batch) from exc
        return batch  # committed: the consumer's writes and the cursor together

    async def _failed(self, name: str, state: _ConsumerState, failed: _BatchFailed) -> None:
        error = failed.__cause__ or failed
        state.failures += 1
        delay = self._backoff(state.failures)
        state.retry_at = self._clock.now() + delay
        self._metrics.event_consumer_failures.labels(name).inc()
        first, last = failed.batch[0].id, failed.batch[-1].id
        if state.failures == self._options.stuck_after:
            self._metrics.event_consumer_stuck.labels(name).set(1)
            logger.error("event consumer %s is stuck: events %d..%d failed %d times in a row; "
                         "retrying every %.0f s at most", name, first, last, state.failures,
                         self._options.retry_max, exc_info=error)  # fmt: skip
        else:
            logger.warning("event consumer %s failed on events %d..%d (%d in a row), "
                           "retrying in %.1f s", name, first, last, state.failures, delay,
                           exc_info=error)  # fmt: skip
        text = f"{type(error).__name__}: {error}"
        with translate_errors(f"recording a failure of event consumer {name}"):
            async with self._write() as tx:
                await cursors.record_failure(tx, name, failed.position, text, self._clock.now())

    # -- plumbing -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, through the write gate (see WriteGate)."""
        async with self._gate.hold(), self._engine.begin() as tx:
            yield tx

    def _backoff(self, failures: int) -> float:
        doubled = self._options.retry_base * 2 ** min(failures - 1, 32)
        return float(min(doubled, self._options.retry_max))

    def _idle_seconds(self) -> float:
        """Until the next poll, or sooner when a failed consumer is due again."""
        now = self._clock.now()
        due = [s.retry_at - now for s in self._states.values() if s.retry_at > now]
        return max(0.0, min([self._options.poll_interval, *due]))

    async def _wait(self, stop: asyncio.Event, timeout: float, wakeable: bool) -> None:
        waiters = {asyncio.ensure_future(stop.wait())}
        if wakeable:
            waiters.add(asyncio.ensure_future(self._wakeup.wait()))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
