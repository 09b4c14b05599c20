"""`postroom send`: queue a message from the command line, through the same submission door as
SMTP and the HTTP API (sending policy, size limit; a raw message is stamped like an SMTP one)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import click
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.app import route_service, routing_key, submission_steps
from postroom.cli.common import config_option, fail, run_db, settings_from
from postroom.config import Settings
from postroom.core.addresses import valid_mailbox
from postroom.core.clock import SystemClock
from postroom.core.compose import address_of
from postroom.core.errors import InvalidMessageError
from postroom.core.ids import new_message_id
from postroom.core.types import Submission
from postroom.dkim.keyring import SigningKeys, load_keyring
from postroom.metrics import Metrics
from postroom.queue.sql_store import SqlQueueStore
from postroom.store.dkim_keys import SqlDkimKeys
from postroom.submission.fields import MessageIn, build_submission
from postroom.submission.outcome import Accepted, Caller, Outcome
from postroom.submission.raw import Trace, raw_submission
from postroom.submission.service import SubmissionService
from postroom.shadow.step import RoutingStep
from postroom.suppression.service import SuppressionScreen


@click.command()
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
    user = f"cli:{os.getenv('USER', 'unknown')}"
    now = time.time()
    try:
        if raw is not None:
            submission = _raw(settings, raw.read(), sender, to, stream, user, now)
        else:
            body = MessageIn.model_validate({"from": sender, "to": list(to), "subject": subject,
                                             "text": text or ("" if html else " "), "html": html,
                                             "stream": stream})  # fmt: skip
            submission = build_submission(body, submitted_by=user, hostname=settings.smtp.hostname,
                                          now=now, source="cli")  # fmt: skip
    except InvalidMessageError as exc:
        fail(str(exc), 2)
    except ValidationError as exc:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()), 2)

    outcome = run_db(settings, lambda engine: _submit(engine, settings, submission, Caller("cli", user)))
    if not isinstance(outcome, Accepted):
        fail(outcome.reason, 1)
    for address, why in outcome.suppressed.items():  # recorded as `suppressed` deliveries, not sent
        click.echo(f"postroom: {address} is suppressed ({why.get('scope')}: {why.get('reason')}); not sent",
                   err=True)  # fmt: skip
    click.echo(outcome.message_id)


def _raw(settings: Settings, content: bytes, sender: str, to: tuple[str, ...], stream: str,
         user: str, now: float) -> Submission:  # fmt: skip
    """A message written by hand or by a program: normalised to CRLF, stamped like SMTP mail."""
    mail_from = address_of(sender)
    recipients = tuple(address_of(r) for r in to)
    for address in (mail_from, *recipients):
        if not valid_mailbox(address):
            raise InvalidMessageError(f"{address!r} is not a valid email address")
    content = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return raw_submission(
        content, mail_from=mail_from, recipients=recipients, trace=Trace(None, None, "local"),
        source="cli", submitted_by=user, hostname=settings.smtp.hostname,
        queue_id=new_message_id(now), now=now, stream=stream,
    )  # fmt: skip


async def submission_door(engine: AsyncEngine, settings: Settings, metrics: Metrics) -> SubmissionService:
    """The submission door as the command line has it: the daemon's steps (signing keys, routes,
    suppression), each message written in its own transaction."""
    keyring = await asyncio.to_thread(load_keyring, await SqlDkimKeys(engine).list())
    keys = SigningKeys(settings.domains, keyring)
    clock = SystemClock()
    routes = route_service(settings, engine, None, clock, metrics)
    await routes.refresh()
    steps = submission_steps(settings, keys, clock, RoutingStep(routes, routing_key(settings.shadow), metrics))
    return SubmissionService(steps, SqlQueueStore(engine, screen=SuppressionScreen()), clock, metrics)


async def _submit(engine: AsyncEngine, settings: Settings, submission: Submission, caller: Caller) -> Outcome:
    door = await submission_door(engine, settings, Metrics(CollectorRegistry()))
    return await door.submit(submission, caller)
