"""The formats of an export, as text: CSV (RFC 4180: a header row, CRLF line ends, fields quoted
when they hold a comma, a quote or a line break, by the csv module) and JSON lines (one object per
row, keys in column order). Pure: columns and rows in, text out.

Values are written the same way in both where they can be: times as ISO 8601 UTC with milliseconds
and `Z` (`2026-12-01T10:00:00.123Z`), dates as `2026-12-01`; numbers (ints, floats, Decimals) as
numbers, a Decimal column exactly as it is (never through a float). In CSV, None is an empty cell, booleans
are `true`/`false`, and a list or an object is its JSON text.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol

from postroom.exports.model import Row, Value

FormatName = Literal["csv", "jsonl"]
FORMATS: tuple[FormatName, ...] = ("csv", "jsonl")


def iso_time(moment: datetime.datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(value: Any) -> Any:
    """`value` with times as text, for the JSON of a list or an object."""
    if isinstance(value, datetime.datetime):
        return iso_time(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return _nested_decimal(value)
    return value


def _nested_decimal(value: Decimal) -> int | float | None:
    """A Decimal inside a list or an object (the json module has no exact form for it there)."""
    if not value.is_finite():
        return None
    return int(value) if value == value.to_integral_value() else float(value)


def json_value(value: Value) -> str:
    """One value as JSON text."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, Decimal):
        return str(value) if value.is_finite() else "null"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "null"  # JSON has no NaN or Infinity
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime.datetime):
        return json.dumps(iso_time(value))
    if isinstance(value, datetime.date):
        return json.dumps(value.isoformat())
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(_plain(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                      default=_unknown)  # fmt: skip


def _unknown(value: Any) -> Any:
    raise TypeError(f"an export cannot write a {type(value).__name__}")


def csv_cell(value: Value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, Decimal)):
        return json_value(value) if not isinstance(value, int) else str(value)
    if isinstance(value, datetime.datetime):
        return iso_time(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    return json_value(value)


class ExportWriter(Protocol):
    """Text for the start of an export and for each batch of rows; nothing is held between calls."""

    @property
    def name(self) -> FormatName: ...

    @property
    def media_type(self) -> str:
        """The Content-Type of the HTTP answer."""
        ...

    @property
    def extension(self) -> str: ...

    def header(self, columns: Sequence[str]) -> str: ...

    def rows(self, columns: Sequence[str], rows: Iterable[Row]) -> str: ...


@dataclass(frozen=True)
class CsvWriter:
    name: FormatName = "csv"
    media_type: str = "text/csv; charset=utf-8"
    extension: str = "csv"

    def header(self, columns: Sequence[str]) -> str:
        return self._text([list(columns)])

    def rows(self, columns: Sequence[str], rows: Iterable[Row]) -> str:
        return self._text([csv_cell(value) for value in row] for row in rows)

    @staticmethod
    def _text(rows: Iterable[Sequence[str]]) -> str:
        out = io.StringIO()
        # RFC 4180 §2: CRLF ends each record; fields with a comma, quote or line break are quoted.
        csv.writer(out, lineterminator="\r\n").writerows(rows)
        return out.getvalue()


@dataclass(frozen=True)
class JsonLinesWriter:
    name: FormatName = "jsonl"
    media_type: str = "application/x-ndjson"
    extension: str = "jsonl"

    def header(self, columns: Sequence[str]) -> str:
        return ""

    def rows(self, columns: Sequence[str], rows: Iterable[Row]) -> str:
        keys = [json.dumps(name, ensure_ascii=False) for name in columns]
        return "".join(
            "{" + ",".join(f"{key}:{json_value(value)}" for key, value in zip(keys, row, strict=True)) + "}\n"
            for row in rows
        )


def writer_for(name: str) -> ExportWriter:
    """The writer of a format name; ValueError for another."""
    if name == "csv":
        return CsvWriter()
    if name == "jsonl":
        return JsonLinesWriter()
    raise ValueError(f"format {name!r}: csv or jsonl")
