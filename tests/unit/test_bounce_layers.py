"""The layers of the bounce parser, each on hand-written input: MIME reading and its guards, RFC 3464
fields, ARF reports, RFC 3834 auto-replies, the text scanner, SES notifications, provider rules,
and `parse_bounce` putting them together."""

from __future__ import annotations

import json
import logging

import pytest

from postroom.bounces import mime
from postroom.bounces.arf import read_feedback_report
from postroom.bounces.autoreply import is_auto_reply
from postroom.bounces.dsn import read_status_fields, strip_address
from postroom.bounces.failures import refused_command
from postroom.bounces.model import BounceClass, BounceKind, ParsedBounce
from postroom.bounces.parser import parse_bounce
from postroom.bounces.providers import adjust_for_provider
from postroom.bounces.ses import read_ses_notification
from postroom.bounces.text_scan import cut_at_original, scan_recipients


def _message(headers: str, body: str) -> bytes:
    return (headers.strip().replace("\n", "\r\n") + "\r\n\r\n" + body.replace("\n", "\r\n")).encode()


# --- mime -------------------------------------------------------------------------------------------


def test_parts_are_flat_decoded_and_marked_when_inside_the_original() -> None:
    raw = _message(
        'From: MAILER-DAEMON@x.example\nContent-Type: multipart/report; boundary="B"',
        "--B\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n"
        "Zustellung fehlgeschlagen: M=FCller\n--B\nContent-Type: message/rfc822\n\nFrom: a@b.example\n"
        "Message-ID: <id-1@b.example>\n\nthe original\n--B--\n",
    )
    message = mime.read_message(raw)
    assert [(p.content_type, p.in_original) for p in message.parts] == [
        ("text/plain", False), ("message/rfc822", True), ("text/plain", True)
    ]  # fmt: skip
    assert "Müller" in message.parts[0].text
    assert mime.original_headers(message.parts)["message-id"] == "<id-1@b.example>"


def test_reading_stops_at_the_part_limit() -> None:
    parts = "".join("--B\nContent-Type: text/plain\n\nx\n" for _ in range(mime.MAX_PARTS * 2))
    message = mime.read_message(_message('Content-Type: multipart/mixed; boundary="B"', parts + "--B--\n"))
    assert len(message.parts) < mime.MAX_PARTS


def test_encoded_words_and_unknown_charsets_are_decoded_leniently() -> None:
    assert mime.decode_header_value("=?utf-8?B?44ON44Kz?= =?iso-8859-1?q?caf=E9?=") == "ネコcafé"
    raw = _message("Content-Type: text/plain; charset=no-such-charset", "caf\xe9".encode("latin-1").decode("latin-1"))
    assert mime.read_message(raw.replace(b"caf\xc3\xa9", b"caf\xe9")).parts[0].text == "café"


def test_html_is_turned_into_lines_of_text() -> None:
    assert mime.html_to_text("<p>Delivery&nbsp;failed</p><br>to <b>x@y.example</b>").split() == [
        "Delivery", "failed", "to", "x@y.example"
    ]  # fmt: skip


# --- RFC 3464 fields --------------------------------------------------------------------------------


def test_status_fields_in_groups_with_folding_and_types() -> None:
    fields = read_status_fields(
        "Reporting-MTA: dns; mx.example.org\n\nFinal-Recipient: rfc822; A@Example.net\nAction: failed\n"
        "Status: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 user\n  unknown\n\n"
        "Original-Recipient: rfc822;b@example.net\nFinal-Recipient: RFC822; <b@example.net>\nAction: delayed\n"
        "Status: 4.4.1\n"
    )
    assert fields.per_message == {"reporting-mta": "mx.example.org"}
    first, second = fields.recipients
    assert strip_address(first.address) == "a@example.net"
    assert first.get("diagnostic-code") == "550 5.1.1 user unknown" and first.get("diagnostic-type") == "smtp"
    assert (strip_address(second.address), second.get("action")) == ("b@example.net", "delayed")


def test_groups_without_blank_lines_between_are_split_on_a_repeated_field() -> None:
    fields = read_status_fields(
        "Final-Recipient: rfc822; a@x.example\nStatus: 5.2.2\nFinal-Recipient: rfc822; b@x.example\nStatus: 5.1.1\n"
    )
    assert [(strip_address(g.address), g.get("status")) for g in fields.recipients] == [
        ("a@x.example", "5.2.2"), ("b@x.example", "5.1.1")
    ]  # fmt: skip


def test_addresses_are_stripped_of_types_brackets_and_exchange_prefixes() -> None:
    assert strip_address('"Neko" <Neko@Example.ORG>') == "neko@example.org"
    assert strip_address("SMTP=x@y.example") == "x@y.example"


