"""Classifying an SMTP reply into delivered / deferred / bounced (RFC 5321 §4.2, RFC 3463).

Pure: a reply code and its text in, a `Classified` out. Rules, in order:

1. 2yz is delivered. A 2yz reply never fails a recipient, whatever its text says.
2. A failure reply (4yz, 5yz) with an RFC 3463 enhanced code takes the enhanced code's class,
   because servers send e.g. `552 4.2.2 mailbox full` meaning "temporary". A success class (2.x.x)
   on a failure reply is contradictory, and the basic code wins.
3. Otherwise 4yz defers and 5yz bounces; 1yz, 3yz where a final reply was due, and anything that
   does not parse are treated as temporary: never bounce mail on a reply we do not understand.

Independently of the verdict, a reply may say the *destination* is throttling us (`421`, which
also closes the connection, `4.7.x` rate-limit codes and the phrases the big providers use). The
scheduler slows down or suspends that destination instead of retrying it at full speed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from postroom.core.types import Verdict

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")

# Phrases the large mailbox providers put in their throttling replies (Gmail 4.7.28 "rate limited",
# Microsoft 4.7.650 "throttled", Yahoo "TSS04 ... temporarily deferred", generic "too many ...").
_THROTTLE_TEXT = re.compile(
    r"rate.?limit|throttl|too many (connections|messages|concurrent)|maximum number of connections"
    r"|temporarily (deferred|rate)|TSS0\d|slow down|excessive",
    re.IGNORECASE,
)
# RFC 3463 / RFC 7372 codes that mean "you are sending too much or too fast".
_THROTTLE_CODES = frozenset({"4.7.0", "4.7.28", "4.3.2", "4.4.5"})
# Subjects about one address, one mailbox or one transaction (4.1.x, 4.2.x, 4.5.x: "too many
# recipients" is a per-transaction limit, RFC 5321 §4.5.3.1.10): never the whole destination.
_PER_MESSAGE_SUBJECTS = frozenset({"1", "2", "5"})


@dataclass(frozen=True)
class Classified:
    verdict: Verdict
    enhanced: str | None  # "5.1.1" when the reply carried one
    throttled: bool  # the destination asks us to slow down (applies to every message to it)


def enhanced_status(text: str) -> str | None:
    """The RFC 3463 status code at the start of a reply text, if any ("5.1.1")."""
    match = _ENHANCED.match(text)
    return ".".join(match.groups()) if match else None


def classify(code: int, text: str = "") -> Classified:
    status = enhanced_status(text)
    verdict = _verdict(code, status)
    return Classified(verdict, status, _throttled(code, status, text, verdict))


def classify_reply(code: int, text: str = "") -> Verdict:
    """Just the verdict of `classify`."""
    return classify(code, text).verdict


def _verdict(code: int, status: str | None) -> Verdict:
    if 200 <= code < 300:
        return Verdict.DELIVERED
    failure = 400 <= code < 600
    if failure and status is not None and status[0] in "45":
        return Verdict.DEFERRED if status[0] == "4" else Verdict.BOUNCED
    if 500 <= code < 600:
        return Verdict.BOUNCED
    return Verdict.DEFERRED


def _throttled(code: int, status: str | None, text: str, verdict: Verdict) -> bool:
    if verdict is not Verdict.DEFERRED or not 400 <= code < 600:
        return False
    if code == 421:
        return True  # RFC 5321 §3.8: the service is closing the channel; the whole host is affected
    if status is not None:
        _, subject, detail = status.split(".")
        if subject in _PER_MESSAGE_SUBJECTS:
            return False
        if status in _THROTTLE_CODES or (subject == "7" and 500 <= int(detail) < 700):
            return True  # Microsoft's 4.7.5xx-6xx: server busy, rate limited, connection limits
    return bool(_THROTTLE_TEXT.search(text))


def format_reply(code: int, text: str) -> str:
    return f"{code} {' '.join(text.split())}".strip()
