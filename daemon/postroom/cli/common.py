"""What every `postroom` subcommand shares: the --config option, loading the settings once, one way
to run a coroutine with a database engine, and the exit codes.

Exit codes: 0 success, 1 the operation failed (not found, refused, database unavailable), 2 bad
usage or an invalid configuration. Every failure prints a one-line reason to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.config import Settings, find_config_path, load_settings
from postroom.core.errors import ConfigError, PostroomError
from postroom.store import schema
from postroom.store.engine import create_engine

T = TypeVar("T")


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"postroom: {message}", err=True)
    sys.exit(code)


def config_path_from(ctx: click.Context) -> Any:
    return find_config_path(ctx.obj.get("config") if ctx.obj else None, os.environ)


def settings_from(ctx: click.Context) -> Settings:
    """The settings, loaded once per command; exit 2 listing every problem with its key."""
    try:
        return load_settings(config_path_from(ctx), os.environ)
    except ConfigError as exc:
        for key, reason in exc.problems:
            click.echo(f"postroom: config {key}: {reason}", err=True)
        sys.exit(2)


def config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """Every subcommand also takes --config after its name."""

    def remember(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value:
            ctx.ensure_object(dict)
            ctx.obj["config"] = value

    return click.option(
        "--config", expose_value=False, callback=remember, is_eager=True, help="Path to postroom.toml."
    )(func)


async def with_engine(
    settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]], migrated: bool = True
) -> T:
    """Run `work` with an engine of the configured database (schema checked unless `migrated`
    is False), disposing of it afterwards."""
    engine = create_engine(settings.database)
    try:
        if migrated:
            await schema.require_current(engine)
        return await work(engine)
    finally:
        await engine.dispose()


def run_db(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]], migrated: bool = True) -> T:
    """`with_engine` on a fresh event loop; a PostroomError becomes its message and exit 1."""
    try:
        return asyncio.run(with_engine(settings, work, migrated))
    except PostroomError as exc:
        fail(str(exc))


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))


def configured_domain(settings: Settings, name: str) -> str:
    domain = settings.domain(name)
    if domain is None:
        fail(f"{name} is not a sending domain: add a [[domains]] entry with name = \"{name}\"", 2)
    return domain.name


def domain_command(group: click.Group, name: str) -> Callable[[Callable[..., Any]], Any]:
    """A subcommand about one sending domain: `NAME DOMAIN [--json] [--config PATH]`; the
    function gets the click context, the domain as typed and the --json flag."""

    def decorate(func: Callable[..., Any]) -> Any:
        func = click.pass_context(func)
        func = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)
        func = click.argument("domain")(func)
        return group.command(name)(config_option(func))

    return decorate


def parse_time(value: str) -> float:
    """An ISO 8601 time ("2026-12-01", "2026-12-01T10:00:00Z"; UTC when no zone) or epoch seconds."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(f"{value!r} is not a time (ISO 8601, e.g. 2026-12-01T10:00:00Z, or epoch seconds)", 2)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


@contextlib.contextmanager
def replaced_file(output: Path) -> Iterator[TextIO]:
    """A text file written beside `output` and renamed into place when the block ends without an
    error, so a failed export leaves no half file; an OSError exits 1 naming the file."""
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as out:
            yield out
        os.replace(partial, output)
    except OSError as exc:
        fail(f"--output {output}: {exc.strerror or exc}")
    finally:
        partial.unlink(missing_ok=True)
