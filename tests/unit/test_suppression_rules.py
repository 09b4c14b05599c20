"""The suppression rules (pure), and what they are fed: the parser's reading of a standard DSN
and of an ARF complaint as the intake hands them over, and reasons of synchronous replies."""

from __future__ import annotations

import pytest

from postroom.bounces.classify import reason_of_reply
from postroom.bounces.parser import parse_bounce
from postroom.bounces.model import BounceClass, BounceKind
from postroom.suppression.model import address_key, hashed_key, valid_scope
from postroom.suppression.rules import Action, SoftPolicy, decide, soft_limit_reached

POLICY = SoftPolicy(limit=3, window=7 * 86400.0, lasts=30 * 86400.0)


@pytest.mark.parametrize("reason", ["userunknown", "hostunknown", "hasmoved"])
def test_hard_bounces_suppress_at_once_globally_until_removed(reason: str) -> None:
    decision = decide("bounced", reason, "hard", POLICY)
    assert decision.action is Action.SUPPRESS
    assert (decision.source, decision.reason, decision.scope, decision.expires_after) == ("bounce", reason, "global", None)


def test_a_permanent_notaccept_is_hard_by_its_class() -> None:
    assert decide("bounced", "notaccept", "hard", POLICY).action is Action.SUPPRESS
    assert decide("bounced", "notaccept", "soft", POLICY).action is Action.NOTHING


def test_complaints_suppress_at_once() -> None:
    decision = decide("complained", "feedback", "none", POLICY)
    assert (decision.action, decision.source) == (Action.SUPPRESS, "complaint")
    assert decide("complained", None, None, POLICY).action is Action.SUPPRESS


@pytest.mark.parametrize("reason", ["mailboxfull", "suspend", "filtered"])
def test_recipient_soft_reasons_count_towards_a_temporary_entry(reason: str) -> None:
    decision = decide("bounced", reason, "soft", POLICY)
    assert decision.action is Action.COUNT_SOFT and decision.expires_after == POLICY.lasts
    assert not soft_limit_reached(2, POLICY)
    assert soft_limit_reached(3, POLICY)


@pytest.mark.parametrize("reason", ["blocked", "badreputation", "authfailure", "requireptr", "spamdetected",
                                    "policyviolation"])
def test_sender_side_reasons_never_suppress_and_raise_the_alert(reason: str) -> None:
    decision = decide("bounced", reason, "hard", POLICY)  # whatever the class says
    assert decision.action is Action.SENDER_ALERT and decision.reason == reason


@pytest.mark.parametrize("reason", ["expired", "systemerror", "networkerror", "vacation", None])
def test_other_failures_do_nothing(reason: str | None) -> None:
    assert decide("bounced", reason, "soft", POLICY).action is Action.NOTHING


def test_other_event_types_do_nothing() -> None:
    assert decide("delivered", "userunknown", "hard", POLICY).action is Action.NOTHING


def test_addresses_are_keyed_case_insensitively_and_hash_when_erased() -> None:
    assert address_key("Ada@Example.COM") == address_key("ada@example.com") == "ada@example.com"
    assert hashed_key("ADA@example.com") == hashed_key("ada@Example.com")
    assert hashed_key("ada@example.com").startswith("sha256:") and "ada" not in hashed_key("ada@example.com")
    assert valid_scope("global") and valid_scope("stream:news") and not valid_scope("news")


DSN = b"""From: MAILER-DAEMON@mx.example.net
To: bounces+abc@example.com
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
Arrival-Date: Sat, 5 Dec 2026 12:00:00 +0000

Final-Recipient: rfc822; Dead@Example.net
Original-Recipient: rfc822;dead@example.net
Action: failed
Status: 5.1.1
Remote-MTA: dns; mail.example.net
Diagnostic-Code: smtp; 550 5.1.1 <dead@example.net>: Recipient address rejected: User unknown

--B
Content-Type: message/rfc822

From: app@example.com
To: dead@example.net
Message-ID: <orig-1@example.com>
Subject: hello

hi
--B--
"""


def test_the_parser_reads_a_standard_dsn() -> None:
    parsed = parse_bounce(DSN)
    assert parsed.kind is BounceKind.DSN and parsed.original_message_id == "orig-1@example.com"
    [item] = parsed.recipients
    assert (item.address, item.reason, item.bounce_class, item.status, item.reply_code, item.action) == (
        "dead@example.net", "userunknown", BounceClass.HARD, "5.1.1", 550, "failed")
    assert item.remote_host == "mail.example.net" and "User unknown" in item.diagnostic


def test_the_parser_reads_an_arf_complaint() -> None:
    arf = (b'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\n\n--F\n'
           b"Content-Type: text/plain\n\nA complaint\n--F\nContent-Type: message/feedback-report\n\n"
           b"Feedback-Type: abuse\nUser-Agent: fbl/1.0\nVersion: 1\nOriginal-Rcpt-To: <Ada@example.org>\n"
           b"\n--F--\n")  # fmt: skip
    parsed = parse_bounce(arf)
    assert parsed.kind is BounceKind.FEEDBACK
    [item] = parsed.recipients
    assert (item.address, item.reason, item.feedback_type) == ("ada@example.org", "feedback", "abuse")


@pytest.mark.parametrize("raw", [b"", b"\x00\xff" * 1000, b"Subject: hi\n\nplain", DSN[:300],
                                 b"Content-Type: multipart/report; boundary=x\n\n--x\n"])
def test_the_parser_never_raises_on_what_reaches_the_intake(raw: bytes) -> None:
    assert parse_bounce(raw).kind in (BounceKind.NOT_BOUNCE, BounceKind.DSN)


def test_reasons_of_synchronous_replies() -> None:
    assert reason_of_reply("550 5.1.1 <x@example.net>: user unknown") == "userunknown"
    assert reason_of_reply("552 5.2.2 mailbox full") == "mailboxfull"
    assert reason_of_reply("connection refused") is None
