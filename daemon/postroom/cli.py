"""The `postroom` command. Each subcommand loads the settings, does one thing, and exits with
0 on success, 1 when the operation failed (not found, database unavailable) and 2 for bad usage or
an invalid configuration, printing a one-line reason to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.config import Settings, find_config_path, load_settings
from postroom.core.clock import SystemClock
from postroom.core.addresses import valid_mailbox
from postroom.core.compose import Draft, address_of, compose
from postroom.core.errors import ConfigError, NotFoundError, PostroomError, SchemaNotCurrentError
from postroom.core.ids import new_message_id
from postroom.core.secrets import new_password
from postroom.core.types import DeliveryState, Submission
from postroom.queue.store import SqlQueueStore
from postroom.quickstart import (
    QUICKSTART_DOMAIN,
    InitResult,
    dev_config,
    load_quickstart,
    save_quickstart,
    self_signed_certificate,
)
from postroom.smtp.stamping import summarise_headers
from postroom.store import schema
from postroom.store.credentials import Role, SqlApiKeys, SqlSmtpUsers
from postroom.store.engine import create_engine

T = TypeVar("T")


def fail(message: str, code: int = 1) -> None:
    click.echo(f"postroom: {message}", err=True)
    sys.exit(code)


def settings_from(ctx: click.Context) -> Settings:
    path = find_config_path(ctx.obj.get("config"), os.environ)
    try:
        return load_settings(path, os.environ)
    except ConfigError as exc:
        for key, reason in exc.problems:
            click.echo(f"postroom: config {key}: {reason}", err=True)
        sys.exit(2)


def run_db(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]], migrated: bool = True) -> T:
    """Run `work` with an engine on a fresh loop, translating errors into exit codes."""

    async def main() -> T:
        engine = create_engine(settings.database)
        try:
            if migrated:
                await schema.require_current(engine)
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except SchemaNotCurrentError as exc:
        fail(str(exc))
    except PostroomError as exc:
        fail(str(exc))
    raise AssertionError("unreachable")


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))


@click.group()
@click.option("--config", "config", envvar=None, default=None, help="Path to postroom.toml "
              "(default: $POSTROOM_CONFIG, ./postroom.toml, /etc/postroom/postroom.toml).")  # fmt: skip
@click.version_option(package_name="postroom")
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """postroom: self-hosted email delivery and reports."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


def config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """Every subcommand also takes --config after its name."""

    def store(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value:
            ctx.ensure_object(dict)
            ctx.obj["config"] = value

    return click.option(
        "--config", expose_value=False, callback=store, is_eager=True, help="Path to postroom.toml."
    )(func)


# -- init, serve, check-config, db ------------------------------------------------------------


@main.command()
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
    existing = load_quickstart(root)
    if existing is None or not config_path.exists():
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)  # the database holds message bodies and key hashes
        self_signed_certificate("localhost", root / "tls" / "cert.pem", root / "tls" / "key.pem")
        config_path.write_text(dev_config(root))
    try:
        settings = load_settings(config_path, os.environ)
    except ConfigError as exc:
        fail(f"the quickstart config is invalid: {exc}", 2)

    async def prepare(engine: AsyncEngine) -> InitResult:
        await schema.upgrade(engine)
        await create_quickstart_keys(engine, settings, SystemClock().now())
        users = SqlSmtpUsers(engine)
        # Saved credentials are reused only while the database still knows them (it may have
        # been deleted to start afresh); otherwise the quickstart would print a dead key.
        if (
            existing is not None
            and await SqlApiKeys(engine).authenticate(existing.api_key) is not None
            and await users.verify(existing.smtp_user, existing.smtp_password)
        ):
            return existing
        now = SystemClock().now()
        _, token = await SqlApiKeys(engine).create("quickstart admin", Role.ADMIN, now)
        password = new_password()
        user = f"app@{QUICKSTART_DOMAIN}"
        with contextlib.suppress(NotFoundError):
            await users.remove(user)  # a stale quickstart user gets the new password
        await users.add(user, password, now)
        return InitResult(
            config=str(config_path.resolve()),
            api_key=token,
            smtp_user=user,
            smtp_password=password,
            domain=QUICKSTART_DOMAIN,
            http=settings.http.listen,
            submission=settings.smtp.submission_listen,
            mx=settings.smtp.mx_listen,
        )

    result = run_db(settings, prepare, migrated=False)
    result = InitResult(**{**asdict(result), "http": settings.http.listen,
                           "submission": settings.smtp.submission_listen,
                           "mx": settings.smtp.mx_listen})  # fmt: skip
    save_quickstart(root, result)
    if as_json:
        click.echo(json.dumps(asdict(result)))
        return
    click.echo(quickstart_banner(result, settings))


