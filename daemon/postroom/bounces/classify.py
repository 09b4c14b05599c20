"""From what a server said to a reason name and a class: the one classifier for every failure.

The same function reads a synchronous SMTP reply during delivery and a recipient's report inside
a returned bounce, so a delivery gets the same reason whichever way its failure arrived. Inputs are
plain values: the reply code (550), the RFC 3463 status ("5.1.1"), the diagnostic text and the SMTP
command it answered. Order of evidence:

1. Success (2yz, 2.x.x) is `delivered`.
2. Status codes whose meaning no wording can change (RFC 7372 authentication codes, 5.1.6 moved).
3. The wording, by phrase family (`phrases`): servers reuse generic codes (550 5.7.1, 554 5.0.0)
   for dozens of reasons, and the text is what tells them apart.
4. The status code's own meaning (RFC 3463 §3 subjects and details).
5. The command the reply answered: a refusal of MAIL FROM is about the sender.
6. Nothing recognised: `onhold` when the failure is real but unexplained, `undefined` otherwise.
"""

from __future__ import annotations

import re

from postroom.bounces.model import BounceClass, class_of
from postroom.bounces.phrases import USER_UNKNOWN, matching_family

_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_REPLY_CODE = re.compile(r"(?<![\d.\-:/])([245][0-7]\d)(?:[ -]|$)(?![\d.]{0,12}\s{0,3}(?:bytes|kb|mb|days|hours))", re.M)

# Codes that decide the reason by themselves (RFC 3463, RFC 7372, RFC 7505).
_DECISIVE_STATUS = {
    "1.2": "hostunknown",
    "1.6": "hasmoved",
    "7.13": "suspend",
    "7.23": "authfailure",
    "7.24": "authfailure",
    "7.25": "requireptr",
    "7.26": "authfailure",
    "7.27": "notaccept",
}

# What an RFC 3463 subject.detail means when no wording says more (RFC 3463 §3.3 to §3.9).
_STATUS_MEANING = {
    "1.0": "userunknown",
    "1.1": "userunknown",
    "1.2": "hostunknown",
    "1.3": "userunknown",
    "1.4": "userunknown",
    "1.7": "rejected",
    "1.8": "rejected",
    "1.10": "notaccept",
    "2.0": "filtered",
    "2.1": "suspend",
    "2.2": "mailboxfull",
    "2.3": "exceedlimit",
    "2.4": "systemerror",
    "3.0": "systemerror",
    "3.1": "systemfull",
    "3.2": "notaccept",
    "3.3": "systemerror",
    "3.4": "mesgtoobig",
    "3.5": "systemerror",
    "4.0": "networkerror",
    "4.1": "networkerror",
    "4.2": "networkerror",
    "4.3": "systemerror",
    "4.4": "hostunknown",
    "4.5": "systemerror",
    "4.6": "networkerror",
    "4.7": "expired",
    "5.0": "syntaxerror",
    "5.1": "syntaxerror",
    "5.2": "syntaxerror",
    "5.3": "exceedlimit",
    "5.4": "syntaxerror",
    "5.5": "syntaxerror",
    "6.0": "contenterror",
    "6.1": "contenterror",
    "6.2": "contenterror",
    "6.3": "contenterror",
    "6.4": "contenterror",
    "6.5": "contenterror",
    "7.0": "blocked",
    "7.1": "blocked",
    "7.2": "filtered",
    "7.4": "securityerror",
    "7.5": "securityerror",
    "7.7": "policyviolation",
    "7.8": "securityerror",
    "7.9": "securityerror",
    "7.10": "securityerror",
    "7.11": "securityerror",
    "7.13": "suspend",
    "7.14": "securityerror",
    "7.15": "securityerror",
    "7.16": "policyviolation",
    "7.17": "policyviolation",
    "7.18": "policyviolation",
    "7.19": "policyviolation",
    "7.20": "authfailure",
    "7.21": "authfailure",
    "7.22": "authfailure",
    "7.28": "speeding",
    "7.29": "failedstarttls",
    "7.30": "securityerror",
}

# The phrases a text must hold for the status to be used only as a fallback: otherwise a code
# that is nearly always misused ("5.0.0", "5.7.1") would decide nothing, which is right too.
_GENERIC_STATUS = frozenset({"0.0", "7.1", "7.0", "5.0", "1.0"})


