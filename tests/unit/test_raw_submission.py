"""`submission.raw`: header summary of submitted bytes, the trace/missing fields put on top, and the
submission made of a client-written message."""

from __future__ import annotations

import email.utils

from postroom.submission.raw import HeaderSummary, received_field, stamp, summarise_headers

NOW = 1_750_000_000.0
COMPLETE = (
    b"From: App <app@example.com>\r\nTo: u@example.net\r\nSubject: Hello\r\n"
    b"Date: Mon, 16 Jun 2025 10:00:00 +0000\r\nMessage-ID: <abc@example.com>\r\n\r\nbody\r\n"
)
BARE = b"From: app@example.com\r\nTo: u@example.net\r\nSubject: hi\r\n\r\nbody\r\n"


def stamped(content: bytes) -> bytes:
    return stamp(
        content, summarise_headers(content), received="Received: from x by y; date",
        hostname="mail.example.com", queue_id="01JQUEUEID000000000000000", now=NOW,
    )  # fmt: skip


def headers_of(content: bytes) -> list[bytes]:
    head = content.split(b"\r\n\r\n", 1)[0]
    return [line.split(b":", 1)[0] for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]


def test_summary_of_a_complete_message() -> None:
    assert summarise_headers(COMPLETE) == HeaderSummary(
        header_from="App <app@example.com>", subject="Hello", has_date=True, has_message_id=True,
        from_fields=("App <app@example.com>",),
    )


def test_summary_detects_missing_date_and_message_id() -> None:
    summary = summarise_headers(BARE)
    assert (summary.has_date, summary.has_message_id) == (False, False)
    assert summary.header_from == "app@example.com"
    assert summary.subject == "hi"


def test_header_names_are_case_insensitive() -> None:
    content = (
        b"FROM: a@example.com\r\nsubject: x\r\n"
        b"DATE: Mon, 16 Jun 2025 10:00:00 +0000\r\nmessage-id: <a@b>\r\n\r\n"
    )
    summary = summarise_headers(content)
    assert summary == HeaderSummary("a@example.com", "x", True, True, ("a@example.com",))


def test_encoded_word_subject_and_from_are_decoded() -> None:
    content = (
        b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.com>\r\n"
        b"Subject: =?utf-8?b?R3LDvMOfZSDimIM=?=\r\n\r\nbody"
    )
    summary = summarise_headers(content)
    assert summary.subject == "Grüße ☃"
    assert summary.header_from == "Jürgen <j@example.com>"


def test_folded_subject_is_read_whole() -> None:
    summary = summarise_headers(b"Subject: a long\r\n subject line\r\n\r\nSubject: not me\r\n")
    assert summary.subject is not None and "subject line" in summary.subject
    assert "not me" not in summary.subject


def test_headers_in_the_body_are_not_seen() -> None:
    summary = summarise_headers(b"From: a@example.com\r\n\r\nDate: today\r\nMessage-ID: <x@y>\r\n")
    assert (summary.has_date, summary.has_message_id) == (False, False)


def test_missing_subject_and_from_are_none_and_lf_only_input_is_read() -> None:
    summary = summarise_headers(b"To: u@example.net\n\nbody\n")
    assert summary.header_from is None and summary.subject is None


def test_undecodable_encoded_word_falls_back_to_the_raw_text() -> None:
    summary = summarise_headers(b"Subject: =?x-unknown-charset?q?abc?=\r\n\r\n")
    assert summary.subject is not None and "abc" in summary.subject


def test_stamp_puts_received_first_and_adds_only_missing_fields() -> None:
    result = stamped(BARE)
    assert result.startswith(b"Received: from x by y; date\r\n")
    assert headers_of(result)[:3] == [b"Received", b"Date", b"Message-ID"]
    assert b"\r\nMessage-ID: <01JQUEUEID000000000000000@mail.example.com>\r\n" in result
    date_line = next(l for l in result.split(b"\r\n") if l.startswith(b"Date: "))
    assert email.utils.parsedate_to_datetime(date_line[6:].decode()).timestamp() == NOW
    assert result.endswith(BARE)


