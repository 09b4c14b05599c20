"""Per-recipient failure records: the recipients a report names, each with its status, reply
code, diagnostic, the SMTP command that was refused and the classified reason.

Two sources feed them: RFC 3464 field groups (`dsn`), completed by what the text says about the
same address, and the text scanner's findings (`text_scan`) for reports with no fields. Both end
in `failure_record`, so a recipient is classified the same way whichever source named it.
"""

from __future__ import annotations

import re
from dataclasses import replace

from postroom.bounces.classify import classify_reply, find_reply_code, find_status
from postroom.bounces.dsn import RecipientFields, strip_address
from postroom.bounces.model import BounceRecipient, class_of
from postroom.bounces.phrases import reason_from_text
from postroom.bounces.providers import adjust_for_provider
from postroom.bounces.text_scan import ADDRESS, RecipientText

MAX_RECIPIENTS = 1000  # recipient groups read from one report: a bound on work

_STATUS_CODE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_COMMAND = re.compile(
    r"\b(?:after|in reply to|while sending|during|at|on|with|response to)\s+(?:the\s+)?"
    r"(RCPT TO|MAIL FROM|RCPT|MAIL|DATA|end of data|final DATA|HELO|EHLO|STARTTLS|initial connection|connect)\b"
    r"|\bSMTP command:?\s*(RCPT|MAIL|DATA|HELO|EHLO)\b",
    re.IGNORECASE,
)
_COMMAND_NAMES = {"rcpt to": "RCPT", "mail from": "MAIL", "end of data": "DATA", "final data": "DATA",
                  "initial connection": "CONN", "connect": "CONN"}  # fmt: skip
_RCPT_REFUSED = re.compile(r"does not like recipient|\[RCPT_TO\]|RCPT TO:?[ \t]*<[^>\n]{0,300}>[ \t]*(?:\.{3}|:)?\s{0,3}[45]\d\d", re.I)
_HELO_REFUSED = re.compile(r"my name was rejected|(?:helo|ehlo)\b.{0,40}(?:rejected|refused|denied)", re.I)


def from_status_fields(
    groups: list[RecipientFields], scanned: list[RecipientText], bounce_from: str
) -> list[BounceRecipient]:
    """One record per RFC 3464 recipient group; the text about the same address fills in a
    missing diagnostic and shows the refused command."""
    text_about = {found.address: found.text for found in scanned}
    records: list[BounceRecipient] = []
    seen: set[str] = set()
    for group in groups[:MAX_RECIPIENTS]:
        address = strip_address(group.address)
        if address in seen or not ADDRESS.fullmatch(address):
            continue  # a recipient is reported once, from its first group (RFC 3464 §2.3)
        seen.add(address)
        said = text_about.get(address, "")
        status_field = group.get("status")
        # Old Sendmail and others comment the status: "4.0.0 (host name lookup failure)".
        status_and_comment = status_field.split(None, 1)
        comment = status_and_comment[1].strip(" ()") if len(status_and_comment) > 1 else ""
        diagnostic = " ".join(group.get("diagnostic-code").split()) or comment or said
        status = status_and_comment[0] if status_and_comment else None
        if status is not None and not _STATUS_CODE.fullmatch(status):
            status = None
        in_text = find_status(diagnostic)
        if in_text and (status is None or (status.endswith(".0.0") and in_text[0] == status[0])):
            status = in_text  # the reply's own code says more than a generic X.0.0
        record = failure_record(address, status, diagnostic, action=group.get("action").lower() or None,
                                command=refused_command(f"{diagnostic}\n{said}"),
                                remote_host=group.get("remote-mta") or None, bounce_from=bounce_from)  # fmt: skip
        if group.get("diagnostic-type") == "x-unix" and reason_from_text(diagnostic) is None:
            # RFC 3464 §2.3.6: an X-Unix diagnostic is the exit status of a local delivery program.
            record = replace(record, reason="mailererror", bounce_class=class_of("mailererror"))
        records.append(record)
    return records


def from_text(found: RecipientText, preamble: str, bounce_from: str) -> BounceRecipient:
    """A record from what the text says about one address; when that says nothing, the report's
    preamble is read too (some reports give the reason before the list of addresses)."""
    text = found.text
    if find_status(text) is None and find_reply_code(text) is None and reason_from_text(text) is None:
        text = f"{text} {preamble}"
    return failure_record(found.address, find_status(text), text, action=None,
                          command=refused_command(text), remote_host=None, bounce_from=bounce_from)  # fmt: skip


def failure_record(
    address: str,
    status: str | None,
    diagnostic: str,
    *,
    action: str | None,
    command: str | None,
    remote_host: str | None,
    bounce_from: str,
) -> BounceRecipient:
    """Classify one recipient's failure and build its record."""
    reply_code = find_reply_code(diagnostic)
    reason, _ = classify_reply(reply_code, status, diagnostic, command)
    temporary = (status or "").startswith("4") or 400 <= (reply_code or 0) < 500
    worded_as_network = reason == "networkerror" and reason_from_text(diagnostic) == "networkerror"
    if action == "failed" and temporary and (reason in ("onhold", "undefined") or worded_as_network):
        # A temporary error in a final report: the MTA retried until the message's lifetime ran out.
        reason = "expired"
    if action == "delivered" or (action in ("relayed", "expanded") and not (status or "").startswith(("4", "5"))):
        reason = "delivered"
    reason = adjust_for_provider(reason, address, bounce_from, remote_host, diagnostic, status)
    return BounceRecipient(
        address=address,
        reason=reason,
        bounce_class=class_of(reason, reply_code, status),
        status=status,
        reply_code=reply_code,
        diagnostic=diagnostic[:2000],
        remote_host=remote_host,
        action=action,
        smtp_command=command,
    )


def refused_command(text: str) -> str | None:
    """The SMTP command a failure answered (RCPT, MAIL, DATA, HELO, CONN), as the text shows it."""
    transcript = _transcript_command(text)
    if transcript is not None:
        return transcript
    if _HELO_REFUSED.search(text):
        return "HELO"
    if _RCPT_REFUSED.search(text):
        return "RCPT"
    match = _COMMAND.search(text)
    if not match:
        return None
    verb = (match.group(1) or match.group(2)).lower()
    return _COMMAND_NAMES.get(verb, verb.split()[0].upper())


def _transcript_command(text: str) -> str | None:
    """The command a session transcript (Sendmail, Courier: ">>> CMD" / "<<< reply") shows
    refused: the last one sent before the first failure reply. (With pipelining, RFC 2920, that
    may be DATA for a refused RCPT; the classifier trusts an X.1.x status over the command.)"""
    sent: str | None = None
    for line in re.split(r"\n|(?=>>> |<<< )", text[:20000]):
        line = line.strip()
        if line.startswith(">>> "):
            sent = (line[4:].split() or [""])[0].upper()
        elif sent and re.match(r"<<< [45]\d\d", line):
            return sent
    return None
