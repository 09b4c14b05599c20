"""`postroom queue ls|show|retry|purge`: what is in the queue, and acting on it."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

import click

from postroom.cli.common import config_option, fail, run_db, settings_from, when
from postroom.config import Settings
from postroom.core.types import DeliveryState
from postroom.queue.sql_store import SqlQueueStore
from postroom.queue.views import SqlQueueViews


@click.group()
def queue() -> None:
    """Inspect and act on the queue."""


@queue.command("ls")
@config_option
@click.option("--state", type=click.Choice([s.value for s in DeliveryState]), default=None)
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.option("--by-destination", "by_destination", is_flag=True,
              help="Count deliveries per recipient domain and state instead of listing messages.")
@click.option("--all", "include_final", is_flag=True,
              help="With --by-destination: final states (delivered, bounced, expired) too.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queue_ls(ctx: click.Context, state: str | None, limit: int, by_destination: bool,
             include_final: bool, as_json: bool) -> None:  # fmt: skip
    """List messages, newest first, with their recipients' states (or group by destination)."""
    settings = settings_from(ctx)
    if by_destination:
        _queue_by_destination(settings, limit, include_final, as_json)
        return
    found = run_db(settings, lambda e: SqlQueueViews(e).list_messages(limit=limit, state=state))
    if as_json:
        click.echo(json.dumps([asdict(s) for s in found]))
        return
    if not found:
        click.echo("queue is empty" if state is None else f"no messages with {state} deliveries")
        return
    click.echo(f"{'ID':26}  {'ACCEPTED (UTC)':19}  {'SIZE':>7}  {'FROM':30}  STATES")
    for s in found:
        states = " ".join(f"{k}={v}" for k, v in sorted(s.states.items()))
        click.echo(f"{s.id:26}  {when(s.created_at):19}  {s.size:>7}  {s.mail_from[:30]:30}  {states}")


def _queue_by_destination(settings: Settings, limit: int, include_final: bool, as_json: bool) -> None:
    groups = run_db(settings, lambda e: SqlQueueViews(e).destinations(include_final=include_final,
                                                                      limit=limit))  # fmt: skip
    if as_json:
        click.echo(json.dumps([asdict(g) for g in groups]))
        return
    if not groups:
        click.echo("no deliveries in the queue")
        return
    click.echo(f"{'DESTINATION':32}  {'STATE':9}  {'COUNT':>7}  {'OLDEST (UTC)':19}  "
               f"{'NEXT ATTEMPT':19}  LAST REPLY")  # fmt: skip
    for g in groups:
        upcoming = when(g.next_attempt_at) if g.state in ("queued", "deferred") else ""
        click.echo(f"{(g.domain or '(none)')[:32]:32}  {g.state:9}  {g.count:>7}  "
                   f"{when(g.oldest_created_at):19}  {upcoming:19}  {(g.last_reply or '')[:80]}")  # fmt: skip


@queue.command("show")
@config_option
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True)
@click.option("--content", is_flag=True, help="Print the stored message instead.")
@click.pass_context
def queue_show(ctx: click.Context, message_id: str, as_json: bool, content: bool) -> None:
    """Show one message with every recipient's state and each delivery attempt."""
    from postroom.http.messages import detail_json

    settings = settings_from(ctx)
    if content:
        raw = run_db(settings, lambda e: SqlQueueViews(e).content(message_id))
        click.echo(raw.decode("utf-8", "replace"))
        return
    detail = run_db(settings, lambda e: SqlQueueViews(e).show(message_id))
    if as_json:
        click.echo(json.dumps(detail_json(detail), indent=2))
        return
    s = detail.summary
    click.echo(f"message   {s.id}\naccepted  {when(s.created_at)} UTC via {s.source}"
               f" ({detail.submitted_by})\nfrom      {s.mail_from}\nsubject   {s.subject}\n"
               f"size      {s.size} bytes, stream {s.stream}")  # fmt: skip
    if detail.error:
        click.echo(f"error     {detail.error}")
    for e in detail.events:
        if e["delivery_id"] is None:
            click.echo(f"{when(e['at'])} UTC  {e['type']}")
    for d in detail.deliveries:
        click.echo(f"\n  {d.recipient}: {d.state}, {d.attempts} attempt(s)")
        if not d.finished_at and d.state in ("queued", "deferred"):
            click.echo(f"    next attempt {when(d.next_attempt_at)} UTC")
        for e in detail.events:
            if e["delivery_id"] == d.id:
                click.echo(f"    {when(e['at'])} UTC  {describe_attempt(e['type'], e['detail'])}")


def describe_attempt(kind: str, detail: dict[str, Any]) -> str:
    """One line per attempt: result, where it went, with which TLS, and the reply."""
    where = ""
    if "mx" in detail:
        where = f" via {detail['mx']} [{detail.get('ip', '?')}]:{detail.get('port', '?')}"
        where += f" {detail['tls']}" if detail.get("tls") not in (None, "none") else " no TLS"
    return f"{kind}{where}: {detail.get('reply', '')}"


@queue.command("retry")
@config_option
@click.argument("message_id", required=False)
@click.option("--all-dead", is_flag=True, help="Retry every dead delivery.")
@click.pass_context
def queue_retry(ctx: click.Context, message_id: str | None, all_dead: bool) -> None:
    """Make a message's dead or deferred deliveries due now (or every dead one)."""
    if bool(message_id) == all_dead:
        fail("give a MESSAGE_ID or --all-dead", 2)
    settings = settings_from(ctx)
    count = run_db(settings, lambda e: SqlQueueStore(e).retry(time.time(), message_id))
    if message_id and count == 0:
        fail(f"message {message_id} has no dead or deferred deliveries")
    click.echo(f"{count} deliveries queued again")


@queue.command("purge")
@config_option
@click.argument("message_id", required=False)
@click.option("--state", type=click.Choice(["dead", "deferred", "queued", "bounced", "expired",
                                            "delivered"]), default=None)  # fmt: skip
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def queue_purge(ctx: click.Context, message_id: str | None, state: str | None, yes: bool) -> None:
    """Delete a message, or every message with a delivery in --state."""
    if bool(message_id) == bool(state):
        fail("give a MESSAGE_ID or --state", 2)
    if not yes and not click.confirm(f"delete {message_id or 'every ' + str(state) + ' message'}?"):
        fail("nothing deleted", 1)
    settings = settings_from(ctx)
    count = run_db(settings, lambda e: SqlQueueStore(e).purge(message_id, state))
    if message_id and count == 0:
        fail(f"no message {message_id}")
    click.echo(f"{count} messages deleted")
