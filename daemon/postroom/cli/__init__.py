"""The `postroom` command: one module per noun group, the shared parts in `common`.

Each subcommand loads the settings, does one thing, and exits with 0 on success, 1 when the
operation failed (not found, refused, database unavailable) and 2 for bad usage or an invalid
configuration, printing a one-line reason to stderr.
"""

from __future__ import annotations

import click

from postroom.cli.billing import stripe_group
from postroom.cli.bounces import bounces
from postroom.cli.contacts import contacts
from postroom.cli.credentials import apikeys, smtp_users
from postroom.cli.dkim import dkim
from postroom.cli.mrr import fx_group, mrr_group
from postroom.cli.domains import domains
from postroom.cli.exports import export
from postroom.cli.queue import queue
from postroom.cli.reports import reports_group
from postroom.cli.send import send
from postroom.cli.serve import serve
from postroom.cli.setup import check_config, db, init
from postroom.cli.route import route
from postroom.cli.suppressions import suppressions
from postroom.cli.stats import stats
from postroom.cli.templates import templates
from postroom.cli.webhooks import webhooks


@click.group()
@click.option("--config", "config", envvar=None, default=None, help="Path to postroom.toml "
              "(default: $POSTROOM_CONFIG, ./postroom.toml, /etc/postroom/postroom.toml).")  # fmt: skip
@click.version_option(package_name="postroom")
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """postroom: self-hosted email delivery and reports."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


for command in (init, serve, check_config, db, send, queue, templates, contacts, dkim, domains, bounces,
                suppressions, webhooks, stats, route, export, apikeys, smtp_users, stripe_group, mrr_group,
                fx_group, reports_group):  # fmt: skip
    main.add_command(command)

__all__ = ["main"]
