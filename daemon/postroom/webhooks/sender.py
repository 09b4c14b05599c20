"""`WebhookSender`: posts due webhook deliveries and records what came of them.

It is a task of its own with its own HTTP session and limits (`max_in_flight` requests at once,
`max_per_endpoint` connections to one host, a total `timeout` per request), so a receiver that
hangs or fails costs only this task's slots and never holds up mail delivery; its database writes
are short transactions. A delivery is claimed with a lease: a sender that dies leaves it to be
claimed again when the lease runs out, so delivery is at-least-once (receivers dedupe by
`webhook-id`). A failed attempt is retried after an exponential delay with jitter until
`max_attempts`; an endpoint failing `disable_after` attempts in a row is disabled.
"""

from __future__ import annotations

import asyncio
import logging
import random

import aiohttp

from postroom.core.clock import Clock
from postroom.core.errors import StoreError
from postroom.metrics import Metrics
from postroom.webhooks.model import Attempt, DeliveryState, DueDelivery, retry_delay
from postroom.webhooks.settings import WebhookSettings
from postroom.webhooks.signing import body_bytes, signed_headers
from postroom.webhooks.store import SqlWebhookStore

logger = logging.getLogger(__name__)

ERROR_BODY_BYTES = 200  # of a refusing endpoint's answer, kept for operators
GAUGE_INTERVAL = 15.0


def http_session(settings: WebhookSettings) -> aiohttp.ClientSession:
    """The sender's own session: its connection limits are separate from everything else's."""
    connector = aiohttp.TCPConnector(limit=settings.max_in_flight, limit_per_host=settings.max_per_endpoint)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=settings.timeout))


async def post_webhook(
    session: aiohttp.ClientSession, url: str, secret: str, webhook_id: str, body: bytes, at: float
) -> tuple[bool, int | None, str]:
    """POST one signed webhook: (2xx?, status or None, error text). Redirects are not followed
    (a 3xx is a failure): a signed body goes only where the operator pointed it."""
    headers = signed_headers(secret, webhook_id, at, body)
    try:
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
            if 200 <= response.status < 300:
                return True, response.status, ""
            text = (await response.content.read(ERROR_BODY_BYTES)).decode("utf-8", "replace")
            return False, response.status, f"HTTP {response.status}: {text}".strip()
    except TimeoutError:
        return False, None, "timed out"
    except aiohttp.ClientError as exc:
        return False, None, f"{type(exc).__name__}: {exc}"[:500]


class WebhookSender:
    def __init__(
        self,
        store: SqlWebhookStore,
        session: aiohttp.ClientSession,
        settings: WebhookSettings,
        clock: Clock,
        metrics: Metrics,
        rng: random.Random | None = None,
    ):
        self._store = store
        self._session = session
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._wakeup = asyncio.Event()
        for result in ("delivered", "retry", "failed"):
            metrics.webhook_attempts.labels(result)

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Send until `stop`; requests in flight finish (within the request timeout) first.

        At most `max_in_flight` requests at once, at most `max_per_endpoint` to one endpoint,
        and an endpoint with requests in flight is not claimed for again until they end: a
        claimed delivery is posted at once, well inside its lease, and a hanging endpoint holds
        only its own few slots while the others are served."""
        settings = self._settings
        next_gauges = 0.0
        in_flight: dict[asyncio.Task[None], list[DueDelivery]] = {}

        def finished(task: asyncio.Task[None]) -> None:
            in_flight.pop(task, None)
            self._wakeup.set()

        try:
            while not stop.is_set():
                self._wakeup.clear()
                if self._clock.now() >= next_gauges:
                    await self.refresh_gauges()
                    next_gauges = self._clock.now() + GAUGE_INTERVAL
                sending = sum(len(batch) for batch in in_flight.values())
                room = min(settings.batch_size, settings.max_in_flight - sending)
                claimed: list[DueDelivery] = []
                if room > 0:
                    busy = {d.endpoint_id for batch in in_flight.values() for d in batch}
                    try:
                        claimed = await self._store.claim(room, self._clock.now(), settings.lease_seconds,
                                                          per_endpoint=settings.max_per_endpoint, busy=busy)  # fmt: skip
                    except StoreError as exc:
                        logger.warning("webhook sender paused: %s", exc)
                if claimed:
                    task = asyncio.create_task(self._send(claimed))
                    in_flight[task] = claimed
                    task.add_done_callback(finished)
                    continue
                waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wakeup.wait())}
                try:
                    await asyncio.wait(waiters, timeout=settings.poll_interval, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
        finally:
            if in_flight:
                await asyncio.wait(list(in_flight), timeout=settings.timeout + 5)

    async def drain(self) -> int:
        """Send every delivery due now, round after round, until none is left; return how many
        attempts were made. The test mode: no background loop."""
        total = 0
        while claimed := await self._store.claim(min(self._settings.batch_size, self._settings.max_in_flight),
                                                 self._clock.now(), self._settings.lease_seconds):  # fmt: skip
            await self._send(claimed)
            total += len(claimed)
        return total

    async def _send(self, claimed: list[DueDelivery]) -> None:
        attempts = await asyncio.gather(*(self._attempt(d) for d in claimed))
        settings = self._settings
        now = self._clock.now()

        def next_attempt(tried: int) -> float | None:
            if tried >= settings.max_attempts:
                return None
            return now + retry_delay(tried, settings.retry_base, settings.retry_max, settings.retry_jitter, self._rng)

        try:
            disabled = await self._store.record(attempts, next_attempt, now, settings.disable_after)
        except StoreError as exc:  # the leases run out and the rows are sent again
            logger.warning("webhook results not recorded: %s", exc)
            return
        for attempt, due in zip(attempts, claimed, strict=True):
            if attempt.ok:
                result = "delivered"
            else:
                result = "failed" if due.attempts + 1 >= settings.max_attempts else "retry"
                logger.info("webhook %s to endpoint %s failed (attempt %d): %s", due.webhook_id,
                            due.endpoint_id, due.attempts + 1, attempt.error)  # fmt: skip
            self._metrics.webhook_attempts.labels(result).inc()
        for endpoint_id in disabled:
            self._metrics.webhook_endpoints_disabled.inc()
            logger.error("webhook endpoint %s disabled after %d failed attempts in a row",
                         endpoint_id, settings.disable_after)  # fmt: skip

    async def _attempt(self, due: DueDelivery) -> Attempt:
        ok, status, error = await post_webhook(self._session, due.url, due.secret, due.webhook_id,
                                               body_bytes(due.payload), self._clock.now())  # fmt: skip
        return Attempt(due.id, due.endpoint_id, ok, status, error)

    async def refresh_gauges(self) -> None:
        """The queue gauges; and, as often, old finished deliveries pruned (`retention`)."""
        try:
            if self._settings.retention:
                await self._store.prune(self._clock.now() - self._settings.retention)
            depth, oldest = await self._store.queue_figures()
        except StoreError as exc:
            logger.warning("webhook gauges not refreshed (or old deliveries not pruned): %s", exc)
            return
        for state in DeliveryState:
            self._metrics.webhook_queue_depth.labels(state.value).set(depth.get(state.value, 0))
        age = 0.0 if oldest is None else max(0.0, self._clock.now() - oldest)
        self._metrics.webhook_queue_oldest_age.set(age)

