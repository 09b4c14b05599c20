"""`postroom suppressions ls|add|rm|import|export|erase`: the suppression list from the shell."""

from __future__ import annotations

import csv
import getpass
import json
import sys
from pathlib import Path
from typing import Any

import click
from prometheus_client import CollectorRegistry

from postroom.cli.common import config_option, fail, run_db, settings_from, when
from postroom.core.addresses import valid_mailbox
from postroom.core.clock import SystemClock
from postroom.metrics import Metrics
from postroom.suppression.csv_io import BadRow, export_rows, read_import
from postroom.suppression.model import SOURCES, Entry, NewEntry, valid_scope
from postroom.suppression.service import SuppressionService
from postroom.suppression.sql_store import SqlSuppressionStore

IMPORT_BATCH = 1000


def suppression_service(engine: Any) -> SuppressionService:
    return SuppressionService(SqlSuppressionStore(engine), SystemClock(), Metrics(CollectorRegistry()))


def _scope(value: str) -> str:
    scope = value if value == "global" or value.startswith("stream:") else f"stream:{value}"
    if not valid_scope(scope):
        fail(f"scope {value!r}: use global, stream:<name> or a stream name", 2)
    return scope


def _entry_dict(entry: Entry) -> dict[str, Any]:
    return {**entry.__dict__, "erased": entry.erased}


@click.group()
def suppressions() -> None:
    """The suppression list: addresses postroom does not send to."""


@suppressions.command("ls")
@config_option
@click.option("--address", default=None)
@click.option("--scope", default=None, help="global, stream:<name> or a stream name")
@click.option("--source", type=click.Choice(SOURCES), default=None)
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def suppressions_ls(ctx: click.Context, address: str | None, scope: str | None, source: str | None, limit: int,
                    as_json: bool) -> None:  # fmt: skip
    """List entries, oldest first."""
    settings = settings_from(ctx)
    wanted = _scope(scope) if scope else None
    found = run_db(settings, lambda e: suppression_service(e).search(address=address, scope=wanted, source=source, limit=limit))
    if as_json:
        click.echo(json.dumps([_entry_dict(e) for e in found]))
        return
    if not found:
        click.echo("no suppressions")
        return
    click.echo(f"{'ADDRESS':40}  {'SCOPE':24}  {'SOURCE':11}  {'SINCE (UTC)':19}  {'UNTIL':19}  REASON")
    for e in found:
        shown = e.address or "(erased)"
        click.echo(f"{shown[:40]:40}  {e.scope[:24]:24}  {e.source:11}  {when(e.created_at):19}  "
                   f"{when(e.expires_at):19}  {e.reason}")  # fmt: skip


@suppressions.command("add")
@config_option
@click.argument("address")
@click.option("--scope", default="global", show_default=True, help="global, stream:<name> or a stream name")
@click.option("--reason", default="manual", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def suppressions_add(ctx: click.Context, address: str, scope: str, reason: str, as_json: bool) -> None:
    """Suppress ADDRESS."""
    if not valid_mailbox(address):
        fail(f"{address!r} is not an email address", 2)
    entry = NewEntry(address, _scope(scope), "manual", reason, created_by=f"cli:{getpass.getuser()}")
    settings = settings_from(ctx)
    run_db(settings, lambda e: suppression_service(e).add([entry]))
    click.echo(json.dumps({"added": address, "scope": entry.scope}) if as_json else f"suppressed {address} ({entry.scope})")


@suppressions.command("rm")
@config_option
@click.argument("address")
@click.option("--scope", default=None, help="only this scope (default: every entry of the address)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def suppressions_rm(ctx: click.Context, address: str, scope: str | None, as_json: bool) -> None:
    """Lift the suppression of ADDRESS."""
    settings = settings_from(ctx)
    wanted = _scope(scope) if scope else None
    removed = run_db(settings, lambda e: suppression_service(e).remove(address, wanted, by=f"cli:{getpass.getuser()}"))
    if not removed:
        fail(f"{address} is not suppressed" + (f" for {wanted}" if wanted else ""))
    click.echo(json.dumps({"removed": removed}) if as_json else f"removed {removed} entries of {address}")


@suppressions.command("erase")
@config_option
@click.argument("address")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def suppressions_erase(ctx: click.Context, address: str, as_json: bool) -> None:
    """GDPR erasure: keep ADDRESS's entries only as its hash (it stays blocked, unnamed)."""
    settings = settings_from(ctx)
    erased = run_db(settings, lambda e: suppression_service(e).erase(address))
    click.echo(json.dumps({"erased": erased}) if as_json else f"erased {erased} entries (kept as a hash)")


@suppressions.command("export")
@config_option
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default="-",
              help="CSV file to write (default: standard output)")  # fmt: skip
@click.pass_context
def suppressions_export(ctx: click.Context, output: str) -> None:
    """Write the list as CSV: email, scope, reason, source, created_at, expires_at."""
    settings = settings_from(ctx)

    async def everything(engine: Any) -> list[Entry]:
        service, found, after = suppression_service(engine), [], 0
        while True:
            page = await service.search(after=after, limit=5000)
            found.extend(page)
            if len(page) < 5000:
                return found
            after = page[-1].id

    entries = run_db(settings, everything)
    handle = sys.stdout if output == "-" else open(output, "w", newline="")
    try:
        writer = csv.writer(handle)
        for row in export_rows(entries):
            writer.writerow(row)
    finally:
        if handle is not sys.stdout:
            handle.close()


@suppressions.command("import")
@config_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--scope", default="global", show_default=True, help="for rows without a scope column")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def suppressions_import(ctx: click.Context, file: Path, scope: str, as_json: bool) -> None:
    """Import a CSV (ours, Loops' suppression export, or any with an email / Email Address column)."""
    settings = settings_from(ctx)
    default_scope = _scope(scope)
    with open(file, newline="", encoding="utf-8-sig") as handle:
        parsed = list(read_import(handle, default_scope=default_scope, created_by=f"import:{file.name}"))
    entries = [p for p in parsed if isinstance(p, NewEntry)]
    problems = [p for p in parsed if isinstance(p, BadRow)]
    show_progress = sys.stderr.isatty() and not as_json

    async def write(engine: Any) -> int:
        service = suppression_service(engine)
        batches = [entries[i: i + IMPORT_BATCH] for i in range(0, len(entries), IMPORT_BATCH)]
        written = 0
        if show_progress:
            with click.progressbar(length=len(entries), label="importing", file=sys.stderr) as bar:
                for batch in batches:
                    written += await service.add(batch)
                    bar.update(len(batch))
        else:
            for batch in batches:
                written += await service.add(batch)
        return written

    written = run_db(settings, write)
    if as_json:
        click.echo(json.dumps({"read": len(entries), "written": written,
                               "problems": [{"line": p.line, "reason": p.reason} for p in problems]}))  # fmt: skip
    else:
        for problem in problems:
            click.echo(f"postroom: line {problem.line}: {problem.reason}", err=True)
        click.echo(f"imported {len(entries)} addresses ({written} new or changed), {len(problems)} rows refused")
    if problems and not entries:
        sys.exit(1)
