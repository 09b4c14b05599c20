"""`parse_bounce` on hostile input: malformed MIME, truncated DSNs, binary junk, 1 MB header lines,
deeply nested multiparts. No exception escapes, the result is a well-formed `ParsedBounce`, and each
parse stays under a time budget (generous: the machine is shared, the typical parse takes ~1 ms)."""

from __future__ import annotations

import logging
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom.bounces.model import BounceClass, BounceKind, ParsedBounce
from postroom.bounces.parser import parse_bounce

BUDGET_SECONDS = 2.0

DSN = (
    b"From: MAILER-DAEMON@mx.example.org\r\nTo: sender@example.com\r\n"
    b"Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
    b"--B\r\nContent-Type: text/plain\r\n\r\n<rcpt@example.net>: host mx.example.net said: 550 5.1.1 "
    b"<rcpt@example.net>: Recipient address rejected: User unknown (in reply to RCPT TO command)\r\n"
    b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n"
    b"Final-Recipient: rfc822; rcpt@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    b"Diagnostic-Code: smtp; 550 5.1.1 <rcpt@example.net>: Recipient address rejected: User unknown\r\n"
    b"--B\r\nContent-Type: message/rfc822\r\n\r\nFrom: sender@example.com\r\nTo: rcpt@example.net\r\n"
    b"Subject: hello\r\n\r\nhello\r\n--B--\r\n"
)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def parse_within_budget(raw: bytes) -> ParsedBounce:
    """Parse under the time budget; the guards, not the catch-all, must have handled the input
    (parse_bounce logs an error when its catch-all fires)."""
    collect = _Collect()
    logger = logging.getLogger("postroom.bounces")
    logger.addHandler(collect)
    try:
        started = time.perf_counter()
        parsed = parse_bounce(raw)
        elapsed = time.perf_counter() - started
    finally:
        logger.removeHandler(collect)
    assert collect.messages == []
    assert elapsed < BUDGET_SECONDS, f"parse took {elapsed:.2f} s for {len(raw)} bytes"
    assert isinstance(parsed, ParsedBounce) and isinstance(parsed.kind, BounceKind)
    for recipient in parsed.recipients:
        assert "@" in recipient.address and isinstance(recipient.bounce_class, BounceClass)
    return parsed


def test_the_reference_dsn_parses() -> None:
    """The seed the fuzzers mutate is itself a bounce, so the mutations start from a real shape."""
    parsed = parse_within_budget(DSN)
    assert [(r.address, r.reason, r.bounce_class) for r in parsed.recipients] == [
        ("rcpt@example.net", "userunknown", BounceClass.HARD)
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(min_value=0, max_value=len(DSN)))
def test_truncated_dsns(cut: int) -> None:
    parse_within_budget(DSN[:cut])


@settings(max_examples=150, deadline=None)
@given(position=st.integers(min_value=0, max_value=len(DSN)), junk=st.binary(min_size=1, max_size=300))
def test_junk_spliced_into_a_dsn(position: int, junk: bytes) -> None:
    parse_within_budget(DSN[:position] + junk + DSN[position:])


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=4000))
def test_binary_junk(raw: bytes) -> None:
    parse_within_budget(raw)


_HEADER_NAMES = st.sampled_from(["Content-Type", "Content-Transfer-Encoding", "Subject", "From", "To",
                                 "Auto-Submitted", "X-Failed-Recipients", "Return-Path", "X-Junk"])  # fmt: skip
_HEADER_VALUES = st.one_of(
    st.text(max_size=80),
    st.sampled_from(['multipart/report; boundary="', "multipart/mixed; boundary=", "message/rfc822",
                     "message/delivery-status", "text/plain; charset=x-unknown-charset", "base64",
                     "quoted-printable", "=?utf-8?b?////?=", "=?bogus?q?=ZZ?=", "auto-replied"]),
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    headers=st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=8),
    body=st.lists(st.sampled_from(["--", "--B", "--B--", "Final-Recipient: rfc822;", "Status: 5.",
                                   "Action: failed", "Content-Type: message/rfc822", "", "x@y.example",
                                   "550 5.1.1 user unknown", ">>> DATA", "<<< 550"]), max_size=40),
)  # fmt: skip
def test_malformed_mime(headers: list[tuple[str, str]], body: list[str]) -> None:
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    raw = (head + "\r\n" + "\r\n".join(body)).encode("utf-8", "surrogateescape")
    parse_within_budget(raw)


def test_one_megabyte_header_lines() -> None:
    long_value = "a" * (1024 * 1024)
    raw = (f"From: MAILER-DAEMON@x.example\r\nSubject: {long_value}\r\nX-Failed-Recipients: "
           f"{'b@c.example,' * 80000}\r\nTo: {long_value}@x.example\r\n\r\nbody\r\n").encode()  # fmt: skip
    parse_within_budget(raw)


def test_one_megabyte_body_line_full_of_addresses() -> None:
    raw = b"From: MAILER-DAEMON@x.example\r\nSubject: Undelivered\r\n\r\n" + b"u@d.example " * 90000
    parsed = parse_within_budget(raw)
    assert len(parsed.recipients) <= 500  # the scanner looks at a bounded number of addresses


def test_deeply_nested_multiparts() -> None:
    depth = 2000
    opening = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n' for i in range(depth))
    closing = "".join(f"\r\n--b{i}--\r\n" for i in reversed(range(depth)))
    raw = ("From: MAILER-DAEMON@x.example\r\nSubject: Undelivered\r\nMIME-Version: 1.0\r\n" + opening
           + "Content-Type: text/plain\r\n\r\n<gone@example.net>: 550 5.1.1 user unknown" + closing).encode()
    parse_within_budget(raw)


def test_deeply_nested_attached_messages() -> None:
    raw = b"Subject: x\r\n\r\nbody"
    for _ in range(300):
        raw = b"From: MAILER-DAEMON@x.example\r\nContent-Type: message/rfc822\r\n\r\n" + raw
    parse_within_budget(raw)


def test_many_parts() -> None:
    parts = "".join("--B\r\nContent-Type: text/plain\r\n\r\npart\r\n" for _ in range(20000))
    raw = ('From: MAILER-DAEMON@x.example\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
           + parts + "--B--\r\n").encode()  # fmt: skip
    parse_within_budget(raw)


# Inputs shaped to make a careless regular expression backtrack for minutes: long runs of the
# characters the address, marker and field patterns repeat.
_PATHOLOGICAL_BODIES = {
    "newlines": b"\n" * 120_000,
    "blank lines with spaces": b" \t\n" * 40_000,
    "one line of dashes": b"-" * 120_000,
    "a domain of many labels": b"x@" + b"ab." * 40_000 + b"a-",
    "a local part of many dots": b"a." * 60_000 + b"@",
    "at signs": b"a@" * 60_000,
    "angle brackets": b"<" * 100_000 + b"a@b.example",
    "spaces before an address": b" " * 120_000 + b"x@y.example",
    "open RCPT commands": b"RCPT TO:<" * 20_000,
    "a transcript of refusals": b">>> DATA\n<<< 5" * 8_000,
    "status-like numbers": b"5.1.1 " * 20_000,
    "repeated recipient fields": b"Final-Recipient: rfc822; a@b.example\n" * 4_000,
    "quoted lines": b"> \n" * 40_000,
}


def test_pathological_bodies() -> None:
    head = b"From: MAILER-DAEMON@x.example\r\nSubject: Undelivered Mail\r\n\r\n"
    for name, body in _PATHOLOGICAL_BODIES.items():
        started = time.perf_counter()
        parse_within_budget(head + body)
        assert time.perf_counter() - started < 1.0, name
