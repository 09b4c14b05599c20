"""Reading the human-readable text of a bounce: where the report ends, which addresses failed and
what was said about each.

Non-standard bounces (qmail, Exim, older Sendmail, provider notices) share a shape even when their
sentences differ: a preamble, then for each failed recipient its address on a line of its own (or
in `<...>`), followed by the remote server's reply, then a marker and a copy of the original
message. This module finds that shape without knowing the MTA: it cuts the text at the first
marker of a returned copy, finds the addresses that are not the bounce's own (sender, daemon,
message ids) and gives each the text up to the next one. MTA-specific wording is not here: the
markers are phrase families that many MTAs share.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ADDRESS = re.compile(
    r"(?<![A-Za-z0-9._%+=/'&!#$*?^`{|}~-])([A-Za-z0-9][A-Za-z0-9._%+=/'&!#$*?^`{|}~-]{0,63}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24})(?![A-Za-z0-9-])"
)

# Lines that start the returned copy of the original message (or its headers).
_ORIGINAL_MARKER = re.compile(
    r"^\s*(?:[-=_*]{2,}\s*)?(?:"
    r"(?:this is )?(?:a )?copy of (?:the |your )?(?:original )?message"
    r"|below (?:this line )?is a copy"
    r"|original message (?:follows|headers?|was)|[-]+\s*original message\s*[-]*"
    r"|(?:the )?(?:original )?message headers? (?:follow|of the original)"
    r"|header(?:s)? of (?:the )?(?:original|returned) (?:message|mail)"
    r"|(?:unsent|returned|undelivered|original) message(?: header)?(?:s)? (?:follows?|below|is attached)"
    r"|the (?:original )?message (?:was|is) (?:attached|included|as follows)"
    r"|(?:unsent|returned|undelivered) (?:message|mail) (?:follows|headers)"
    r"|content-type: message/rfc822"
    r"|message headers follow"
    r"|original message:?\s*$"
    r"|text of (?:the )?(?:original|returned) message"
    r"|(?:the )?headers are as follows"
    r")",
    re.IGNORECASE | re.MULTILINE,
)
# A header block starting a quoted original when no marker announced it.
_QUOTED_HEADERS = re.compile(r"^(?:Return-Path|Received|DKIM-Signature|X-Received|ARC-Seal):[ \t]", re.M)
_HEADER_LIKE_LINE = re.compile(
    r"^\s*(?:message-id|in-reply-to|references|received|from|to|cc|return-path|sender|reply-to|"
    r"x-[a-z0-9-]+|dkim-signature|arc-[a-z-]+|envelope-to|delivered-to|errors-to|list-[a-z-]+|"
    r"reporting-mta|received-from-mta|arrival-date|original-envelope-id|x-postfix-sender)\s*:",
    re.IGNORECASE,
)
_DAEMON_LOCALPARTS = re.compile(
    r"^(?:mailer-daemon|mailer_daemon|maildaemon|postmaster|double-bounce|bounce[s]?|no-?reply|"
    r"mail-?delivery-?(?:system|subsystem)?|abuse|root|nobody)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RecipientText:
    address: str  # lower-cased
    text: str  # what the report says about this recipient, whitespace-collapsed


def cut_at_original(text: str) -> str:
    """The report part of a bounce's text: everything before the returned copy starts."""
    ends = [m.start() for m in (_ORIGINAL_MARKER.search(text), _QUOTED_HEADERS.search(text)) if m]
    return text[: min(ends)] if ends else text


def addresses_in(text: str) -> list[tuple[int, str]]:
    """(position, lower-cased address) of every address in `text`, in order."""
    return [(m.start(1), m.group(1).rstrip(".").lower()) for m in ADDRESS.finditer(text)]


def is_daemon_address(address: str) -> bool:
    local = address.split("@", 1)[0]
    return bool(_DAEMON_LOCALPARTS.match(local))


def scan_recipients(report: str, not_recipients: set[str]) -> list[RecipientText]:
    """The failed recipients a report's text names, each with the text that follows it.

    An address counts when it is not in `not_recipients` (the sender, the bounce's own headers),
    not a daemon's address and not inside a header-like line (Message-ID, Received, From).
    """
    candidates: list[tuple[int, str]] = []
    for position, address in addresses_in(report):
        if address in not_recipients or is_daemon_address(address):
            continue
        line = _line_at(report, position)
        if _HEADER_LIKE_LINE.match(line) or _looks_like_message_id(report, position):
            continue
        candidates.append((position, address))
    found: list[RecipientText] = []
    first_position: dict[str, int] = {}
    for position, address in candidates:
        first_position.setdefault(address, position)
    firsts = sorted((pos, addr) for addr, pos in first_position.items())
    for index, (position, address) in enumerate(firsts):
        end = firsts[index + 1][0] if index + 1 < len(firsts) else len(report)
        start = report.rfind("\n", 0, position) + 1
        found.append(RecipientText(address, " ".join(report[start:end].split())))
    return found


def _line_at(text: str, position: int) -> str:
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    return text[start : end if end >= 0 else len(text)]


def _looks_like_message_id(text: str, position: int) -> bool:
    before = text[max(0, position - 24) : position].lower()
    return bool(re.search(r"(?:message-id|msgid|message id|queue id|\bid)[:=\s]*<?\s*$", before))
