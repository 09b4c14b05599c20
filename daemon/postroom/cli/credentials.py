"""`postroom apikeys create|ls|revoke` and `smtp-users add|ls|rm`: who may submit mail."""

from __future__ import annotations

import sys
import time

import click

from postroom.cli.common import config_option, fail, run_db, settings_from, when
from postroom.core.addresses import valid_mailbox
from postroom.core.secrets import new_password
from postroom.store.credentials import Role, SqlApiKeys, SqlSmtpUsers


@click.group()
def apikeys() -> None:
    """HTTP API keys (roles: admin, sender, viewer)."""


@apikeys.command("create")
@config_option
@click.option("--name", required=True)
@click.option("--role", type=click.Choice([r.value for r in Role]), default="sender", show_default=True)
@click.pass_context
def apikeys_create(ctx: click.Context, name: str, role: str) -> None:
    """Create a key and print it (it is shown this once)."""
    settings = settings_from(ctx)
    _, token = run_db(settings, lambda e: SqlApiKeys(e).create(name, Role(role), time.time()))
    click.echo(token)


@apikeys.command("ls")
@config_option
@click.pass_context
def apikeys_ls(ctx: click.Context) -> None:
    settings = settings_from(ctx)
    keys = run_db(settings, lambda e: SqlApiKeys(e).list())
    click.echo(f"{'ID':14}  {'ROLE':7}  {'CREATED (UTC)':19}  {'REVOKED':19}  NAME")
    for k in keys:
        click.echo(f"{k.id:14}  {k.role.value:7}  {when(k.created_at):19}  {when(k.revoked_at):19}  {k.name}")


@apikeys.command("revoke")
@config_option
@click.argument("key_id")
@click.pass_context
def apikeys_revoke(ctx: click.Context, key_id: str) -> None:
    settings = settings_from(ctx)
    run_db(settings, lambda e: SqlApiKeys(e).revoke(key_id, time.time()))
    click.echo(f"revoked {key_id}")


@click.group("smtp-users")
def smtp_users() -> None:
    """SMTP submission users (AUTH PLAIN/LOGIN)."""


@smtp_users.command("add")
@config_option
@click.argument("username")
@click.option("--password", default=None, help="Default: generate one and print it.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--allow", "allowed", multiple=True, metavar="DOMAIN|ADDRESS",
              help="Limit this login to these sender domains or addresses (repeat for several).")  # fmt: skip
@click.pass_context
def smtp_users_add(ctx: click.Context, username: str, password: str | None, password_stdin: bool,
                   allowed: tuple[str, ...]) -> None:  # fmt: skip
    settings = settings_from(ctx)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    generated = password is None
    secret = password if password is not None else new_password()
    if not secret:
        fail("the password is empty", 2)
    for entry in allowed:
        if "@" in entry and not valid_mailbox(entry):
            fail(f"--allow {entry}: not an email address", 2)
        if "@" not in entry and settings.domain(entry) is None:
            fail(f"--allow {entry}: not a sending domain of this server", 2)
    run_db(settings, lambda e: SqlSmtpUsers(e).add(username, secret, time.time(), allowed))
    click.echo(f"added {username}" + (f" with password {secret}" if generated else ""))


@smtp_users.command("ls")
@config_option
@click.pass_context
def smtp_users_ls(ctx: click.Context) -> None:
    settings = settings_from(ctx)
    for user in run_db(settings, lambda e: SqlSmtpUsers(e).list()):
        allowed = ",".join(user.allowed_senders) or "any sending domain"
        click.echo(f"{user.username}\t{when(user.created_at)}\t{allowed}")


@smtp_users.command("rm")
@config_option
@click.argument("username")
@click.pass_context
def smtp_users_rm(ctx: click.Context, username: str) -> None:
    settings = settings_from(ctx)
    run_db(settings, lambda e: SqlSmtpUsers(e).remove(username))
    click.echo(f"removed {username}")
