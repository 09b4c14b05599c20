"""Exports on their own: the CSV and JSON lines writers (RFC 4180 quoting, times in UTC with Z,
Decimals exact), reading a date range, the registry, and `export_chunks` over a kind in memory
(chunks as rows come, the header once, metrics, and a source closed when the export is abandoned)."""

from __future__ import annotations

import csv
import datetime
import io
import json
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry

from postroom.exports.model import (
    DateRange,
    ExportColumn,
    ExportKind,
    ExportRangeError,
    ExportRegistry,
    Row,
    UnknownExportKind,
)
from postroom.exports.range import date_range, parse_moment
from postroom.exports.stream import export_chunks
from postroom.exports.writers import CsvWriter, JsonLinesWriter, csv_cell, json_value, writer_for
from postroom.metrics import Metrics

UTC = datetime.UTC
AT = datetime.datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)
COLUMNS = ("id", "text", "amount", "at", "flag", "tags", "extra")


def columns(*names: str) -> tuple[ExportColumn, ...]:
    return tuple(ExportColumn(name, name) for name in names)


# -- writers ------------------------------------------------------------------------------------

def test_csv_is_rfc_4180_and_reads_back() -> None:
    rows: list[Row] = [
        (1, 'a "quoted", comma', Decimal("12.50"), AT, True, ["x", "y"], {"k": 1}),
        (2, "two\r\nlines", None, None, False, [], None),
        (3, "Émile ✉", 0.1, datetime.date(2026, 1, 2), None, None, {"when": AT, "n": Decimal("1.5")}),
    ]
    writer = CsvWriter()
    text = writer.header(COLUMNS) + writer.rows(COLUMNS, rows)
    assert text.startswith("id,text,amount,at,flag,tags,extra\r\n")
    assert '"a ""quoted"", comma"' in text and text.endswith("\r\n")
    read = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    assert read[0] == list(COLUMNS)
    assert read[1] == ["1", 'a "quoted", comma', "12.50", "2026-12-01T10:00:00.123Z", "true", '["x","y"]', '{"k":1}']
    assert read[2] == ["2", "two\r\nlines", "", "", "false", "[]", ""]
    assert read[3] == ["3", "Émile ✉", "0.1", "2026-01-02", "", "", '{"when":"2026-12-01T10:00:00.123Z","n":1.5}']


def test_json_lines_keep_types_and_column_order() -> None:
    rows: list[Row] = [
        (1, "Émile \"x\"\n", Decimal("12345678901234567890.000000000001"), AT, True, ["a"], {"b": None}),
        (2, None, 7, datetime.datetime(2026, 1, 1, 12, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
         False, (), {}),
    ]
    text = JsonLinesWriter().rows(COLUMNS, rows)
    lines = text.splitlines()
    assert len(lines) == 2 and text.endswith("\n")
    first = json.loads(lines[0], parse_float=Decimal)
    assert list(first) == list(COLUMNS)
    assert first["amount"] == Decimal("12345678901234567890.000000000001")  # not rounded through a float
    assert first["at"] == "2026-12-01T10:00:00.123Z" and first["flag"] is True and first["text"] == 'Émile "x"\n'
    second = json.loads(lines[1])
    assert second["id"] == 2 and second["amount"] == 7 and second["at"] == "2026-01-01T10:00:00.000Z"
    assert second["tags"] == [] and second["extra"] == {} and second["text"] is None
    assert JsonLinesWriter().header(COLUMNS) == ""


def test_values_that_json_cannot_hold() -> None:
    assert json_value(float("nan")) == "null" and json_value(Decimal("Infinity")) == "null"
    assert json_value(datetime.datetime(2026, 1, 1)) == '"2026-01-01T00:00:00.000Z"'  # naive: UTC
    assert csv_cell(Decimal("-0.000001")) == "-0.000001" and csv_cell(10**20) == str(10**20)
    with pytest.raises(TypeError):
        json_value({"x": object()})  # type: ignore[dict-item]


def test_writer_for_names_the_formats() -> None:
    assert writer_for("csv").media_type == "text/csv; charset=utf-8"
    assert writer_for("jsonl").media_type == "application/x-ndjson"
    with pytest.raises(ValueError):
        writer_for("xml")


# -- date ranges --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-01", datetime.datetime(2026, 12, 1, tzinfo=UTC)),
    ("2026-12-01T10:00:00Z", datetime.datetime(2026, 12, 1, 10, tzinfo=UTC)),
    ("2026-12-01T10:00:00z", datetime.datetime(2026, 12, 1, 10, tzinfo=UTC)),
    ("2026-12-01T12:00:00+02:00", datetime.datetime(2026, 12, 1, 10, tzinfo=UTC)),
    ("2026-12-01T10:00", datetime.datetime(2026, 12, 1, 10, tzinfo=UTC)),  # no zone: UTC
    ("2026-12-01 10:00:00.5", datetime.datetime(2026, 12, 1, 10, 0, 0, 500000, tzinfo=UTC)),
    (" 2026-12-01 ", datetime.datetime(2026, 12, 1, tzinfo=UTC)),
])  # fmt: skip
def test_moments(text: str, expected: datetime.datetime) -> None:
    assert parse_moment(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "", "2026-13-01", "2026-02-30", "1764583200", "-2026-01-01",
                                  "2026-12-01T25:00", "2026/12/01"])  # fmt: skip
def test_what_is_not_a_moment(text: str) -> None:
    with pytest.raises(ExportRangeError, match="since"):
        parse_moment(text, "since")


