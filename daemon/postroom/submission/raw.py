"""A submission from a message as its client wrote it (SMTP DATA, `postroom send --raw`).

What ingress adds goes on bytes, without re-serialising: a `Received:` trace field on top
(RFC 5321 §4.4), and `Date:` and `Message-ID:` when the client left them out, as a submission
server may (RFC 6409 §8.2, §8.3). Only the header block is read; the body is never touched, so what
the client sent is what gets signed and delivered. The content may be the SMTP DATA reader's
bytearray: stamping it is the one copy of the message made on its way to the queue.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from email.header import decode_header, make_header

from postroom.core.types import Submission

_HEADER_END = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class HeaderSummary:
    header_from: str | None  # the first From field, encoded words decoded (for display)
    subject: str | None
    has_date: bool
    has_message_id: bool
    from_fields: tuple[str, ...] = ()  # every From field as written (the policy needs exactly one)
    sender_fields: tuple[str, ...] = ()  # every Sender field as written


def _decoded(value: str | None) -> str | None:
    if value is None:
        return None
    if "=?" not in value:  # no RFC 2047 encoded words: nothing to decode
        return value[:998]
    try:
        return str(make_header(decode_header(value)))[:998]
    except (ValueError, LookupError, UnicodeError):
        return value[:998]


_WANTED = {b"from": "from", b"subject": "subject", b"date": "date", b"message-id": "message-id",
           b"sender": "sender"}  # fmt: skip


def summarise_headers(content: bytes | bytearray) -> HeaderSummary:
    """Read From, Subject, Date and Message-ID from the header block (RFC 5322 §2.2, with folding).

    A scan of the header lines, not the stdlib parser: it runs on every submitted message and the
    parser cost 30 µs of the ~1 ms ingest budget. The first occurrence of a field is its value;
    From and Sender are also collected in full, since a second one is grounds for refusal.
    """
    match = _HEADER_END.search(content)
    # bytes() of the header block only: the DATA reader hands over a bytearray (not hashable).
    head = bytes(content[: match.start()] if match else content)
    fields: list[tuple[str, list[str]]] = []  # (name, folded lines) of the fields we want
    current: list[str] | None = None
    for line in head.split(b"\n"):
        line = line.rstrip(b"\r")
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line.strip().decode("utf-8", "replace"))
            continue
        name, colon, value = line.partition(b":")
        key = _WANTED.get(name.strip().lower()) if colon else None
        current = None
        if key is not None:
            current = [value.strip().decode("utf-8", "replace")]
            fields.append((key, current))
    every: dict[str, list[str]] = {}
    for key, lines in fields:
        every.setdefault(key, []).append(" ".join(lines))
    first = {key: values[0] for key, values in every.items()}
    return HeaderSummary(
        header_from=_decoded(first.get("from")),
        subject=_decoded(first.get("subject")),
        has_date="date" in first,
        has_message_id="message-id" in first,
        from_fields=tuple(every.get("from", ())),
        sender_fields=tuple(every.get("sender", ())),
    )


def stamp(
    content: bytes | bytearray,
    summary: HeaderSummary,
    *,
    received: str,
    hostname: str,
    queue_id: str,
    now: float,
) -> bytes:
    """Prepend the trace field and any missing Date / Message-ID to the message."""
    lines = [received.encode("utf-8", "replace")]
    if not summary.has_date:
        lines.append(b"Date: " + email.utils.formatdate(now, localtime=False).encode())
    if not summary.has_message_id:
        lines.append(f"Message-ID: <{queue_id}@{hostname}>".encode())
    return b"\r\n".join(lines) + b"\r\n" + content


def received_field(
    *,
    helo: str | None,
    peer_ip: str | None,
    hostname: str,
    protocol: str,
    queue_id: str,
    recipient: str | None,
    now: float,
) -> str:
    """`Received: from HELO ([ip]) by host (postroom) with ESMTPSA id ID for <rcpt>; date`;
    without a peer (the command line) the from clause is left out, as Postfix's pickup does."""
    helo_text = (helo or "unknown").replace("\r", "").replace("\n", "")[:255]
    from_clause = f"from {helo_text} ([{peer_ip}])\r\n\t" if peer_ip else ""
    for_clause = f"\r\n\tfor <{recipient}>" if recipient else ""
    return (
        f"Received: {from_clause}by {hostname} (postroom) with {protocol} "
        f"id {queue_id}{for_clause};\r\n\t{email.utils.formatdate(now, localtime=False)}"
    )


@dataclass(frozen=True)
class Trace:
    """Where a raw message came from, for its `Received:` field."""

    helo: str | None
    peer: str | None  # the client's address; None for the command line
    protocol: str  # "ESMTPSA", "ESMTPS", "ESMTP", "local"


def raw_submission(
    content: bytes | bytearray,
    *,
    mail_from: str,
    recipients: tuple[str, ...],
    trace: Trace,
    source: str,
    submitted_by: str | None,
    hostname: str,
    queue_id: str,
    now: float,
    stream: str = "transactional",
) -> Submission:
    """The submission of a client-written message: stamped, with its From and Subject read."""
    summary = summarise_headers(content)
    received = received_field(
        helo=trace.helo, peer_ip=trace.peer, hostname=hostname, protocol=trace.protocol,
        queue_id=queue_id, recipient=recipients[0] if len(recipients) == 1 else None, now=now,
    )  # fmt: skip
    stamped = stamp(content, summary, received=received, hostname=hostname, queue_id=queue_id, now=now)
    return Submission(
        mail_from=mail_from,
        recipients=recipients,
        content=stamped,
        source=source,
        submitted_by=submitted_by,
        header_from=summary.header_from,
        subject=summary.subject,
        stream=stream,
        message_id=queue_id,
        added_bytes=len(stamped) - len(content),
    )
