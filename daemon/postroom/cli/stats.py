"""`postroom stats`: delivery analytics, as `GET /v1/stats` gives them."""

from __future__ import annotations

import json

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.cli.common import config_option, fail, parse_time, run_db, settings_from
from postroom.http.stats import stats_query
from postroom.stats.model import PERCENTILES, StatsGroup, StatsQuery
from postroom.stats.sql_stats import SqlStats


def _cells(group: StatsGroup) -> str:
    hard = group.bounced_by_class.get("hard", 0)
    marks = "  ".join(f"{group.latency[f'p{p}']:>8.1f}" if f"p{p}" in group.latency else f"{'-':>8}"
                      for p in PERCENTILES)  # fmt: skip
    return (f"{group.sent:>8}  {group.delivered:>9}  {group.deferred:>8}  {group.bounced:>7}  {hard:>5}  "
            f"{group.complained:>10}  {group.suppressed:>10}  {group.unsubscribed:>6}  "
            f"{group.bounce_rate:>7.2%}  {group.complaint_rate:>7.3%}  {marks}")  # fmt: skip


@click.command()
@config_option
@click.option("--from", "since", default=None, help="Start (ISO 8601 or epoch seconds; UTC when no zone).")
@click.option("--to", "until", default=None, help="End, exclusive.")
@click.option("--group-by", "group_by", default="",
              help="Comma-separated: stream, template, domain, and one of hour, day, week.")
@click.option("--stream", default=None, help="Only this stream.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def stats(ctx: click.Context, since: str | None, until: str | None, group_by: str, stream: str | None,
          as_json: bool) -> None:  # fmt: skip
    """Sent, delivered, deferred, bounced, complained, suppressed, unsubscribed; rates; latency."""
    settings = settings_from(ctx)
    try:
        query = stats_query(parse_time(since) if since else None, parse_time(until) if until else None,
                            group_by, stream)  # fmt: skip
    except ValueError as exc:
        fail(str(exc), 2)

    async def compute(engine: AsyncEngine) -> tuple[StatsGroup, list[StatsGroup]]:
        found = SqlStats(engine)
        totals = await found.compute(StatsQuery(query.since, query.until, (), query.stream))
        return totals[0], (await found.compute(query) if query.group_by else [])

    totals, groups = run_db(settings, compute)
    if as_json:
        click.echo(json.dumps({"group_by": list(query.group_by), "totals": totals.as_dict(),
                               "groups": [g.as_dict() for g in groups]}))  # fmt: skip
        return
    width = max([24, *(len(" ".join(str(v) for v in g.key.values())) for g in groups)])
    marks = "  ".join(f"{f'P{p} (s)':>8}" for p in PERCENTILES)
    click.echo(f"{'GROUP':{width}}  {'SENT':>8}  {'DELIVERED':>9}  {'DEFERRED':>8}  {'BOUNCED':>7}  {'HARD':>5}  "
               f"{'COMPLAINED':>10}  {'SUPPRESSED':>10}  {'UNSUBS':>6}  {'BOUNCE%':>7}  {'SPAM%':>7}  {marks}")  # fmt: skip
    for group in groups:
        label = " ".join("-" if v is None else str(v) for v in group.key.values())
        click.echo(f"{label[:width]:{width}}  {_cells(group)}")
    click.echo(f"{'total':{width}}  {_cells(totals)}")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(totals.bounced_by_reason.items(), key=lambda i: -i[1]))
    if reasons:
        click.echo(f"bounces by reason: {reasons}")
