"""Cron expressions of report definitions as APScheduler 3 triggers, and the fire times between two
instants; pure (no clock: the caller passes the instants).

APScheduler 3 numbers weekdays from Monday = 0 (`DayOfWeekField.get_value` is `dateval.weekday()`,
and `from_crontab` passes the fifth field through unchanged; its docstring admits "APScheduler treats
0 as Monday while the original crontab treats it as Sunday", fixed only in 4.x). A crontab writer
means 0 or 7 = Sunday, 1 = Monday ... 6 = Saturday, so numeric weekdays (single, ranges, lists,
steps) are rewritten to APScheduler's names before `from_crontab` sees them; names pass through.

Day of month and weekday both restricted (`0 8 1-7 * mon`) is APScheduler's AND (the first Monday),
not Vixie cron's OR.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

# Index = crontab weekday number (0 and 7 are Sunday); value = APScheduler 3's name for that day.
_CRONTAB_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ORDER = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_NUMERIC = re.compile(r"^(\*|\d+(?:-\d+)?)(?:/(\d+))?$")


def _numeric_days(part: str) -> list[str]:
    """One element of a numeric weekday list (`1`, `1-5`, `*/2`, `0-6/3`) as day names."""
    found = _NUMERIC.match(part)
    if found is None:
        raise ValueError(f"{part!r} is not a weekday (0-7, 0 and 7 are Sunday, or mon-sun)")
    span, step_text = found[1], found[2]
    step = int(step_text) if step_text else 1
    if step < 1:
        raise ValueError(f"{part!r}: the step must be at least 1")
    if span == "*":
        first, last = 0, 6
    elif "-" in span:
        first, last = (int(value) for value in span.split("-"))
    else:
        first = int(span)
        last = 7 if step_text else first  # `1/2`: from Monday on, as Vixie cron reads it
    if not 0 <= first <= 7 or not 0 <= last <= 7:
        raise ValueError(f"{part!r}: weekdays are 0-7 (0 and 7 are Sunday)")
    if first > last:
        raise ValueError(f"{part!r}: the range ends before it begins")
    return [_CRONTAB_DAYS[day] for day in range(first, last + 1, step)]


def crontab_weekdays(field: str) -> str:
    """The fifth crontab field with crontab's numbers (0 or 7 = Sunday) turned into the names
    APScheduler 3 reads the same way (where 0 would mean Monday); names are left as they are."""
    parts = field.split(",")
    if all(part[:1].isalpha() for part in parts):
        return field
    names: list[str] = []
    for part in parts:
        if part[:1].isalpha():
            names.append(part)
            continue
        names.extend(day for day in _numeric_days(part) if day not in names)
    if set(names) >= set(_ORDER):
        return "*"
    named = [day for day in _ORDER if day in names]
    return ",".join(named + [part for part in names if part not in _ORDER])


def trigger(cron: str, zone: ZoneInfo) -> Any:
    """A `CronTrigger` for a five-field crontab expression in `zone` (crontab weekday numbering);
    ValueError when it does not parse."""
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"{len(fields)} fields; a cron expression has 5 (minute hour day month weekday)")
    fields[4] = crontab_weekdays(fields[4])
    return CronTrigger.from_crontab(" ".join(fields), timezone=zone)


def fire_times(trigger: Any, after: dt.datetime, until: dt.datetime, limit: int = 1000) -> list[dt.datetime]:
    """The times `trigger` fires in (`after`, `until`], oldest first, at most `limit` of them; aware,
    in the trigger's zone. APScheduler computes each in wall-clock time of that zone, so 08:00 stays
    08:00 local across a DST change (07:00 UTC in CET, 06:00 UTC in CEST)."""
    if after.tzinfo is None or until.tzinfo is None:
        raise ValueError("fire_times needs aware datetimes")
    found: list[dt.datetime] = []
    if after >= until:
        return found
    previous = after
    while len(found) < limit:
        # With a previous fire time, APScheduler starts 1 µs after it (rounded up to the second),
        # so `after` itself is excluded and each time is found once.
        following = trigger.get_next_fire_time(previous, until)
        if following is None or following > until:
            break
        found.append(following)
        previous = following
    return found
