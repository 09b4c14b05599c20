"""What a report is made of before it is rendered: sections of figures (raw numbers, with the
previous period and the average of the four before), tables and charts. Pure values."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from postroom.reports.periods import Period


class Unit(enum.StrEnum):
    MONEY = "money"  # minor units of the report's currency
    COUNT = "count"
    RATE = "rate"  # a fraction (0.0173 is 1.73 %)
    SECONDS = "seconds"
    TEXT = "text"


@dataclass(frozen=True)
class Figure:
    key: str  # stable, for the CSV and the run record: "mrr", "new", "wau"...
    label: str
    value: int | float | str | None  # None: not available (never shown as 0)
    unit: Unit
    previous: int | float | None = None  # the previous period's value
    average: float | None = None  # the average of the four periods before
    # For gains and losses shown as positive amounts: True when a rise is bad (churn, bounce rate).
    rise_is_bad: bool = False


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    units: tuple[Unit, ...] = ()  # per column; empty: text


@dataclass(frozen=True)
class ChartImage:
    content_id: str
    png: bytes
    alt: str


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    figures: Sequence[Figure] = ()
    tables: Sequence[tuple[str, Table]] = ()  # (caption, table)
    charts: Sequence[ChartImage] = ()
    notes: Sequence[str] = ()
    unavailable: str = ""  # why the section could not be built ("": it was)

    @property
    def available(self) -> bool:
        return not self.unavailable


@dataclass(frozen=True)
class Report:
    name: str
    title: str
    period: Period
    currency: str
    locale: str
    sections: Sequence[Section]
    policies: dict[str, Any] = field(default_factory=dict)
    freshness: dict[str, Any] = field(default_factory=dict)
    generated_at: float = 0.0

    def figures(self) -> dict[str, Any]:
        """Every figure by section and key, as recorded with the run and put in the CSV."""
        out: dict[str, Any] = {}
        for section in self.sections:
            if not section.available:
                out[section.name] = {"unavailable": section.unavailable}
                continue
            out[section.name] = {f.key: f.value for f in section.figures}
        return out
