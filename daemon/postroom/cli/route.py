"""`postroom route set|rollback|status|compare`: shadow mode from the shell. A change is written to
the database; every process of every daemon follows it within `[shadow] refresh_interval`."""

from __future__ import annotations

import getpass
import json
import re
import time
from typing import Any

import click
from prometheus_client import CollectorRegistry

from postroom.app import route_service as service_for
from postroom.cli.common import config_option, fail, run_db, settings_from, when
from postroom.config import Settings
from postroom.core.clock import SystemClock
from postroom.metrics import Metrics
from postroom.shadow.compare import Figures, SqlComparison
from postroom.shadow.route_store import RouteChange
from postroom.shadow.routing import Mode, RouteSetting
from postroom.shadow.service import RouteRefused, RouteService

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def route_service(settings: Settings, engine: Any) -> RouteService:
    return service_for(settings, engine, None, SystemClock(), Metrics(CollectorRegistry()))


def seconds(text: str) -> float:
    """"90", "90s", "15m", "24h", "7d"."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not found:
        fail(f"{text!r} is not a duration (e.g. 3600, 15m, 24h, 7d)", 2)
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


def _by() -> str:
    return f"cli:{getpass.getuser()}"


def _change(settings: Settings, setting: RouteSetting, reason: str, as_json: bool) -> None:
    async def work(engine: Any) -> RouteChange | None:
        return await route_service(settings, engine).change(setting, changed_by=_by(), reason=reason)

    try:
        change = run_db(settings, work)
    except RouteRefused as exc:
        fail(str(exc), 2)
    if as_json:
        click.echo(json.dumps({"changed": change is not None, "stream": setting.stream,
                               "template": setting.template or None, "route": setting.describe()}))  # fmt: skip
    elif change is None:
        click.echo(f"stream {setting.stream}: already {setting.describe()}")
    else:
        before = change.previous.describe() if change.previous else "inhouse (unset)"
        click.echo(f"stream {setting.stream}{' template ' + setting.template if setting.template else ''}: "
                   f"{before} -> {setting.describe()} (every daemon follows within "
                   f"{settings.shadow.refresh_interval:g} s)")  # fmt: skip


@click.group()
def route() -> None:
    """Shadow mode: which path (Loops or in-house) delivers each stream's mail."""


@route.command("set")
@config_option
@click.option("--stream", required=True)
@click.option("--template", default=None, help="only this template of the stream")
@click.option("--mode", type=click.Choice([m.value for m in Mode]), required=True)
@click.option("--percent", type=click.IntRange(0, 100), default=None, help="split: the in-house share")
@click.option("--fallback", is_flag=True, help="inhouse: hand sender-side failures to Loops")
@click.option("--ramp", is_flag=True, help="split: follow the ramp plan of [shadow.ramp]")
@click.option("--reason", required=True, help="why (recorded with the change)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def route_set(ctx: click.Context, stream: str, template: str | None, mode: str, percent: int | None, fallback: bool,
              ramp: bool, reason: str, as_json: bool) -> None:  # fmt: skip
    """Set the route of a stream, or of one template of it."""
    chosen = Mode(mode)
    if chosen is Mode.SPLIT and percent is None:
        fail("--mode split needs --percent N", 2)
    if chosen is not Mode.SPLIT and percent is not None:
        fail("--percent applies to --mode split only", 2)
    setting = RouteSetting(stream, template or "", chosen, percent or 0, fallback, ramp)
    _change(settings_from(ctx), setting, reason, as_json)


