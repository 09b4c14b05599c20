"""Report cron triggers: crontab weekday numbering over APScheduler 3's, and fire times that keep
08:00 local across both DST changes of Europe/Berlin in 2026 (29 March, 25 October)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
import time_machine
from apscheduler.triggers.cron import CronTrigger

from postroom.reports.cron import crontab_weekdays, fire_times, trigger
from postroom.reports.settings import ReportDefinition

BERLIN = ZoneInfo("Europe/Berlin")
UTC = dt.timezone.utc


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def test_weekly_keeps_monday_0800_berlin_across_the_spring_change() -> None:
    times = fire_times(trigger("0 8 * * mon", BERLIN), utc(2026, 3, 16), utc(2026, 4, 7))
    assert times == [utc(2026, 3, 16, 7), utc(2026, 3, 23, 7), utc(2026, 3, 30, 6), utc(2026, 4, 6, 6)]
    assert all(t.astimezone(BERLIN).hour == 8 and t.astimezone(BERLIN).weekday() == 0 for t in times)


def test_weekly_keeps_monday_0800_berlin_across_the_autumn_change() -> None:
    times = fire_times(trigger("0 8 * * mon", BERLIN), utc(2026, 10, 15), utc(2026, 11, 3))
    assert times == [utc(2026, 10, 19, 6), utc(2026, 10, 26, 7), utc(2026, 11, 2, 7)]


def test_wall_clock_does_not_matter() -> None:
    # Frozen on a Monday after the slot: the fire times depend on the instants passed, nothing else.
    with time_machine.travel(utc(2026, 3, 30, 9), tick=False):
        assert fire_times(trigger("0 8 * * mon", BERLIN), utc(2026, 3, 29), utc(2026, 3, 30, 9)) == [utc(2026, 3, 30, 6)]


def test_the_interval_is_open_at_after_and_closed_at_until() -> None:
    weekly = trigger("0 8 * * mon", BERLIN)
    slot = utc(2026, 3, 30, 6)
    assert fire_times(weekly, slot, slot + dt.timedelta(days=6)) == []
    assert fire_times(weekly, slot - dt.timedelta(seconds=1), slot) == [slot]
    assert fire_times(weekly, slot, slot - dt.timedelta(days=1)) == []
    assert len(fire_times(weekly, utc(2020, 1, 1), utc(2026, 1, 1), limit=5)) == 5


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        fire_times(trigger("0 8 * * mon", BERLIN), dt.datetime(2026, 1, 1), utc(2026, 2, 1))


def test_numeric_weekdays_are_crontab_numbers() -> None:
    start, end = utc(2026, 1, 1), utc(2026, 7, 1)
    mondays = fire_times(trigger("0 8 * * mon", BERLIN), start, end)
    assert fire_times(trigger("0 8 * * 1", BERLIN), start, end) == mondays
    sundays = fire_times(trigger("0 8 * * sun", BERLIN), start, end)
    assert fire_times(trigger("0 8 * * 0", BERLIN), start, end) == sundays
    assert fire_times(trigger("0 8 * * 7", BERLIN), start, end) == sundays
    workdays = fire_times(trigger("0 8 * * mon-fri", BERLIN), start, end)
    assert fire_times(trigger("0 8 * * 1-5", BERLIN), start, end) == workdays
    assert {t.astimezone(BERLIN).weekday() for t in fire_times(trigger("0 8 * * 0,6", BERLIN), start, end)} == {5, 6}


def test_apscheduler_3_alone_would_read_1_as_tuesday() -> None:
    # The reason for the translation: from_crontab passes the field through and counts from Monday = 0.
    raw = fire_times(CronTrigger.from_crontab("0 8 * * 1", timezone=BERLIN), utc(2026, 3, 1), utc(2026, 3, 8))
    assert [t.astimezone(BERLIN).strftime("%a") for t in raw] == ["Tue"]


@pytest.mark.parametrize(("field", "names"), [
    ("1", "mon"), ("0", "sun"), ("7", "sun"), ("1-5", "mon,tue,wed,thu,fri"), ("5-7", "fri,sat,sun"),
    ("0,6", "sat,sun"), ("*/2", "tue,thu,sat,sun"), ("1-7/2", "mon,wed,fri,sun"), ("0-6", "*"), ("*", "*"),
    ("mon", "mon"), ("mon-fri", "mon-fri"), ("sat,0", "sat,sun"), ("mon-wed,5", "fri,mon-wed"),
])  # fmt: skip
def test_crontab_weekdays(field: str, names: str) -> None:
    assert crontab_weekdays(field) == names


@pytest.mark.parametrize("field", ["8", "6-1", "1/0", "?", "1-"])
def test_bad_weekdays_are_refused(field: str) -> None:
    with pytest.raises(ValueError):
        trigger(f"0 8 * * {field}", BERLIN)


def test_monthly_fires_on_the_first_at_0800_local() -> None:
    times = fire_times(trigger("0 8 1 * *", BERLIN), utc(2026, 1, 15), utc(2026, 5, 15))
    assert times == [utc(2026, 2, 1, 7), utc(2026, 3, 1, 7), utc(2026, 4, 1, 6), utc(2026, 5, 1, 6)]


def test_settings_check_the_cron_as_the_scheduler_reads_it() -> None:
    assert ReportDefinition(cron="0 8 * * 7").cron == "0 8 * * 7"
    with pytest.raises(ValueError, match="cron"):
        ReportDefinition(cron="0 8 * * 8")
    with pytest.raises(ValueError, match="cron"):
        ReportDefinition(cron="0 8 * *")