# --- ARF, auto-replies, SES -------------------------------------------------------------------------


def test_a_feedback_report_names_the_complaining_recipient() -> None:
    raw = _message(
        'From: fbl@isp.example\nContent-Type: multipart/report; report-type=feedback-report; boundary="B"',
        "--B\nContent-Type: text/plain\n\nThis is an abuse report\n--B\nContent-Type: message/feedback-report\n\n"
        "Feedback-Type: abuse\nUser-Agent: FBL/1.0\nVersion: 1\nOriginal-Rcpt-To: <Them@isp.example>\n"
        "Source-IP: 192.0.2.5\n--B\nContent-Type: message/rfc822\n\nFrom: us@example.com\nTo: other@isp.example\n\nhi\n"
        "--B--\n",
    )
    report = read_feedback_report(mime.read_message(raw))
    assert report is not None
    assert (report.feedback_type, report.recipients, report.source_ip) == ("abuse", ("them@isp.example",), "192.0.2.5")
    parsed = parse_bounce(raw)
    assert parsed.kind is BounceKind.FEEDBACK
    assert [(r.address, r.reason, r.bounce_class) for r in parsed.recipients] == [
        ("them@isp.example", "feedback", BounceClass.NONE)
    ]


def test_auto_replies_are_recognised_and_never_a_failure() -> None:
    raw = _message("From: Neko <neko@example.org>\nTo: us@example.com\nAuto-Submitted: auto-replied\n"
                   "Subject: Out of office", "I am away until Monday.")  # fmt: skip
    assert is_auto_reply(mime.read_message(raw))
    parsed = parse_bounce(raw)
    assert parsed.kind is BounceKind.AUTOREPLY
    assert [(r.address, r.reason, r.bounce_class) for r in parsed.recipients] == [
        ("neko@example.org", "vacation", BounceClass.NONE)
    ]
    assert not is_auto_reply(mime.read_message(_message("From: a@b.example\nSubject: lunch?", "hi")))


def test_an_auto_reply_saying_the_mailbox_is_closed_reports_it() -> None:
    raw = _message("From: old@example.org\nAuto-Submitted: auto-replied\nSubject: Automatic reply",
                   "This mailbox is no longer in use. Please write to new@example.org.")  # fmt: skip
    assert [(r.reason, r.bounce_class) for r in parse_bounce(raw).recipients] == [("suspend", BounceClass.SOFT)]


