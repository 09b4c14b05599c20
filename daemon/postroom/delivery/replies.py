"""Classifying an SMTP reply into delivered / deferred / bounced (RFC 5321 §4.2.1, RFC 3463).

Pure: a reply code and its text in, a verdict out. The enhanced status code, when present, wins
over the basic code's class, because servers send e.g. `550 4.2.2 mailbox full` meaning "temporary".
"""

from __future__ import annotations

import re

from postroom.core.types import Verdict

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


def enhanced_status(text: str) -> str | None:
    """The RFC 3463 status code at the start of a reply text, if any ("5.1.1")."""
    match = _ENHANCED.match(text)
    return ".".join(match.groups()) if match else None


def classify_reply(code: int, text: str = "") -> Verdict:
    """2yz delivered; 4yz deferred; 5yz bounced; anything unparseable is treated as temporary."""
    status = enhanced_status(text)
    if status is not None and str(code)[:1] in "45" and status[0] in "45":
        # A success class (2.x.x) on a failure reply is contradictory: trust the basic code.
        return Verdict.DEFERRED if status[0] == "4" else Verdict.BOUNCED
    if 200 <= code < 300:
        return Verdict.DELIVERED
    if 500 <= code < 600:
        return Verdict.BOUNCED
    return Verdict.DEFERRED


def format_reply(code: int, text: str) -> str:
    return f"{code} {' '.join(text.split())}".strip()
