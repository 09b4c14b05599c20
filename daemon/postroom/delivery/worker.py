"""`DeliveryWorker`: claims due deliveries and sends them through per-destination lanes.

The flow is a pipeline, not a batch loop: the claimer leases due deliveries whenever there is room
(`max_in_flight`), prepares (DKIM-signs) each message once, asks the transport for the route of each
recipient domain and puts one job per (message, destination) into that destination's lane. Each
lane runs up to its rule's connections at once, spaced to its rate, so a slow or dead destination
only ever holds its own lane: the claimer skips the domains of lanes that are suspended or already
have a full backlog, and every outcome is written as soon as it is known, in batches
(`OutcomeWriter`), never waiting for the rest of a claim.

A destination that throttles us (421, rate-limit replies) is slowed down and suspended, one that
cannot be reached at all is suspended, and one past its daily (warm-up) cap waits for the next UTC
day; the deliveries it held are handed back untried, due when it may be tried again.

Each delivery names its route, the transport that sends it (`transports`: "inhouse" is the
configured MX / smarthost / capture path; the Loops route plugs in beside it), and may carry its own
envelope sender (VERP): recipients of one message with the same route, destination and envelope
sender share one transaction, and all of them share the one signing of the message.

Leases are extended while deliveries are held; if this process dies they run out and the reaper
(every worker runs it) returns them to the queue. A message whose processing raises is parked as
dead with the error, never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from postroom.core.clock import Clock
from postroom.core.errors import PostroomError, StoreError
from postroom.core.types import DeliveryState, RecipientResult, Verdict
from postroom.delivery.lanes import Job, Lane
from postroom.delivery.outcomes import OutcomeWriter, count_outcomes, decide, postpone, signature_to_keep
from postroom.delivery.shaping import Health, TokenBucket, share
from postroom.delivery.transport import Route, RouteFailure, Transport
from postroom.metrics import Metrics
from postroom.queue.models import ClaimedDelivery, QueuedMessage, Release
from postroom.queue.retry import RetryPolicy, system_draw
from postroom.queue.protocols import QueueStore
from postroom.queue.statements import Lease

__all__ = ["DeliveryWorker", "WorkerOptions", "decide", "send_as_stored"]

logger = logging.getLogger(__name__)

Prepare = Callable[[QueuedMessage], Awaitable[bytes]]
# The envelope sender of one delivery of a message (VERP, `bounces.return_path`); None: the message's.
ReturnPathFor = Callable[[QueuedMessage, int], str | None]
MAX_EXCLUDED_DOMAINS = 500  # domains held back in one claim query at most


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
    max_in_flight: int = 2000
    processes: int = 1  # host-wide limits are shared by this many processes
    throttle_backoff: float = 60.0
    throttle_backoff_max: float = 3600.0


class DeliveryWorker:
    def __init__(
        self,
        store: QueueStore,
        transports: Mapping[str, Transport],
        policy: RetryPolicy,
        clock: Clock,
        metrics: Metrics,
        options: WorkerOptions,
        prepare: Prepare = send_as_stored,
        draw: Callable[[], float] = system_draw,
        return_path: ReturnPathFor | None = None,
    ):
        self._store = store
        self._return_path = return_path
        self._transports = dict(transports)
        self._policy = policy
        self._clock = clock
        self._metrics = metrics
        self._options = options
        self._prepare = prepare
        self._draw = draw
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._in_flight: set[int] = set()
        self._lanes: dict[str, Lane] = {}
        self._runners: set[asyncio.Task[None]] = set()  # one per busy connection of a lane
        self._routing: set[asyncio.Task[None]] = set()  # claimed mail waiting for its route
        # Messages whose deliveries are held, with how many are not yet written (for metrics).
        self._messages: dict[str, QueuedMessage] = {}
        self._outstanding: dict[str, int] = defaultdict(int)
        self._writer = OutcomeWriter(store, options.owner, clock, self._written)
        self._stopping = False
        self._running = False  # `run` is looping (fresh mail may be handed to it)

    # -- the loop -------------------------------------------------------------------------

    def wake(self) -> None:
        """Called when new work was committed, so the worker does not wait for its poll timer."""
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop`; transactions in flight get `drain_grace` seconds to finish."""
        writer_stop = asyncio.Event()
        writer = asyncio.create_task(self._writer.run(writer_stop), name="delivery-outcomes")
        heartbeat = asyncio.create_task(self._heartbeat(stop), name="delivery-heartbeat")
        self._running = True
        try:
            next_reap = 0.0
            while not stop.is_set():
                self._wakeup.clear()
                self._room.clear()
                claimed = 0
                try:
                    if self._clock.now() >= next_reap:
                        await self._reap()
                        next_reap = self._clock.now() + self._options.lease_seconds / 4
                    claimed = await self.claim_once()
                except StoreError as exc:
                    logger.warning("delivery paused: %s", exc)
                if claimed == 0 and not stop.is_set():
                    await self._idle(stop)
        finally:
            self._running = False
            self._stopping = True
            await self._finish_runners()
            self._hand_back_all("handed back at shutdown")
            writer_stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, timeout=max(1.0, self._options.drain_grace))
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await asyncio.gather(*(t.close() for t in self._transports.values()))

    async def _finish_runners(self) -> None:
        busy = self._routing | self._runners
        if not busy:
            return
        _, pending = await asyncio.wait(busy, timeout=self._options.drain_grace)
        for task in pending:
            task.cancel()
        if pending:
            # Cancelled mid-transaction: their leases run out and another worker takes them.
            await asyncio.wait(pending)

    async def _idle(self, stop: asyncio.Event) -> None:
        waiters = {
            asyncio.ensure_future(self._wakeup.wait()),
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self._room.wait()),
        }
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
            self._transport_sweep()
            if self._in_flight:
                try:
                    await self._store.extend(
                        self._options.owner,
                        sorted(self._in_flight),
                        self._clock.now() + self._options.lease_seconds,
                    )
                except StoreError as exc:
                    logger.warning("could not extend leases: %s", exc)

    def _transport_sweep(self) -> None:
        for transport in self._transports.values():
            transport.sweep()
        self._forget_idle_lanes()

    async def drain(self) -> int:
        """Deliver until nothing is due; return the number of deliveries handled.

        The test and CLI mode: no background loop, no polling.
        """
        total = 0
        while True:
            await self._reap()
            claimed = await self.claim_once()
            while self._routing or self._runners:
                await asyncio.wait(self._routing | self._runners)
            await self._writer.flush()
            if claimed == 0:
                return total
            total += claimed

    # -- claiming and routing -------------------------------------------------------------

    async def claim_once(self) -> int:
        """Claim what there is room for and hand it to the lanes; return how many were claimed."""
        room = self._options.max_in_flight - len(self._in_flight)
        if room <= 0:
            return 0
        now = self._clock.now()
        claimed, loaded = await self._store.claim_with_messages(
            self._options.owner,
            min(room, self._options.batch_size),
            now,
            self._options.lease_seconds,
            exclude_domains=self._held_back_domains(now),
        )
        if claimed:
            await self._accept(claimed, loaded)
        return len(claimed)

    def lease_for(self, deliveries: int) -> Lease | None:
        """`Handoff`: lease fresh mail to this worker while it runs and has room for it."""
        if not self._running or self._stopping:
            return None
        if len(self._in_flight) + deliveries > self._options.max_in_flight:
            return None
        return Lease(self._options.owner, self._clock.now() + self._options.lease_seconds)

    def take(self, messages: list[QueuedMessage], claimed: list[ClaimedDelivery]) -> None:
        """`Handoff`: mail just committed under our lease, to send without claiming it."""
        task = asyncio.create_task(self._accept(claimed, {m.id: m for m in messages}), name="handoff")
        self._routing.add(task)
        task.add_done_callback(self._routing.discard)

    async def _accept(self, claimed: list[ClaimedDelivery], loaded: dict[str, QueuedMessage]) -> None:
        """Prepare the messages of leased deliveries and queue them in their destinations' lanes."""
        self._in_flight.update(d.id for d in claimed)
        by_message: dict[str, list[ClaimedDelivery]] = defaultdict(list)
        for delivery in claimed:
            by_message[delivery.message_id].append(delivery)
            self._outstanding[delivery.message_id] += 1
        prepared = await asyncio.gather(
            *(self._prepared(loaded.get(mid), mid, group) for mid, group in by_message.items())
        )
        # One task per route and recipient domain: a domain whose DNS is slow holds only its own
        # mail.
        by_domain: dict[tuple[str, str], list[tuple[Job, ClaimedDelivery]]] = defaultdict(list)
        for job in prepared:
            if job is not None:
                for delivery in job.deliveries:
                    by_domain[delivery.route, delivery.domain].append((job, delivery))
        for (route_name, domain), items in by_domain.items():
            task = asyncio.create_task(self._route_and_queue(route_name, domain, items),
                                       name=f"route {route_name} {domain}")  # fmt: skip
            self._routing.add(task)
            task.add_done_callback(self._routing.discard)

    async def _prepared(
        self, message: QueuedMessage | None, message_id: str, group: list[ClaimedDelivery]
    ) -> Job | None:
        """The message signed and ready to send to `group`; None when it could not be (the
        deliveries are then deferred, or parked as dead when the pipeline crashed)."""
        try:
            if message is None:
                raise LookupError(f"message {message_id} has deliveries but no stored content")
            self._messages[message.id] = message
            try:
                content = await self._prepare(message)
            except PostroomError as exc:
                # A known, fixable local condition (say a DKIM key that became unreadable): retry
                # later like a temporary failure, rather than park the message or send it unsigned.
                logger.error("cannot prepare message %s: %s", message_id, exc)
                self._record(message, [self._decide(d, Verdict.DEFERRED, f"local: {exc}") for d in group])
                return None
            return Job(message, content, group)
        except Exception as exc:
            await self._park(message, message_id, group, exc)
            return None

    async def _route_and_queue(
        self, route_name: str, domain: str, items: list[tuple[Job, ClaimedDelivery]]
    ) -> None:
        try:
            transport = self._transports.get(route_name)
            if transport is None:
                # Mail routed to a path this daemon does not run (say Loops, not configured
                # here): it waits for a daemon that does, or for the operator to re-route it.
                reason = f"no transport for route {route_name!r} in this daemon"
                for job, delivery in items:
                    self._record(job.message, [self._decide(delivery, Verdict.DEFERRED, reason, local=True)])
                return
            route = await transport.route(domain)
            if isinstance(route, RouteFailure):
                verdict = Verdict.BOUNCED if route.permanent else Verdict.DEFERRED
                for job, delivery in items:
                    self._record(job.message, [self._decide(delivery, verdict, route.reason, local=True)])
                return
            lane = self._lane(route_name, route, transport)
            lane.domains.add(domain)
            held_back = lane.health.suspended(self._clock.now()) or self._stopping
            for job, delivery in items:
                if held_back:
                    self._record(job.message, [self._postponed(delivery, lane)])
                else:  # recipients of one message join one job (`Lane.enqueue`)
                    lane.enqueue(Job(job.message, job.content, [self._addressed(job.message, delivery)]))
            self._pump(lane)
        except Exception as exc:
            for job, delivery in items:
                await self._park(job.message, job.message.id, [delivery], exc)

    def _addressed(self, message: QueuedMessage, delivery: ClaimedDelivery) -> ClaimedDelivery:
        """The delivery with its own envelope sender (VERP), issued for this attempt, unless it
        has one already or the message has none to replace (a null sender stays null)."""
        if self._return_path is None or delivery.mail_from is not None or not message.mail_from:
            return delivery
        mail_from = self._return_path(message, delivery.id)
        return delivery if mail_from is None else dataclasses.replace(delivery, mail_from=mail_from)

    def _held_back_domains(self, now: float) -> list[str]:
        held: set[str] = set()
        for lane in self._lanes.values():
            if lane.health.suspended(now) or len(lane.jobs) >= lane.backlog_limit(self._options.processes):
                held.update(lane.domains)
        return sorted(held)[:MAX_EXCLUDED_DOMAINS]

    async def _park(
        self,
        message: QueuedMessage | None,
        message_id: str,
        group: Sequence[ClaimedDelivery],
        exc: Exception,
    ) -> None:
        # A message that crashes the pipeline is parked for a human, never lost or retried hot.
        error = f"{type(exc).__name__}: {exc}"
        logger.error("message %s crashed delivery; parked as dead", message_id, exc_info=exc)
        self._metrics.dead.inc()
        try:
            await self._store.park(message_id, error)
        except StoreError as store_error:
            logger.warning("could not park message %s: %s", message_id, store_error)
        self._record(
            message,
            [Release(d.id, d.message_id, d.recipient, DeliveryState.DEAD, f"internal error: {error}",
                     route=d.route) for d in group],
        )  # fmt: skip

    # -- lanes ----------------------------------------------------------------------------

    def _lane(self, route_name: str, route: Route, transport: Transport) -> Lane:
        key = f"{route_name}:{route.key}"
        lane = self._lanes.get(key)
        if lane is None:
            now = self._clock.now()
            lane = Lane(
                route,
                transport,
                Health(self._options.throttle_backoff, self._options.throttle_backoff_max),
                TokenBucket(share(route.rule.max_rate, self._options.processes), 1.0, now),
            )
            self._lanes[key] = lane
        else:
            lane.route = route  # the newest resolution (addresses may have changed)
        return lane

    def _pump(self, lane: Lane) -> None:
        """Start runners while the lane has jobs and free connections."""
        while lane.jobs and lane.active < lane.connections(self._options.processes) and not self._stopping:
            lane.active += 1
            task = asyncio.create_task(self._run_lane(lane), name=f"lane {lane.route.key}")
            self._runners.add(task)
            task.add_done_callback(self._runners.discard)

    async def _run_lane(self, lane: Lane) -> None:
        try:
            while lane.jobs and not self._stopping:
                now = self._clock.now()
                if lane.health.suspended(now):
                    return  # its jobs were handed back when it was suspended
                if lane.active > lane.connections(self._options.processes):
                    return  # slowed down: fewer connections now
                lane.bucket.rate = lane.rate(self._options.processes)
                wait = lane.bucket.wait(now)
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                if self._over_daily_cap(lane, now):
                    continue
                lane.bucket.take(now)
                job = lane.next_job()
                try:
                    await self._attempt(lane, job)
                except Exception as exc:  # the transport raised: a bug, parked with this message
                    await self._park(job.message, job.message.id, job.deliveries, exc)
        except Exception:  # a bug in shaping must not strand the lane's deliveries
            logger.exception("lane %s failed; its queued deliveries are handed back", lane.route.key)
            now = self._clock.now()
            jobs = lane.take_all()
            for job in jobs:
                self._record(job.message, [postpone(d, now, "handed back after an internal error")
                                           for d in job.deliveries])  # fmt: skip
        finally:
            lane.active -= 1

    def _over_daily_cap(self, lane: Lane, now: float) -> bool:
        if not lane.reached_daily_cap(now, self._options.processes):
            return False
        self._suspended(lane, "daily_cap")
        return True

    async def _attempt(self, lane: Lane, job: Job) -> None:
        recipients = [d.recipient for d in job.deliveries]
        self._metrics.outbound_sessions.inc()
        try:
            attempt = await lane.transport.send(lane.route, job.message, job.content, recipients, job.mail_from)
        finally:
            self._metrics.outbound_sessions.dec()
        by_recipient = {r.recipient: r for r in attempt.results}
        now = self._clock.now()
        releases = [
            decide(d, by_recipient[d.recipient], self._policy, now, self._draw())
            for d in job.deliveries
        ]
        self._record(job.message, releases, signature_to_keep(job.message, job.content, releases))
        delivered = sum(r.verdict is Verdict.DELIVERED for r in attempt.results)
        lane.sent_today += delivered
        already = lane.health.suspended(now)  # other connections reported this incident first
        if attempt.throttled is not None:
            lane.health.throttled(now, attempt.throttled)
            if not already:
                logger.warning("destination %s throttles us (%s); slowed to %.0f%%, suspended for %.0fs",
                               lane.route.key, attempt.throttled, 100 * lane.health.factor,
                               lane.health.suspended_until - now)  # fmt: skip
                self._suspended(lane, "throttled")
        elif attempt.unreachable is not None:
            lane.health.unreachable(now, attempt.unreachable)
            if not already:
                logger.warning("destination %s unreachable (%s); suspended for %.0fs", lane.route.key,
                               attempt.unreachable, lane.health.suspended_until - now)  # fmt: skip
                self._suspended(lane, "unreachable")
        elif delivered:
            lane.health.succeeded()
            # It takes mail again: no longer held back (not only once the heartbeat tidies up).
            self._report_recovered(lane)

    def _suspended(self, lane: Lane, reason: str) -> None:
        """Hand back the lane's queued jobs, due when the destination may be tried again."""
        self._metrics.destination_suspensions.labels(reason).inc()
        self._metrics.destination_suspended.labels(lane.route.key, reason).set(1)
        lane.reported_reasons.add(reason)
        self._report_speed(lane)
        jobs = lane.take_all()
        for job in jobs:
            self._record(job.message, [self._postponed(d, lane) for d in job.deliveries])

    def _postponed(self, delivery: ClaimedDelivery, lane: Lane) -> Release:
        # Spread the hand-backs over a tenth of the pause so they do not all return at once.
        pause = max(0.0, lane.health.suspended_until - self._clock.now())
        until = lane.health.suspended_until + 0.1 * pause * self._draw()
        return postpone(delivery, until, f"destination {lane.route.key} held back: {lane.health.reason}")

    def _hand_back_all(self, reason: str) -> None:
        now = self._clock.now()
        for lane in self._lanes.values():
            jobs = lane.take_all()
            for job in jobs:
                self._record(job.message, [postpone(d, now, reason) for d in job.deliveries])

    def _forget_idle_lanes(self) -> None:
        now = self._clock.now()
        for key, lane in list(self._lanes.items()):
            if lane.health.suspended(now):
                continue
            self._report_recovered(lane)
            capped = lane.rule.daily_limit or lane.rule.warmup  # keeps its count of the day
            if not lane.jobs and not lane.active and lane.health.factor >= 1.0 and not capped:
                del self._lanes[key]

    # Gauges go back to their neutral value rather than being removed: prometheus-client cannot
    # remove labels in multiprocess mode (it warns and keeps them), and this runs per delivery.
    def _report_recovered(self, lane: Lane) -> None:
        """The destination is not held back: its suspended gauges to 0, its speed as it is now."""
        for reason in lane.reported_reasons:
            self._metrics.destination_suspended.labels(lane.route.key, reason).set(0)
        lane.reported_reasons.clear()
        self._report_speed(lane)

    def _report_speed(self, lane: Lane) -> None:
        if lane.health.factor < 1.0 or lane.reported_slow:
            self._metrics.destination_slowdown.labels(lane.route.key).set(lane.health.factor)
            lane.reported_slow = lane.health.factor < 1.0

    # -- outcomes -------------------------------------------------------------------------

    def _decide(
        self, delivery: ClaimedDelivery, verdict: Verdict, reply: str, local: bool = False
    ) -> Release:
        result = RecipientResult(delivery.recipient, verdict, reply, {"local": True} if local else {})
        return decide(delivery, result, self._policy, self._clock.now(), self._draw())

    def _record(
        self,
        message: QueuedMessage | None,
        releases: Sequence[Release],
        signatures: dict[str, bytes] | None = None,
    ) -> None:
        if not releases:
            return
        if message is not None:
            self._messages[message.id] = message
        self._writer.add(releases, signatures)

    def _written(self, releases: Sequence[Release]) -> None:
        was_full = len(self._in_flight) >= self._options.max_in_flight
        self._in_flight.difference_update(r.delivery_id for r in releases)
        count_outcomes(self._metrics, releases, self._messages, self._clock.now())
        for release in releases:
            left = self._outstanding.get(release.message_id, 0) - 1
            if left > 0:
                self._outstanding[release.message_id] = left
            else:
                self._outstanding.pop(release.message_id, None)
                self._messages.pop(release.message_id, None)
        if was_full:
            self._room.set()  # claim again now rather than at the next poll
