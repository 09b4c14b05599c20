"""`postroom send`: queue a message from the command line."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import click
from sqlalchemy.ext.asyncio import AsyncEngine

from postroom.cli.common import config_option, fail, run_db, settings_from
from postroom.core.compose import Draft, address_of, compose
from postroom.core.errors import PostroomError
from postroom.core.ids import new_message_id
from postroom.core.types import Submission
from postroom.queue.store import SqlQueueStore
from postroom.smtp.stamping import summarise_headers


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
