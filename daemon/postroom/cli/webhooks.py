"""`postroom webhooks add|ls|rm|enable|disable|test|replay`: outbound webhook endpoints, from the
database directly (a running daemon's sender picks up what changes here)."""

from __future__ import annotations

import json
import sys

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.cli.common import config_option, fail, parse_time, run_db, settings_from, when
from postroom.core.clock import SystemClock
from postroom.webhooks.model import Endpoint, WebhookType
from postroom.webhooks.sender import http_session
from postroom.webhooks.service import TestResult, WebhookService
from postroom.webhooks.store import SqlWebhookStore

TYPES_HELP = ", ".join(t.value for t in WebhookType) + ", or * for all"


def _service(engine: AsyncEngine) -> WebhookService:
    return WebhookService(SqlWebhookStore(engine), SystemClock())


def _line(e: Endpoint) -> str:
    state = "enabled" if e.enabled else "DISABLED"
    return (f"{e.id:19}  {state:8}  {e.failure_streak:>6}  {e.pending:>7}  {','.join(e.event_types)[:40]:40}"
            f"  {e.url}")  # fmt: skip


@click.group()
def webhooks() -> None:
    """Outbound webhook endpoints (signed with the Standard Webhooks scheme)."""


@webhooks.command("add")
@config_option
@click.argument("url")
@click.option("--events", "event_types", required=True, help=f"Comma-separated: {TYPES_HELP}.")
@click.option("--description", default="")
@click.option("--secret", default=None, help="Use this whsec_... secret instead of a new one.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def webhooks_add(ctx: click.Context, url: str, event_types: str, description: str, secret: str | None,
                 as_json: bool) -> None:  # fmt: skip
    """Subscribe URL to event types; print its id and signing secret (shown this once)."""
    settings = settings_from(ctx)
    types = [t for t in event_types.split(",") if t.strip()]
    made, shown = run_db(settings, lambda e: _service(e).create(url, types, description, secret))
    if as_json:
        click.echo(json.dumps({**made.as_dict(), "secret": shown}))
        return
    click.echo(f"id      {made.id}\nsecret  {shown}\nevents  {', '.join(made.event_types)}")


@webhooks.command("ls")
@config_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def webhooks_ls(ctx: click.Context, as_json: bool) -> None:
    """Every endpoint: state, failures in a row, deliveries pending."""
    settings = settings_from(ctx)
    found = run_db(settings, lambda e: _service(e).endpoints())
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in found]))
        return
    if not found:
        click.echo("no webhook endpoints")
        return
    click.echo(f"{'ID':19}  {'STATE':8}  {'FAILS':>6}  {'PENDING':>7}  {'EVENTS':40}  URL")
    for e in found:
        click.echo(_line(e))
        if not e.enabled and e.disabled_reason:
            click.echo(f"{'':19}  disabled {when(e.disabled_at)} UTC: {e.disabled_reason}")


@webhooks.command("rm")
@config_option
@click.argument("endpoint_id")
@click.pass_context
def webhooks_rm(ctx: click.Context, endpoint_id: str) -> None:
    """Delete an endpoint and its pending deliveries."""
    settings = settings_from(ctx)
    run_db(settings, lambda e: _service(e).delete(endpoint_id))
    click.echo(f"deleted {endpoint_id}")


@webhooks.command("enable")
@config_option
@click.argument("endpoint_id")
@click.pass_context
def webhooks_enable(ctx: click.Context, endpoint_id: str) -> None:
    """Enable an endpoint again (its failure streak starts over); pending deliveries resume."""
    settings = settings_from(ctx)
    run_db(settings, lambda e: _service(e).set_enabled(endpoint_id, True))
    click.echo(f"enabled {endpoint_id}")


@webhooks.command("disable")
@config_option
@click.argument("endpoint_id")
@click.pass_context
def webhooks_disable(ctx: click.Context, endpoint_id: str) -> None:
    """Stop sending to an endpoint; its deliveries wait until it is enabled."""
    settings = settings_from(ctx)
    run_db(settings, lambda e: _service(e).set_enabled(endpoint_id, False))
    click.echo(f"disabled {endpoint_id}")


@webhooks.command("test")
@config_option
@click.argument("endpoint_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def webhooks_test(ctx: click.Context, endpoint_id: str, as_json: bool) -> None:
    """POST a signed webhook.test to the endpoint now; exit 1 unless it answers 2xx."""
    settings = settings_from(ctx)

    async def test(engine: AsyncEngine) -> TestResult:
        async with http_session(settings.webhooks) as session:
            return await _service(engine).test(endpoint_id, session)

    result = run_db(settings, test)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    elif result.ok:
        click.echo(f"ok: the endpoint answered {result.status}")
    if not result.ok:
        fail(f"the endpoint did not accept the test webhook: {result.error}")


@webhooks.command("replay")
@config_option
@click.option("--event", "event_ids", multiple=True, type=int, help="An event id (repeatable).")
@click.option("--from", "since", default=None, help="Events at or after this time (ISO 8601 or epoch).")
@click.option("--to", "until", default=None, help="Events before this time.")
@click.option("--endpoint", "endpoint_id", default=None, help="Only to this endpoint (enabled or not).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def webhooks_replay(ctx: click.Context, event_ids: tuple[int, ...], since: str | None, until: str | None,
                    endpoint_id: str | None, as_json: bool) -> None:  # fmt: skip
    """Send events again to the endpoints subscribed to them (the same webhook-id as before)."""
    settings = settings_from(ctx)
    if not event_ids and since is None and until is None:
        fail("name --event ids, or a --from/--to time range", 2)
    start = parse_time(since) if since is not None else None
    end = parse_time(until) if until is not None else None
    show = sys.stderr.isatty() and not as_json

    def progress(done: int, rows: int) -> None:
        if show:
            click.echo(f"\r{done} events read, {rows} webhooks queued", nl=False, err=True)

    count = run_db(settings, lambda e: _service(e).replay(event_ids=event_ids, since=start, until=end,
                                                          endpoint_id=endpoint_id, progress=progress))  # fmt: skip
    if show:
        click.echo("", err=True)
    if as_json:
        click.echo(json.dumps({"enqueued": count}))
    else:
        click.echo(f"{count} webhooks queued")
