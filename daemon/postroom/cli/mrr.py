"""`postroom mrr show|movements` and `postroom fx set|import|ls`: MRR from the shell.

Dates are UTC days: `--at` is the last day of the period (default today), `--since` its first
(default the first of `--at`'s month). Every figure is printed with the policies it was computed
under. Exit 2 for a bad date or rate, 1 when the database fails.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.cli.common import config_option, fail, run_db, settings_from
from postroom.config import Settings
from postroom.mrr.ledger import SqlLedger
from postroom.mrr.money import UnknownRate, exponent
from postroom.mrr.service import MrrService, PeriodReport
from postroom.store.engine import WriteGate


def _day(text: str | None, name: str) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        fail(f"{name} {text!r} is not a date (YYYY-MM-DD)", 2)


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def money(cents: int, currency: str) -> str:
    digits = exponent(currency)
    major = Decimal(cents).scaleb(-digits)
    return f"{major:,.{digits}f} {currency.upper()}"


def _service(settings: Settings, engine: AsyncEngine) -> MrrService:
    return MrrService(SqlLedger(engine, WriteGate.for_database(settings.database)), settings.mrr)


def _printed(report: PeriodReport) -> None:
    figures, currency = report.as_json(), report.currency
    moved = figures["movements"]
    click.echo(f"MRR {money(figures['mrr_cents'], currency)} at the end of {report.at} "
               f"(ARR {money(figures['arr_cents'], currency)}), {figures['paying_customers']} paying customers, "
               f"ARPA {money(figures['arpa_cents'], currency)}")  # fmt: skip
    click.echo(f"since {report.since}: start {money(figures['start']['mrr_cents'], currency)}")
    for kind, sign in (("new", "+"), ("expansion", "+"), ("reactivation", "+"), ("contraction", "-"),
                       ("churn", "-"), ("reconciliation", "±"), ("fx", "±")):  # fmt: skip
        click.echo(f"  {kind:15}{sign} {money(abs(moved[kind]) if sign != '±' else moved[kind], currency)}")
    click.echo(f"  net new MRR     {money(figures['net_new_mrr_cents'], currency)}")
    if figures["scheduled_churn_cents"]:
        click.echo(f"  scheduled churn {money(figures['scheduled_churn_cents'], currency)} (cancellations at period end)")
    click.echo("policies: " + ", ".join(f"{k}={v}" for k, v in figures["policies"].items()))


@click.group("mrr")
def mrr_group() -> None:
    """Monthly recurring revenue: figures, movements."""


@mrr_group.command("show")
@config_option
@click.option("--at", "at_text", default=None, help="last day of the period (YYYY-MM-DD, UTC; default today)")
@click.option("--since", "since_text", default=None, help="first day (default: the first of --at's month)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, at_text: str | None, since_text: str | None, as_json: bool) -> None:
    """MRR at a date, the movements since a date, and the policies."""
    settings = settings_from(ctx)
    at = _day(at_text, "--at") or _today()
    since = _day(since_text, "--since")
    if since is not None and since > at:
        fail(f"--since {since} is after --at {at}", 2)

    async def work(engine: AsyncEngine) -> PeriodReport:
        return await _service(settings, engine).report(at, since)

    try:
        report = run_db(settings, work)
    except UnknownRate as exc:
        fail(str(exc), 2)
    if as_json:
        click.echo(json.dumps(report.as_json()))
    else:
        _printed(report)


@mrr_group.command("movements")
@config_option
@click.option("--since", "since_text", required=True, help="first day (YYYY-MM-DD, UTC)")
@click.option("--until", "until_text", default=None, help="last day, inclusive (default today)")
@click.option("--customer", default=None, help="one Stripe customer id")
@click.option("--json", "as_json", is_flag=True, help="print JSON lines, one movement each")
@click.pass_context
def movements(ctx: click.Context, since_text: str, until_text: str | None, customer: str | None,
              as_json: bool) -> None:  # fmt: skip
    """Each movement of a period with the event(s) that caused it."""
    settings = settings_from(ctx)
    since = _day(since_text, "--since")
    until = _day(until_text, "--until") or _today()
    assert since is not None
    if since > until:
        fail(f"--since {since} is after --until {until}", 2)

    async def work(engine: AsyncEngine) -> list[dict[str, Any]]:
        return await _service(settings, engine).movements(since, until, customer)

    try:
        found = run_db(settings, work)
    except UnknownRate as exc:
        fail(str(exc), 2)
    for m in found:
        if as_json:
            click.echo(json.dumps(m))
        else:
            native = "" if m["native_currency"] == m["currency"] else f" ({money(m['native_amount_cents'], m['native_currency'])})"
            click.echo(f"{m['occurred_at']}  {m['customer']:20} {m['kind']:14} {money(m['amount_cents'], m['currency']):>16}"
                       f"{native}  {','.join(m['event_ids']) or ','.join(m['causes'])}")  # fmt: skip


def _rate(text: str) -> Decimal:
    try:
        rate = Decimal(text)
    except InvalidOperation:
        fail(f"{text!r} is not a rate (a decimal number, e.g. 1.08)", 2)
    if not rate.is_finite() or rate <= 0:
        fail(f"{text!r}: a rate must be above 0", 2)
    return rate


def _currency(text: str, settings: Settings) -> str:
    code = text.strip().lower()
    if len(code) != 3 or not code.isalpha():
        fail(f"{text!r} is not a three-letter currency code", 2)
    if code == settings.mrr.reporting_currency:
        fail(f"{code.upper()} is the reporting currency: its rate is always 1", 2)
    return code


@click.group("fx")
def fx_group() -> None:
    """Dated exchange rates to the reporting currency (month-end revaluation)."""


@fx_group.command("set")
@config_option
@click.argument("day")
@click.argument("currency")
@click.argument("rate")
@click.pass_context
def fx_set(ctx: click.Context, day: str, currency: str, rate: str) -> None:
    """DAY CURRENCY RATE: from DAY on, 1 CURRENCY = RATE of the reporting currency (until a later date's rate)."""
    settings = settings_from(ctx)
    when = _day(day, "DAY")
    assert when is not None
    row = (_currency(currency, settings), when, _rate(rate))

    async def work(engine: AsyncEngine) -> int:
        return await SqlLedger(engine, WriteGate.for_database(settings.database)).set_rates([row], time.time())

    run_db(settings, work)
    click.echo(f"{row[1]}: 1 {row[0].upper()} = {row[2]} {settings.mrr.reporting_currency.upper()}")


@fx_group.command("import")
@config_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def fx_import(ctx: click.Context, file: Path) -> None:
    """A CSV of date,currency,rate rows (a header row is optional); all rows or none."""
    settings = settings_from(ctx)
    rows: list[tuple[str, dt.date, Decimal]] = []
    with file.open(newline="", encoding="utf-8") as handle:
        for number, record in enumerate(csv.reader(handle), start=1):
            if not record or (number == 1 and record[0].strip().lower() in ("date", "day")):
                continue
            if len(record) != 3:
                fail(f"{file}:{number}: expected date,currency,rate", 2)
            day = _day(record[0].strip(), f"{file}:{number} date")
            assert day is not None
            rows.append((_currency(record[1], settings), day, _rate(record[2].strip())))

    async def work(engine: AsyncEngine) -> int:
        return await SqlLedger(engine, WriteGate.for_database(settings.database)).set_rates(rows, time.time())

    click.echo(f"{run_db(settings, work)} rates imported")


@fx_group.command("ls")
@config_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def fx_ls(ctx: click.Context, as_json: bool) -> None:
    """The static [mrr.fx_rates] and the dated rates."""
    settings = settings_from(ctx)

    async def work(engine: AsyncEngine) -> list[tuple[str, dt.date, Decimal]]:
        return await SqlLedger(engine).rates()

    dated = run_db(settings, work)
    if as_json:
        click.echo(json.dumps({"reporting_currency": settings.mrr.reporting_currency,
                               "static": {k: str(v) for k, v in settings.mrr.fx_rates.items()},
                               "dated": [{"day": d.isoformat(), "currency": c, "rate": str(r)} for c, d, r in dated]}))  # fmt: skip
        return
    for code, rate in sorted(settings.mrr.fx_rates.items()):
        click.echo(f"static      {code.upper()} {rate}")
    for code, day, rate in dated:
        click.echo(f"{day}  {code.upper()} {rate}")
