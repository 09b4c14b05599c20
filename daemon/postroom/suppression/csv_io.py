"""Suppression lists as CSV, in and out. Pure: text in, values out.

Export columns: email, scope, reason, source, created_at, expires_at (times as ISO 8601 UTC; an
erased entry's email is its hash). Import reads these, and the exports of Loops and other senders:
the address is the column named `email`, `Email Address` or `email_address` (any case); `scope`,
`reason` and `expires_at` are used when present. Rows without a valid address are reported with
their line number, never silently skipped.
"""

from __future__ import annotations

import csv
import datetime
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from postroom.core.addresses import valid_mailbox
from postroom.suppression.model import Entry, NewEntry, valid_scope

COLUMNS = ("email", "scope", "reason", "source", "created_at", "expires_at")
_ADDRESS_COLUMNS = ("email", "email address", "email_address", "emailaddress")


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str


def iso(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _timestamp(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def export_rows(entries: Iterable[Entry]) -> Iterator[list[str]]:
    yield list(COLUMNS)
    for entry in entries:
        email = entry.address if entry.address is not None else "(erased)"
        yield [email, entry.scope, entry.reason, entry.source, iso(entry.created_at), iso(entry.expires_at)]


def read_import(lines: Iterable[str], *, default_scope: str, created_by: str) -> Iterator[NewEntry | BadRow]:
    """The entries of a CSV file (header row first), or a `BadRow` for each row that cannot be one."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        return
    names = [name.strip().lstrip("\ufeff").lower() for name in header]
    address_at = next((names.index(c) for c in _ADDRESS_COLUMNS if c in names), None)
    if address_at is None:
        yield BadRow(1, "no column named email or Email Address")
        return
    column = {name: i for i, name in enumerate(names)}

    def cell(row: list[str], name: str) -> str:
        at = column.get(name)
        return row[at].strip() if at is not None and at < len(row) else ""

    for row in reader:
        line = reader.line_num
        if not any(value.strip() for value in row):
            continue
        address = row[address_at].strip() if address_at < len(row) else ""
        if not valid_mailbox(address):
            yield BadRow(line, f"{address!r} is not an email address")
            continue
        scope = cell(row, "scope") or default_scope
        if not valid_scope(scope):
            yield BadRow(line, f"scope {scope!r} is not global or stream:<name>")
            continue
        try:
            expires_at = _timestamp(cell(row, "expires_at"))
        except ValueError:
            yield BadRow(line, f"expires_at {cell(row, 'expires_at')!r} is not a time")
            continue
        reason = cell(row, "reason") or "imported"
        yield NewEntry(address, scope, "import", reason[:255], created_by=created_by, expires_at=expires_at)

