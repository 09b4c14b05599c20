"""What ingress adds to a submitted message, on bytes, without re-serialising it.

A `Received:` trace field goes on top (RFC 5321 §4.4); `Date:` and `Message-ID:` are added when the
client left them out, as a submission server may (RFC 6409 §8.2, §8.3). Only the header block is
parsed; the body is never touched, so what the client sent is what gets signed and delivered.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32

_HEADER_END = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class HeaderSummary:
    header_from: str | None
    subject: str | None
    has_date: bool
    has_message_id: bool


def _decoded(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(make_header(decode_header(value)))[:998]
    except (ValueError, LookupError, UnicodeError):
        return value[:998]


def summarise_headers(content: bytes) -> HeaderSummary:
    match = _HEADER_END.search(content)
    head = content[: match.start()] if match else content
    parsed = BytesHeaderParser(policy=compat32).parsebytes(head)
    return HeaderSummary(
        header_from=_decoded(parsed.get("From")),
        subject=_decoded(parsed.get("Subject")),
        has_date="Date" in parsed,
        has_message_id="Message-ID" in parsed,
    )


def stamp(
    content: bytes,
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
    peer_ip: str,
    hostname: str,
    protocol: str,
    queue_id: str,
    recipient: str | None,
    now: float,
) -> str:
    """`Received: from HELO ([ip]) by host (postroom) with ESMTPSA id ID for <rcpt>; date`."""
    helo_text = (helo or "unknown").replace("\r", "").replace("\n", "")[:255]
    for_clause = f"\r\n\tfor <{recipient}>" if recipient else ""
    return (
        f"Received: from {helo_text} ([{peer_ip}])\r\n\tby {hostname} (postroom) with {protocol} "
        f"id {queue_id}{for_clause};\r\n\t{email.utils.formatdate(now, localtime=False)}"
    )