async def create_quickstart_keys(engine: AsyncEngine, settings: Settings, now: float) -> None:
    """An RSA-2048 and an Ed25519 key for the quickstart domain, unless it has keys already."""
    from postroom.dkim.management import create_selector
    from postroom.store.dkim_keys import SqlDkimKeys

    keys = SqlDkimKeys(engine)
    if await keys.list(QUICKSTART_DOMAIN):
        return
    for selector, algorithm in (("quickstart-rsa", "rsa"), ("quickstart-ed", "ed25519")):
        path = Path(settings.dkim_key_dir) / QUICKSTART_DOMAIN / f"{selector}.pem"
        if path.exists():  # the database was deleted to start afresh: keep the key files
            await keys.add(QUICKSTART_DOMAIN, selector, algorithm, str(path), now)
            continue
        await create_selector(keys, Path(settings.dkim_key_dir), QUICKSTART_DOMAIN, selector,
                              algorithm, 2048, now)  # type: ignore[arg-type]  # fmt: skip


def quickstart_banner(result: InitResult, settings: Settings) -> str:
    return f"""
postroom quickstart
  config       {result.config}
  HTTP API     http://{result.http}   (API key: {result.api_key})
  submission   {result.submission}    (STARTTLS; AUTH {result.smtp_user} / {result.smtp_password};
                                 127.0.0.1 may also send without AUTH)
  inbound MX   {result.mx}
  outbox       {settings.delivery.capture_dir}   (capture mode: nothing leaves this machine)

Send a message:
  curl -s http://{result.http}/v1/messages -H 'Authorization: Bearer {result.api_key}' \\
    -H 'Content-Type: application/json' \\
    -d '{{"from": "hello@{result.domain}", "to": "you@example.com", "subject": "Hi", "text": "It works."}}'
  swaks --server {result.submission} --tls --auth-user {result.smtp_user} \\
    --auth-password '{result.smtp_password}' --from hello@{result.domain} --to you@example.com
"""


@main.command()
@config_option
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the daemon in the foreground (systemd: Type=notify)."""
    from postroom import supervisor
    from postroom.app import Daemon
    from postroom.logs import configure_logging
    from postroom.signals import install_signal_handlers

    settings = settings_from(ctx)
    configure_logging(settings.log)
    # The SQLite writer and the drivers' threads hand results back through the GIL; with the
    # default 5 ms switch interval a busy loop thread made each group commit wait several ms
    # (docs/benchmarks.md). A shorter interval makes those hand-overs prompt.
    sys.setswitchinterval(0.0005)
    processes = settings.processes.resolved(os.cpu_count())
    is_child = supervisor.CHILD_ENV in os.environ
    if is_child:
        supervisor.die_with_supervisor()

    if processes > 1 and not is_child:
        # Become the small supervisor program (same pid): it starts `processes` children, each
        # a full daemon like this one would have been.
        config_path = str(find_config_path(ctx.obj.get("config"), os.environ).resolve())
        argv = supervisor.exec_argv(config_path, processes, settings.processes.restart_delay,
                                    settings.delivery.drain_grace + 15, settings.log.level,
                                    settings.log.format)  # fmt: skip
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(argv[0], argv)

    async def main_loop() -> None:
        stop = asyncio.Event()
        daemon = Daemon(settings, reuse_port=is_child)
        install_signal_handlers(stop, daemon.request_reload)
        running = asyncio.create_task(daemon.run(stop))
        ready = asyncio.create_task(daemon.ready.wait())
        await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            supervisor.report_ready_to_supervisor()
        else:
            ready.cancel()
        await running

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(main_loop())
    except* SchemaNotCurrentError as group:
        fail(str(group.exceptions[0]))
    except* PostroomError as group:
        fail(f"cannot run: {group.exceptions[0]}")
    except* OSError as group:
        fail(f"cannot start: {group.exceptions[0]}")


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed and not turned off (POSTROOM_UVLOOP=0); else asyncio's.

    The daemon spends much of a core in the event loop itself (socket reads and writes, callbacks,
    timers); uvloop does that work in C. Everything postroom uses (SO_REUSEPORT listeners,
    STARTTLS on both sides, signal handlers, executors) runs on either loop.
    """
    if os.environ.get("POSTROOM_UVLOOP", "1") == "0":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


