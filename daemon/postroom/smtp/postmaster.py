"""Mail to postmaster at the inbound MX, and where it goes (RFC 5321 §4.5.1).

A host that receives mail for a domain must accept mail to `postmaster` at that domain, and the bare
`postmaster` in RCPT TO. The MX accepts it for the sending domains, their bounce domains and the
server's own name, and hands it to one of two destinations:

- `PostmasterForward` (`[smtp] postmaster_forward` set): a new message From
  `postmaster@<first sending domain>` (aligned, so it is DKIM-signed like any other) to the
  operator, with the original attached unchanged as message/rfc822, submitted through the one
  door. Its envelope sender is null (`<>`, as for notifications, RFC 5321 §4.5.5): if the
  operator's address fails, no bounce comes back to postmaster to be forwarded again.
- `PostmasterMaildir` (otherwise): the message, with its trace fields, written into a Maildir under
  `<state_dir>/postmaster/` (tmp/, fsynced, renamed into new/, directory fsynced), and logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.header import Header
from pathlib import Path
from typing import Protocol

from postroom.core.addresses import normalise_domain
from postroom.core.types import Submission
from postroom.submission.outcome import Accepted, Caller, Outcome, Refusal
from postroom.submission.raw import Trace, received_field, summarise_headers

logger = logging.getLogger(__name__)

Submit = Callable[[Submission, Caller], Awaitable[Outcome]]

MAILBOX_UNAVAILABLE = Refusal(False, "store_unavailable", "the postmaster mailbox cannot be written now")


def is_postmaster(address: str, domains: frozenset[str]) -> bool:
    """`postmaster` (any case) bare or at one of `domains` (RFC 5321 §4.5.1, §4.1.1.3)."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    return local.lower() == "postmaster" and (not at or normalise_domain(domain) in domains)


@dataclass(frozen=True)
class PostmasterMessage:
    """A message the MX accepted for postmaster, as the client sent it."""

    content: bytes | bytearray  # as the DATA reader hands it over
    mail_from: str
    recipients: tuple[str, ...]
    trace: Trace
    queue_id: str
    now: float

    def received(self, hostname: str) -> bytes:
        """Our `Received:` field for it (RFC 5321 §4.4), CRLF-terminated."""
        field = received_field(
            helo=self.trace.helo, peer_ip=self.trace.peer, hostname=hostname,
            protocol=self.trace.protocol, queue_id=self.queue_id,
            recipient=self.recipients[0] if len(self.recipients) == 1 else None, now=self.now,
        )  # fmt: skip
        return field.encode("utf-8", "replace") + b"\r\n"


class PostmasterMail(Protocol):
    async def receive(self, message: PostmasterMessage) -> Outcome: ...


def _header_text(value: str) -> str:
    """A header value on one line; RFC 2047-encoded when it is not plain ASCII."""
    value = " ".join(value.split())[:300]
    return value if value.isascii() else Header(value, "utf-8").encode()


def compose_forward(
    message: PostmasterMessage, *, from_address: str, to_address: str, hostname: str, boundary: str
) -> bytes:
    """The notice to the operator with the original attached as message/rfc822 (RFC 2046 §5.2.1:
    8bit, since the original may hold 8-bit text; its lines are at most 998 octets, as DATA is)."""
    summary = summarise_headers(message.content)
    sender = message.mail_from or "<>"
    client = f"{message.trace.helo or 'unknown'} [{message.trace.peer or 'unknown'}]"
    subject = f"[postmaster] {summary.subject or '(no subject)'} (from {sender})"
    head = [
        f"From: Postmaster <{from_address}>",
        f"To: <{to_address}>",
        f"Subject: {_header_text(subject)}",
        f"Date: {email.utils.formatdate(message.now, localtime=False)}",
        f"Message-ID: <{message.queue_id}@{hostname}>",
        "Auto-Submitted: auto-generated",  # RFC 3834 §5: nobody should auto-reply to it
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
    ]
    notice = [
        f"A message to postmaster arrived at {hostname} and is attached unchanged.",
        "",
        f"Envelope sender: {sender}",
        f"Recipients:      {', '.join(message.recipients)}",
        f"Client:          {client}",
        f"Received:        {email.utils.formatdate(message.now, localtime=False)}",
        f"Queue id:        {message.queue_id}",
    ]
    parts = [
        "\r\n".join(head).encode("utf-8"),
        b"\r\n\r\n",
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n".encode(),
        "\r\n".join(notice).encode("utf-8", "replace"),
        f"\r\n\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n"
        f'Content-Disposition: attachment; filename="postmaster-{message.queue_id}.eml"\r\n'
        "Content-Transfer-Encoding: 8bit\r\n\r\n".encode(),
        message.received(hostname),
        message.content,
        b"" if message.content.endswith(b"\r\n") else b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts)