_CONNECTION_STAGE = frozenset({"HELO", "EHLO", "CONN", "CONNECT"})
_ABOUT_A_MAILBOX = frozenset(
    {"userunknown", "hostunknown", "mailboxfull", "suspend", "filtered", "exceedlimit", "rejected", None}
)


def find_status(text: str) -> str | None:
    """The first failure (4.x.x, 5.x.x) RFC 3463 status code in `text`, else the first success
    one: a transcript shows the 2.x.x replies that came before the refusal."""
    found = [".".join(m.groups()) for m in _STATUS.finditer(text[:20000])]
    return next((code for code in found if code[0] in "45"), found[0] if found else None)


def find_reply_code(text: str) -> int | None:
    """The first failure SMTP reply code in `text` (a 4yz/5yz number standing as a word), else the
    first 2yz one."""
    found = [int(m.group(1)) for m in _REPLY_CODE.finditer(text[:20000])]
    return next((code for code in found if code >= 400), found[0] if found else None)


def _subject_detail(status: str | None) -> str | None:
    if not status or not _STATUS.fullmatch(status):
        return None
    _, subject, detail = status.split(".")
    return f"{int(subject)}.{int(detail)}"


def reason_of(
    reply_code: int | None, status: str | None, diagnostic: str, command: str | None = None
) -> str:
    """The reason name alone (see the module docstring for the order of evidence)."""
    if (status or "").startswith("2.") or (reply_code is not None and 200 <= reply_code < 300):
        return "delivered"
    key = _subject_detail(status)
    if key in _DECISIVE_STATUS:
        return _DECISIVE_STATUS[key]
    family = matching_family(diagnostic)
    from_text = family[0] if family else None
    verb = (command or "").strip().upper()
    stock_phrase = family is not None and family[1] is USER_UNKNOWN
    if stock_phrase and verb != "RCPT" and not (key or "").startswith("1."):
        # "No such user" is believed when it answers RCPT TO or carries an address status
        # (X.1.x). Said after DATA (every recipient was accepted at RCPT), with a mailbox status
        # (X.2.x: the mailbox exists) or with no code at all, it may be a filter refusing this
        # sender or this content with a stock phrase: Sisimai's reading, and the cautious one (a
        # filtered address is retried later, not suppressed for good). A generic status (5.0.0,
        # 5.5.0) leaves the words to speak.
        if verb == "DATA" or (key or "").startswith("2.") or key is None:
            return "filtered"
    if verb in ("MAIL", "MAIL FROM") and from_text in (None, "userunknown", "hostunknown", "onhold"):
        return "rejected"  # a refusal of MAIL FROM is about the sender, not the recipient
    temporary = (status or "").startswith("4") or 400 <= (reply_code or 0) < 500
    if from_text == "hostunknown" and temporary:
        return "networkerror"  # a name lookup that failed for now: the DNS, not the domain
    if verb in _CONNECTION_STAGE and from_text in _ABOUT_A_MAILBOX:
        return "blocked"  # before any address was sent, only the sending host can be refused
    if from_text is not None:
        return from_text
    if key is not None and key in _STATUS_MEANING and key not in _GENERIC_STATUS:
        return _STATUS_MEANING[key]
    if verb in _CONNECTION_STAGE:
        return "blocked"
    if key is not None and key in _STATUS_MEANING:
        return _STATUS_MEANING[key]
    if verb in ("RCPT", "RCPT TO") and (reply_code or 0) >= 500:
        return "userunknown"
    if reply_code is not None or status is not None:
        return "onhold"
    return "undefined"


def classify_reply(
    reply_code: int | None, status: str | None, diagnostic: str, command: str | None = None
) -> tuple[str, BounceClass]:
    """The reason (Sisimai's names) and the class of one failure, from its reply code, its RFC 3463
    status, its diagnostic text and the SMTP command it answered. A status missing from the
    arguments is looked for in the diagnostic."""
    if status is None:
        status = find_status(diagnostic)
    if reply_code is None:
        reply_code = find_reply_code(diagnostic)
    reason = reason_of(reply_code, status, diagnostic, command)
    return reason, class_of(reason, reply_code, status)


def reason_of_reply(reply: str) -> str | None:
    """The reason of an SMTP reply as the delivery worker recorded it ("550 5.1.1 <x>: user
    unknown"), for events written before attempts carried their reason; None for what is no SMTP
    reply (a connection that failed)."""
    if find_reply_code(reply) is None:
        return None
    return classify_reply(None, None, reply)[0]