@main.command("check-config")
@config_option
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Validate the configuration, and the DKIM keys the database lists; print every problem."""
    from postroom.dkim.keyring import load_keyring
    from postroom.store.dkim_keys import SqlDkimKeys

    path = find_config_path(ctx.obj.get("config"), os.environ)
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
        problems = asyncio.run(_with_engine(settings, key_problems))
    except PostroomError as exc:
        click.echo(f"{path}: ok (DKIM keys not checked: {exc})")
        return
    for problem in problems:
        click.echo(f"postroom: {problem}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{path}: ok")


async def _with_engine(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    engine = create_engine(settings.database)
    try:
        await schema.require_current(engine)
        return await work(engine)
    finally:
        await engine.dispose()


@main.group()
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


# -- send -------------------------------------------------------------------------------------


@main.command()
@config_option
@click.option("--from", "sender", required=True, help="From address (also the envelope sender).")
@click.option("--to", "to", multiple=True, required=True, help="Recipient (repeat for several).")
@click.option("--subject", default="", help="Subject (ignored with --raw).")
@click.option("--text", default=None, help="Plain text body.")
@click.option("--html", default=None, help="HTML body.")
@click.option("--raw", type=click.File("rb"), default=None,
              help="Queue this RFC 5322 message as it is ('-' for stdin).")  # fmt: skip
@click.option("--stream", default="transactional", show_default=True)
@click.pass_context
def send(ctx: click.Context, sender: str, to: tuple[str, ...], subject: str, text: str | None,
         html: str | None, raw: Any, stream: str) -> None:  # fmt: skip
    """Queue a message directly in the database (the daemon delivers it)."""
    settings = settings_from(ctx)
    now = time.time()
    message_id = new_message_id(now)
    try:
        mail_from = address_of(sender)
        recipients = tuple(address_of(r) for r in to)
        if raw is not None:
            content = raw.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            summary = summarise_headers(content)
            header_from, subject_line = summary.header_from, summary.subject
        else:
            draft = Draft(sender=sender, to=to, subject=subject, text=text or ("" if html else " "),
                          html=html)  # fmt: skip
            content = compose(draft, message_id=message_id, hostname=settings.smtp.hostname, now=now)
            header_from, subject_line = sender, subject
    except PostroomError as exc:
        fail(str(exc), 2)
    submission = Submission(
        mail_from=mail_from, recipients=recipients, content=content, source="cli",
        submitted_by=f"cli:{os.getenv('USER', 'unknown')}", header_from=header_from,
        subject=subject_line, stream=stream, message_id=message_id,
    )  # fmt: skip
    async def queue_it(engine: AsyncEngine) -> list[str]:
        from postroom.dkim.keyring import SendingPolicy, load_keyring
        from postroom.store.dkim_keys import SqlDkimKeys

        keyring = await asyncio.to_thread(load_keyring, await SqlDkimKeys(engine).list())
        refusal = SendingPolicy(settings.domains, keyring).check(header_from or sender)
        if refusal is not None:
            fail(refusal.reason, 1)
        return await SqlQueueStore(engine).insert_many([submission], now)

    ids = run_db(settings, queue_it)
    click.echo(ids[0])


# -- queue ------------------------------------------------------------------------------------


@main.group()
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
    found = run_db(settings, lambda e: SqlQueueStore(e).list_messages(limit=limit, state=state))
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
    groups = run_db(settings, lambda e: SqlQueueStore(e).destinations(include_final=include_final,
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
        raw = run_db(settings, lambda e: SqlQueueStore(e).content(message_id))
        click.echo(raw.decode("utf-8", "replace"))
        return
    detail = run_db(settings, lambda e: SqlQueueStore(e).show(message_id))
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


# -- dkim -------------------------------------------------------------------------------------


def configured_domain(settings: Settings, name: str) -> str:
    domain = settings.domain(name)
    if domain is None:
        fail(f"{name} is not a sending domain: add a [[domains]] entry with name = \"{name}\"", 2)
    assert domain is not None
    return domain.name


def print_records(records: list[Any], as_json: bool) -> None:
    from postroom.dkim.keys import split_txt

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


@main.group()
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
    from postroom.dkim.management import create_selector
    from postroom.store.dkim_keys import SqlDkimKeys

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
    import datetime

    from postroom.dkim.management import create_selector, rotation_selector
    from postroom.store.dkim_keys import SelectorState, SqlDkimKeys

    settings = settings_from(ctx)
    name = configured_domain(settings, domain)

    async def rotate(engine: AsyncEngine) -> list[Any]:
        keys = SqlDkimKeys(engine)
        rows = await keys.list(name, include_retired=True)
        active = {r.algorithm for r in rows if r.state is SelectorState.ACTIVE}
        wanted = set(algorithms) or active
        if not wanted:
            fail(f"{name} has no active DKIM key to rotate: create one with `postroom dkim keygen`")
        taken = {r.selector for r in rows}
        made = []
        for algorithm in sorted(wanted):
            selector = rotation_selector(algorithm, datetime.date.today(), taken)
            taken.add(selector)
            made.append((await create_selector(keys, Path(settings.dkim_key_dir), name, selector,
                                               algorithm, 2048, time.time()))[1])  # type: ignore[arg-type]  # fmt: skip
        return made

    made = run_db(settings, rotate)
    if not as_json:
        days = settings.dkim.rotation_overlap / 86400
        click.echo(f"; publish these records; postroom keeps signing with the current selectors "
                   f"until it sees them in DNS, then switches and keeps the old records listed for "
                   f"{days:g} days")  # fmt: skip
    print_records(made, as_json)


@dkim.command("dns")
@config_option
@click.argument("domain")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dkim_dns(ctx: click.Context, domain: str, as_json: bool) -> None:
    """Every DNS record the domain needs: DKIM per selector, SPF, DMARC, MX, MTA-STS, TLS-RPT."""
    from postroom.dkim.management import published_dkim_records
    from postroom.store.dkim_keys import SqlDkimKeys

    settings = settings_from(ctx)
    name = configured_domain(settings, domain)
    records: list[Any] = run_db(settings, lambda e: published_dkim_records(SqlDkimKeys(e), name))
    records += other_domain_records(settings, name)
    print_records(records, as_json)


def other_domain_records(settings: Settings, name: str) -> list[Any]:
    """SPF, DMARC, MX and the MTA-STS / TLS-RPT suggestions (from the domain checks)."""
    from postroom.dkim.management import PublishedRecord
    from postroom.domains.checks import DomainExpectation, suggested_records

    domain = settings.domain(name)
    assert domain is not None
    expectation = DomainExpectation(
        domain=name, dkim=(), sending_ips=settings.delivery.sending_ips,
        mx_host=settings.smtp.hostname, bounce_domain=domain.return_path_domain,
    )  # fmt: skip
    return [
        PublishedRecord(r["name"], r["type"], r["value"])
        for r in suggested_records(expectation, time.time())
        if r["type"] != "TXT" or "._domainkey." not in r["name"]
    ]


@dkim.command("ls")
@config_option
@click.argument("domain", required=False)
@click.option("--all", "include_retired", is_flag=True, help="Include retired selectors.")
@click.pass_context
def dkim_ls(ctx: click.Context, domain: str | None, include_retired: bool) -> None:
    """Selectors and their state (pending, active, retiring, retired)."""
    from postroom.store.dkim_keys import SqlDkimKeys

    settings = settings_from(ctx)
    rows = run_db(settings, lambda e: SqlDkimKeys(e).list(domain, include_retired))
    click.echo(f"{'DOMAIN':30}  {'SELECTOR':16}  {'ALG':8}  {'STATE':9}  {'SINCE (UTC)':19}  RETIRE AT")
    for r in rows:
        since = r.activated_at or r.created_at
        click.echo(f"{r.domain:30}  {r.selector:16}  {r.algorithm:8}  {r.state.value:9}  "
                   f"{when(since):19}  {when(r.retire_at)}")  # fmt: skip


# -- domains ----------------------------------------------------------------------------------


@main.group()
def domains() -> None:
    """Sending domains."""


@domains.command("check")
@config_option
@click.argument("domain")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def domains_check(ctx: click.Context, domain: str, as_json: bool) -> None:
    """Check the domain's DNS: DKIM, SPF, DMARC, bounce MX. Exit 1 unless everything is ok."""
    from prometheus_client import CollectorRegistry

    from postroom.domains.resolver import lookup_for
    from postroom.domains.service import DomainChecker
    from postroom.metrics import Metrics
    from postroom.store.dkim_keys import SqlDkimKeys

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


# -- apikeys, smtp-users ----------------------------------------------------------------------


@main.group()
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


@main.group("smtp-users")
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


if __name__ == "__main__":
    main()
