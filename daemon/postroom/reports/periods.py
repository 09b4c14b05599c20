"""Report periods, pure: written `2026-02` (a month), `2026-W09` (an ISO week), `2026-Q1` or
`2026-02-01..2026-02-15` (days, both inclusive); a definition's period kind is `week`, `month`,
`quarter` or `trailing N` (the N days before the run), and a run takes the last complete one."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")
_QUARTER = re.compile(r"^(\d{4})-Q([1-4])$")
_RANGE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})$")
_TRAILING = re.compile(r"^trailing (\d{1,3})$")
KINDS = ("week", "month", "quarter")


@dataclass(frozen=True)
class Period:
    """Days `start` to `end`, both inclusive; `kind` week, month, quarter or days."""

    kind: str
    start: dt.date
    end: dt.date

    @property
    def label(self) -> str:
        if self.kind == "month":
            return f"{self.start:%Y-%m}"
        if self.kind == "week":
            year, week, _ = self.start.isocalendar()
            return f"{year}-W{week:02d}"
        if self.kind == "quarter":
            return f"{self.start.year}-Q{(self.start.month - 1) // 3 + 1}"
        return f"{self.start.isoformat()}..{self.end.isoformat()}"

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def previous(self, count: int = 1) -> Period:
        """The period `count` periods before (the same length for days)."""
        if self.kind == "week":
            return week(self.start - dt.timedelta(weeks=count))
        if self.kind in ("month", "quarter"):
            months = count * (3 if self.kind == "quarter" else 1)
            index = self.start.year * 12 + self.start.month - 1 - months
            first = dt.date(index // 12, index % 12 + 1, 1)
            return quarter(first) if self.kind == "quarter" else month(first)
        shift = dt.timedelta(days=self.days * count)
        return Period("days", self.start - shift, self.end - shift)


def month(day: dt.date) -> Period:
    first = day.replace(day=1)
    following = (first + dt.timedelta(days=32)).replace(day=1)
    return Period("month", first, following - dt.timedelta(days=1))


def week(day: dt.date) -> Period:
    monday = day - dt.timedelta(days=day.weekday())
    return Period("week", monday, monday + dt.timedelta(days=6))


def quarter(day: dt.date) -> Period:
    first = dt.date(day.year, (day.month - 1) // 3 * 3 + 1, 1)
    last = month(dt.date(first.year, first.month + 2, 1)).end
    return Period("quarter", first, last)


def parse_period(text: str) -> Period:
    """ValueError naming the accepted forms for anything else."""
    value = text.strip()
    try:
        if found := _MONTH.match(value):
            return month(dt.date(int(found[1]), int(found[2]), 1))
        if found := _WEEK.match(value):
            return week(dt.date.fromisocalendar(int(found[1]), int(found[2]), 1))
        if found := _QUARTER.match(value):
            return quarter(dt.date(int(found[1]), (int(found[2]) - 1) * 3 + 1, 1))
        if found := _RANGE.match(value):
            start, end = dt.date.fromisoformat(found[1]), dt.date.fromisoformat(found[2])
            if end < start:
                raise ValueError(f"{value!r}: the range ends before it begins")
            return Period("days", start, end)
    except ValueError as exc:
        if "ends before" in str(exc):
            raise
        raise ValueError(f"{value!r} is not a period: {exc}") from None
    raise ValueError(f"{value!r} is not a period: write 2026-02, 2026-W09, 2026-Q1 or 2026-02-01..2026-02-15")


def check_kind(kind: str) -> str:
    """A definition's period kind, or ValueError."""
    if kind in KINDS or _TRAILING.match(kind):
        return kind
    raise ValueError(f"{kind!r} is not a period kind: week, month, quarter or 'trailing N' (days)")


def last_complete(kind: str, today: dt.date) -> Period:
    """The last period of `kind` that ended before `today`."""
    if kind == "week":
        return week(today).previous()
    if kind == "month":
        return month(today).previous()
    if kind == "quarter":
        return quarter(today).previous()
    found = _TRAILING.match(check_kind(kind))
    assert found is not None
    days = int(found[1])
    return Period("days", today - dt.timedelta(days=days), today - dt.timedelta(days=1))
