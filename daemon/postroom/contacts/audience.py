"""Moving an audience file in and out: `import_audience` checks every row of a contact CSV before it
writes any, then writes the valid rows in batches; `export_audience` streams every contact as the
same CSV (or as JSON lines). What `postroom contacts import|export` run.

The file is read twice (checked whole, then written) rather than held: an import of millions of rows
keeps one batch and the bookkeeping of the rows at fault in memory. A row can also fail at write
time, when another request changed the contacts between the two passes; it is reported like a bad
row and the other rows go on.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TextIO

from postroom.contacts.csv_io import (
    AudienceColumns,
    AudienceFileError,
    RowProblem,
    contact_row,
    export_header,
    parse_row,
    read_header,
    read_records,
    utf8_lines,
)
from postroom.contacts.model import ContactError, PropertyType, contact_json, email_key
from postroom.contacts.service import ContactService

# (what is being done, rows done, rows in all when known); called once per batch and at the end.
ProgressSink = Callable[[str, int, int | None], None]
# The problems an import keeps to report; the count of skipped rows stays exact beyond it.
MAX_REPORTED = 1000


def no_progress(_phase: str, _done: int, _total: int | None) -> None:
    return None


@dataclass
class ImportSummary:
    rows: int = 0
    created: int = 0
    updated: int = 0
    skipped: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    dry_run: bool = False
    refused: bool = False  # bad rows and no --skip-invalid: nothing was written
    write_failures: int = 0  # rows refused at write time (see the module docstring)

    def report(self, problem: RowProblem) -> None:
        self.skipped += 1
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(problem)

    def json(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "created": self.created, "updated": self.updated, "skipped": self.skipped,
            "errors": [{"line": p.line, "column": p.column, "message": p.message} for p in self.problems],
            "dry_run": self.dry_run, "refused": self.refused,
        }  # fmt: skip


@dataclass
class _Check:
    """What the first pass learns: the columns, the lines at fault, and for a dry run what the
    rows would do."""

    columns: AudienceColumns
    bad_lines: set[int] = field(default_factory=set)
    user_ids: dict[str, tuple[str, int]] = field(default_factory=dict)  # userId -> (email key, first line)
    emails: set[str] = field(default_factory=set)  # dry run only: the addresses of earlier rows
    # Rows whose userId moves its contact to a new address: address key -> (line, userId, old address).
    moves: dict[str, tuple[int, str, str]] = field(default_factory=dict)

    def reject(self, problem: RowProblem, summary: ImportSummary) -> None:
        self.bad_lines.add(problem.line)
        summary.report(problem)


async def import_audience(
    service: ContactService,
    open_file: Callable[[], BinaryIO],
    *,
    declared: Mapping[str, PropertyType] | None = None,
    skip_invalid: bool = False,
    dry_run: bool = False,
    batch_size: int = 500,
    progress: ProgressSink = no_progress,
) -> ImportSummary:
    """Import the CSV that `open_file` opens (in binary; it is called once per pass). Any bad row
    refuses the whole file unless `skip_invalid`; `dry_run` checks and counts but writes nothing.
    Raises AudienceFileError when the file as a whole is unusable."""
    summary = ImportSummary(dry_run=dry_run)
    known = {p.key: p.type for p in await service.properties("custom")}
    check = await _check_rows(service, open_file, known, declared or {}, summary, batch_size, progress)
    if summary.skipped and not skip_invalid:
        summary.refused = True
        summary.created = summary.updated = 0
        return summary
    if dry_run:
        return summary
    await _define_properties(service, check.columns, known)
    await _write_rows(service, open_file, check, summary, batch_size, progress)
    return summary


async def _check_rows(service: ContactService, open_file: Callable[[], BinaryIO], known: Mapping[str, PropertyType],
                      declared: Mapping[str, PropertyType], summary: ImportSummary, batch_size: int,
                      progress: ProgressSink) -> _Check:  # fmt: skip
    with open_file() as raw:
        records = read_records(utf8_lines(raw))
        header = next(records, None)
        if header is None:
            raise AudienceFileError("the file is empty (the first row must name the columns)")
        check = _Check(read_header(header[1], known, service.mailing_lists, declared))
        progress("checking", 0, None)
        pending: list[tuple[int, str, str | None]] = []  # (line, email, userId) of rows valid on their own
        for line, values in records:
            summary.rows += 1
            parsed = parse_row(check.columns, values, line)
            if isinstance(parsed, RowProblem):
                check.reject(parsed, summary)
            else:
                pending.append((line, parsed[0], parsed[1].get("userId")))
            if len(pending) >= batch_size:
                await _check_identities(service, check, pending, summary)
            if summary.rows % batch_size == 0:
                progress("checking", summary.rows, None)
        await _check_identities(service, check, pending, summary)
    if check.moves:
        _check_moves(open_file, check, summary)
    summary.problems.sort(key=lambda p: p.line)
    progress("checking", summary.rows, None)
    return check


async def _check_identities(service: ContactService, check: _Check, pending: list[tuple[int, str, str | None]],
                            summary: ImportSummary) -> None:  # fmt: skip
    """The conflicts `update` would meet, for a batch of rows (their contacts read in one query).
    A row's userId finds its contact first (Loops' rule), so a userId on two rows with different
    addresses, or one that belongs to a contact while the row's address is another contact's, would
    write one contact over another: both are refused. A dry run also counts creates and updates."""
    if not pending:
        return
    stored = await service.find_many(emails=[e for _, e, _ in pending], user_ids=[u for _, _, u in pending if u])
    by_key = {email_key(c.email): c for c in stored}
    by_user_id = {c.user_id: c for c in stored if c.user_id is not None}
    for line, email, user_id in pending:
        key = email_key(email)
        earlier = check.user_ids.get(user_id) if user_id is not None else None
        owner = by_user_id.get(user_id) if user_id is not None else None
        other = by_key.get(key)
        if earlier is not None and earlier[0] != key:
            check.reject(RowProblem(line, "userId", f"userId {user_id!r} is also on line {earlier[1]}, "
                                                    "with another address"), summary)  # fmt: skip
        elif owner is not None and other is not None and owner.id != other.id:
            check.reject(RowProblem(line, "userId", f"userId {user_id!r} belongs to the contact {owner.email}, "
                                                    f"and {email} is another contact"), summary)  # fmt: skip
        elif earlier is None and owner is not None and other is None and key in check.moves:
            first = check.moves[key][0]
            check.reject(RowProblem(line, "userId", f"userId {user_id!r} would move the contact {owner.email} to "
                                                    f"{email}, where line {first} moves another one"), summary)  # fmt: skip
        else:
            if earlier is None and owner is not None and other is None and user_id is not None:
                check.moves[key] = (line, user_id, owner.email)
            if summary.dry_run:
                exists = earlier is not None or key in check.emails or owner is not None or other is not None
                summary.created += not exists
                summary.updated += exists
                check.emails.add(key)
            if user_id is not None and earlier is None:
                check.user_ids[user_id] = (key, line)
    pending.clear()


def _check_moves(open_file: Callable[[], BinaryIO], check: _Check, summary: ImportSummary) -> None:
    """A row that moves a contact (by its userId) to an address an earlier row of the file creates
    would meet that contact at write time; the database alone cannot tell, so read the rows before
    the moves again (moves are rare: this pass usually never runs)."""
    last = max(line for line, _, _ in check.moves.values())
    with open_file() as raw:
        records = read_records(utf8_lines(raw))
        next(records)
        for line, values in records:
            if line >= last:
                break
            parsed = parse_row(check.columns, values, line)
            if line in check.bad_lines or isinstance(parsed, RowProblem):
                continue
            move = check.moves.get(email_key(parsed[0]))
            if move is not None and line < move[0]:
                first, user_id, old = check.moves.pop(email_key(parsed[0]))
                check.reject(RowProblem(first, "userId", f"userId {user_id!r} would move the contact {old} to "
                                                         f"{parsed[0]}, which line {line} creates"), summary)  # fmt: skip
                summary.updated -= summary.dry_run  # it was counted as an update
                if not check.moves:
                    return


async def _define_properties(service: ContactService, columns: AudienceColumns, known: Mapping[str, PropertyType]) -> None:
    """Create the declared non-string properties before the rows; string ones are created by the
    first row with a value, as the API does."""
    for name, kind in columns.new.items():
        if kind is PropertyType.STRING:
            continue
        try:
            await service.create_property(name, kind.value)
        except ContactError as exc:
            if exc.kind != "conflict":
                raise
            now = {p.key: p.type for p in await service.properties("custom")}
            if now.get(name) is not kind:  # created meanwhile, as another type
                raise AudienceFileError(f"--type {name}: the property was just created as {now.get(name)}") from None


async def _write_rows(service: ContactService, open_file: Callable[[], BinaryIO], check: _Check, summary: ImportSummary,
                      batch_size: int, progress: ProgressSink) -> None:  # fmt: skip
    total = summary.rows - summary.skipped
    done = 0
    batch: list[tuple[str, dict[str, Any]]] = []
    lines: list[int] = []

    def failed(index: int, exc: ContactError) -> None:
        summary.write_failures += 1
        summary.report(RowProblem(lines[index], exc.path.removeprefix("mailingLists."), exc.message))

    async def flush() -> None:
        nonlocal done
        created, updated = await service.import_rows(batch, on_error=failed)
        summary.created += created
        summary.updated += updated
        done += len(batch)
        batch.clear()
        lines.clear()
        progress("importing", done, total)

    progress("importing", 0, total)
    with open_file() as raw:
        records = read_records(utf8_lines(raw))
        next(records)  # the header, checked already
        for line, values in records:
            if line in check.bad_lines:
                continue
            parsed = parse_row(check.columns, values, line)
            if isinstance(parsed, RowProblem):  # the file changed between the passes
                raise AudienceFileError(f"line {line} changed while importing (the rows before it were "
                                        "imported); import the file again")
            batch.append(parsed)
            lines.append(line)
            if len(batch) >= batch_size:
                await flush()
        if batch:
            await flush()


async def export_audience(service: ContactService, out: TextIO, *, as_json: bool = False,
                          progress: ProgressSink = no_progress, batch_size: int = 500) -> int:  # fmt: skip
    """Write every contact to `out`: the CSV `import_audience` reads (the configured lists, then
    every custom property, as columns) or one `contact_json` object a line. The number written."""
    total = await service.count()
    lists = [item.id for item in service.mailing_lists]
    properties = [p.key for p in await service.properties("custom")]
    writer = csv.writer(out)
    if not as_json:
        writer.writerow(export_header(lists, properties))
    written = 0
    progress("exporting", 0, total)
    async for contact in service.all():
        if as_json:
            out.write(json.dumps(contact_json(contact)) + "\n")
        else:
            writer.writerow(contact_row(contact, lists, properties))
        written += 1
        if written % batch_size == 0:
            progress("exporting", written, total)
    progress("exporting", written, max(total, written))
    return written