@route.command("rollback")
@config_option
@click.option("--stream", required=True)
@click.option("--template", default=None)
@click.option("--reason", required=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def route_rollback(ctx: click.Context, stream: str, template: str | None, reason: str, as_json: bool) -> None:
    """Send everything of the stream (or template) through Loops again, at once."""
    _change(settings_from(ctx), RouteSetting(stream, template or "", Mode.LEGACY), reason, as_json)


@route.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def route_status(ctx: click.Context, as_json: bool) -> None:
    """The route settings and their latest changes."""
    settings = settings_from(ctx)

    async def work(engine: Any) -> tuple[Any, list[RouteChange]]:
        service = route_service(settings, engine)
        await service.refresh()
        return service.routes, await service.changes(limit=20)

    routes, changes = run_db(settings, work)
    if as_json:
        click.echo(json.dumps({
            "routes": [{"stream": r.setting.stream, "template": r.setting.template or None, "mode": r.setting.mode.value,
                        "inhouse_percent": r.setting.inhouse_share, "fallback": r.setting.fallback,
                        "ramp": r.setting.ramp, "changed_at": r.changed_at, "changed_by": r.changed_by,
                        "reason": r.reason} for r in routes],
            "changes": [{"at": c.at, "stream": c.setting.stream, "template": c.setting.template or None,
                         "to": c.setting.describe(), "from": c.previous.describe() if c.previous else None,
                         "source": c.source, "changed_by": c.changed_by, "reason": c.reason} for c in changes],
        }))  # fmt: skip
        return
    if not routes:
        click.echo("no routes set: every stream is delivered in-house")
    else:
        click.echo(f"{'STREAM':20}  {'TEMPLATE':20}  {'ROUTE':22}  {'SINCE (UTC)':19}  BY")
        for r in routes:
            click.echo(f"{r.setting.stream[:20]:20}  {(r.setting.template or '*')[:20]:20}  "
                       f"{r.setting.describe() + (' ramp' if r.setting.ramp else ''):22}  {when(r.changed_at):19}  "
                       f"{r.changed_by}: {r.reason}")  # fmt: skip
    if changes:
        click.echo("\nlatest changes:")
        for c in changes:
            before = c.previous.describe() if c.previous else "inhouse"
            click.echo(f"  {when(c.at)}  {c.setting.stream}{'/' + c.setting.template if c.setting.template else ''}: "
                       f"{before} -> {c.setting.describe()}  [{c.source}, {c.changed_by}] {c.reason}")  # fmt: skip


def _row(f: Figures) -> str:
    p50 = "-" if f.p50 is None else f"{f.p50:.1f}s"
    p95 = "-" if f.p95 is None else f"{f.p95:.1f}s"
    return (f"{f.stream[:16]:16}  {(f.template or '-')[:16]:16}  {f.route:8}  {f.sent:8}  {f.rate(f.delivered):6.2f}%  "
            f"{f.rate(f.bounced_hard):6.2f}%  {f.rate(f.bounced_soft):6.2f}%  {f.rate(f.complained):6.3f}%  "
            f"{f.rate(f.deferred):6.2f}%  {f.rate(f.failed):6.2f}%  {p50:>8}  {p95:>8}")  # fmt: skip


@route.command("compare")
@config_option
@click.option("--stream", default=None)
@click.option("--template", default=None)
@click.option("--window", default="24h", show_default=True, help="how far back: 3600, 15m, 24h, 7d")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def route_compare(ctx: click.Context, stream: str | None, template: str | None, window: str, as_json: bool) -> None:
    """Compare Loops, in-house and the shadow copies over a window."""
    settings = settings_from(ctx)
    until = time.time()
    since = until - seconds(window)
    groups = run_db(settings, lambda engine: SqlComparison(engine).figures(since, until, stream, template))
    if as_json:
        click.echo(json.dumps({"since": since, "until": until, "groups": [g.as_dict() for g in groups]}))
        return
    if not groups:
        click.echo(f"no deliveries since {when(since)} UTC")
        return
    click.echo(f"{'STREAM':16}  {'TEMPLATE':16}  {'ROUTE':8}  {'SENT':>8}  {'DELIV':>7}  {'HARD':>7}  {'SOFT':>7}  "
               f"{'COMPL':>7}  {'DEFER':>7}  {'FAILED':>7}  {'P50':>8}  {'P95':>8}")  # fmt: skip
    for group in groups:
        click.echo(_row(group))
