"""`postroom contacts import|export|erase`: audience CSV files in and out, and erasing a person.

`import` checks every row before it writes any: a bad row refuses the whole file (exit 1, nothing
written) naming its line and column, unless --skip-invalid. A file that cannot be read as an
audience at all (not CSV, no `email` column, a column that cannot be a property) exits 2. `export`
writes the same format, so an export imports back into an empty database as the same contacts.
`erase` is the GDPR erasure of one address (Art. 17): the contact and the bodies of the messages it
was sent. Progress goes to stderr when stderr is a terminal and the output is not --json.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.cli.common import config_option, fail, replaced_file, run_db, settings_from
from postroom.config import Settings
from postroom.contacts.audience import ImportSummary, ProgressSink, export_audience, import_audience, no_progress
from postroom.contacts.csv_io import AudienceFileError
from postroom.contacts.model import ContactError, PropertyType
from postroom.contacts.service import ContactService, checked_email
from postroom.contacts.sql_store import SqlContactStore
from postroom.cli.suppressions import suppression_service
from postroom.core.clock import SystemClock

# Problems printed in text; --json carries up to audience.MAX_REPORTED.
SHOWN_PROBLEMS = 20


def service(engine: AsyncEngine, settings: Settings) -> ContactService:
    """The contacts, with erasure reaching the suppression list (its entries kept as a hash)."""
    lists = [item.mailing_list() for item in settings.contacts.lists]
    return ContactService(SqlContactStore(engine), lists, SystemClock(),
                          erase_suppression=suppression_service(engine).erase)  # fmt: skip


class TerminalProgress:
    """One line on stderr, redrawn at most five times a second: what is being done, the rows done
    (of how many, when known) and the rate."""

    def __init__(self) -> None:
        self._phase = ""
        self._started = self._drawn = 0.0
        self._last: tuple[int, int | None] = (0, None)
        self._width = 0

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if phase != self._phase:
            self.close()
            self._phase, self._started = phase, now
        self._last = (done, total)
        if now - self._drawn >= 0.2:
            self._draw(now)

    def close(self) -> None:
        """Draw the last state of the phase and end its line."""
        if self._phase:
            self._draw(time.monotonic())
            click.echo("", err=True)
        self._phase, self._width = "", 0

    def _draw(self, now: float) -> None:
        done, total = self._last
        elapsed = now - self._started
        of = f"/{total:,}" if total is not None else ""
        rate = f" ({done / elapsed:,.0f}/s)" if elapsed >= 0.5 else ""
        text = f"{self._phase} {done:,}{of} rows{rate}"
        click.echo("\r" + text.ljust(self._width), nl=False, err=True)
        self._width, self._drawn = len(text), now


@contextlib.contextmanager
def progress_on_terminal(enabled: bool) -> Iterator[ProgressSink]:
    if not enabled or not sys.stderr.isatty():
        yield no_progress
        return
    shown = TerminalProgress()
    try:
        yield shown
    finally:
        shown.close()


@contextlib.contextmanager
def audience_file(name: str) -> Iterator[Callable[[], BinaryIO]]:
    """A way to open the file once per pass; stdin (`-`) is spooled to a temporary file first,
    since an import reads its file twice."""
    if name != "-":
        yield lambda: open(name, "rb")
        return
    with tempfile.TemporaryDirectory(prefix="postroom-import-") as directory:
        spooled = Path(directory) / "stdin.csv"
        with spooled.open("wb") as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool)
        yield lambda: spooled.open("rb")


def declared_types(values: tuple[str, ...]) -> dict[str, PropertyType]:
    declared: dict[str, PropertyType] = {}
    for value in values:
        name, equals, kind = value.partition("=")
        if not equals:
            fail(f"--type {value}: give NAME=TYPE, with TYPE one of string, number, boolean, date", 2)
        try:
            declared[name.strip()] = PropertyType(kind.strip())
        except ValueError:
            fail(f"--type {value}: {kind.strip()!r} is not string, number, boolean or date", 2)
    return declared


@click.group()
def contacts() -> None:
    """Contacts: import and export audience CSV files, erase a person."""


@contacts.command("import")
@config_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--skip-invalid", is_flag=True, help="Import the valid rows and report the others.")
@click.option("--dry-run", is_flag=True, help="Check every row and count what would change; write nothing.")
@click.option("--type", "types", multiple=True, metavar="NAME=TYPE",
              help="The type of a column that is no property yet: string (default), number, boolean or date.")
@click.option("--batch-size", type=click.IntRange(1, 10000), default=500, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary and no progress.")
@click.pass_context
def contacts_import(ctx: click.Context, file: str, skip_invalid: bool, dry_run: bool, types: tuple[str, ...],
                    batch_size: int, as_json: bool) -> None:  # fmt: skip
    """Create or update a contact for each row of FILE.csv ('-' for stdin).

    Columns: email (required), firstName, lastName, userId, userGroup, source, subscribed
    (true/false), a mailing list's id from [contacts] lists (true/false), and custom properties.
    An empty cell leaves the value as it is."""
    settings = settings_from(ctx)
    declared = declared_types(types)
    label = "stdin" if file == "-" else file

    with audience_file(file) as open_file, progress_on_terminal(not as_json) as progress:

        async def work(engine: AsyncEngine) -> ImportSummary | AudienceFileError:
            try:
                return await import_audience(service(engine, settings), open_file, declared=declared,
                                             skip_invalid=skip_invalid, dry_run=dry_run, batch_size=batch_size,
                                             progress=progress)  # fmt: skip
            except AudienceFileError as exc:
                return exc

        outcome = run_db(settings, work)
    if isinstance(outcome, AudienceFileError):
        fail(f"{label}: {outcome}", 2)
    report_import(outcome, label, as_json)


def report_import(summary: ImportSummary, label: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary.json()))
    else:
        for problem in summary.problems[:SHOWN_PROBLEMS]:
            click.echo(f"postroom: {label}: {problem}", err=True)
        if summary.skipped > SHOWN_PROBLEMS:
            click.echo(f"postroom: {label}: ... {summary.skipped - SHOWN_PROBLEMS} more (--json lists up to 1000)",
                       err=True)  # fmt: skip
    if summary.refused:
        fail(f"{label}: import refused: {summary.skipped} of {summary.rows} rows are invalid; nothing was "
             "written (--skip-invalid imports the others)")  # fmt: skip
    if summary.write_failures:
        fail(f"{label}: {summary.write_failures} rows could not be written (another contact took their address "
             f"or userId meanwhile); {summary.created} created, {summary.updated} updated")  # fmt: skip
    if as_json:
        return
    if summary.dry_run:
        click.echo(f"dry run: would create {summary.created}, update {summary.updated} and skip "
                   f"{summary.skipped} of {summary.rows} rows; nothing written")  # fmt: skip
    else:
        click.echo(f"created {summary.created}, updated {summary.updated}, skipped {summary.skipped} "
                   f"of {summary.rows} rows")  # fmt: skip


@contacts.command("export")
@config_option
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file (default: stdout); it is replaced only once the export is complete.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines, one contact a line, instead of CSV.")
@click.pass_context
def contacts_export(ctx: click.Context, output: Path | None, as_json: bool) -> None:
    """Every contact as the CSV `contacts import` reads (or as JSON lines)."""
    settings = settings_from(ctx)
    if output is None:
        run_db(settings, lambda e: export_audience(service(e, settings), sys.stdout, as_json=as_json))
        return
    with replaced_file(output) as out, progress_on_terminal(True) as progress:
        written = run_db(settings, lambda e: export_audience(service(e, settings), out, as_json=as_json,
                                                             progress=progress))  # fmt: skip
    click.echo(f"exported {written} contacts to {output}")


@contacts.command("erase")
@config_option
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def contacts_erase(ctx: click.Context, email: str, yes: bool, as_json: bool) -> None:
    """Erase EMAIL (GDPR): its contact, events and list memberships, and the content of every
    message sent to it (the queue keeps only a hash of the address). Erasing an address that has
    nothing is not an error."""
    try:
        address = checked_email(email, "EMAIL")
    except ContactError as exc:
        fail(f"{email!r}: {exc.message}", 2)
    settings = settings_from(ctx)
    if not yes:
        if not sys.stdin.isatty():
            fail("erase asks for confirmation on a terminal; add --yes to erase without asking", 2)
        if not click.confirm(f"erase {address} and the content of every message sent to it? This cannot be undone",
                             err=True):  # fmt: skip
            fail("nothing erased", 1)
    found, erased = run_db(settings, lambda e: service(e, settings).erase(address))
    if as_json:
        click.echo(json.dumps({"email": address, "contact_found": found, "messages_erased": erased}))
        return
    click.echo(f"removed the contact {address}" if found else f"no contact {address} (nothing to remove)")
    click.echo(f"erased the content of {erased} message{'' if erased == 1 else 's'} sent to {address}")
