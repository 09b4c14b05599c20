"""`postroom init`, `check-config` and `db upgrade`: setting an installation up."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom import quickstart
from postroom.cli.common import config_option, config_path_from, fail, run_db, settings_from, with_engine
from postroom.config import load_settings
from postroom.core.clock import SystemClock
from postroom.core.errors import ConfigError, PostroomError
from postroom.dkim.keyring import load_keyring
from postroom.store import schema
from postroom.store.dkim_keys import SqlDkimKeys


@click.command()
@click.option("--dev", is_flag=True, help="Local quickstart: loopback ports, SQLite, capture outbox.")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=".quickstart",
              show_default=True, help="Where --dev puts its config, database and outbox.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init(dev: bool, directory: str, as_json: bool) -> None:
    """Create a configuration, the database, an admin API key and an SMTP user."""
    if not dev:
        fail("only `postroom init --dev` is available; for production copy "
             "config/postroom.example.toml and run `postroom db upgrade`", 2)  # fmt: skip
    root = Path(directory)
    config_path = root / "postroom.toml"
    existing = quickstart.load_quickstart(root)
    if existing is None or not config_path.exists():
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)  # the database holds message bodies and key hashes
        quickstart.self_signed_certificate("localhost", root / "tls" / "cert.pem", root / "tls" / "key.pem")
        config_path.write_text(quickstart.dev_config(root))
    quickstart.ensure_verp_key(root)
    try:
        settings = load_settings(config_path, os.environ)
    except ConfigError as exc:
        fail(f"the quickstart config is invalid: {exc}", 2)

    result = run_db(settings, lambda engine: quickstart.prepare_database(
        engine, settings, config_path, existing, SystemClock().now()), migrated=False)  # fmt: skip
    quickstart.save_quickstart(root, result)
    if as_json:
        click.echo(json.dumps(asdict(result)))
        return
    click.echo(quickstart.banner(result, settings))


@click.command("check-config")
@config_option
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Validate the configuration, and the DKIM keys the database lists; print every problem."""
    path = config_path_from(ctx)
    settings = settings_from(ctx)

    async def key_problems(engine: AsyncEngine) -> list[str]:
        keyring = load_keyring(await SqlDkimKeys(engine).list())
        found = [f"dkim {domain}: {reason}" for domain, reasons in keyring.problems.items()
                 for reason in reasons]  # fmt: skip
        for domain in settings.domains:
            if domain.dkim == "required" and not keyring.signer.keys_for(domain.name) \
                    and domain.name not in keyring.problems:  # fmt: skip
                found.append(f"dkim {domain.name}: no active key; mail from it is refused until "
                             f"`postroom dkim keygen --domain {domain.name} --selector NAME`")  # fmt: skip
        return found

    try:
        problems = asyncio.run(with_engine(settings, key_problems))
    except PostroomError as exc:
        click.echo(f"{path}: ok (DKIM keys not checked: {exc})")
        return
    for problem in problems:
        click.echo(f"postroom: {problem}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{path}: ok")


@click.group()
def db() -> None:
    """Database schema."""


@db.command()
@config_option
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Create or migrate the database schema to this version."""
    settings = settings_from(ctx)
    before, after = run_db(settings, schema.upgrade, migrated=False)
    if before == after:
        click.echo(f"database already at revision {after}")
    else:
        click.echo(f"database migrated from {before or 'empty'} to revision {after}")
