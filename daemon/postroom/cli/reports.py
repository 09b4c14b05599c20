"""`postroom reports ls|run|preview|history`: reports from the shell.

A period is written `2026-02` (month), `2026-W09` (ISO week), `2026-Q1` or
`2026-02-01..2026-02-15`, and defaults to the report's last complete one. `preview` writes the
HTML (its charts as files beside it), the text part, each chart as PNG and the figures as CSV, for
a person to look at; it sends and records nothing. Exit 2 for an unknown report, a bad period or
address, 1 when the database or the mail fails.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.cli.common import config_option, fail, run_db, settings_from, when
from postroom.cli.send import submission_door
from postroom.config import Settings
from postroom.core.addresses import valid_mailbox
from postroom.core.clock import SystemClock
from postroom.metrics import Metrics
from postroom.reports.feature import reports as reports_for
from postroom.reports.periods import Period, parse_period
from postroom.reports.product import product_source
from postroom.reports.render import figures_csv
from postroom.reports.routes import listing, run_json
from postroom.reports.service import ReportNotSent, ReportService, UnknownReport
from postroom.store.engine import WriteGate


@contextlib.asynccontextmanager
async def _service(settings: Settings, engine: AsyncEngine, sending: bool) -> AsyncIterator[ReportService]:
    """The report service as the command line has it (its PostHog client closed afterwards)."""
    metrics = Metrics(CollectorRegistry())
    door = await submission_door(engine, settings, metrics) if sending else None
    product = product_source(settings)
    try:
        yield reports_for(settings, engine, WriteGate.for_database(settings.database), SystemClock(), metrics, door,
                          product).service  # fmt: skip
    finally:
        if product is not None:
            await product.aclose()


def _checked(settings: Settings, name: str, period_text: str | None) -> Period | None:
    if name not in settings.reports.definitions:
        fail(f"no report {name!r}; defined: {', '.join(sorted(settings.reports.definitions))}", 2)
    try:
        return parse_period(period_text) if period_text else None
    except ValueError as exc:
        fail(str(exc), 2)


@click.group("reports")
def reports_group() -> None:
    """Scheduled reports: list, run, preview, history."""


@reports_group.command("ls")
@config_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def reports_ls(ctx: click.Context, as_json: bool) -> None:
    """The report definitions with their schedule and last run."""
    settings = settings_from(ctx)

    async def work(engine: AsyncEngine) -> list[dict[str, Any]]:
        async with _service(settings, engine, False) as service:
            return await listing(service)

    found = run_db(settings, work)
    if as_json:
        click.echo(json.dumps(found))
        return
    for r in found:
        last = r["last_run"]
        click.echo(f"{r['name']:12} {r['cron'] or 'on demand':14} {r['timezone']:16} {r['period']:10} "
                   f"next {when(r['next_run_at'])}  last {last['period'] + ' ' + last['status'] if last else '-'}  "
                   f"to {', '.join(r['recipients']) or '(nobody)'}")  # fmt: skip


@reports_group.command("run")
@config_option
@click.argument("name")
@click.option("--period", "period_text", default=None, help="2026-02, 2026-W09, 2026-Q1 or 2026-02-01..2026-02-15")
@click.option("--to", "to", multiple=True, help="send to this address instead of the report's recipients")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def reports_run(ctx: click.Context, name: str, period_text: str | None, to: tuple[str, ...], as_json: bool) -> None:
    """Build, render and send a report now (recorded as a manual run)."""
    settings = settings_from(ctx)
    period = _checked(settings, name, period_text)
    bad = [a for a in to if not valid_mailbox(a)]
    if bad:
        fail(f"not an email address: {', '.join(bad)}", 2)

    async def work(engine: AsyncEngine) -> dict[str, Any]:
        async with _service(settings, engine, True) as service:
            outcome = await service.run_now(name, period, to, "manual")
            run = await service.runs.get(outcome.run.id)
            return run_json(run or outcome.run)

    try:
        run = run_db(settings, work)
    except (ReportNotSent, UnknownReport) as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(run))
    else:
        click.echo(f"report {name} for {run['period']}: {run['status']} in {run['render_seconds']} s"
                   + (f", message {', '.join(run['deliveries'])}" if run["deliveries"] else " (no recipients)"))  # fmt: skip


@reports_group.command("preview")
@config_option
@click.argument("name")
@click.option("--period", "period_text", default=None)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="directory to write report.html, report.txt, the charts (PNG) and figures.csv into")
@click.pass_context
def reports_preview(ctx: click.Context, name: str, period_text: str | None, out: Path) -> None:
    """Write a report to files for a person to look at; nothing is sent or recorded."""
    settings = settings_from(ctx)
    period = _checked(settings, name, period_text)

    async def work(engine: AsyncEngine) -> tuple[Any, Any, float]:
        async with _service(settings, engine, False) as service:
            return await service.preview(name, period)

    report, rendered, seconds = run_db(settings, work)
    out.mkdir(parents=True, exist_ok=True)
    html = rendered.html
    for attachment in rendered.attachments:
        (out / attachment.filename).write_bytes(attachment.content)
        if attachment.content_id:
            html = html.replace(f"cid:{attachment.content_id}", attachment.filename)
    (out / "report.html").write_text(html, encoding="utf-8")
    (out / "report.txt").write_text(f"Subject: {rendered.subject}\n\n{rendered.text}", encoding="utf-8")
    (out / "figures.csv").write_bytes(figures_csv(report))
    unavailable = [s.name for s in report.sections if not s.available]
    click.echo(f"{name} for {report.period.label} rendered in {seconds:.2f} s to {out}/ (report.html, report.txt, "
               f"{sum(1 for a in rendered.attachments if a.content_id)} charts, figures.csv)"
               + (f"; unavailable: {', '.join(unavailable)}" if unavailable else ""))  # fmt: skip


@reports_group.command("history")
@config_option
@click.argument("name")
@click.option("--limit", type=click.IntRange(1, 500), default=20)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def reports_history(ctx: click.Context, name: str, limit: int, as_json: bool) -> None:
    """A report's runs, newest first."""
    settings = settings_from(ctx)
    _checked(settings, name, None)

    async def work(engine: AsyncEngine) -> list[dict[str, Any]]:
        async with _service(settings, engine, False) as service:
            return [run_json(r) for r in await service.runs.history(name, limit)]

    runs = run_db(settings, work)
    if as_json:
        click.echo(json.dumps(runs))
        return
    for r in runs:
        click.echo(f"{when(r['started_at'])}  {r['period']:24} {r['trigger']:9} {r['status']:8} "
                   f"{'' if r['render_seconds'] is None else str(r['render_seconds']) + ' s':10} {r['error'] or ''}")  # fmt: skip
