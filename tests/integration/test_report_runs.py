"""Scheduled reports on real databases: one run row per (report, period) however many schedulers
tick at once, a stuck run taken over after its lease, catch-up within the grace window and a miss
past it, and the weekly report at Monday 08:00 Europe/Berlin across the spring DST change."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import time_machine
from prometheus_client import CollectorRegistry, Counter, Histogram

from postroom.core.clock import Clock, FakeClock, SystemClock
from postroom.core.errors import StoreError
from postroom.reports.periods import Period
from postroom.reports.runs import Run, SqlReportRuns
from postroom.reports.schedule import ReportScheduler
from postroom.reports.settings import ReportsSettings
from postroom.store import schema
from postroom.store.engine import WriteGate, create_engine
from tests.support import make_settings

UTC = dt.timezone.utc
HOUR = 3600.0
# Monday 30 March 2026, 08:00 in Berlin: the first Monday in summer time, 06:00 UTC.
SLOT = dt.datetime(2026, 3, 30, 6, tzinfo=UTC).timestamp()


def reports_settings(**values: Any) -> ReportsSettings:
    """The default weekly and monthly reports in Europe/Berlin, grace 6 h."""
    return ReportsSettings.model_validate({"timezone": "Europe/Berlin", "grace": 6 * HOUR, **values})


def weekly_only(**values: Any) -> ReportsSettings:
    return reports_settings(definitions={"monthly": {"enabled": False}}, **values)


class RecordingRunner:
    """Records each call and closes the run as the real runner does."""

    def __init__(self, clock: Clock, delay: float = 0.0, fail: bool = False):
        self.clock = clock
        self.delay = delay
        self.fail = fail
        self.calls: list[tuple[str, str, str, float, float, Run]] = []
        self.runs: SqlReportRuns | None = None

    async def run(self, name: str, period: Period, trigger: str, scheduled_for: float, run: Run) -> None:
        self.calls.append((name, period.label, trigger, scheduled_for, self.clock.now(), run))
        await asyncio.sleep(self.delay)  # widens the window in which another scheduler could also run it
        if self.fail:
            raise RuntimeError("the renderer fell over")
        assert self.runs is not None
        await self.runs.finish(run.id, "recorded", figures={"mrr": 1200}, deliveries=[], render_seconds=0.25,
                               now=self.clock.now())  # fmt: skip


class ReportMetrics:
    def __init__(self) -> None:
        registry = CollectorRegistry()
        self.registry = registry
        self.report_runs = Counter("postroom_report_runs", "runs", ["report", "outcome"], registry=registry)
        self.report_lateness_seconds = Histogram("postroom_report_lateness_seconds", "lateness", ["report"],
                                                 registry=registry)  # fmt: skip

    def missed(self, report: str) -> float:
        value = self.registry.get_sample_value("postroom_report_runs_total", {"report": report, "outcome": "missed"})
        return value or 0.0


OpenRuns = Callable[..., SqlReportRuns]


async def _databases(url: str, tmp_path: Path) -> AsyncIterator[OpenRuns]:
    """Opens an SqlReportRuns (or a subclass) with its own engine and write gate on the one test
    database, as a separate daemon would; the schema is migrated once."""
    database = make_settings(tmp_path, url).database
    first = create_engine(database)
    await schema.upgrade(first)
    await first.dispose()
    async with AsyncExitStack() as stack:

        def open_one(cls: type[SqlReportRuns] = SqlReportRuns) -> SqlReportRuns:
            engine = create_engine(database)
            stack.push_async_callback(engine.dispose)
            gate = WriteGate.for_database(database)
            stack.callback(gate.close)
            return cls(engine, gate)

        yield open_one


@pytest.fixture
async def open_runs(db_url: str, tmp_path: Path) -> AsyncIterator[OpenRuns]:
    async for opener in _databases(db_url, tmp_path):
        yield opener


@pytest.fixture
async def open_sqlite_runs(tmp_path: Path) -> AsyncIterator[OpenRuns]:
    async for opener in _databases(f"sqlite+aiosqlite:///{tmp_path / 'reports.db'}", tmp_path):
        yield opener


@pytest.fixture
async def runs(open_runs: OpenRuns) -> SqlReportRuns:
    return open_runs()


# The store ----------------------------------------------------------------------------------------


async def test_a_slot_is_claimed_once(runs: SqlReportRuns) -> None:
    first = await runs.claim("weekly", "2026-W13", "2026-W13", "schedule", SLOT, "a", SLOT, 900)
    assert first is not None and first.status == "running" and first.owner == "a" and first.scheduled_for == SLOT
    assert await runs.claim("weekly", "2026-W13", "2026-W13", "schedule", SLOT, "b", SLOT + 1, 900) is None
    assert await runs.claim("monthly", "2026-W13", "2026-W13", "schedule", SLOT, "b", SLOT, 900) is not None
    assert not await runs.record_missed("weekly", "2026-W13", "2026-W13", SLOT, "b", SLOT + 1)
    assert [r.id for r in await runs.history("weekly")] == [first.id]


async def test_a_missed_slot_is_never_run(runs: SqlReportRuns) -> None:
    assert await runs.record_missed("weekly", "2026-W12", "2026-W12", SLOT, "a", SLOT + 7 * HOUR)
    assert not await runs.record_missed("weekly", "2026-W12", "2026-W12", SLOT, "b", SLOT + 8 * HOUR)
    assert await runs.claim("weekly", "2026-W12", "2026-W12", "catchup", SLOT, "b", SLOT + 99 * HOUR, 900) is None
    missed = await runs.last("weekly")
    assert missed is not None and missed.status == "missed" and missed.owner == "a"
    assert missed.finished_at == SLOT + 7 * HOUR


async def test_finish_records_figures_render_time_and_deliveries(runs: SqlReportRuns) -> None:
    run = await runs.claim("weekly", "2026-W13", "2026-W13", "schedule", SLOT, "a", SLOT, 900)
    assert run is not None
    assert not await runs.finish(run.id, "sent", now=SLOT + 5, owner="b")  # not b's run
    assert await runs.finish(run.id, "sent", figures={"mrr": {"EUR": 120000}}, deliveries=["01J0A", "01J0B"],
                             render_seconds=1.5, now=SLOT + 5, owner="a")  # fmt: skip
    assert not await runs.finish(run.id, "failed", error="late", now=SLOT + 6)  # finished already
    done = await runs.last("weekly")
    assert done is not None
    assert (done.status, done.figures, done.deliveries, done.render_seconds, done.finished_at, done.error) == (
        "sent", {"mrr": {"EUR": 120000}}, ["01J0A", "01J0B"], 1.5, SLOT + 5, None)  # fmt: skip
    with pytest.raises(ValueError):
        await runs.finish(run.id, "running", now=SLOT)


async def test_a_stuck_run_is_taken_over_after_its_lease_by_one(open_runs: OpenRuns) -> None:
    runs = open_runs()
    stuck = await runs.claim("weekly", "2026-W13", "2026-W13", "schedule", SLOT, "crashed", SLOT, 900)
    assert stuck is not None
    assert await runs.claim("weekly", "2026-W13", "2026-W13", "catchup", SLOT, "b", SLOT + 899, 900) is None
    others = [open_runs() for _ in range(4)]
    taken = await asyncio.gather(*(
        store.claim("weekly", "2026-W13", "2026-W13", "catchup", SLOT, f"daemon-{i}", SLOT + 901, 900)
        for i, store in enumerate(others)
    ))  # fmt: skip
    winners = [run for run in taken if run is not None]
    assert len(winners) == 1
    winner = winners[0]
    assert (winner.id, winner.trigger, winner.started_at, winner.status) == (stuck.id, "catchup", SLOT + 901, "running")
    # The crashed runner coming back cannot close the run it lost; the new owner can.
    assert not await runs.finish(stuck.id, "sent", now=SLOT + 950, owner="crashed")
    assert await runs.finish(stuck.id, "sent", now=SLOT + 950, owner=winner.owner)
    assert await runs.claim("weekly", "2026-W13", "2026-W13", "catchup", SLOT, "b", SLOT + 9000, 900) is None


async def test_manual_runs_have_their_own_slots(runs: SqlReportRuns) -> None:
    one = await runs.manual("weekly", "2026-W13", "manual", "cli", SLOT)
    two = await runs.manual("weekly", "2026-W13", "manual", "cli", SLOT + 1)
    assert one.slot != two.slot and one.slot.startswith("manual:") and one.scheduled_for is None
    assert await runs.claim("weekly", "2026-W13", "2026-W13", "schedule", SLOT, "a", SLOT + 2, 900) is not None
    assert [r.slot for r in await runs.history("weekly", 2)] == ["2026-W13", two.slot]
    assert await runs.latest_scheduled("weekly") == SLOT
    with pytest.raises(ValueError):
        await runs.manual("weekly", "2026-W13", "whim", "cli", SLOT)


async def test_watch_keeps_the_first_time(runs: SqlReportRuns) -> None:
    assert await runs.watch("weekly", SLOT) == SLOT
    assert await runs.watch("weekly", SLOT + HOUR) == SLOT
    assert await runs.last("weekly") is None


# The scheduler ------------------------------------------------------------------------------------


def scheduler(runs: SqlReportRuns, clock: Clock, runner: RecordingRunner, owner: str = "daemon-a",
              settings: ReportsSettings | None = None, **kwargs: Any) -> ReportScheduler:  # fmt: skip
    runner.runs = runs
    return ReportScheduler(settings or weekly_only(), runs, runner, clock, owner=owner, **kwargs)


async def test_two_daemons_send_the_weekly_report_once(open_runs: OpenRuns) -> None:
    clock = FakeClock(SLOT - 60)
    runner = RecordingRunner(clock, delay=0.05)
    daemons = []
    for owner in ("daemon-a", "daemon-b", "daemon-c"):
        runs = open_runs()
        daemons.append(scheduler(runs, clock, runner, owner=owner))
        await runs.watch("weekly", SLOT - HOUR)
    await asyncio.gather(*(d.tick() for d in daemons))
    assert runner.calls == []
    clock.advance(60)  # the slot
    await asyncio.gather(*(d.tick() for d in daemons))
    clock.advance(30)
    await asyncio.gather(*(d.tick() for d in daemons))
    assert [(name, period, trigger) for name, period, trigger, *_ in runner.calls] == [
        ("weekly", "2026-W13", "schedule")]  # fmt: skip
    history = await open_runs().history("weekly")
    assert [(r.status, r.slot) for r in history] == [("recorded", "2026-W13")]


@pytest.mark.parametrize("frozen", [False, True], ids=["fake-clock", "time-machine"])
async def test_the_weekly_report_fires_at_monday_0800_berlin_across_dst(open_sqlite_runs: OpenRuns,
                                                                         frozen: bool) -> None:  # fmt: skip
    """Every five minutes for 16 days from Sunday 22 March 2026 (winter time) to 7 April (summer
    time); with time-machine the scheduler reads the system clock, frozen and shifted by hand."""
    start = dt.datetime(2026, 3, 22, tzinfo=UTC)
    fake = FakeClock(start.timestamp())
    with time_machine.travel(start, tick=False) as traveller:
        clock: Clock = SystemClock() if frozen else fake
        step: Callable[[float], None] = traveller.shift if frozen else fake.advance
        runner = RecordingRunner(clock)
        daemon = scheduler(open_sqlite_runs(), clock, runner, settings=reports_settings())
        for _ in range(16 * 24 * 12):
            await daemon.tick()
            step(300)
    # 08:00 in Berlin: 07:00 UTC in winter time, 06:00 UTC from Sunday 29 March on.
    monday_w12 = dt.datetime(2026, 3, 23, 7, tzinfo=UTC)
    monday_w13 = dt.datetime(2026, 3, 30, 6, tzinfo=UTC)
    monday_w14 = dt.datetime(2026, 4, 6, 6, tzinfo=UTC)
    first_of_april = dt.datetime(2026, 4, 1, 6, tzinfo=UTC)
    assert [(name, period, trigger, dt.datetime.fromtimestamp(at, UTC), ran - at)
            for name, period, trigger, at, ran, _ in runner.calls] == [  # fmt: skip
        ("weekly", "2026-W12", "schedule", monday_w12, 0.0),
        ("weekly", "2026-W13", "schedule", monday_w13, 0.0),
        ("monthly", "2026-03", "schedule", first_of_april, 0.0),
        ("weekly", "2026-W14", "schedule", monday_w14, 0.0),
    ]


async def test_a_daemon_down_over_the_slot_catches_up_within_grace(runs: SqlReportRuns) -> None:
    await runs.watch("weekly", SLOT - 24 * HOUR)  # a daemon watched it, then went down before the slot
    clock = FakeClock(SLOT + 2 * HOUR)
    runner = RecordingRunner(clock)
    metrics = ReportMetrics()
    await scheduler(runs, clock, runner, metrics=metrics).tick()
    assert [(period, trigger, at) for _, period, trigger, at, *_ in runner.calls] == [("2026-W13", "catchup", SLOT)]
    assert metrics.registry.get_sample_value("postroom_report_lateness_seconds_sum", {"report": "weekly"}) == 2 * HOUR
    run = await runs.last("weekly")
    assert run is not None and (run.trigger, run.status) == ("catchup", "recorded")


async def test_a_slot_past_grace_is_recorded_missed_once(open_runs: OpenRuns,
                                                         caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    runs = open_runs()
    await runs.watch("weekly", SLOT - 24 * HOUR)
    clock = FakeClock(SLOT + 7 * HOUR)
    runner = RecordingRunner(clock)
    metrics = ReportMetrics()
    alerts: list[tuple[str, str, float]] = []
    with caplog.at_level(logging.ERROR, logger="postroom.reports.schedule"):
        await scheduler(runs, clock, runner, metrics=metrics, on_missed=lambda *a: alerts.append(a)).tick()
    assert runner.calls == []
    assert alerts == [("weekly", "2026-W13", SLOT)]
    assert metrics.missed("weekly") == 1
    assert "report weekly for period 2026-W13 missed: no daemon ran it by 2026-03-30T12:00:00+00:00" in caplog.text
    missed = await runs.last("weekly")
    assert missed is not None and (missed.status, missed.slot, missed.scheduled_for) == ("missed", "2026-W13", SLOT)
    # Another daemon coming up later neither runs it nor alerts it again.
    clock.advance(HOUR)
    later_metrics = ReportMetrics()
    await scheduler(open_runs(), clock, runner, owner="daemon-b", metrics=later_metrics,
                    on_missed=lambda *a: alerts.append(a)).tick()  # fmt: skip
    assert runner.calls == [] and len(alerts) == 1 and later_metrics.missed("weekly") == 0
    assert len(await runs.history("weekly")) == 1


async def test_a_new_report_does_not_run_slots_from_before_it_was_watched(runs: SqlReportRuns) -> None:
    clock = FakeClock(SLOT + 2 * HOUR)
    runner = RecordingRunner(clock)
    alerts: list[Any] = []
    await scheduler(runs, clock, runner, on_missed=lambda *a: alerts.append(a)).tick()
    assert runner.calls == [] and alerts == [] and await runs.history("weekly") == []
    assert await runs.watch("weekly", SLOT + 3 * HOUR) == SLOT + 2 * HOUR


async def test_a_restarted_daemon_takes_over_a_run_stuck_past_its_lease(runs: SqlReportRuns) -> None:
    await runs.watch("weekly", SLOT - 24 * HOUR)
    crashed = await runs.claim("weekly", "2026-W13", "2026-W13", "schedule", SLOT, "daemon-a", SLOT, 900)
    assert crashed is not None  # and then kill -9: the row stays running
    clock = FakeClock(SLOT + 600)
    runner = RecordingRunner(clock)
    await scheduler(runs, clock, runner, owner="daemon-b").tick()
    assert runner.calls == []  # within the lease: it may still be running
    clock.advance(HOUR)
    await scheduler(runs, clock, runner, owner="daemon-c").tick()
    assert [(period, trigger, run.id, run.owner) for _, period, trigger, _, _, run in runner.calls] == [
        ("2026-W13", "catchup", crashed.id, "daemon-c")]  # fmt: skip


async def test_a_failing_runner_is_recorded_and_the_schedule_goes_on(runs: SqlReportRuns) -> None:
    await runs.watch("weekly", SLOT - HOUR)
    clock = FakeClock(SLOT)
    runner = RecordingRunner(clock, fail=True)
    daemon = scheduler(runs, clock, runner)
    await daemon.tick()
    failed = await runs.last("weekly")
    assert failed is not None and failed.status == "failed" and failed.error == "RuntimeError: the renderer fell over"
    runner.fail = False
    clock.advance(7 * 24 * HOUR)
    await daemon.tick()
    assert [period for _, period, *_ in runner.calls] == ["2026-W13", "2026-W14"]


class FlakyRuns(SqlReportRuns):
    failures = 1

    async def claim(self, *args: Any, **kwargs: Any) -> Run | None:
        if self.failures:
            self.failures -= 1
            raise StoreError("claiming a report run failed: OperationalError: database is locked")
        return await super().claim(*args, **kwargs)


async def test_a_store_error_is_retried_next_tick(open_runs: OpenRuns, caplog: pytest.LogCaptureFixture) -> None:
    flaky = open_runs(FlakyRuns)
    await flaky.watch("weekly", SLOT - HOUR)
    clock = FakeClock(SLOT)
    runner = RecordingRunner(clock)
    daemon = scheduler(flaky, clock, runner)
    with caplog.at_level(logging.WARNING, logger="postroom.reports.schedule"):
        await daemon.tick()
    assert runner.calls == [] and "database is locked" in caplog.text
    clock.advance(10)
    await daemon.tick()
    assert [(period, trigger) for _, period, trigger, *_ in runner.calls] == [("2026-W13", "schedule")]


async def test_run_fires_at_the_slot_and_returns_on_stop(runs: SqlReportRuns) -> None:
    await runs.watch("weekly", SLOT - HOUR)
    clock = FakeClock(SLOT - 0.2)  # the loop sleeps until the slot (real seconds: 0.2)
    fired = asyncio.Event()

    class Runner(RecordingRunner):
        async def run(self, *args: Any) -> None:
            await super().run(*args)
            fired.set()

    runner = Runner(clock)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler(runs, clock, runner).run(stop))
    await asyncio.sleep(0)
    clock.advance(0.2)
    await asyncio.wait_for(fired.wait(), timeout=5)
    stop.set()
    await asyncio.wait_for(task, timeout=1)
    assert [period for _, period, *_ in runner.calls] == ["2026-W13"]


async def test_grace_zero_still_runs_on_time_and_misses_later(runs: SqlReportRuns) -> None:
    await runs.watch("weekly", SLOT - HOUR)
    clock = FakeClock(SLOT + 0.004)  # woken a few ms after the fire time
    runner = RecordingRunner(clock)
    await scheduler(runs, clock, runner, settings=weekly_only(grace=0)).tick()
    clock.advance(7 * 24 * HOUR + 600)  # ten minutes after the next slot
    alerts: list[Any] = []
    await scheduler(runs, clock, runner, settings=weekly_only(grace=0), on_missed=lambda *a: alerts.append(a)).tick()
    assert [(period, trigger) for _, period, trigger, *_ in runner.calls] == [("2026-W13", "schedule")]
    assert alerts == [("weekly", "2026-W14", SLOT + 7 * 24 * HOUR)]
    assert [(r.slot, r.status) for r in await runs.history("weekly")] == [("2026-W14", "missed"),
                                                                         ("2026-W13", "recorded")]  # fmt: skip


async def test_nothing_is_scheduled_when_reports_are_off(runs: SqlReportRuns) -> None:
    await runs.watch("weekly", SLOT - HOUR)
    clock = FakeClock(SLOT)
    runner = RecordingRunner(clock)
    await scheduler(runs, clock, runner, settings=reports_settings(enabled=False)).tick()
    await scheduler(runs, clock, runner, settings=reports_settings(definitions={"weekly": {"cron": ""},
                                                                               "monthly": {"enabled": False}})).tick()  # fmt: skip
    assert runner.calls == [] and await runs.history("weekly") == []


async def test_a_failing_alert_does_not_stop_the_schedule(runs: SqlReportRuns) -> None:
    await runs.watch("weekly", SLOT - 24 * HOUR)
    clock = FakeClock(SLOT + 7 * HOUR)
    runner = RecordingRunner(clock)

    def broken(*_: Any) -> None:
        raise RuntimeError("the alert channel is down")

    daemon = scheduler(runs, clock, runner, on_missed=broken)
    await daemon.tick()
    clock.advance(7 * 24 * HOUR - 7 * HOUR)  # the next Monday 08:00
    await daemon.tick()
    assert [(r.slot, r.status) for r in await runs.history("weekly")] == [("2026-W14", "recorded"),
                                                                         ("2026-W13", "missed")]  # fmt: skip
