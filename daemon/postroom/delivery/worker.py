"""`DeliveryWorker`: claims due deliveries, sends each message once to all its claimed recipients,
and releases every delivery with its outcome.

Leases are extended while a batch is in flight, so a slow destination does not let another worker
steal live work; if this process dies, the leases run out and the reaper (`run` does it on a timer,
every worker of every daemon may) returns the deliveries to the queue. A message whose processing
raises is parked as dead with the error, never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from postroom.core.clock import Clock
from postroom.core.errors import PostroomError, StoreError
from postroom.core.types import DeliveryState, RecipientResult, Verdict
from postroom.delivery.transport import Transport
from postroom.metrics import Metrics
from postroom.queue.models import ClaimedDelivery, QueuedMessage, Release
from postroom.queue.retry import RetryPolicy, next_attempt_at, system_draw
from postroom.queue.store import SqlQueueStore

logger = logging.getLogger(__name__)

Prepare = Callable[[QueuedMessage], Awaitable[bytes]]


async def send_as_stored(message: QueuedMessage) -> bytes:
    """The default preparation step: the stored bytes as they are (DKIM signing plugs in here)."""
    return message.content


@dataclass(frozen=True)
class WorkerOptions:
    owner: str
    batch_size: int = 200
    lease_seconds: float = 60.0
    poll_interval: float = 1.0
    drain_grace: float = 10.0


def decide(
    claimed: ClaimedDelivery,
    result: RecipientResult,
    policy: RetryPolicy,
    now: float,
    draw: float,
) -> Release:
    """Turn one recipient's result into the state to record: pure, so it is tested on its own."""
    if result.verdict is Verdict.DELIVERED:
        state, when = DeliveryState.DELIVERED, None
    elif result.verdict is Verdict.BOUNCED:
        state, when = DeliveryState.BOUNCED, None
    else:
        when = next_attempt_at(policy, claimed.attempts + 1, claimed.accepted_at, now, draw)
        state = DeliveryState.DEFERRED if when is not None else DeliveryState.EXPIRED
    reply = result.reply
    if state is DeliveryState.EXPIRED:
        reply = f"expired after {claimed.attempts + 1} attempts; last reply: {result.reply}"
    return Release(
        claimed.id, claimed.message_id, claimed.recipient, state, reply, when, dict(result.details)
    )