def test_stamp_leaves_existing_date_and_message_id_alone() -> None:
    result = stamped(COMPLETE)
    assert headers_of(result).count(b"Date") == 1
    assert headers_of(result).count(b"Message-ID") == 1
    assert result == b"Received: from x by y; date\r\n" + COMPLETE


def test_only_the_missing_one_is_added() -> None:
    with_date = b"Date: Mon, 16 Jun 2025 10:00:00 +0000\r\n" + BARE
    assert headers_of(stamped(with_date))[:3] == [b"Received", b"Message-ID", b"Date"]
    with_id = b"Message-ID: <own@example.com>\r\n" + BARE
    assert headers_of(stamped(with_id))[:3] == [b"Received", b"Date", b"Message-ID"]
    assert b"01JQUEUEID" not in stamped(with_id)


def test_body_bytes_are_untouched_even_8bit_and_odd_line_endings() -> None:
    body = "Grüße\r\n".encode("latin-1") + "你好 \xff\r\n".encode() + b"\x80\x81 lone\nlf\r\n"
    content = b"From: a@example.com\r\nSubject: 8bit\r\n\r\n" + body
    result = stamped(content)
    assert result.endswith(content)
    assert result.split(b"\r\n\r\n", 1)[1] == body


def test_received_field_names_the_peer_and_queue_id() -> None:
    text = received_field(
        helo="client.example\r\nInjected: yes", peer_ip="192.0.2.7", hostname="mail.example.com",
        protocol="ESMTPSA", queue_id="01JQ", recipient="u@example.net", now=NOW,
    )  # fmt: skip
    assert text.startswith("Received: from client.exampleInjected: yes ([192.0.2.7])\r\n")
    assert "by mail.example.com (postroom) with ESMTPSA id 01JQ" in text
    assert "\r\n\tfor <u@example.net>;" in text
    assert all(line.startswith("\t") for line in text.split("\r\n")[1:])  # folded, no new fields


def test_received_field_without_helo_or_recipient() -> None:
    text = received_field(helo=None, peer_ip="::1", hostname="h", protocol="ESMTP",
                          queue_id="Q", recipient=None, now=NOW)  # fmt: skip
    assert text.startswith("Received: from unknown ([::1])")
    assert "for <" not in text


def test_every_from_and_sender_field_is_collected_unfolded() -> None:
    content = (
        b"From: a@example.com\r\nSender: s@example.com\r\nX-Other: x\r\n  folded other\r\n"
        b"From: Second\r\n <b@example.com>\r\n\r\nFrom: not a header, the body\r\n"
    )
    summary = summarise_headers(content)
    assert summary.header_from == "a@example.com"
    assert summary.from_fields == ("a@example.com", "Second <b@example.com>")
    assert summary.sender_fields == ("s@example.com",)


def test_a_raw_message_from_the_command_line_is_stamped_without_a_from_clause() -> None:
    from postroom.submission.raw import Trace, raw_submission

    made = raw_submission(
        BARE, mail_from="app@example.com", recipients=("u@example.net",), trace=Trace(None, None, "local"),
        source="cli", submitted_by="cli:ops", hostname="mail.example.com",
        queue_id="01JQUEUEID000000000000000", now=NOW,
    )  # fmt: skip
    assert made.content.startswith(b"Received: by mail.example.com (postroom) with local id 01JQUEUEID")
    assert made.content.endswith(BARE)
    assert made.added_bytes == len(made.content) - len(BARE) > 0
    assert (made.header_from, made.subject, made.source) == ("app@example.com", "hi", "cli")
    assert b"\r\nDate: " in made.content and b"\r\nMessage-ID: <01JQUEUEID000000000000000@mail.example.com>" in made.content
