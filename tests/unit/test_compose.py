"""`compose`: API fields to MIME bytes, refusing header injection, parsed back with the stdlib."""

from __future__ import annotations

import email
import email.policy
import email.utils
from email.message import EmailMessage

import pytest
from postroom.core.compose import (
    Attachment,
    Draft,
    address_of,
    check_header_name,
    compose,
    format_address,
)
from postroom.core.errors import InvalidMessageError

NOW = 1_750_000_000.0


def draft(**fields: object) -> Draft:
    values: dict[str, object] = {
        "sender": "App <app@example.com>", "to": ("user@example.net",), "subject": "Hello",
        "text": "Plain body\n",
    }  # fmt: skip
    values.update(fields)
    return Draft(**values)  # type: ignore[arg-type]


def build(d: Draft) -> bytes:
    return compose(d, message_id="01JTESTID0000000000000000", hostname="mail.example.com", now=NOW)


def content(part: EmailMessage) -> str:
    """A text part's decoded content with the wire's CRLF turned back into LF."""
    text = part.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_text_only_message_headers_and_body() -> None:
    raw = build(draft(cc=("cc@example.org",), reply_to="Support <help@example.com>",
                      headers=(("X-Campaign", "welcome"),)))  # fmt: skip
    message = parse(raw)
    assert message["From"] == "App <app@example.com>"
    assert message["To"] == "user@example.net"
    assert message["Cc"] == "cc@example.org"
    assert message["Reply-To"] == "Support <help@example.com>"
    assert message["Subject"] == "Hello"
    assert message["Message-ID"] == "<01JTESTID0000000000000000@mail.example.com>"
    assert email.utils.parsedate_to_datetime(message["Date"]).timestamp() == NOW
    assert message["X-Campaign"] == "welcome"
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "text/plain"
    assert content(message) == "Plain body\n"
    assert "Bcc" not in message


def test_output_uses_crlf_line_endings_only() -> None:
    raw = build(draft(text="line one\nline two\n", html="<p>one</p>\n<p>two</p>\n"))
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    head, _, _ = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"From: ")


def test_html_only_message() -> None:
    message = parse(build(draft(text=None, html="<h1>Hi</h1>")))
    assert message.get_content_type() == "text/html"
    assert message.get_content().strip() == "<h1>Hi</h1>"


def test_text_and_html_make_multipart_alternative_text_first() -> None:
    message = parse(build(draft(text="plain", html="<b>rich</b>")))
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content().strip() == "plain"
    assert parts[1].get_content().strip() == "<b>rich</b>"


def test_attachments_make_multipart_mixed() -> None:
    pdf = b"%PDF-1.4\x00\xff binary"
    message = parse(build(draft(attachments=(
        Attachment("report.pdf", pdf, "application/pdf"),
        Attachment("data.csv", b"a,b\r\n1,2\r\n", "text/csv"),
    ))))  # fmt: skip
    assert message.get_content_type() == "multipart/mixed"
    body, *attachments = message.iter_parts()
    assert body.get_content_type() == "text/plain"
    assert [(a.get_filename(), a.get_content_type()) for a in attachments] == [
        ("report.pdf", "application/pdf"), ("data.csv", "text/csv"),
    ]  # fmt: skip
    assert attachments[0].get_content() == pdf
    assert attachments[0]["Content-Transfer-Encoding"] == "base64"
    assert all(a.get_content_disposition() == "attachment" for a in attachments)


def test_default_attachment_type_is_octet_stream() -> None:
    message = parse(build(draft(attachments=(Attachment("blob", b"\x00\x01"),))))
    [_, attachment] = message.iter_parts()
    assert attachment.get_content_type() == "application/octet-stream"
    assert attachment.get_content() == b"\x00\x01"


def test_inline_cid_attachments_go_in_multipart_related_with_the_html() -> None:
    logo = b"\x89PNG\r\n\x1a\nfake"
    message = parse(build(draft(
        html='<img src="cid:logo">',
        attachments=(
            Attachment("logo.png", logo, "image/png", content_id="logo"),
            Attachment("terms.pdf", b"%PDF", "application/pdf"),
        ),
    )))  # fmt: skip
    assert message.get_content_type() == "multipart/mixed"
    alternative, attachment = message.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    plain, related = alternative.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html, image = related.iter_parts()
    assert html.get_content_type() == "text/html"
    assert image.get_content_type() == "image/png"
    assert image["Content-ID"] == "<logo>"
    assert image.get_content() == logo
    assert image.get_content_disposition() == "inline"
    assert attachment.get_filename() == "terms.pdf"


