"""`DsnConsumer`: the event outbox consumer that tells the envelope sender of a message submitted
over SMTP that recipients of it bounced or expired, with an RFC 3464 report
(`bounces.dsn_compose`), as an MTA tells its clients (`[smtp] dsn = "failures"`).

It runs in the outbox's transaction and queues each report through the queue's own insert path
(`queue.sql_store.insert_submissions`: a message, its delivery, an `accepted` event) on that
transaction, so a report is queued exactly once per failed delivery, with the cursor, and the
delivery worker sends it like any other message: the in-house route, a null envelope sender
(never VERP: the worker keeps a null sender null), signed when the hostname's domain has DKIM
keys. Recipients of one message that fail in the same batch share one report; a recipient that
fails in a later batch gets a report of its own.

Never a report for mail that came in any other way (the API's channel is webhooks; the MX's
postmaster forwards, reports themselves), to a null sender, or about a report or another automatic
message (`wants_report`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from postroom.bounces.dsn_compose import (
    FailedRecipient,
    OriginalMessage,
    compose_dsn,
    header_block,
    report_subject,
    wants_report,
)
from postroom.core.clock import Clock
from postroom.core.ids import new_message_id
from postroom.core.types import INHOUSE_ROUTE, Submission
from postroom.events.models import Event
from postroom.metrics import Metrics
from postroom.queue.sql_store import insert_submissions
from postroom.store.tables import messages

logger = logging.getLogger(__name__)

CONSUMER_NAME = "dsn"
DSN_SOURCE = "dsn"  # messages.source of a report: it is not "smtp", so it never gets one itself
REPORTED_SOURCES = frozenset({"smtp"})
FAILURE_EVENTS = frozenset({"bounced", "expired"})
HEAD_BYTES = 65536  # what is read of an original to find its header block


def failed_recipient(event: Event) -> FailedRecipient:
    """A failed recipient as its `bounced` or `expired` event recorded it (the worker's detail:
    reply, code, status, mx; a late bounce's: reply_code, status, remote_host)."""
    detail = event.detail
    code = detail.get("code", detail.get("reply_code"))
    status = detail.get("status")
    remote = detail.get("mx") or detail.get("remote_host")
    return FailedRecipient(
        recipient=event.recipient or "",
        reply=str(detail.get("reply") or detail.get("diagnostic") or ""),
        reason=str(detail.get("reason") or ""),
        last_attempt_at=event.at,
        status=status if isinstance(status, str) else None,
        code=code if isinstance(code, int) else None,
        remote_mta=remote if isinstance(remote, str) else None,
        expired=event.type == "expired",
    )


class DsnConsumer:
    def __init__(self, hostname: str, clock: Clock, metrics: Metrics):
        self._hostname = hostname
        self._clock = clock
        self._metrics = metrics

    @property
    def name(self) -> str:
        return CONSUMER_NAME

    async def handle(self, events: Sequence[Event], tx: AsyncConnection) -> None:
        failed: dict[str, list[Event]] = {}
        for event in events:
            if event.type in FAILURE_EVENTS and event.recipient:
                failed.setdefault(event.message_id, []).append(event)
        if not failed:
            return
        originals = await self._originals(tx, sorted(failed))
        now = self._clock.now()
        batch: list[tuple[str, Submission]] = []
        for message_id, found in failed.items():
            row = originals.get(message_id)
            if row is None:  # not submitted over SMTP (or purged since)
                continue
            headers = header_block(bytes(row.head))
            if not wants_report(row.mail_from, headers):
                self._metrics.dsn_skipped.labels("null_sender" if not row.mail_from.strip() else "automatic").inc()
                continue
            original = OriginalMessage(message_id, row.mail_from, float(row.created_at), headers)
            report = self._report(original, [failed_recipient(e) for e in found], str(row.stream), now)
            batch.append((report.message_id or "", report))
            for event in found:
                self._metrics.dsn_sent.labels(event.type).inc()
            logger.info("delivery status notification %s to <%s> about %s (%d recipient(s))",
                        report.message_id, row.mail_from, message_id, len(found))  # fmt: skip
        if batch:
            await insert_submissions(tx, batch, now)

    @staticmethod
    async def _originals(tx: AsyncConnection, message_ids: list[str]) -> dict[str, Any]:
        rows = (
            await tx.execute(
                sa.select(
                    messages.c.id,
                    messages.c.mail_from,
                    messages.c.created_at,
                    messages.c.stream,
                    sa.func.substr(messages.c.content, 1, HEAD_BYTES).label("head"),
                ).where(messages.c.id.in_(message_ids), messages.c.source.in_(sorted(REPORTED_SOURCES)))
            )
        ).all()
        return {row.id: row for row in rows}

    def _report(
        self, original: OriginalMessage, failures: list[FailedRecipient], stream: str, now: float
    ) -> Submission:
        message_id = new_message_id(now)
        boundary = f"=_postroom_dsn_{secrets.token_hex(12)}"
        while boundary.encode() in original.headers:  # vanishingly unlikely; never ambiguous
            boundary = f"=_postroom_dsn_{secrets.token_hex(12)}"
        content = compose_dsn(original, failures, hostname=self._hostname, message_id=message_id,
                              now=now, boundary=boundary)  # fmt: skip
        return Submission(
            mail_from="",  # RFC 5321 §4.5.5: a notification goes out with a null reverse-path
            recipients=(original.envelope_sender,),
            content=content,
            source=DSN_SOURCE,
            submitted_by=f"MAILER-DAEMON@{self._hostname}",
            header_from=f"MAILER-DAEMON@{self._hostname}",
            subject=report_subject(failures),
            stream=stream,
            route=INHOUSE_ROUTE,
            message_id=message_id,
        )