def test_ses_notifications_inside_an_sns_envelope() -> None:
    inner = {"notificationType": "Bounce", "bounce": {"bounceType": "Permanent", "bounceSubType": "General",
             "bouncedRecipients": [{"emailAddress": "Gone@example.net", "status": "5.1.1", "action": "failed",
                                    "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]}}  # fmt: skip
    text = json.dumps({"Type": "Notification", "Message": json.dumps(inner)})
    notification = read_ses_notification(text[:300] + "!\n " + text[300:])  # a gateway's folded line
    assert notification is not None and notification.kind is BounceKind.DSN
    assert [(r.address, r.reason, r.status, r.reply_code) for r in notification.recipients] == [
        ("gone@example.net", "userunknown", "5.1.1", 550)
    ]
    complaint = {"notificationType": "Complaint", "complaint": {"complainedRecipients": [{"emailAddress": "c@x.example"}],
                                                                "complaintFeedbackType": "abuse"}}  # fmt: skip
    result = read_ses_notification(json.dumps(complaint))
    assert result is not None and result.kind is BounceKind.FEEDBACK
    assert read_ses_notification("no json here") is None


# --- text scanner -----------------------------------------------------------------------------------


QMAIL = """Hi. This is the qmail-send program at mx.example.org.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<gone@example.net>:
192.0.2.1 does not like recipient.
Remote host said: 550 5.1.1 <gone@example.net>... User unknown
Giving up on 192.0.2.1.

<full@example.net>:
Remote host said: 552 5.2.2 Mailbox full

--- Below this line is a copy of the message.

Return-Path: <sender@example.com>
To: gone@example.net, full@example.net, cc@example.net
"""


def test_the_report_is_cut_where_the_returned_copy_starts() -> None:
    report = cut_at_original(QMAIL)
    assert "Below this line" not in report and "cc@example.net" not in report


def test_scanned_recipients_carry_the_text_that_follows_them() -> None:
    found = scan_recipients(cut_at_original(QMAIL), {"sender@example.com"})
    assert [f.address for f in found] == ["gone@example.net", "full@example.net"]
    assert "User unknown" in found[0].text and "Mailbox full" not in found[0].text
    assert "Mailbox full" in found[1].text


def test_the_scanner_skips_senders_daemons_contacts_and_aliases() -> None:
    report = ("Your message from sender@example.com could not be delivered.\n"
              "  gone@example.net\n    (generated from alias@example.net)\n    550 user unknown\n"
              "For help, please contact <helpdesk@example.org>.\nMAILER-DAEMON@mx.example.org\n")  # fmt: skip
    found = scan_recipients(report, {"sender@example.com"})
    assert [f.address for f in found] == ["gone@example.net"]


def test_the_refused_command_comes_from_transcripts_and_phrases() -> None:
    assert refused_command(">>> RCPT To:<x@y.example>\n<<< 550 5.1.1 unknown\n>>> DATA\n<<< 503 no rcpt") == "RCPT"
    assert refused_command("SMTP error from remote mail server after end of data: 550 rejected") == "DATA"
    assert refused_command("host x said: 550 sender rejected (in reply to MAIL FROM command)") == "MAIL"
    assert refused_command("Connected to 192.0.2.1 but my name was rejected.") == "HELO"
    assert refused_command("nothing here") is None


def test_provider_rules_apply_only_to_their_provider() -> None:
    groups = "libsisimai@googlegroups.com"
    assert adjust_for_provider("onhold", groups, "<mailer-daemon@googlemail.com>", None, "", None) == "rejected"
    assert adjust_for_provider("onhold", groups, "<mailer-daemon@example.org>", None, "", None) == "onhold"
    refusal = "550 5.4.1 [x@y.example]: Recipient address rejected: Access denied. AS(201806281)"
    assert adjust_for_provider("rejected", "x@y.example", "", None, refusal, "5.4.1") == "userunknown"


# --- parse_bounce end to end ------------------------------------------------------------------------


def test_a_qmail_bounce_end_to_end() -> None:
    parsed = parse_bounce(_message("From: MAILER-DAEMON@mx.example.org\nTo: sender@example.com\n"
                                   "Subject: failure notice", QMAIL))  # fmt: skip
    assert parsed.kind is BounceKind.DSN
    assert [(r.address, r.reason, r.bounce_class, r.status, r.reply_code, r.smtp_command) for r in parsed.recipients] == [
        ("gone@example.net", "userunknown", BounceClass.HARD, "5.1.1", 550, "RCPT"),
        ("full@example.net", "mailboxfull", BounceClass.SOFT, "5.2.2", 552, None),
    ]


def test_an_ordinary_message_is_not_a_bounce() -> None:
    raw = _message("From: friend@example.org\nTo: us@example.com\nSubject: lunch",
                   "Shall we meet at noon? Write to other@example.org if not.")  # fmt: skip
    assert parse_bounce(raw).kind is BounceKind.NOT_BOUNCE
    assert parse_bounce(raw).recipients == ()


def test_a_delayed_dsn_is_soft_and_a_delivered_one_is_not_a_failure() -> None:
    def dsn(action: str, status: str, diagnostic: str) -> bytes:
        return _message(
            'From: MAILER-DAEMON@mx.example.org\nSubject: Delivery Status Notification\n'
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B"',
            f"--B\nContent-Type: message/delivery-status\n\nFinal-Recipient: rfc822; r@example.net\n"
            f"Action: {action}\nStatus: {status}\nDiagnostic-Code: smtp; {diagnostic}\n--B--\n",
        )

    delayed = parse_bounce(dsn("delayed", "4.4.1", "connect to mx.example.net: Connection timed out"))
    assert [(r.reason, r.bounce_class, r.action) for r in delayed.recipients] == [
        ("networkerror", BounceClass.SOFT, "delayed")
    ]
    expired = parse_bounce(dsn("failed", "4.4.1", "connect to mx.example.net: Connection timed out"))
    assert [r.reason for r in expired.recipients] == ["expired"]
    delivered = parse_bounce(dsn("delivered", "2.0.0", "250 2.0.0 Ok"))
    assert [(r.reason, r.bounce_class) for r in delivered.recipients] == [("delivered", BounceClass.NONE)]


def test_the_original_message_is_identified() -> None:
    raw = _message(
        'From: MAILER-DAEMON@mx.example.org\nSubject: Undelivered Mail\nContent-Type: multipart/mixed; boundary="B"',
        "--B\nContent-Type: text/plain\n\n<r@example.net>: 550 5.1.1 user unknown\n--B\n"
        "Content-Type: message/rfc822\n\nReturn-Path: <bounces+42@example.com>\nMessage-ID: <m-42@example.com>\n"
        "\nbody\n--B--\n",
    )
    parsed = parse_bounce(raw)
    assert (parsed.original_message_id, parsed.original_envelope_sender) == ("m-42@example.com", "bounces+42@example.com")


# --- hand-written bounces in the shapes of common MTAs (not from the corpus) -------------------------


def test_a_postfix_bounce_with_its_dsn_part() -> None:
    raw = _message(
        "From: MAILER-DAEMON@relay.example.org (Mail Delivery System)\nTo: news@example.com\n"
        "Subject: Undelivered Mail Returned to Sender\nAuto-Submitted: auto-replied\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="P"',
        "--P\nContent-Type: text/plain\n\nThis is the mail system at host relay.example.org.\n\n"
        "I'm sorry to have to inform you that your message could not\nbe delivered to one or more recipients.\n\n"
        "<full@example.net>: host mx.example.net[192.0.2.7] said: 552 5.2.2\n"
        "    <full@example.net>: Mailbox full (in reply to RCPT TO command)\n\n"
        "--P\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; relay.example.org\n\n"
        "Final-Recipient: rfc822; full@example.net\nOriginal-Recipient: rfc822;full@example.net\n"
        "Action: failed\nStatus: 5.2.2\nRemote-MTA: dns; mx.example.net\n"
        "Diagnostic-Code: smtp; 552 5.2.2 <full@example.net>: Mailbox full\n\n"
        "--P\nContent-Type: text/rfc822-headers\n\nFrom: news@example.com\nTo: full@example.net\n"
        "Message-ID: <n-1@example.com>\n--P--\n",
    )
    parsed = parse_bounce(raw)  # Auto-Submitted does not make a DSN an auto-reply
    assert parsed.kind is BounceKind.DSN and parsed.reporting_mta == "relay.example.org"
    (recipient,) = parsed.recipients
    assert (recipient.address, recipient.reason, recipient.bounce_class, recipient.status, recipient.reply_code,
            recipient.smtp_command, recipient.remote_host) == (
        "full@example.net", "mailboxfull", BounceClass.SOFT, "5.2.2", 552, "RCPT", "mx.example.net")  # fmt: skip
    assert parsed.original_message_id == "n-1@example.com"


def test_an_exim_bounce_named_by_its_failed_recipients_header() -> None:
    raw = _message(
        "From: Mail Delivery System <Mailer-Daemon@mail.example.org>\nTo: news@example.com\n"
        "Subject: Mail delivery failed: returning message to sender\nX-Failed-Recipients: gone@example.net",
        "This message was created automatically by mail delivery software.\n\n"
        "A message that you sent could not be delivered to one or more of its\n"
        "recipients. This is a permanent error. The following address(es) failed:\n\n"
        "  gone@example.net\n    host mx.example.net [192.0.2.8]\n"
        "    SMTP error from remote mail server after RCPT TO:<gone@example.net>:\n"
        "    550 No such user here\n\n"
        "------ This is a copy of the message, including all the headers. ------\n\n"
        "From: news@example.com\nTo: gone@example.net, other@example.net\n",
    )
    assert [(r.address, r.reason, r.bounce_class, r.smtp_command) for r in parse_bounce(raw).recipients] == [
        ("gone@example.net", "userunknown", BounceClass.HARD, "RCPT")
    ]


def test_an_exchange_online_ndr_in_html_only() -> None:
    raw = _message(
        "From: postmaster@contoso.example\nTo: news@example.com\nSubject: Undeliverable: Hello\n"
        "Content-Type: text/html; charset=utf-8",
        "<html><body><p>Your message to <a href='mailto:nobody@contoso.example'>nobody@contoso.example</a> "
        "couldn't be delivered.</p><p>nobody wasn't found at contoso.example.</p>"
        "<p>Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP "
        "address lookup'</p></body></html>",
    )
    assert [(r.address, r.reason, r.bounce_class, r.status) for r in parse_bounce(raw).recipients] == [
        ("nobody@contoso.example", "userunknown", BounceClass.HARD, "5.1.10")
    ]


def test_an_internal_failure_is_logged_and_reported_as_not_a_bounce(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(raw: bytes) -> mime.ReadMessage:
        raise ValueError("a bug")

    monkeypatch.setattr("postroom.bounces.parser.read_message", broken)
    with caplog.at_level(logging.ERROR, logger="postroom.bounces"):
        parsed = parse_bounce(b"From: MAILER-DAEMON@x.example\r\n\r\nanything")
    assert parsed == ParsedBounce(BounceKind.NOT_BOUNCE)
    assert "could not parse" in caplog.text
