"""`postroom stripe backfill|reconcile|events`: Stripe's state read into postroom from the shell.

`backfill` and `reconcile` run the same pass (customers, invoices, then subscriptions of every
status, through the stripe SDK with auto-pagination and retries): a customer the ledger has never
seen opens at its subscriptions' start dates, any other difference is recorded as a
`reconciliation` change. Progress goes to a terminal; `--json` prints one summary and nothing else.
Exit 1 when Stripe or the database fails, 2 without `[stripe] api_key`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.billing.feature import stripe_reader
from postroom.billing.store import STATUSES, SqlBillingStore
from postroom.billing.stripe_errors import StripeApiError
from postroom.billing.sync import SyncSummary, synchronise
from postroom.cli.common import config_option, fail, run_db, settings_from, when
from postroom.cli.contacts import progress_on_terminal
from postroom.config import Settings
from postroom.store.engine import WriteGate


def _sync(settings: Settings, as_json: bool) -> SyncSummary:
    reader = stripe_reader(settings.stripe)
    if reader is None:
        fail("no [stripe] api_key (or POSTROOM_STRIPE__API_KEY): postroom cannot read Stripe", 2)

    async def work(engine: AsyncEngine) -> SyncSummary:
        store = SqlBillingStore(engine, settings.mrr.policies(), WriteGate.for_database(settings.database))
        with progress_on_terminal(not as_json) as shown:
            try:
                return await synchronise(reader, store, time.time(), lambda stage, n: shown(stage, n, None))
            finally:
                await reader.aclose()

    try:
        return run_db(settings, work)
    except StripeApiError as exc:
        fail(f"Stripe: {exc}")


def _print(summary: SyncSummary, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary.as_json()))
        return
    click.echo(f"read {summary.customers:,} customers, {summary.invoices:,} invoices, "
               f"{summary.subscriptions:,} subscriptions; opened {summary.opened:,} customers in the ledger")  # fmt: skip
    if not summary.drift:
        click.echo("no drift: the ledger matches Stripe")
    for change in summary.drift:
        click.echo(f"drift: {change.customer} {change.currency.upper()} {change.before.cents:,} -> "
                   f"{change.after.cents:,} ({change.after.cents - change.before.cents:+,}) recorded as reconciliation")  # fmt: skip


@click.group("stripe")
def stripe_group() -> None:
    """Stripe: backfill, reconcile, and the events received."""


@stripe_group.command("backfill")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary and no progress.")
@click.pass_context
def backfill(ctx: click.Context, as_json: bool) -> None:
    """Load every customer, invoice and subscription from Stripe; each subscription's opening is
    dated at its start_date, so the ledger has a history before today."""
    _print(_sync(settings_from(ctx), as_json), as_json)


@stripe_group.command("reconcile")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary and no progress.")
@click.pass_context
def reconcile(ctx: click.Context, as_json: bool) -> None:
    """Recompute from Stripe and record any drift as reconciliation changes (the daemon also runs
    this nightly at [stripe] reconcile_at)."""
    _print(_sync(settings_from(ctx), as_json), as_json)


@stripe_group.command("events")
@config_option
@click.option("--status", type=click.Choice(STATUSES), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def events(ctx: click.Context, status: str | None, limit: int, as_json: bool) -> None:
    """The Stripe events received, newest first (e.g. --status flagged: malformed ones, and why)."""
    settings = settings_from(ctx)

    async def work(engine: AsyncEngine) -> list[Any]:
        return await SqlBillingStore(engine, settings.mrr.policies()).events(status, limit)

    found = run_db(settings, work)
    if as_json:
        click.echo(json.dumps([{"id": e.id, "type": e.type, "created": e.created, "object_id": e.object_id,
                                "received_at": e.received_at, "status": e.status, "detail": e.detail}
                               for e in found]))  # fmt: skip
        return
    for e in found:
        click.echo(f"{when(e.received_at)}  {e.status:8}  {e.type:40}  {e.id}  {e.detail}".rstrip())
