"""Reading the `since` and `until` of an export: a date (`2026-12-01`, midnight UTC) or an ISO 8601
time (`2026-12-01T10:00:00Z`, `2026-12-01T12:00:00+02:00`; UTC when it names no zone). `since` is
inclusive and `until` exclusive, so `--since 2026-12-01 --until 2026-12-02` is that one day. Pure.
"""

from __future__ import annotations

import datetime

from postroom.exports.model import DateRange, ExportRangeError


def parse_moment(text: str, name: str = "time") -> datetime.datetime:
    """The UTC moment `text` names; ExportRangeError naming `name` if it is neither a date nor a time."""
    value = text.strip()
    problem = ExportRangeError(f"{name} {text!r} is not a date or a time (ISO 8601: 2026-12-01 or "
                               "2026-12-01T10:00:00Z)")  # fmt: skip
    if not value or not value[0].isdigit():
        raise problem
    try:
        if len(value) == 10:
            day = datetime.date.fromisoformat(value)
            return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)
        # Python 3.11's fromisoformat reads "Z" itself; the replace keeps "z" readable too.
        moment = datetime.datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise problem from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC)


def date_range(since: str | None = None, until: str | None = None) -> DateRange:
    """The range between `since` (inclusive) and `until` (exclusive), either open when None or
    empty; ExportRangeError when one cannot be read or the range ends before it starts."""
    start = parse_moment(since, "since").timestamp() if since and since.strip() else None
    end = parse_moment(until, "until").timestamp() if until and until.strip() else None
    if start is not None and end is not None and end < start:
        raise ExportRangeError(f"until {until!r} is before since {since!r}")
    return DateRange(start, end)
