"""The daemon's side of billing: applies stored Stripe events as they arrive (woken by the webhook
route, else every `sweep_interval`), applies changes that come with time alone, reconciles nightly,
and keeps the MRR gauges. Events are stored first and applied after, so the webhook answers in
milliseconds and an event survives a crash between the two (a pending event is applied by the
next sweep, in this process or another)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from postroom.billing.events import StripeEvent
from postroom.billing.settings import StripeSettings
from postroom.billing.store import Applied, EventStatus, NeedsFetch, SqlBillingStore
from postroom.billing.stripe_errors import StripeNotFound, StripeRefused
from postroom.billing.sync import StripeSource, SyncSummary, synchronise
from postroom.core.clock import Clock
from postroom.core.errors import StoreError
from postroom.metrics import Metrics
from postroom.mrr.movements import Change
from postroom.mrr.valuation import Malformed, NeedsExpansion

logger = logging.getLogger(__name__)

GAUGE_INTERVAL = 1.0  # seconds between refreshes of the MRR gauges while changes come


class BillingApplier:
    def __init__(self, store: SqlBillingStore, reader: StripeSource | None, clock: Clock, metrics: Metrics,
                 settings: StripeSettings, refresh_gauges: Callable[[], Awaitable[None]],
                 reconciles: bool = True):  # fmt: skip
        self._store = store
        self._reader = reader
        self._clock = clock
        self._metrics = metrics
        self._settings = settings
        self._refresh_gauges = refresh_gauges
        self._reconciles = reconciles and reader is not None and bool(settings.reconcile_at)
        self._wake = asyncio.Event()
        self._arrivals: dict[str, float] = {}  # event id -> perf_counter at arrival, this process
        self._last_reconcile_day: dt.date | None = None
        self._refreshed_at = 0.0
        self._taken: collections.deque[StripeEvent] = collections.deque()
        self._consumer: asyncio.Task[None] | None = None
        self._in_hand: set[str] = set()  # event ids being applied by this process
        self._gauges_stale = False

    async def take(self, event: StripeEvent) -> bool:
        """Store a verified event (False: its id was seen before) and wake the applier."""
        arrived = time.perf_counter()
        fresh = await self._store.record(event, self._clock.now())
        if fresh:
            self._arrivals[event.id] = arrived
            # Applied at once from memory, in the order they came, by one task (no read of the
            # pending events); one that fails here stays pending and the next drain applies it.
            self._taken.append(event)
            if self._consumer is None or self._consumer.done():
                self._consumer = asyncio.create_task(self._apply_taken())
        return fresh

    async def _apply_taken(self) -> None:
        while self._taken:
            event = self._taken.popleft()
            try:
                applied = await self.apply(event)
            except StoreError as exc:
                logger.warning("Stripe event %s stays pending: %s", event.id, exc)
                self._wake.set()
                continue
            except Exception:  # noqa: BLE001 - the event stays pending; the sweep applies it or flags it
                logger.exception("Stripe event %s stays pending after an unexpected error", event.id)
                continue
            if applied.changes:
                self._gauges_stale = True
                self._wake.set()  # the loop refreshes the gauges (at most once a second)

    async def run(self, stop: asyncio.Event) -> None:
        await self._refresh()
        stale_gauges = False
        while not stop.is_set():
            try:
                changed = await self.drain()
                changed += await self.apply_due()
                stale_gauges = stale_gauges or bool(changed) or self._gauges_stale
                self._gauges_stale = False
                # The gauges sum every customer: at most once a second while events keep coming.
                if stale_gauges and time.monotonic() - self._refreshed_at >= GAUGE_INTERVAL:
                    await self._refresh()
                    stale_gauges = False
                await self._maybe_reconcile()
            except StoreError as exc:
                logger.error("billing: %s; retrying in %.0f s", exc, self._settings.sweep_interval)
            except Exception:  # noqa: BLE001 - a defect in one step must not stop the daemon's other tasks
                logger.exception("billing: a sweep failed; retrying in %.0f s", self._settings.sweep_interval)
            wait = min(self._settings.sweep_interval, GAUGE_INTERVAL) if stale_gauges else self._settings.sweep_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    waiting = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
                    try:
                        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for task in waiting:
                            task.cancel()
            self._wake.clear()
        if self._consumer is not None:  # stopping: what was taken and not applied stays pending
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)

    async def drain(self) -> int:
        """Apply every pending event, oldest state first; the number of ledger changes."""
        changed = 0
        if self._consumer is not None:  # the events just taken are being applied: let them finish first
            await asyncio.gather(self._consumer, return_exceptions=True)
        while True:
            self._wake.clear()
            events = await self._store.pending()
            progressed = False
            for event in events:
                applied = await self.apply(event)
                changed += len(applied.changes)
                progressed = progressed or applied.status != EventStatus.PENDING or applied.by_another
            if len(events) < 100 or not progressed:  # the rest waits for Stripe to answer again
                return changed

    async def apply(self, event: StripeEvent) -> Applied:
        if event.id in self._in_hand:
            return Applied(EventStatus.PENDING, "being applied by this process", by_another=True)
        self._in_hand.add(event.id)
        try:
            return await self._apply(event)
        finally:
            self._in_hand.discard(event.id)

    async def _apply(self, event: StripeEvent, coupons_read: frozenset[str] = frozenset()) -> Applied:
        now = self._clock.now()
        try:
            applied = await self._store.apply(event, now, can_fetch=self._reader is not None)
            result = applied.status
        except NeedsFetch as need:
            assert self._reader is not None
            try:
                if need.coupon and need.coupon not in coupons_read:  # a coupon postroom has not seen: read it once
                    await self._store.keep_coupons([await self._reader.coupon(need.coupon)], now)
                    return await self._apply(event, coupons_read | {need.coupon})
                if need.coupon:
                    raise StripeRefused(f"coupon {need.coupon} read from Stripe still does not resolve")
                fetched = await self._reader.subscription(need.subscription)
            except (StripeNotFound, StripeRefused) as exc:  # asking again will not help
                detail = f"re-fetching {need.coupon or need.subscription} ({need.reason}): {exc}"
                logger.warning("Stripe event %s flagged: %s", event.id, detail)
                await self._store.mark(event.id, EventStatus.FLAGGED, detail, now)
                self._metrics.stripe_events.labels(EventStatus.FLAGGED).inc()
                return Applied(EventStatus.FLAGGED, detail)
            except Exception as exc:  # noqa: BLE001 - any API failure: the event stays pending for the next sweep
                logger.warning("Stripe event %s: re-fetching %s failed (%s); kept for the next sweep",
                               event.id, need.subscription, exc)  # fmt: skip
                return Applied(EventStatus.PENDING, str(exc))
            applied = await self._store.apply(event, now, can_fetch=True, fetched=fetched)
            result = "refetched" if applied.status == EventStatus.APPLIED else applied.status
        if applied.by_another:
            return applied
        self._metrics.stripe_events.labels(result).inc()
        self._count(applied.changes)
        arrived = self._arrivals.pop(event.id, None)
        if arrived is not None:
            self._metrics.stripe_event_apply_seconds.observe(time.perf_counter() - arrived)
        return applied

    async def apply_due(self) -> int:
        changed = 0
        for customer, at in await self._store.due(self._clock.now()):
            try:
                changes = await self._store.apply_due(customer, at, self._clock.now())
            except (Malformed, NeedsExpansion, KeyError, TypeError, ValueError, ArithmeticError) as exc:
                # A subscription that cannot be valued: tried again in a day (or when an event or the
                # nightly reconciliation brings a state that can), never in a loop.
                logger.error("MRR change due for customer %s at %s could not be applied: %s: %s", customer,
                             dt.datetime.fromtimestamp(at, dt.UTC).isoformat(), type(exc).__name__, exc)  # fmt: skip
                await self._store.postpone_due(customer, self._clock.now() + 86400.0)
                continue
            self._count(changes)
            changed += len(changes)
        return changed

    async def reconcile(self) -> SyncSummary:
        """Read all of Stripe and record any drift (also what `postroom stripe reconcile` runs)."""
        if self._reader is None:
            raise RuntimeError("no [stripe] api_key: cannot read Stripe")
        try:
            summary = await synchronise(self._reader, self._store, self._clock.now())
        except Exception:
            self._metrics.stripe_reconciliations.labels("failed").inc()
            raise
        self._metrics.stripe_reconciliations.labels("ok").inc()
        self._count(summary.drift)
        for change in summary.drift:
            self._metrics.mrr_reconciliation_drift_cents.inc(abs(change.after.cents - change.before.cents))
        await self._refresh()
        return summary

    async def _maybe_reconcile(self) -> None:
        if not self._reconciles:
            return
        now = dt.datetime.fromtimestamp(self._clock.now(), dt.UTC)
        hour, minute = (int(part) for part in self._settings.reconcile_at.split(":"))
        due = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if self._last_reconcile_day is None:  # a restart after reconcile_at still runs today's
            last = await self._store.last_sync()
            done = last is not None and last >= due.timestamp()
            self._last_reconcile_day = now.date() if done else now.date() - dt.timedelta(days=1)
        if now >= due and self._last_reconcile_day < now.date():
            self._last_reconcile_day = now.date()
            try:
                summary = await self.reconcile()
                logger.info("nightly Stripe reconciliation: %d subscriptions, %d drift changes",
                            summary.subscriptions, len(summary.drift))  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - logged and counted; tomorrow's run tries again
                logger.error("nightly Stripe reconciliation failed: %s", exc)

    def _count(self, changes: Sequence[Change]) -> None:
        for change in changes:
            self._metrics.mrr_changes.labels(change.cause.value).inc()

    async def _refresh(self) -> None:
        self._refreshed_at = time.monotonic()
        try:
            await self._refresh_gauges()
        except (StoreError, LookupError) as exc:
            logger.warning("MRR gauges not refreshed: %s", exc)