DEC_1 = datetime.datetime(2026, 12, 1, tzinfo=UTC).timestamp()


def test_ranges() -> None:
    day = date_range("2026-12-01", "2026-12-02")
    assert day == DateRange(DEC_1, DEC_1 + 86400)
    assert day.contains(DEC_1) and not day.contains(DEC_1 + 86400)  # since inclusive, until exclusive
    assert date_range() == DateRange(None, None) and date_range("", " ") == DateRange(None, None)
    assert date_range(until="2026-12-01") == DateRange(None, DEC_1)
    assert date_range("2026-12-01", "2026-12-01") == DateRange(DEC_1, DEC_1)  # empty, not an error
    with pytest.raises(ExportRangeError, match="before since"):
        date_range("2026-12-02", "2026-12-01")
    with pytest.raises(ExportRangeError, match="until 'soon'"):
        date_range("2026-12-01", "soon")


# -- the registry -------------------------------------------------------------------------------

def memory_kind(name: str, rows: list[Row], seen: list[str] | None = None) -> ExportKind:
    async def source(span: DateRange) -> AsyncIterator[Row]:
        try:
            for row in rows:
                assert isinstance(row[1], float)
                if span.contains(row[1]):
                    if seen is not None:
                        seen.append(f"read {row[0]}")
                    yield row
        finally:
            if seen is not None:
                seen.append("closed")

    return ExportKind(name, f"{name} in memory", columns("n", "at"), "at", source)


def test_the_registry() -> None:
    registry = ExportRegistry([memory_kind("zeta", []), memory_kind("alpha", [])])
    registry.register(memory_kind("mid-kind_2", []))
    assert registry.names() == ["alpha", "mid-kind_2", "zeta"]
    assert [k.name for k in registry.kinds()] == registry.names()
    assert registry.get("zeta").description == "zeta in memory"
    with pytest.raises(UnknownExportKind) as raised:
        registry.get("nope")
    assert raised.value.known == ("alpha", "mid-kind_2", "zeta")
    assert str(raised.value) == "no export kind 'nope'; known kinds: alpha, mid-kind_2, zeta"
    with pytest.raises(ValueError, match="registered already"):
        registry.register(memory_kind("alpha", []))
    assert ExportRegistry().names() == []


def test_a_kind_is_checked_when_made() -> None:
    async def nothing(span: DateRange) -> AsyncIterator[Row]:
        yield ()

    with pytest.raises(ValueError, match="time_column"):
        ExportKind("x", "x", columns("a"), "b", nothing)
    with pytest.raises(ValueError, match="twice"):
        ExportKind("x", "x", columns("a", "a"), "a", nothing)
    for bad in ("", "Upper", "a b", "a/b"):
        with pytest.raises(ValueError, match="name"):
            ExportKind(bad, "x", columns("a"), "a", nothing)
    described = ExportKind("x", "one line", columns("a"), "a", nothing).describe()
    assert described == {"name": "x", "description": "one line", "time_column": "a",
                         "columns": [{"name": "a", "description": "a"}]}  # fmt: skip


# -- streaming ----------------------------------------------------------------------------------

async def test_chunks_come_as_rows_are_read() -> None:
    seen: list[str] = []
    kind = memory_kind("numbers", [(n, float(n)) for n in range(10)], seen)
    metrics = Metrics(CollectorRegistry())
    written: list[int] = []
    chunks = export_chunks(kind, DateRange(2.0, 9.0), CsvWriter(), metrics, surface="cli", rows_per_chunk=3,
                           progress=written.append)  # fmt: skip
    first = await anext(chunks)
    assert first == "n,at\r\n2,2.0\r\n3,3.0\r\n4,4.0\r\n"
    assert seen == ["read 2", "read 3", "read 4"]  # nothing read ahead of the chunk
    rest = [chunk async for chunk in chunks]
    assert rest == ["5,5.0\r\n6,6.0\r\n7,7.0\r\n", "8,8.0\r\n"]
    assert written == [3, 6, 7] and seen[-1] == "closed"
    registry = metrics.registry
    assert registry.get_sample_value("postroom_exports_total", {"kind": "numbers", "format": "csv",
                                                                "surface": "cli"}) == 1  # fmt: skip
    assert registry.get_sample_value("postroom_export_rows_total", {"kind": "numbers"}) == 7


async def test_an_empty_export_is_its_header_and_an_abandoned_one_stops_reading() -> None:
    metrics = Metrics(CollectorRegistry())
    empty = [c async for c in export_chunks(memory_kind("none", []), DateRange(), CsvWriter(), metrics, surface="http")]
    assert empty == ["n,at\r\n"]
    assert [c async for c in export_chunks(memory_kind("none", []), DateRange(), JsonLinesWriter(), metrics,
                                           surface="http")] == [""]  # fmt: skip
    seen: list[str] = []
    chunks = export_chunks(memory_kind("many", [(n, float(n)) for n in range(100)], seen), DateRange(),
                           JsonLinesWriter(), metrics, surface="http", rows_per_chunk=10)  # fmt: skip
    assert json.loads((await anext(chunks)).splitlines()[0]) == {"n": 0, "at": 0.0}
    await chunks.aclose()
    assert seen[-1] == "closed" and len(seen) == 11


async def test_a_row_of_the_wrong_width_is_a_bug() -> None:
    kind = memory_kind("bad", [(1, 1.0, "extra")])
    with pytest.raises(ValueError, match="3 values for 2 columns"):
        [c async for c in export_chunks(kind, DateRange(), CsvWriter(), Metrics(CollectorRegistry()), surface="cli")]
