"""`postroom domains check`: whether a sending domain's DNS says what postroom needs."""

from __future__ import annotations

import json
import sys

import click
from prometheus_client import CollectorRegistry

from postroom.cli.common import configured_domain, domain_command, run_db, settings_from
from postroom.domains.resolver import lookup_for
from postroom.domains.service import DomainChecker
from postroom.metrics import Metrics
from postroom.store.dkim_keys import SqlDkimKeys


@click.group()
def domains() -> None:
    """Sending domains."""


@domain_command(domains, "check")
def domains_check(ctx: click.Context, domain: str, as_json: bool) -> None:
    """Check the domain's DNS: DKIM, SPF, DMARC, bounce MX. Exit 1 unless everything is ok."""
    settings = settings_from(ctx)
    name = configured_domain(settings, domain)
    lookup = lookup_for(settings.delivery.dns_resolver)
    report = run_db(settings, lambda e: DomainChecker(
        settings.domains, SqlDkimKeys(e), lookup, Metrics(CollectorRegistry()),
        sending_ips=settings.delivery.sending_ips, mx_host=settings.smtp.hostname,
    ).check(name))  # fmt: skip
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for check in report.checks:
            click.echo(f"{check.verdict.upper():9} {check.kind:6} {check.name} {check.type}")
            if check.verdict != "ok":
                click.echo(f"          expected: {check.expected}")
                click.echo(f"          found:    {' | '.join(check.found) or '(nothing)'}")
            if check.detail:
                click.echo(f"          {check.detail}")
        click.echo(f"{report.domain}: {'ok' if report.ok else 'NOT OK'}")
    if not report.ok:
        sys.exit(1)
