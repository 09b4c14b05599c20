"""`classify`, `classify_reply`, `enhanced_status`, `format_reply`: RFC 5321 reply classes, RFC 3463
enhanced codes win for failures, and which replies mean the destination is throttling us."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from postroom.core.types import Verdict
from postroom.delivery.replies import (
    Classified,
    classify,
    classify_reply,
    enhanced_status,
    format_reply,
)


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


# --- `classify`: the whole value, verdict, enhanced code and throttling ----------------------------


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        (200, Verdict.DELIVERED),
        (250, Verdict.DELIVERED),
        (299, Verdict.DELIVERED),
        (400, Verdict.DEFERRED),
        (450, Verdict.DEFERRED),
        (499, Verdict.DEFERRED),
        (500, Verdict.BOUNCED),
        (554, Verdict.BOUNCED),
        (599, Verdict.BOUNCED),
        # Not a final reply where one was due, or not a reply code at all: temporary.
        (100, Verdict.DEFERRED),
        (199, Verdict.DEFERRED),
        (300, Verdict.DEFERRED),
        (354, Verdict.DEFERRED),
        (399, Verdict.DEFERRED),
        (0, Verdict.DEFERRED),
        (-1, Verdict.DEFERRED),
        (600, Verdict.DEFERRED),
        (1000, Verdict.DEFERRED),
    ],
)
def test_every_basic_class_without_an_enhanced_code(code: int, verdict: Verdict) -> None:
    assert classify(code, "plain words") == Classified(verdict, None, False)


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        # The enhanced class wins for failures: servers send 552 for "mailbox full, try later".
        (552, "4.2.2 mailbox full", Classified(Verdict.DEFERRED, "4.2.2", False)),
        (550, "4.2.2 Mailbox full", Classified(Verdict.DEFERRED, "4.2.2", False)),
        (554, "4.4.1 no answer from host", Classified(Verdict.DEFERRED, "4.4.1", False)),
        (450, "5.1.1 No such user", Classified(Verdict.BOUNCED, "5.1.1", False)),
        (451, "5.7.1 Rejected by policy", Classified(Verdict.BOUNCED, "5.7.1", False)),
        # ... even over 421: a bounce is final, so it is not also a throttle.
        (421, "5.7.0 Blocked for spam", Classified(Verdict.BOUNCED, "5.7.0", False)),
        # A success class on a failure is contradictory: the basic code wins, the code is kept.
        (450, "2.0.0 confused", Classified(Verdict.DEFERRED, "2.0.0", False)),
        (550, "2.1.5 confused", Classified(Verdict.BOUNCED, "2.1.5", False)),
        (421, "2.0.0 closing", Classified(Verdict.DEFERRED, "2.0.0", True)),
        # A success reply is a success whatever its enhanced code claims.
        (250, "5.1.1 odd server", Classified(Verdict.DELIVERED, "5.1.1", False)),
        (250, "4.7.0 rate limited", Classified(Verdict.DELIVERED, "4.7.0", False)),
        # An intermediate or impossible code is temporary: the enhanced code cannot bounce it.
        (354, "5.0.0 go ahead", Classified(Verdict.DEFERRED, "5.0.0", False)),
        (100, "5.1.1 continue", Classified(Verdict.DEFERRED, "5.1.1", False)),
        (0, "5.1.1 no reply", Classified(Verdict.DEFERRED, "5.1.1", False)),
        (600, "5.0.0 nonsense", Classified(Verdict.DEFERRED, "5.0.0", False)),
        (354, "4.7.0 rate limited", Classified(Verdict.DEFERRED, "4.7.0", False)),
    ],
)
def test_enhanced_codes_against_the_basic_class(code: int, text: str, expected: Classified) -> None:
    assert classify(code, text) == expected


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (550, "   5.1.1 user unknown", Classified(Verdict.BOUNCED, "5.1.1", False)),
        (552, "\t4.2.2 over quota", Classified(Verdict.DEFERRED, "4.2.2", False)),
        (450, " 5.1.1 gone", Classified(Verdict.BOUNCED, "5.1.1", False)),
    ],
)
def test_enhanced_code_after_leading_spaces_still_counts(
    code: int, text: str, expected: Classified
) -> None:
    assert classify(code, text) == expected


@pytest.mark.parametrize(
    ("code", "text", "verdict"),
    [
        (450, "5.1 user unknown", Verdict.DEFERRED),
        (550, "4.2 mailbox full", Verdict.BOUNCED),
        (450, "6.1.1 no such class", Verdict.DEFERRED),
        (550, "3.1.1 no such class", Verdict.BOUNCED),
        (450, "5.1.1000 detail too long", Verdict.DEFERRED),
        (550, "4.2.2000 detail too long", Verdict.BOUNCED),
        (450, "5.1000.1 subject too long", Verdict.DEFERRED),
        (450, "5.1.1a glued to a word", Verdict.DEFERRED),
        (450, "5..1 empty subject", Verdict.DEFERRED),
        (550, "x 4.2.2 not at the start", Verdict.BOUNCED),
    ],
)
def test_a_malformed_enhanced_code_is_ignored_and_the_basic_class_decides(
    code: int, text: str, verdict: Verdict
) -> None:
    assert classify(code, text) == Classified(verdict, None, False)


def test_classify_reply_is_the_verdict_of_classify() -> None:
    for code, text in [(552, "4.2.2 full"), (450, "5.1.1 gone"), (250, "ok"), (421, "")]:
        assert classify_reply(code, text) is classify(code, text).verdict


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("4.7.650 rate limited", "4.7.650"),
        ("4.7.28 unusual rate", "4.7.28"),
        ("\t5.1.1 tab", "5.1.1"),
        ("5.1.1: colon after", "5.1.1"),
        ("4.7.28 line one\n4.7.28 line two", "4.7.28"),
        ("2.0.0", "2.0.0"),
        ("6.1.1 bad class", None),
        ("5.1.1000 detail of four digits", None),
        ("5.1000.1 subject of four digits", None),
        ("5.1.1x", None),
        (".5.1.1", None),
        ("5 .1.1", None),
        ("   ", None),
    ],
)
def test_enhanced_status_more_shapes(text: str, status: str | None) -> None:
    assert enhanced_status(text) == status


@pytest.mark.parametrize(
    ("code", "text", "formatted"),
    [
        (250, "", "250"),
        (250, "Ok", "250 Ok"),
        (421, "4.7.0 line one\n4.7.0 line two", "421 4.7.0 line one 4.7.0 line two"),
        (550, " \t5.1.1  spaced\r\n  out \r\n", "550 5.1.1 spaced out"),
        (0, "connection refused", "0 connection refused"),
    ],
)
def test_format_reply_is_one_line_with_single_spaces(code: int, text: str, formatted: str) -> None:
    assert format_reply(code, text) == formatted


# --- Throttling: does the reply ask us to slow down for the whole destination? ---------------------

# Real replies from the big providers, with the text as aiosmtplib hands it over: the code prefix
# of every line removed, lines joined by "\n" (so the enhanced code repeats at each line start).
GMAIL_UNSOLICITED_RATE = (
    "4.7.28 [192.0.2.1      15] Our system has detected an unusual rate of\n"
    "4.7.28 unsolicited mail originating from your IP address. To protect our\n"
    "4.7.28 users from spam, mail sent from your IP address has been temporarily\n"
    "4.7.28 rate limited. Please visit\n"
    "4.7.28  https://support.google.com/mail/?p=UnsolicitedRateLimitError to\n"
    "4.7.28 review our Bulk Email Senders Guidelines. a1si1234567qkb.12 - gsmtp"
)
GMAIL_RECEIVING_RATE = (
    "4.2.1 The user you are trying to contact is receiving mail at a rate that\n"
    "4.2.1 prevents additional messages from being delivered. Please resend your\n"
    "4.2.1 message at a later time. If the user is able to receive mail at that\n"
    "4.2.1 time, your message will be delivered. For more information, please\n"
    "4.2.1 visit\n"
    "4.2.1  https://support.google.com/mail/?p=ReceivingRate a1si1234567qkb.12 - gsmtp"
)
GMAIL_TOO_MANY_RECIPIENTS = (
    "4.5.3 Your message has too many recipients. For more information regarding\n"
    "4.5.3 Google's sending limits, visit\n"
    "4.5.3  https://support.google.com/mail/?p=TooManyRecipientsError a1si1234567qkb.12 - gsmtp"
)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        pytest.param(421, GMAIL_UNSOLICITED_RATE, id="gmail-421-4.7.28"),
        pytest.param(421, "4.7.0 Try again later, closing connection. (EHLO) a1si1 - gsmtp",
                     id="gmail-421-4.7.0"),  # fmt: skip
        pytest.param(
            451,
            "4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP "
            "reputation. For e-mail delivery information, see https://postmaster.live.com (S775)",
            id="microsoft-451-4.7.650",
        ),
        pytest.param(
            451,
            "4.7.651 The mail server [192.0.2.1] has been temporarily rate limited due to IP "
            "reputation. For e-mail delivery information, see https://postmaster.live.com (S843)",
            id="microsoft-451-4.7.651",
        ),
        pytest.param(451, "4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77714)",
                     id="microsoft-451-4.7.500"),  # fmt: skip
        pytest.param(
            421,
            "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume "
            "or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
            id="yahoo-421-TSS04",
        ),
        # From the labelled bounce corpus (Sisimai set-of-emails):
        pytest.param(452, "4.3.2 Connection rate limit exceeded.", id="postfix-09-toomanyconn"),
        pytest.param(421, "4.2.0 Service refuse. Veuillez essayer plus tard. Service refused, "
                     "please try later. OFR005_505 [505]", id="orange-421"),  # fmt: skip
        pytest.param(421, "4.4.2 Connection timed out", id="workmail-421"),
    ],
)
def test_provider_throttling_replies_are_throttled_deferrals(code: int, text: str) -> None:
    classified = classify(code, text)
    assert (classified.verdict, classified.throttled) == (Verdict.DEFERRED, True)


@pytest.mark.parametrize(
    "text",
    ["", "Service not available", "mx.example.com closing connection", "4.3.0 local problem",
     "4.2.2 mailbox full", "2.0.0 odd", "4.4.2 Connection timed out"],
)  # fmt: skip
def test_421_is_always_throttled_unless_it_bounces(text: str) -> None:
    # RFC 5321 §3.8: 421 closes the channel, so the host, not one recipient, is the problem.
    assert classify(421, text) == Classified(Verdict.DEFERRED, enhanced_status(text), True)


@pytest.mark.parametrize(
    ("code", "status"),
    [(451, "4.7.0"), (450, "4.7.28"), (451, "4.7.650"), (451, "4.7.651"), (452, "4.3.2"),
     (451, "4.4.5"), (550, "4.7.0")],
)  # fmt: skip
def test_rate_limit_codes_throttle_with_any_text(code: int, status: str) -> None:
    assert classify(code, f"{status} see our policy") == Classified(Verdict.DEFERRED, status, True)


@pytest.mark.parametrize(
    "status", ["4.7.1", "4.7.2", "4.7.280", "4.7.65", "4.3.20", "4.4.50", "4.3.0", "4.2.2"]
)
def test_neighbouring_codes_do_not_throttle_on_their_own(status: str) -> None:
    assert classify(451, f"{status} see our policy") == Classified(Verdict.DEFERRED, status, False)


@pytest.mark.parametrize(
    "text",
    [
        "Rate limit exceeded",
        "rate-limited, come back in a minute",
        "RATELIMIT reached",
        "You are being THROTTLED",
        "Throttling failure: maximum sending rate exceeded",
        "Too many connections from your IP",
        "too many messages in this session",
        "Too many concurrent SMTP connections",
        "temporarily deferred",
        "Messages temporarily rate limited",
        "[TSS01] deferred",
        "please slow down",
        "excessive message rate",
        "4.7.1 throttled by policy",  # a phrase throttles whatever the (temporary) code
    ],
)
def test_throttling_phrases_are_recognised_in_any_case(text: str) -> None:
    assert classify(451, text).throttled


@pytest.mark.parametrize(
    ("code", "text"),
    [
        pytest.param(451, "4.3.0 local error", id="local-error"),
        pytest.param(452, "4.2.2 mailbox full", id="mailbox-full"),
        pytest.param(451, "4.3.0 Error: queue file write error", id="corpus-postfix-75"),
        pytest.param(452, "4.3.1 Insufficient system storage", id="storage"),
        pytest.param(450, "4.1.8 <a@example.com>: Sender address rejected: Domain not found",
                     id="sender-domain"),  # fmt: skip
        pytest.param(450, "4.2.0 <b@example.org>: Recipient address rejected: Greylisted, see "
                     "http://postgrey.schweikert.ch/help/example.org.html", id="postgrey"),  # fmt: skip
        pytest.param(451, "Greylisted, please try again in 900 seconds", id="greylist-seconds"),
        pytest.param(450, "User is receiving mail too quickly", id="yahoo-per-recipient"),
        # Gmail 4.2.1 is one *recipient* receiving too much mail (Google: "per recipient, not
        # your sending rate"); slowing the whole destination down would not help that recipient
        # and would delay everyone else's mail, so it is an ordinary deferral of that recipient.
        pytest.param(450, GMAIL_RECEIVING_RATE, id="gmail-450-4.2.1-receiving-rate"),
    ],
)
def test_ordinary_temporary_failures_are_not_throttling(code: int, text: str) -> None:
    classified = classify(code, text)
    assert (classified.verdict, classified.throttled) == (Verdict.DEFERRED, False)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        # RFC 5321 §4.5.3.1.10: a limit on recipients per *transaction*; the answer is to send the
        # rest in another transaction, not to slow down or suspend the destination.
        pytest.param(452, "4.5.3 Too many recipients", id="452-4.5.3"),
        pytest.param(452, GMAIL_TOO_MANY_RECIPIENTS, id="gmail-452-4.5.3"),
        # Yandex: one recipient's receiving rate (4.2.x is a mailbox status, RFC 3463 §3.3).
        pytest.param(450, "4.2.1 The recipient has exceeded message rate limit. Try again later.",
                     id="yandex-450-4.2.1"),  # fmt: skip
        # Greylisting is per (sender, recipient, client) triplet and expects a retry in minutes.
        pytest.param(451, "4.7.1 greylisting, please try again later", id="greylisting"),
    ],
)
def test_per_message_limits_are_not_destination_throttling(code: int, text: str) -> None:
    classified = classify(code, text)
    assert (classified.verdict, classified.throttled) == (Verdict.DEFERRED, False)


def test_microsoft_connection_limit_is_throttling() -> None:
    text = (
        "4.7.652 The mail server [192.0.2.1] has exceeded the maximum number of connections. "
        "(S3115) [BN3PEPF0000B06D.namprd21.prod.outlook.com 2024-07-01T12:34:16Z]"
    )
    assert classify(451, text) == Classified(Verdict.DEFERRED, "4.7.652", True)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (550, "5.7.1 rate limited, too many connections, try again later"),
        (554, "5.7.0 throttled"),
        (550, "Connection frequency limited"),  # corpus rhost-tencent-01: 5yz, so final
        (421, "5.7.0 too many connections"),
        (250, "2.0.0 Ok, but slow down"),
        (250, "4.7.0 rate limited"),
        (221, "closing"),
        (354, "too many messages"),
    ],
)
def test_bounces_and_successes_are_never_throttling(code: int, text: str) -> None:
    assert not classify(code, text).throttled


def test_a_5yz_reply_with_a_temporary_rate_limit_code_is_a_throttled_deferral() -> None:
    # Rule 2 makes "550 4.7.0" temporary, and a temporary reply with a rate-limit code throttles.
    # So "5yz is never throttled" holds for 5yz replies that bounce, not for these.
    assert classify(550, "4.7.0 rate limited") == Classified(Verdict.DEFERRED, "4.7.0", True)
    assert classify(552, "4.2.2 mailbox full") == Classified(Verdict.DEFERRED, "4.2.2", False)


_PREFIXES = ["", " ", "2.0.0 ", "4.7.0 ", "4.7.28 ", "4.2.2 ", "5.1.1 ", "5.7.1 ", "6.1.1 "]
_PHRASES = ["", "rate limited", "throttled", "try again later", "too many connections", "TSS04"]
_REPLY_TEXTS = st.one_of(
    st.text(max_size=40),
    st.builds(lambda p, s, t: p + s + t, st.sampled_from(_PREFIXES), st.sampled_from(_PHRASES),
              st.text(max_size=20)),
)  # fmt: skip


@given(code=st.integers(min_value=200, max_value=299), text=_REPLY_TEXTS)
def test_any_2yz_is_delivered_and_never_throttled(code: int, text: str) -> None:
    classified = classify(code, text)
    assert (classified.verdict, classified.throttled) == (Verdict.DELIVERED, False)


@given(code=st.integers(min_value=500, max_value=599), text=_REPLY_TEXTS)
def test_any_5yz_without_a_temporary_enhanced_code_bounces_and_never_throttles(
    code: int, text: str
) -> None:
    classified = classify(code, text)
    if (enhanced_status(text) or "").startswith("4."):
        assert classified.verdict is Verdict.DEFERRED
    else:
        assert (classified.verdict, classified.throttled) == (Verdict.BOUNCED, False)


@given(code=st.integers(min_value=-1000, max_value=1000), text=_REPLY_TEXTS)
def test_throttled_only_for_temporary_failure_replies(code: int, text: str) -> None:
    classified = classify(code, text)
    assert classified.enhanced == enhanced_status(text)
    if classified.throttled:
        assert classified.verdict is Verdict.DEFERRED and 400 <= code < 600
    if code == 421 and classified.verdict is Verdict.DEFERRED:
        assert classified.throttled


# --- Measured against the labelled bounce corpus (/work/shared/data/bounces) -----------------------

_PSEUDO_STATUS = re.compile(r"^\d\.(0\.9\d\d|9\.\d+)$")  # invented by the reference; see its README


def _bounce_corpus() -> Path:
    root = os.environ.get("POSTROOM_TEST_DATA")
    data = Path(root) if root else Path(__file__).resolve().parents[3] / "shared" / "data"
    expected = data / "bounces" / "expected.json"
    if not expected.is_file():
        pytest.skip(f"labelled bounce corpus not found at {expected} (set POSTROOM_TEST_DATA)")
    return expected


def _reply_text(diagnostic: str, code: int) -> str:
    """The text after the reply code in a diagnostic such as "host x said: 550 5.1.1 unknown"."""
    match = re.search(rf"(?<!\d){code}(?:[ -]|$)(.*)", diagnostic, re.DOTALL)
    return match.group(1) if match else ""


def test_classify_measured_against_the_labelled_bounce_corpus() -> None:
    """Every labelled failure that carries an SMTP reply code, classified from code and text.

    The labels' hard/soft is the reference's "is the address bad", not "is the failure
    permanent" (a blocked 554 is soft), so the figure measured is agreement with the permanence
    of the labelled RFC 3463 status (5.x.x bounce, 4.x.x defer), where the status is real.
    Run with -rP to see the figures.
    """
    files = json.loads(_bounce_corpus().read_text())["files"]
    rows = [r for f in files for r in f["recipients"]
            if r["bounce_class"] in ("hard", "soft") and r["replycode"]]  # fmt: skip
    scored = agree = hard = hard_bounced = throttled = 0
    for row in rows:
        code = int(row["replycode"])
        result = classify(code, _reply_text(row["diagnosticcode"], code))
        assert result.verdict is not Verdict.DELIVERED, row  # every row is a failure
        if result.throttled:
            throttled += 1
            assert 400 <= code < 500, row
        if row["bounce_class"] == "hard":
            hard += 1
            hard_bounced += result.verdict is Verdict.BOUNCED
        status = row["status"]
        if status and not _PSEUDO_STATUS.match(status):
            scored += 1
            permanent = status.startswith("5.")
            agree += (result.verdict is Verdict.BOUNCED) == permanent
    print(
        f"bounce corpus: {len(rows)} failures with a reply code; status-class agreement "
        f"{agree}/{scored} ({agree / scored:.1%}); hard labels bounced {hard_bounced}/{hard}; "
        f"throttled {throttled}"
    )
    assert scored >= 100 and hard >= 30  # the corpus was read, not silently emptied
    # An address the reference calls gone (unknown user, no such domain) must never be retried.
    assert hard_bounced == hard
    assert agree / scored >= 0.9
