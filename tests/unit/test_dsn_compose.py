"""The delivery status notification postroom sends to SMTP senders (RFC 3464): read back by the
project's own bounce parser (recipient, status, reason, action) and by Python's email parser
(structure, headers), and never made for a null sender or about a report or automatic message."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest

from postroom.bounces.dsn_compose import (
    FailedRecipient,
    OriginalMessage,
    compose_dsn,
    header_block,
    is_automatic,
    status_of,
    wants_report,
)
from postroom.bounces.model import BounceClass, BounceKind
from postroom.bounces.parser import parse_bounce

NOW = 1_767_225_600.0
ORIGINAL_HEADERS = (
    b"Received: from app (127.0.0.1) by mail.postroom.test with ESMTP id Q1;\r\n\tThu, 1 Jan 2026 00:00:00 +0000\r\n"
    b"From: App <app@postroom.test>\r\nTo: dead@example.net, live@example.net\r\nSubject: Hello\r\n"
    b"Message-ID: <orig-1@postroom.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain"
)


def original(sender: str = "app@postroom.test", headers: bytes = ORIGINAL_HEADERS) -> OriginalMessage:
    return OriginalMessage("01ORIGINALQUEUEID000000000", sender, NOW - 600, headers)


def refused(recipient: str = "dead@example.net") -> FailedRecipient:
    return FailedRecipient(recipient, "550 5.1.1 <dead@example.net>: Recipient address rejected: User unknown",
                           "userunknown", NOW - 5, status="5.1.1", code=550, remote_mta="mx.example.net")  # fmt: skip


def expired(recipient: str = "slow@example.org") -> FailedRecipient:
    return FailedRecipient(recipient, "expired after 12 attempts; last reply: 451 4.7.1 Try again later",
                           "expired", NOW - 1, status="4.7.1", code=451, expired=True)  # fmt: skip


def compose(*failures: FailedRecipient, source: OriginalMessage | None = None) -> bytes:
    return compose_dsn(source or original(), failures, hostname="mail.postroom.test",
                       message_id="01DSNQUEUEID00000000000000", now=NOW, boundary="=_b_1")  # fmt: skip


def test_a_refused_recipient_is_read_back_by_the_bounce_parser() -> None:
    parsed = parse_bounce(compose(refused()))
    assert parsed.kind is BounceKind.DSN
    assert parsed.reporting_mta == "mail.postroom.test"
    assert parsed.original_message_id == "orig-1@postroom.test"
    [item] = parsed.recipients
    assert (item.address, item.status, item.reason, item.bounce_class, item.action, item.reply_code) == (
        "dead@example.net", "5.1.1", "userunknown", BounceClass.HARD, "failed", 550)
    assert item.remote_host == "mx.example.net"
    assert "User unknown" in item.diagnostic


def test_several_recipients_share_one_report_and_an_expiry_says_4_4_7() -> None:
    parsed = parse_bounce(compose(refused(), expired()))
    by_address = {r.address: r for r in parsed.recipients}
    assert set(by_address) == {"dead@example.net", "slow@example.org"}
    late = by_address["slow@example.org"]
    assert (late.status, late.action) == ("4.4.7", "failed")
    assert late.reason == "expired"
    # The diagnostic is our verdict with the last reply the server gave.
    assert "expired after 12 attempts" in late.diagnostic and "451 4.7.1 Try again later" in late.diagnostic


def test_the_structure_is_an_rfc_3464_report_to_the_envelope_sender() -> None:
    message = email.message_from_bytes(compose(refused()), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@mail.postroom.test>"
    assert [a.addr_spec for a in message["To"].addresses] == ["app@postroom.test"]
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Message-ID"] == "<01DSNQUEUEID00000000000000@mail.postroom.test>"
    assert message["In-Reply-To"] == "<orig-1@postroom.test>"
    assert message["Date"]
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert "<dead@example.net>: refused" in parts[0].get_content()
    # message/delivery-status is parsed as blocks of fields: per message, then per recipient.
    per_message, per_recipient = parts[1].get_payload()
    assert per_message["Reporting-MTA"] == "dns; mail.postroom.test"
    assert per_message["Arrival-Date"] and per_message["X-Postroom-Queue-ID"] == "01ORIGINALQUEUEID000000000"
    assert per_recipient["Final-Recipient"] == "rfc822; dead@example.net"
    assert per_recipient["Action"] == "failed" and per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; mx.example.net"
    assert per_recipient["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
    assert per_recipient["Last-Attempt-Date"]
    headers = parts[2].get_content()
    assert "Subject: Hello" in headers and "the body" not in headers


def test_the_report_itself_is_automatic_so_it_never_gets_a_report() -> None:
    report = compose(refused())
    assert is_automatic(header_block(report))
    assert not wants_report("app@postroom.test", header_block(report))


def test_never_for_a_null_sender() -> None:
    assert not wants_report("", ORIGINAL_HEADERS)
    assert not wants_report("  ", ORIGINAL_HEADERS)
    assert wants_report("app@postroom.test", ORIGINAL_HEADERS)
    with pytest.raises(ValueError):
        compose(refused(), source=original(sender=""))


@pytest.mark.parametrize(
    "headers",
    [
        b'From: MAILER-DAEMON@x.example\r\nContent-Type: multipart/report; report-type="delivery-status";\r\n'
        b' boundary="x"',
        b"From: a@x.example\r\nContent-Type: Multipart/Report; Report-Type=Delivery-Status; boundary=x",
        b"From: a@x.example\r\nAuto-Submitted: auto-replied",
        b"From: a@x.example\r\nAuto-Submitted: auto-generated; owner-email=a@x.example",
    ],
)
def test_never_about_a_report_or_an_automatic_message(headers: bytes) -> None:
    assert is_automatic(headers)
    with pytest.raises(ValueError):
        compose(refused(), source=original(headers=headers))


@pytest.mark.parametrize(
    "headers",
    [
        b"From: a@x.example\r\nAuto-Submitted: no",
        b"From: a@x.example\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=x",
        b"From: a@x.example\r\nContent-Type: text/plain",
    ],
)
def test_ordinary_messages_may_get_a_report(headers: bytes) -> None:
    assert not is_automatic(headers)


def test_no_report_without_a_failed_recipient() -> None:
    with pytest.raises(ValueError):
        compose()


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (FailedRecipient("a@x", "550 5.7.1 no", "blocked", NOW, status="5.7.1", code=550), "5.7.1"),
        (FailedRecipient("a@x", "554 rejected", "rejected", NOW, code=554), "5.0.0"),
        (FailedRecipient("a@x", "553 no such user", "userunknown", NOW), "5.0.0"),
        (FailedRecipient("a@x", "no MX for x", "hostunknown", NOW), "5.0.0"),
        (FailedRecipient("a@x", "451 later", "expired", NOW, status="4.3.0", code=451, expired=True), "4.4.7"),
        (FailedRecipient("a@x", "550 x", "userunknown", NOW, status="garbage", code=550), "5.0.0"),
    ],
)
def test_the_status_is_the_servers_else_from_its_code(failure: FailedRecipient, status: str) -> None:
    assert status_of(failure) == status


def test_a_local_failure_has_an_x_token_diagnostic_and_no_remote_mta() -> None:
    failure = FailedRecipient("a@nowhere.example", "no mail server for nowhere.example", "hostunknown", NOW)
    message = email.message_from_bytes(compose(failure), policy=email.policy.default)
    [_, per_recipient] = list(message.iter_parts())[1].get_payload()
    assert per_recipient["Diagnostic-Code"] == "x-postroom; no mail server for nowhere.example"
    assert per_recipient["Remote-MTA"] is None


def test_an_internationalized_recipient_is_written_as_it_is_in_an_8bit_part() -> None:
    failure = FailedRecipient("jörg@exämple.de", "550 5.1.1 unknown", "userunknown", NOW, status="5.1.1", code=550)
    report = compose(failure)
    assert "Final-Recipient: rfc822; jörg@exämple.de".encode() in report
    assert b"Content-Transfer-Encoding: 8bit" in report
    message = email.message_from_bytes(report, policy=email.policy.default)
    [_, per_recipient] = list(message.iter_parts())[1].get_payload()
    assert per_recipient["Status"] == "5.1.1"
