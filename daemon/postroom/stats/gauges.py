"""`RateGauges`: the bounce and complaint rates per stream over the rolling window, refreshed
into Prometheus gauges (Gmail and Yahoo judge senders by these; alert before they do)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from postroom.core.clock import Clock
from postroom.metrics import Metrics
from postroom.stats.model import StatsQuery
from postroom.stats.settings import StatsSettings
from postroom.stats.sql_stats import SqlStats

logger = logging.getLogger(__name__)


class RateGauges:
    def __init__(self, stats: SqlStats, settings: StatsSettings, clock: Clock, metrics: Metrics):
        self._stats = stats
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._streams: set[str] = set()

    async def refresh(self) -> None:
        now = self._clock.now()
        groups = await self._stats.compute(StatsQuery(since=now - self._settings.rate_window, until=now + 1,
                                                      group_by=("stream",)))  # fmt: skip
        seen = set()
        for group in groups:
            stream = str(group.key.get("stream") or "")
            seen.add(stream)
            self._metrics.bounce_rate.labels(stream).set(group.bounce_rate)
            self._metrics.complaint_rate.labels(stream).set(group.complaint_rate)
        for quiet in self._streams - seen:  # nothing in the window any more
            self._metrics.bounce_rate.labels(quiet).set(0)
            self._metrics.complaint_rate.labels(quiet).set(0)
        self._streams |= seen

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as exc:  # a gauge refresh must never take the daemon down
                logger.warning("bounce and complaint rate gauges not refreshed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._settings.refresh_interval)