def test_inline_attachment_without_html_is_an_ordinary_attachment() -> None:
    message = parse(build(draft(attachments=(Attachment("a.png", b"x", "image/png", "a"),))))
    [_, attachment] = message.iter_parts()
    assert attachment.get_content_disposition() == "attachment"
    assert attachment.get_filename() == "a.png"


def test_non_ascii_subject_and_body_are_encoded_and_round_trip() -> None:
    raw = build(draft(subject="Grüße aus Köln ☃", text="Ça va? 你好\n", html="<p>Ça va? 你好</p>"))
    head = raw.partition(b"\r\n\r\n")[0]
    assert head.isascii()  # RFC 2047 encoded-words in the header
    assert b"=?utf-8?" in head
    message = parse(raw)
    assert message["Subject"] == "Grüße aus Köln ☃"
    plain, html = message.iter_parts()
    assert content(plain) == "Ça va? 你好\n"
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"
    assert "你好" in html.get_content()


def test_long_lines_get_quoted_printable_and_stay_under_the_limit() -> None:
    long_line = "word " * 400  # 2000 characters, over RFC 5322 §2.1.1's 998
    raw = build(draft(text=long_line, html=f"<p>{long_line}</p>"))
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    plain, html = parse(raw).iter_parts()
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"
    assert html["Content-Transfer-Encoding"] == "quoted-printable"
    assert content(plain) == long_line + "\n"


def test_short_ascii_body_stays_7bit() -> None:
    message = parse(build(draft(text="short")))
    assert message["Content-Transfer-Encoding"] == "7bit"


def test_non_ascii_address_uses_smtputf8_form() -> None:
    raw = build(draft(to=("用户@example.net",)))
    assert "To: 用户@example.net\r\n".encode() in raw


@pytest.mark.parametrize(
    "fields",
    [
        {"subject": "Hi\r\nBcc: victim@example.com"},
        {"subject": "Hi\nBcc: victim@example.com"},
        {"subject": "Hi\rthere"},
        {"sender": "app@example.com\r\nBcc: victim@example.com"},
        {"to": ("user@example.net\r\nBcc: victim@example.com",)},
        {"cc": ("cc@example.org\nX: y",)},
        {"reply_to": "r@example.com\r\nX: y"},
        {"headers": (("X-Tag", "a\r\nBcc: victim@example.com"),)},
        {"attachments": (Attachment("a.txt\r\nBcc: victim@example.com", b"x"),)},
        {"html": "<p>", "attachments": (Attachment("a.png", b"x", "image/png", "c\r\nX: y"),)},
        {"attachments": (Attachment("a.txt", b"x", "text/plain\r\nX: y"),)},
    ],
)
def test_cr_or_lf_in_any_header_value_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidMessageError):
        build(draft(**fields))


@pytest.mark.parametrize(
    "name", ["From", "to", "CC", "bcc", "Subject", "Date", "Message-ID", "reply-to", "MIME-Version",
             "Content-Type", "content-transfer-encoding", "Received", "Return-Path", "DKIM-Signature"]
)  # fmt: skip
def test_reserved_header_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidMessageError, match="set by its own field"):
        build(draft(headers=((name, "value"),)))


@pytest.mark.parametrize("name", ["", "X Tag", "X:Tag", "X-Tägg", "X-\x7f"])
def test_invalid_header_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidMessageError, match="invalid header name"):
        check_header_name(name)


def test_a_message_needs_a_body() -> None:
    with pytest.raises(InvalidMessageError, match="text or html"):
        build(draft(text=None, html=None))
    with pytest.raises(InvalidMessageError):
        build(draft(text="", html=""))


@pytest.mark.parametrize("content_type", ["image", "/png", "image/", ""])
def test_malformed_attachment_type_is_refused(content_type: str) -> None:
    with pytest.raises(InvalidMessageError, match="content_type"):
        build(draft(attachments=(Attachment("a", b"x", content_type),)))


def test_address_of_and_format_address() -> None:
    assert address_of("Ada Lovelace <ada@example.com>") == "ada@example.com"
    assert address_of("ada@example.com") == "ada@example.com"
    with pytest.raises(InvalidMessageError):
        address_of("not an address")
    assert format_address("ada@example.com", None) == "ada@example.com"
    assert format_address("ada@example.com", "Ada, Countess") == '"Ada, Countess" <ada@example.com>'
    with pytest.raises(InvalidMessageError):
        format_address("ada@example.com", "Ada\r\nBcc: victim@example.com")