class DeliveryWorker:
    def __init__(
        self,
        store: SqlQueueStore,
        transport: Transport,
        policy: RetryPolicy,
        clock: Clock,
        metrics: Metrics,
        options: WorkerOptions,
        prepare: Prepare = send_as_stored,
        draw: Callable[[], float] = system_draw,
    ):
        self._store = store
        self._transport = transport
        self._policy = policy
        self._clock = clock
        self._metrics = metrics
        self._options = options
        self._prepare = prepare
        self._draw = draw
        self._wakeup = asyncio.Event()
        self._in_flight: set[int] = set()

    def wake(self) -> None:
        """Called when new work was committed, so the worker does not wait for its poll timer."""
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop`; the batch in flight gets `drain_grace` seconds to finish."""
        heartbeat = asyncio.create_task(self._heartbeat(stop), name="delivery-heartbeat")
        try:
            while not stop.is_set():
                self._wakeup.clear()
                try:
                    await self._reap()
                    batch = asyncio.create_task(self.process_batch())
                    done = await self._until_done_or_stopped(batch, stop)
                except StoreError as exc:
                    logger.warning("delivery paused: %s", exc)
                    done = 0
                if done == 0 and not stop.is_set():
                    await self._idle(stop)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self._transport.close()

    async def _until_done_or_stopped(self, batch: asyncio.Task[int], stop: asyncio.Event) -> int:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({batch, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not batch.done():
            # Stopping: give the batch in flight a bounded grace period. If it does not finish,
            # cancelling is safe: its leases run out and another worker takes the deliveries.
            done, _ = await asyncio.wait({batch}, timeout=self._options.drain_grace)
            if not done:
                batch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await batch
                return 0
        return batch.result()

    async def _idle(self, stop: asyncio.Event) -> None:
        waiters = {asyncio.ensure_future(self._wakeup.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(
                waiters, timeout=self._options.poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _reap(self) -> None:
        reaped = await self._store.reap(self._clock.now())
        if reaped:
            logger.warning("returned %d deliveries with expired leases to the queue", reaped)
            self._metrics.reaped.inc(reaped)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        interval = self._options.lease_seconds / 3
        while not stop.is_set():
            await asyncio.sleep(interval)
            if self._in_flight:
                try:
                    await self._store.extend(
                        self._options.owner,
                        sorted(self._in_flight),
                        self._clock.now() + self._options.lease_seconds,
                    )
                except StoreError as exc:
                    logger.warning("could not extend leases: %s", exc)

    async def drain(self) -> int:
        """Process batches until nothing is due; return the number of deliveries handled.

        The test and CLI mode: no timers, no sleeps.
        """
        total = 0
        while True:
            await self._reap()
            handled = await self.process_batch()
            if handled == 0:
                return total
            total += handled

    async def process_batch(self) -> int:
        """Claim one batch, send it, release it; return how many deliveries were handled."""
        now = self._clock.now()
        claimed = await self._store.claim(
            self._options.owner, self._options.batch_size, now, self._options.lease_seconds
        )
        if not claimed:
            return 0
        self._in_flight.update(d.id for d in claimed)
        try:
            by_message: dict[str, list[ClaimedDelivery]] = defaultdict(list)
            for delivery in claimed:
                by_message[delivery.message_id].append(delivery)
            loaded = await self._store.load_messages(by_message)
            releases = await asyncio.gather(
                *(self._send_one(loaded.get(mid), mid, group) for mid, group in by_message.items())
            )
            outcomes = [release for group in releases for release in group]
            await self._store.release(self._options.owner, outcomes, self._clock.now())
            self._count(outcomes, loaded)
        finally:
            self._in_flight.difference_update(d.id for d in claimed)
        return len(claimed)

    async def _send_one(
        self, message: QueuedMessage | None, message_id: str, group: Sequence[ClaimedDelivery]
    ) -> list[Release]:
        try:
            if message is None:
                raise LookupError(f"message {message_id} has deliveries but no stored content")
            try:
                content = await self._prepare(message)
            except PostroomError as exc:
                # A known, fixable local condition (say a DKIM key that became unreadable): retry
                # later like a temporary failure, rather than park the message or send it unsigned.
                logger.error("cannot prepare message %s: %s", message_id, exc)
                now = self._clock.now()
                return [
                    decide(d, RecipientResult(d.recipient, Verdict.DEFERRED, f"local: {exc}"),
                           self._policy, now, self._draw())
                    for d in group
                ]  # fmt: skip
            results = await self._transport.send(message, content, [d.recipient for d in group])
            by_recipient = {r.recipient: r for r in results}
            now = self._clock.now()
            return [
                decide(d, by_recipient[d.recipient], self._policy, now, self._draw()) for d in group
            ]
        except Exception as exc:
            # A message that crashes the pipeline is parked for a human, never lost or retried hot.
            error = f"{type(exc).__name__}: {exc}"
            logger.exception("message %s crashed delivery; parked as dead", message_id)
            self._metrics.dead.inc()
            await self._store.park(message_id, error)
            return [
                Release(d.id, d.message_id, d.recipient, DeliveryState.DEAD, f"internal error: {error}")
                for d in group
            ]

    def _count(self, outcomes: Sequence[Release], loaded: dict[str, QueuedMessage]) -> None:
        now = self._clock.now()
        for outcome in outcomes:
            message = loaded.get(outcome.message_id)
            stream = message.stream if message else "unknown"
            route = message.route if message else "unknown"
            self._metrics.attempted.labels(outcome.state.value).inc()
            if outcome.state is DeliveryState.DELIVERED:
                self._metrics.delivered.labels(stream, route).inc()
                if message is not None:
                    self._metrics.latency.labels(stream).observe(max(0.0, now - message.created_at))
            elif outcome.state is DeliveryState.DEFERRED:
                self._metrics.deferred.labels(stream, route).inc()
            elif outcome.state is DeliveryState.BOUNCED:
                self._metrics.bounced.labels(stream, route, "hard", "rejected").inc()
            elif outcome.state is DeliveryState.EXPIRED:
                self._metrics.bounced.labels(stream, route, "soft", "expired").inc()
