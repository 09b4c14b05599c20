"""`ReportScheduler`: turns each enabled definition's cron into runs. Every daemon runs one; the
`report_runs` row of each (report, period) decides which of them sends it (see `runs`).

Each tick walks the fire times since the last one this process looked at (at start: since the
report was first watched, or its latest recorded fire time). A fire time at most `grace` seconds old
is claimed and run (`catchup` once it is two minutes late: a daemon was down over the slot); an
older one without a row is recorded as missed and alerted, once, by whichever daemon sees it first.
The slot is the period's label, so a second fire time in a period already run finds its row taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from postroom.core.clock import Clock
from postroom.core.errors import StoreError
from postroom.reports.cron import fire_times, trigger
from postroom.reports.periods import Period, last_complete
from postroom.reports.runs import Run, SqlReportRuns
from postroom.reports.settings import ReportDefinition, ReportsSettings

__all__ = ["ReportScheduler", "ScheduleMetrics", "ScheduledRunner", "fire_times", "trigger"]

logger = logging.getLogger(__name__)

CATCHUP_AFTER = 120.0  # seconds late: from here a run is a catch-up, not the schedule's own
FIRE_LIMIT = 1000  # fire times looked at per report and tick; the rest wait for the next tick
MAX_SLEEP = 30.0
MIN_SLEEP = 0.05


class ScheduledRunner(Protocol):
    async def run(self, name: str, period: Period, trigger: str, scheduled_for: float, run: Run) -> None:
        """Build and send `run` of report `name`, and record its outcome with `SqlReportRuns.finish`."""
        ...


class _Count(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class _Counter(Protocol):
    def labels(self, *labelvalues: str) -> _Count: ...


class _Observe(Protocol):
    def observe(self, amount: float) -> None: ...


class _Histogram(Protocol):
    def labels(self, *labelvalues: str) -> _Observe: ...


class ScheduleMetrics(Protocol):
    """What the scheduler counts: misses in `report_runs` (report, outcome "missed"); how late each
    claimed run starts after its fire time in `report_lateness_seconds`."""

    @property
    def report_runs(self) -> _Counter: ...

    @property
    def report_lateness_seconds(self) -> _Histogram: ...


@dataclass(frozen=True)
class _Scheduled:
    name: str
    definition: ReportDefinition
    zone: ZoneInfo
    trigger: Any  # CronTrigger (APScheduler 3 ships no types)


def _instant(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


class ReportScheduler:
    def __init__(
        self, settings: ReportsSettings, runs: SqlReportRuns, runner: ScheduledRunner, clock: Clock, *,
        owner: str, lease: float = 900.0, metrics: ScheduleMetrics | None = None,
        on_missed: Callable[[str, str, float], None] | None = None,
    ) -> None:  # fmt: skip
        self._settings = settings
        self._runs = runs
        self._runner = runner
        self._clock = clock
        self._owner = owner
        self._lease = lease
        self._metrics = metrics
        self._on_missed = on_missed
        self._scheduled = [
            _Scheduled(name, definition, settings.zone(definition), trigger(definition.cron, settings.zone(definition)))
            for name, definition in settings.definitions.items()
            if settings.enabled and definition.enabled and definition.cron
        ]  # fmt: skip
        self._checked: dict[str, float] = {}  # report -> fire times up to here are dealt with

    async def run(self, stop: asyncio.Event) -> None:
        """Tick at every fire time (and every 30 s) until `stop`; a run in progress finishes first."""
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                logger.exception("the report scheduler's tick failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._delay())

    async def tick(self) -> None:
        """Deal with every fire time up to now: run it, catch it up, or record it missed."""
        for scheduled in self._scheduled:
            try:
                await self._tick_one(scheduled)
            except StoreError as exc:
                logger.warning("report %s: not scheduled this tick, trying again: %s", scheduled.name, exc)

    def _delay(self) -> float:
        now = self._clock.now()
        following = [s.trigger.get_next_fire_time(None, _instant(now)) for s in self._scheduled]
        soonest = min((f.timestamp() for f in following if f is not None), default=now + MAX_SLEEP)
        return min(MAX_SLEEP, max(MIN_SLEEP, soonest - now))

    async def _since(self, name: str, now: float) -> float:
        checked = self._checked.get(name)
        if checked is not None:
            return checked
        since = await self._runs.watch(name, now)
        latest = await self._runs.latest_scheduled(name)
        # Every fire time up to the latest recorded one was dealt with by whoever recorded it; that
        # one is looked at again (a second earlier) so a run stuck past its lease is taken over.
        return since if latest is None else max(since, latest - 1.0)

    async def _tick_one(self, scheduled: _Scheduled) -> None:
        now = self._clock.now()
        since = await self._since(scheduled.name, now)
        due = fire_times(scheduled.trigger, _instant(since), _instant(now), limit=FIRE_LIMIT)
        for fire in due:
            await self._fire(scheduled, fire.timestamp())
            self._checked[scheduled.name] = fire.timestamp()
        self._checked[scheduled.name] = now if len(due) < FIRE_LIMIT else due[-1].timestamp()

    async def _fire(self, scheduled: _Scheduled, fire: float) -> None:
        name, now = scheduled.name, self._clock.now()
        local = _instant(fire).astimezone(scheduled.zone)
        period = last_complete(scheduled.definition.period, local.date())
        late = now - fire
        # A run on time (woken a few ms after its fire time) is never missed, even with grace 0.
        if late > self._settings.grace and late >= CATCHUP_AFTER:
            await self._missed(name, period, fire, now)
            return
        kind = "schedule" if late < CATCHUP_AFTER else "catchup"
        run = await self._runs.claim(name, period.label, period.label, kind, fire, self._owner, now, self._lease)
        if run is None:
            return  # another process or daemon has it
        if kind == "catchup":
            logger.warning("report %s for period %s: catching up the run due at %s, %.0f s late",
                           name, period.label, local.isoformat(), late)  # fmt: skip
        if self._metrics is not None:
            self._metrics.report_lateness_seconds.labels(name).observe(max(late, 0.0))
        try:
            await self._runner.run(name, period, run.trigger, fire, run)
        except Exception as exc:
            logger.exception("report %s for period %s: the run failed", name, period.label)
            await self._fail(run, exc)

    async def _fail(self, run: Run, exc: Exception) -> None:
        """The runner records its own failures; one that escaped it still closes the row, so the run
        shows as failed at once instead of `running` until its lease runs out."""
        try:
            await self._runs.finish(run.id, "failed", error=f"{type(exc).__name__}: {exc}", now=self._clock.now(),
                                    owner=self._owner)  # fmt: skip
        except StoreError as store_exc:
            logger.warning("report %s run %d: could not record its failure: %s", run.report, run.id, store_exc)

    async def _missed(self, name: str, period: Period, fire: float, now: float) -> None:
        if not await self._runs.record_missed(name, period.label, period.label, fire, self._owner, now):
            return  # run, or already recorded missed (and alerted) by another daemon
        deadline = _instant(fire + max(self._settings.grace, CATCHUP_AFTER)).isoformat()
        logger.error("report %s for period %s missed: no daemon ran it by %s (due %s, grace %.0f s)",
                     name, period.label, deadline, _instant(fire).isoformat(), self._settings.grace)  # fmt: skip
        if self._metrics is not None:
            self._metrics.report_runs.labels(name, "missed").inc()
        if self._on_missed is not None:
            try:
                self._on_missed(name, period.label, fire)
            except Exception:
                logger.exception("report %s for period %s: alerting the miss failed", name, period.label)
