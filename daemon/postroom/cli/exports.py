"""`postroom export KIND [--since DATE] [--until DATE] [--format csv|jsonl] [--output FILE]` and
`postroom export --list`: on-demand exports from the shell, streamed as they are read.

To stdout by default; with --output, written beside the file and renamed into place once complete
(a failed export leaves no half file). Progress (rows written) goes to stderr only when stderr is a
terminal and the rows are not going to that terminal. A bad kind, date or range exits 2 before the
database is touched; a database that cannot be read exits 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TextIO

import click
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.app import export_registry
from postroom.cli.common import config_option, fail, replaced_file, settings_from
from postroom.cli.contacts import progress_on_terminal
from postroom.core.clock import SystemClock
from postroom.core.errors import PostroomError
from postroom.exports.model import DateRange, ExportError, ExportKind, ExportRegistry
from postroom.exports.range import date_range
from postroom.exports.stream import RowsWritten, export_chunks
from postroom.exports.writers import FORMATS, writer_for
from postroom.metrics import Metrics
from postroom.store import schema
from postroom.store.engine import create_engine


def print_kinds(registry: ExportRegistry, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([kind.describe() for kind in registry.kinds()]))
        return
    for kind in registry.kinds():
        click.echo(f"{kind.name}: {kind.description}")
        click.echo(f"  columns: {', '.join(kind.column_names)}")
        click.echo(f"  --since/--until filter on: {kind.time_column}")


@click.command("export")
@config_option
@click.argument("kind", required=False)
@click.option("--since", default=None, metavar="DATE", help="From this date or time, inclusive (2026-12-01, "
              "2026-12-01T10:00:00Z; UTC when no zone).")  # fmt: skip
@click.option("--until", default=None, metavar="DATE", help="To this date or time, exclusive.")
@click.option("--format", "format_name", type=click.Choice(FORMATS), default="csv", show_default=True)
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file (default: stdout); it is replaced only once the export is complete.")
@click.option("--list", "list_kinds", is_flag=True, help="List the kinds, their columns and date column.")
@click.option("--json", "as_json", is_flag=True, help="With --list: print the kinds as JSON.")
@click.pass_context
def export(ctx: click.Context, kind: str | None, since: str | None, until: str | None, format_name: str,
           output: Path | None, list_kinds: bool, as_json: bool) -> None:  # fmt: skip
    """Export KIND's rows (deliveries, bounces, suppressions, contacts, ...) as CSV or JSON lines."""
    try:
        span = date_range(since, until)
    except ExportError as exc:
        fail(str(exc), 2)
    settings = settings_from(ctx)
    # Not connected until the export runs (and disposed of by it): listing the kinds and checking
    # the one asked for touch no database.
    engine = create_engine(settings.database)
    registry = export_registry(engine, SystemClock(), settings)
    if list_kinds:
        print_kinds(registry, as_json)
        return
    if not kind:
        fail(f"give a KIND ({', '.join(registry.names())}), or --list", 2)
    try:
        chosen = registry.get(kind)
    except ExportError as exc:
        fail(str(exc), 2)
    run = Export(engine, chosen, span, format_name)
    if output is None:
        run.to_stdout()
    else:
        run.to_file(output)


class Export:
    """One export run to a text stream, on its own event loop."""

    def __init__(self, engine: AsyncEngine, kind: ExportKind, span: DateRange, format_name: str):
        self.engine = engine
        self.kind = kind
        self.span = span
        self.writer = writer_for(format_name)
        # The command's own registry: nothing scrapes it, the counters are for the daemon's.
        self.metrics = Metrics(CollectorRegistry())

    def to_stdout(self) -> None:
        # Progress only when the rows are not going to the same terminal.
        with progress_on_terminal(not sys.stdout.isatty()) as progress:
            try:
                self._run(sys.stdout, lambda n: progress("exporting", n, None))
            except BrokenPipeError:
                # `postroom export ... | head`: the reader has what it wanted.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                sys.exit(1)

    def to_file(self, output: Path) -> None:
        with replaced_file(output) as out, progress_on_terminal(True) as progress:
            written = self._run(out, lambda n: progress("exporting", n, None))
        click.echo(f"exported {written} {self.kind.name} rows to {output}")

    def _run(self, out: TextIO, progress: RowsWritten) -> int:
        written = 0

        def counted(n: int) -> None:
            nonlocal written
            written = n
            progress(n)

        async def work() -> None:
            try:
                await schema.require_current(self.engine)
                async for chunk in export_chunks(self.kind, self.span, self.writer, self.metrics, surface="cli",
                                                 progress=counted):  # fmt: skip
                    out.write(chunk)
                    out.flush()
            finally:
                await self.engine.dispose()

        try:
            asyncio.run(work())
        except PostroomError as exc:
            fail(str(exc))
        return written
