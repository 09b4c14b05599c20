"""The values of exports: a kind (its name, ordered columns, the time column its date range filters
on, and the async source of its rows), the registry kinds are looked up in, and the errors a caller
can show as they are. Pure: a kind's source is a function bound by whoever builds the kind (see
`sql_kinds.standard_kinds`), so the registry itself holds no engine and no global state.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from postroom.core.errors import PostroomError

# A cell: what a row source may yield. Writers know how to show each (writers.py); a list or a
# mapping is written as JSON (text in a CSV cell, a value in JSON lines).
Value = (str | int | float | Decimal | bool | datetime.datetime | datetime.date | Sequence[Any] | Mapping[str, Any]
         | None)
Row = Sequence[Value]
# A kind's name is a path segment of `/v1/exports/{kind}` and a CLI argument: keep it plain.
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


@dataclass(frozen=True)
class DateRange:
    """Seconds since the epoch (UTC): `since` inclusive, `until` exclusive; None is open."""

    since: float | None = None
    until: float | None = None

    def contains(self, moment: float) -> bool:
        return (self.since is None or moment >= self.since) and (self.until is None or moment < self.until)


# A kind's rows in the range, each with one value per column in column order, read from the
# database a page at a time (never the whole table in memory).
RowSource = Callable[[DateRange], AsyncIterator[Row]]


@dataclass(frozen=True)
class ExportColumn:
    name: str
    description: str


def columns(*pairs: tuple[str, str]) -> tuple[ExportColumn, ...]:
    """Columns from (name, description) pairs, in order."""
    return tuple(ExportColumn(name, description) for name, description in pairs)


@dataclass(frozen=True)
class ExportKind:
    """One kind of export. `time_column` names the column (a timestamp) the date range filters on."""

    name: str
    description: str  # one line
    columns: tuple[ExportColumn, ...]
    time_column: str
    rows: RowSource

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"export kind name {self.name!r}: lower-case letters, digits, - and _ only")
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"export kind {self.name}: a column is named twice")
        if self.time_column not in names:
            raise ValueError(f"export kind {self.name}: time_column {self.time_column!r} is not one of its columns")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def describe(self) -> dict[str, Any]:
        """What `GET /v1/exports` and `postroom export --list --json` show of the kind."""
        return {
            "name": self.name, "description": self.description, "time_column": self.time_column,
            "columns": [{"name": c.name, "description": c.description} for c in self.columns],
        }  # fmt: skip


class ExportError(PostroomError):
    """A request for an export that cannot be run as asked; the text is safe to show."""


class UnknownExportKind(ExportError):
    def __init__(self, name: str, known: Sequence[str]):
        self.name = name
        self.known = tuple(known)
        super().__init__(f"no export kind {name!r}; known kinds: {', '.join(self.known) or '(none)'}")


class ExportRangeError(ExportError):
    """A `since` or `until` that is not a date or a time, or a range that ends before it starts."""


class ExportRegistry:
    """The kinds that can be exported, by name. Built by the composition root (`app.py`, the CLI)
    and passed to what serves exports; another package adds its kinds with `register`."""

    def __init__(self, kinds: Iterable[ExportKind] = ()):
        self._kinds: dict[str, ExportKind] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: ExportKind) -> None:
        """Add a kind; a second kind of the same name is refused (ValueError)."""
        if kind.name in self._kinds:
            raise ValueError(f"export kind {kind.name!r} is registered already")
        self._kinds[kind.name] = kind

    def get(self, name: str) -> ExportKind:
        """The kind named `name`; UnknownExportKind (listing the known names) if none is."""
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownExportKind(name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def kinds(self) -> list[ExportKind]:
        return [self._kinds[name] for name in self.names()]
