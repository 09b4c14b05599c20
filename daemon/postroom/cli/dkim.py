"""`postroom dkim keygen|rotate|dns|ls`: a sending domain's DKIM keys and the records they need."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import click

from postroom.cli.common import config_option, configured_domain, domain_command, run_db, settings_from, when
from postroom.dkim.keys import split_txt
from postroom.dkim.management import (
    PublishedRecord,
    create_selector,
    published_dkim_records,
    rotate_selectors,
)
from postroom.domains.service import records_besides_dkim
from postroom.store.dkim_keys import SqlDkimKeys


def print_records(records: list[PublishedRecord], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([r.as_json() for r in records], indent=2))
        return
    for r in records:
        if r.note:
            click.echo(f"; {r.note}")
        value = r.value
        if r.type == "TXT":
            value = " ".join(f'"{part}"' for part in split_txt(r.value))
            if len(split_txt(r.value)) > 1:
                value = f"( {value} )"
        click.echo(f"{r.name}. IN {r.type} {value}")


@click.group()
def dkim() -> None:
    """DKIM keys: create, rotate, and the DNS records they need."""


@dkim.command("keygen")
@config_option
@click.option("--domain", required=True)
@click.option("--selector", required=True)
@click.option("--algorithm", type=click.Choice(["rsa", "ed25519"]), default="rsa", show_default=True)
@click.option("--bits", type=click.IntRange(2048, 4096), default=2048, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dkim_keygen(ctx: click.Context, domain: str, selector: str, algorithm: str, bits: int,
                as_json: bool) -> None:  # fmt: skip
    """Create a key (mode 0600 in the key directory) and print its DNS TXT record."""
    settings = settings_from(ctx)
    name = configured_domain(settings, domain)
    record, published = run_db(settings, lambda e: create_selector(
        SqlDkimKeys(e), Path(settings.dkim_key_dir), name, selector, algorithm,  # type: ignore[arg-type]
        bits, time.time()))  # fmt: skip
    if not as_json:
        click.echo(f"; {record.selector} ({record.algorithm}) for {name}: {record.state.value}, "
                   f"key in {record.key_path}")  # fmt: skip
    print_records([published], as_json)


@dkim.command("rotate")
@config_option
@click.argument("domain")
@click.option("--algorithm", "algorithms", multiple=True, type=click.Choice(["rsa", "ed25519"]),
              help="Rotate only these (default: every algorithm the domain signs with).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dkim_rotate(ctx: click.Context, domain: str, algorithms: tuple[str, ...], as_json: bool) -> None:
    """Add new selectors; signing switches to them once their records are seen in DNS."""
    settings = settings_from(ctx)
    name = configured_domain(settings, domain)
    made = run_db(settings, lambda e: rotate_selectors(
        SqlDkimKeys(e), Path(settings.dkim_key_dir), name, set(algorithms),
        datetime.date.today(), time.time()))  # fmt: skip
    if not as_json:
        days = settings.dkim.rotation_overlap / 86400
        click.echo(f"; publish these records; postroom keeps signing with the current selectors "
                   f"until it sees them in DNS, then switches and keeps the old records listed for "
                   f"{days:g} days")  # fmt: skip
    print_records(made, as_json)


@domain_command(dkim, "dns")
def dkim_dns(ctx: click.Context, domain: str, as_json: bool) -> None:
    """Every DNS record the domain needs: DKIM per selector, SPF, DMARC, MX, MTA-STS, TLS-RPT."""
    settings = settings_from(ctx)
    name = configured_domain(settings, domain)
    records = run_db(settings, lambda e: published_dkim_records(SqlDkimKeys(e), name))
    domain_settings = settings.domain(name)
    assert domain_settings is not None  # configured_domain checked it
    records += records_besides_dkim(domain_settings, sending_ips=settings.delivery.sending_ips,
                                    mx_host=settings.smtp.hostname, now=time.time())  # fmt: skip
    print_records(records, as_json)


@dkim.command("ls")
@config_option
@click.argument("domain", required=False)
@click.option("--all", "include_retired", is_flag=True, help="Include retired selectors.")
@click.pass_context
def dkim_ls(ctx: click.Context, domain: str | None, include_retired: bool) -> None:
    """Selectors and their state (pending, active, retiring, retired)."""
    settings = settings_from(ctx)
    rows = run_db(settings, lambda e: SqlDkimKeys(e).list(domain, include_retired))
    click.echo(f"{'DOMAIN':30}  {'SELECTOR':16}  {'ALG':8}  {'STATE':9}  {'SINCE (UTC)':19}  RETIRE AT")
    for r in rows:
        since = r.activated_at or r.created_at
        click.echo(f"{r.domain:30}  {r.selector:16}  {r.algorithm:8}  {r.state.value:9}  "
                   f"{when(since):19}  {when(r.retire_at)}")  # fmt: skip
