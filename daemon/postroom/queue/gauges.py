"""`QueueGauges`: queue depth by state and the oldest ages, refreshed from the database (which
every process and every daemon shares, so each reports the same figures)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from postroom.core.clock import Clock
from postroom.core.types import DeliveryState
from postroom.metrics import Metrics
from postroom.queue.protocols import QueueViews

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 5.0


class QueueGauges:
    def __init__(self, views: QueueViews, metrics: Metrics, clock: Clock, interval: float = REFRESH_SECONDS):
        self._views = views
        self._metrics = metrics
        self._clock = clock
        self._interval = interval

    async def refresh(self) -> None:
        depth = await self._views.depth_by_state()
        for state in DeliveryState:
            self._metrics.queue_depth.labels(state.value).set(depth.get(state.value, 0))
        now = self._clock.now()
        oldest = await self._views.oldest_active_created_at()
        self._metrics.oldest_queued_age.set(0.0 if oldest is None else max(0.0, now - oldest))
        deferred = await self._views.oldest_active_created_at(DeliveryState.DEFERRED)
        self._metrics.oldest_deferred_age.set(0.0 if deferred is None else max(0.0, now - deferred))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as exc:  # a gauge refresh must never take the daemon down
                logger.warning("queue gauges not refreshed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval)
