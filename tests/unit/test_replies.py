"""`classify_reply` and `enhanced_status`: RFC 5321 reply classes, RFC 3463 enhanced codes win."""

from __future__ import annotations

import pytest
from postroom.core.types import Verdict
from postroom.delivery.replies import classify_reply, enhanced_status, format_reply


@pytest.mark.parametrize(
    ("code", "text", "verdict"),
    [
        (250, "2.0.0 Ok: queued as ABC", Verdict.DELIVERED),
        (250, "Ok", Verdict.DELIVERED),
        (251, "User not local; will forward", Verdict.DELIVERED),
        (421, "Service not available", Verdict.DEFERRED),
        (450, "Mailbox busy", Verdict.DEFERRED),
        (451, "4.3.0 try again later", Verdict.DEFERRED),
        (452, "4.5.3 Too many recipients", Verdict.DEFERRED),
        (550, "Mailbox unavailable", Verdict.BOUNCED),
        (550, "5.1.1 User unknown", Verdict.BOUNCED),
        (554, "5.7.1 Relay access denied", Verdict.BOUNCED),
    ],
)
def test_basic_classes(code: int, text: str, verdict: Verdict) -> None:
    assert classify_reply(code, text) is verdict


@pytest.mark.parametrize(
    ("code", "text", "verdict"),
    [
        (550, "4.2.2 Mailbox full", Verdict.DEFERRED),  # temporary, whatever the basic code says
        (552, "4.2.2 quota exceeded", Verdict.DEFERRED),
        (450, "5.1.1 No such user", Verdict.BOUNCED),
        (421, "5.7.0 Blocked for spam", Verdict.BOUNCED),
    ],
)
def test_enhanced_code_overrides_the_basic_class(code: int, text: str, verdict: Verdict) -> None:
    assert classify_reply(code, text) is verdict


def test_enhanced_code_does_not_turn_a_success_into_a_failure() -> None:
    assert classify_reply(250, "5.1.1 odd server") is Verdict.DELIVERED


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0, ""),
        (-1, "connection refused"),
        (999, "???"),
        (100, "continue"),
        (354, "go ahead"),
        (600, "5.0.0 nonsense code"),
    ],
)
def test_anything_unparseable_is_temporary(code: int, text: str) -> None:
    assert classify_reply(code, text) is Verdict.DEFERRED


def test_text_defaults_to_empty() -> None:
    assert classify_reply(550) is Verdict.BOUNCED
    assert classify_reply(421) is Verdict.DEFERRED


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("5.1.1 User unknown", "5.1.1"),
        ("  4.7.1 greylisted", "4.7.1"),
        ("2.0.0", "2.0.0"),
        ("5.7.26 DMARC failure", "5.7.26"),
        ("4.123.456 wide", "4.123.456"),
        ("User unknown 5.1.1", None),  # only at the start of the text (RFC 3463 §2)
        ("3.1.1 no such class", None),
        ("5.1 incomplete", None),
        ("5.1.1234 too long", None),
        ("", None),
    ],
)
def test_enhanced_status_is_read_from_the_start_of_the_text(text: str, status: str | None) -> None:
    assert enhanced_status(text) == status


def test_format_reply_joins_multiline_text() -> None:
    assert format_reply(550, "5.1.1 no\r\n such   user ") == "550 5.1.1 no such user"


def test_success_enhanced_code_on_a_failure_reply_follows_the_basic_code() -> None:
    # A success class cannot turn a temporary failure permanent (or the reverse).
    assert classify_reply(450, "2.0.0 confused server") is Verdict.DEFERRED
    assert classify_reply(550, "2.0.0 confused server") is Verdict.BOUNCED