class PostmasterForward:
    """Forwards postmaster mail to the operator's address through the submission door."""

    def __init__(self, submit: Submit, *, forward_to: str, from_domain: str, hostname: str):
        self._submit = submit
        self._to = forward_to
        self._from = f"postmaster@{from_domain}"
        self._hostname = hostname

    async def receive(self, message: PostmasterMessage) -> Outcome:
        boundary = f"=_postroom_{secrets.token_hex(12)}"
        while boundary.encode() in message.content:  # vanishingly unlikely; never ambiguous
            boundary = f"=_postroom_{secrets.token_hex(12)}"
        content = compose_forward(message, from_address=self._from, to_address=self._to,
                                  hostname=self._hostname, boundary=boundary)  # fmt: skip
        submission = Submission(
            mail_from="",
            recipients=(self._to,),
            content=content,
            source="mx",
            submitted_by=message.trace.peer,
            header_from=self._from,
            subject=f"[postmaster] from {message.mail_from or '<>'}",
            message_id=message.queue_id,
            # Only the original counts against the size limit, not the wrapping around it.
            added_bytes=len(content) - len(message.content),
        )
        del content
        outcome = await self._submit(submission, Caller("mx", identity=message.trace.peer))
        if isinstance(outcome, Accepted):
            logger.info("mail to postmaster from <%s> (client %s) forwarded to <%s> as %s",
                        message.mail_from, message.trace.peer, self._to, outcome.message_id)  # fmt: skip
        return outcome


class PostmasterMaildir:
    """Writes postmaster mail into a Maildir (tmp -> new, fsynced) for the operator to read."""

    def __init__(self, directory: Path, hostname: str):
        self._directory = directory
        self._hostname = hostname
        self._sequence = itertools.count(1)

    async def receive(self, message: PostmasterMessage) -> Outcome:
        # The Maildir convention: time, then what makes the name unique on this host.
        name = f"{int(message.now)}.M{message.queue_id}P{os.getpid()}Q{next(self._sequence)}.{self._hostname}"
        head = f"Return-Path: <{message.mail_from}>\r\n".encode("utf-8", "replace")
        head += message.received(self._hostname)
        try:
            path = await asyncio.to_thread(self._write, name, head, message.content)
        except OSError as exc:
            logger.error("could not write postmaster mail to %s: %s", self._directory, exc)
            return MAILBOX_UNAVAILABLE
        logger.warning("mail to postmaster from <%s> (client %s) stored in %s; set "
                       "smtp.postmaster_forward to have it forwarded",
                       message.mail_from, message.trace.peer, path)  # fmt: skip
        return Accepted(message.queue_id, len(message.recipients))

    def _write(self, name: str, head: bytes, content: bytes | bytearray) -> Path:
        for sub in ("tmp", "new", "cur"):
            (self._directory / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp, new = self._directory / "tmp" / name, self._directory / "new" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(head)
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, new)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        directory = os.open(self._directory / "new", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return new
